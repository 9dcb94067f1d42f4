"""The process manager through real processes: a memory ceiling per worker,
dynamic pools, preloading and chroot (see tests/test_processes.py for the
fixture that starts and stops the gateway)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fcgi_asgi import cli
from tests.test_processes import (  # noqa: F401 (launch is a fixture)
    NOBODY_UID,
    launch,
    notify_socket,
    proc_status,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

APP = "tests.pm_apps:app"


# -- --max-worker-memory ------------------------------------------------------------


async def test_worker_past_its_memory_ceiling_is_replaced(launch):  # noqa: F811
    gw = await launch("--workers", "2", "--max-worker-memory", "120", app=APP, workers=2)
    first = set(gw.workers())
    failures: list[str] = []
    pids: set[int] = set()
    deadline = time.monotonic() + 40

    async def client_loop() -> None:
        # Each request leaks 8 MiB in the worker that serves it.
        for _ in range(400):
            replaced = not first & set(gw.workers()) and len(pids - first) >= 2
            if replaced or time.monotonic() > deadline:
                return
            try:
                r = await gw.get("/leak", "8")
                if r.status != 200:
                    failures.append(f"status {r.status}")
                pids.add(int(r.body))
            except OSError as exc:
                failures.append(repr(exc))

    await asyncio.gather(*(client_loop() for _ in range(3)))
    assert not failures, failures[:5]
    # Both first workers grew past 120 MiB and were replaced; their
    # replacements served the next requests.
    assert not first & set(gw.workers()), gw.log()
    assert len(pids - first) >= 2, pids
    log = gw.log()
    replaced = re.findall(r"worker (\d+) uses ([\d.]+) MiB \(RSS\), more than --max-worker", log)
    assert {int(pid) for pid, _ in replaced} >= first, log
    assert all(float(mib) > 120 for _, mib in replaced), replaced
    assert len(gw.ready_workers()) == 2


# -- dynamic pools ------------------------------------------------------------------


def pool_args(low: int, high: int) -> list[str]:
    """A dynamic pool from ``low`` to ``high`` workers, stopping one idle for 1 s."""
    return ["--workers-min", str(low), "--workers-max", str(high), "--worker-idle-timeout", "1"]


async def test_dynamic_pool_grows_under_a_burst_and_shrinks_when_idle(launch):  # noqa: F811
    gw = await launch(*pool_args(1, 3), "--status-path", "/fcgi-status", app=APP, workers=1)

    async def status() -> dict[str, Any]:
        return json.loads((await gw.get("/fcgi-status", "json")).body)

    info = await status()
    assert info["process manager"] == "dynamic"
    assert (info["min processes"], info["max processes"]) == (1, 3)
    failures: list[str] = []
    served = 0
    deadline = time.monotonic() + 30

    async def client_loop() -> None:
        # Slow requests, 8 at a time, until the pool has grown to its maximum.
        nonlocal served
        for _ in range(100):
            if len(gw.ready_workers()) == 3 or time.monotonic() > deadline:
                return
            try:
                r = await gw.get("/sleep", "0.5")
                served += r.status == 200
                if r.status != 200:
                    failures.append(f"status {r.status}")
            except OSError as exc:
                failures.append(repr(exc))

    await asyncio.gather(*(client_loop() for _ in range(8)))
    assert not failures, failures[:5]
    log = gw.log()
    assert len(gw.ready_workers()) == 3, log
    assert "pool grows to 3 worker(s)" in log
    assert re.search(r"pool grows to 2 worker\(s\): 1 of 1 busy", log), log
    # Idle now: back to the minimum, one logged stop per worker.
    await wait_until(lambda: len(gw.workers()) == 1, "the pool to shrink", 30)
    log = gw.log()
    assert "pool shrinks to 2 worker(s)" in log and "pool shrinks to 1 worker(s)" in log, log
    info = await status()
    assert info["total processes"] == 1 and info["idle processes"] == 1, info
    assert "pool shrinks to 0" not in gw.log()


async def test_on_demand_pool_starts_a_worker_for_a_connection_and_stops_it_idle(
    launch,  # noqa: F811
):
    # --workers-min 0, as php-fpm's pm = ondemand: no worker until a
    # connection waits; the last one stops once idle, and the next connection
    # starts one again.
    gw = await launch(*pool_args(0, 2), "--status-path", "/fcgi-status", app=APP, wait=False)
    await wait_until(lambda: "listening on" in gw.log(), "the supervisor to listen", 15)
    await asyncio.sleep(1.5)  # a pool check or more: still no worker
    assert gw.workers() == [], gw.log()
    first = await gw.get("/pid")
    assert first.status == 200, gw.log()
    assert "pool grows to 1 worker(s): a connection waits" in gw.log()
    info = json.loads((await gw.get("/fcgi-status", "json")).body)
    assert (info["min processes"], info["total processes"]) == (0, 1), info
    await wait_until(lambda: gw.workers() == [], "the last worker to stop", 30)
    assert "pool shrinks to 0 worker(s)" in gw.log()
    second = await gw.get("/pid")
    assert second.status == 200 and second.body != first.body, gw.log()
    assert gw.log().count("pool grows to 1 worker(s): a connection waits") == 2


async def test_pool_shrink_moves_keep_conn_connections_on(launch):  # noqa: F811
    # An idle worker the pool stops hands its idle FCGI_KEEP_CONN connections
    # to the worker that stays, as a reload does: none is closed under nginx.
    gw = await launch("--workers", "2", *pool_args(1, 2), app=APP, workers=2)
    clients: list[Any] = []
    pids: set[int] = set()
    try:
        for _ in range(40):  # keep-conn connections on both workers
            client = await gw.connect()
            clients.append(client)
            pids.add(int((await client.request("GET", "/pid")).body))
            if len(pids) == 2:
                break
        assert len(pids) == 2
        await wait_until(lambda: len(gw.workers()) == 1, "the pool to shrink", 30)
        (left,) = gw.workers()
        for client in clients:
            response = await asyncio.wait_for(client.request("GET", "/pid"), 10)
            assert int(response.body) == left
            assert not client.closed.is_set()
    finally:
        for client in clients:
            await client.close()
    assert "pool shrinks to 1 worker(s)" in gw.log()


# -- --preload ----------------------------------------------------------------------

PRELOADED_APP = """\
import os, pathlib, threading, time
VERSION = pathlib.Path(__file__).with_name("version.txt").read_text()
if VERSION == "broken":
    raise RuntimeError("a broken deploy")
with open(os.environ["FCGI_TEST_EVENTS"], "a") as f:
    f.write(f"import {os.getpid()}\\n")
if VERSION == "thread":
    threading.Thread(target=time.sleep, args=(60,), name="poller", daemon=True).start()
if VERSION == "loop":
    import asyncio
    LOOP = asyncio.new_event_loop()

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        with open(os.environ["FCGI_TEST_EVENTS"], "a") as f:
            f.write(f"startup {os.getpid()}\\n")
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = f"{VERSION} {os.getpid()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


def _preloaded_app(tmp_path: Path, version: str) -> Path:
    (tmp_path / "preloaded_app.py").write_text(PRELOADED_APP)
    (tmp_path / "version.txt").write_text(version)
    return tmp_path / "version.txt"


async def test_preload_imports_once_and_runs_lifespan_per_worker(launch, tmp_path):  # noqa: F811
    _preloaded_app(tmp_path, "v1")
    gw = await launch(
        "--workers", "2", "--preload", "--app-dir", str(tmp_path), app="preloaded_app:app"
    )
    await wait_until(lambda: len(gw.ready_workers()) == 2, "2 workers")
    events = [e.split() for e in gw.events() if e]
    # Imported by the supervisor alone; lifespan started in each worker.
    assert [pid for what, pid in events if what == "import"] == [str(gw.pid)]
    started = sorted(int(pid) for what, pid in events if what == "startup")
    assert started == sorted(gw.workers())
    assert "--preload: app imported" in gw.log()
    assert "--preload: after importing" not in gw.log()


async def test_preload_sighup_reexecs_and_loads_new_code(launch, tmp_path):  # noqa: F811
    version = _preloaded_app(tmp_path, "v1")
    gw = await launch(
        "--workers", "2", "--preload", "--app-dir", str(tmp_path), app="preloaded_app:app"
    )
    await wait_until(lambda: len(gw.ready_workers()) == 2, "2 workers")
    failures: list[str] = []
    bodies: Counter[str] = Counter()
    stop = asyncio.Event()

    async def client_loop() -> None:
        for _ in range(20_000):
            if stop.is_set():
                return
            try:
                r = await gw.get("/")
                bodies[r.body.decode().split()[0]] += 1
                if r.status != 200:
                    failures.append(f"status {r.status}")
            except OSError as exc:
                failures.append(repr(exc))

    async def reload(to: str) -> None:
        old = set(gw.workers())
        version.write_text(to)
        gw.signal(signal.SIGHUP)
        await wait_until(lambda: not old & set(gw.workers()), "the old workers to go", 30)

    clients = [asyncio.ensure_future(client_loop()) for _ in range(4)]
    try:
        await reload("v2")
        await wait_until(lambda: bodies["v2"] > 10, "v2 answers")
        # A broken deploy: the workers keep serving the old code...
        before = set(gw.workers())
        version.write_text("broken")
        gw.signal(signal.SIGHUP)
        await wait_until(lambda: "a broken deploy" in gw.log(), "the failed import", 30)
        await asyncio.sleep(1)
        assert before <= set(gw.workers())
        # ... until a fixed one is loaded.
        await reload("v3")
        await wait_until(lambda: bodies["v3"] > 10, "v3 answers")
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    assert not failures, failures[:5]
    assert set(bodies) == {"v1", "v2", "v3"}, bodies
    assert gw.proc.poll() is None  # the same supervisor process, re-executed
    assert gw.log().count("re-executing the supervisor") == 3
    assert [e for e in gw.events() if e.startswith("import")].count(f"import {gw.pid}") == 3


async def test_preload_of_a_broken_app_exits_1_before_binding(launch, tmp_path, sock_path):  # noqa: F811
    _preloaded_app(tmp_path, "broken")
    gw = await launch(
        "--workers",
        "2",
        "--preload",
        "--app-dir",
        str(tmp_path),
        app="preloaded_app:app",
        wait=False,
    )
    assert await gw.wait_exit() == 1
    assert "RuntimeError: a broken deploy" in gw.log()
    assert "listening on" not in gw.log() and not os.path.exists(sock_path)


async def test_preload_reload_keeps_systemd_informed(launch, notify_socket):  # noqa: F811
    # The re-executed supervisor is the same main PID, and still speaks.
    env = {"NOTIFY_SOCKET": notify_socket.path}
    gw = await launch("--workers", "2", "--preload", app=APP, wait=False, env=env)
    await notify_socket.wait_for("READY")
    old = gw.ready_workers()
    gw.signal(signal.SIGHUP)
    await notify_socket.wait_for("RELOADING")
    ready = await notify_socket.wait_for("READY", count=2)
    assert ready["MAINPID"] == str(gw.pid)
    new = gw.ready_workers() - old
    assert len(new) == 2
    for _ in range(4):
        assert int((await gw.get("/pid")).body) in new
    gw.signal(signal.SIGTERM)
    await notify_socket.wait_for("STOPPING")
    assert await gw.wait_exit() == 0
    assert {pid for pid, _ in notify_socket.messages} == {gw.pid}


@pytest.mark.parametrize(
    ("made", "warning"),
    [
        ("thread", "thread 'poller' is running; forked workers will not have it"),
        ("loop", "is an event loop's epoll; every worker would share it"),
        ("loop", "is an open socket; every worker would share the connection"),
    ],
)
async def test_preload_warns_about_what_does_not_survive_fork(launch, tmp_path, made, warning):  # noqa: F811
    _preloaded_app(tmp_path, made)
    gw = await launch(
        "--workers", "1", "--preload", "--app-dir", str(tmp_path), app="preloaded_app:app"
    )
    assert re.search(
        r"--preload: after importing the app, (fd \d+ )?" + re.escape(warning), gw.log()
    )
    assert (await gw.get("/")).status == 200


PRELOADED_WSGI_APP = """\
import os, threading
with open(os.environ["FCGI_TEST_EVENTS"], "a") as f:
    f.write(f"import {os.getpid()}\\n")

def app(environ, start_response):
    body = f"{os.getpid()} {threading.current_thread().name}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
"""


@pytest.mark.parametrize("threads", ["4", "0"])
async def test_preload_serves_a_wsgi_app_from_the_workers(launch, tmp_path, threads):  # noqa: F811
    """A WSGI app is preloaded like an ASGI one: imported once, by the
    supervisor, then served by the forked workers, in their thread pools or
    (--threads 0) on their event loops."""
    (tmp_path / "preloaded_wsgi.py").write_text(PRELOADED_WSGI_APP)
    gw = await launch(
        "--workers",
        "2",
        "--preload",
        "--threads",
        threads,
        "--app-dir",
        str(tmp_path),
        app="preloaded_wsgi:app",
    )
    await wait_until(lambda: len(gw.ready_workers()) == 2, "2 workers")
    events = [e.split() for e in gw.events() if e]
    assert [pid for what, pid in events if what == "import"] == [str(gw.pid)]
    for _ in range(8):
        r = await gw.get("/")
        assert r.status == 200
        pid, thread = r.body.decode().split()
        # A forked worker answers, never the supervisor that imported the app.
        assert int(pid) in gw.workers() and int(pid) != gw.pid
        assert thread.startswith("fcgi-asgi-wsgi") if threads != "0" else thread == "MainThread"


# -- --chroot -----------------------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")


@needs_root
@pytest.mark.parametrize("preload", [False, True])
async def test_chroot_confines_workers_and_reloads(launch, tmp_path, sock_path, preload):  # noqa: F811
    jail = tmp_path / "jail"
    jail.mkdir()
    jail.chmod(0o755)
    (jail / "inside.txt").write_text("inside")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    args = ["--workers", "2", "--chroot", str(jail), "--user", "nobody"]
    gw = await launch(*args, *(["--preload"] if preload else []), app=APP, workers=2)
    assert "--chroot without --user" not in gw.log()

    async def check_confined() -> None:
        for pid in gw.workers():
            assert os.readlink(f"/proc/{pid}/root") == str(jail)
            assert int(proc_status(pid, "Uid").split()[0]) == NOBODY_UID
        for _ in range(4):  # every worker, whichever answers
            inside = await gw.get("/read", "/inside.txt")
            assert (inside.status, inside.body) == (200, b"inside")
            outside = await gw.get("/read", str(secret))
            assert outside.status == 404 and b"No such file" in outside.body

    await check_confined()
    # Imported before the chroot, but not as root.
    assert (await gw.get("/imported-by")).body == str(NOBODY_UID).encode()
    # The supervisor is not confined: the socket file is where it was.
    assert os.readlink(f"/proc/{gw.pid}/root") == "/" and os.path.exists(sock_path)
    old = set(gw.workers())
    gw.signal(signal.SIGHUP)
    await wait_until(
        lambda: not old & set(gw.workers()) and len(gw.ready_workers()) == 2, "the reload"
    )
    await check_confined()
    gw.signal(signal.SIGTERM)
    assert await gw.wait_exit() == 0
    assert not os.path.exists(sock_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chroot", "relative/dir"], "--chroot must be an absolute path"),
        (["--chroot", "/no/such/dir/here"], "is not a directory"),
    ],
)
def test_chroot_option_errors(capsys, sock_path, args, message):
    assert cli.main([APP, "--socket", sock_path, *args]) == 1
    assert message in capsys.readouterr().err


@needs_root
async def test_chroot_as_root_is_warned_about(launch, tmp_path):  # noqa: F811
    gw = await launch("--chroot", str(tmp_path), app=APP, workers=1)
    assert "--chroot without --user: the workers run as root" in gw.log()
    assert (await gw.get("/pid")).status == 200
