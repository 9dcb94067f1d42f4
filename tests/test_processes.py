"""The process model through real processes, sockets and signals.

Each test starts ``python -m fcgi_asgi`` (the supervisor with its workers,
or the single process), talks to it with :class:`FastCGIClient` the way
nginx does (one connection per request) and signals it by PID. The fixture
stops whatever a test started, by PID, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fcgi_asgi import cli
from fcgi_asgi.client import ClientRequest, FastCGIClient, Response, build_params
from fcgi_asgi.protocol.records import (
    KEEP_CONN,
    PARAMS,
    RESPONDER,
    STDIN,
    encode_begin_request,
    encode_pairs,
    encode_record,
)
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(60)

APP = "tests.proc_apps:app"
# An unprivileged user to switch to, and its primary group.
_nobody = pwd.getpwnam("nobody")
NOBODY_UID, NOBODY_GID = _nobody.pw_uid, _nobody.pw_gid
NOBODY_GROUP = grp.getgrgid(NOBODY_GID).gr_name

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``, from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            data = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(data.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return sorted(kids)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return data.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def proc_status(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return value.strip()
    raise KeyError(field)


def exists(path: str) -> bool:
    return os.path.exists(path)


def listen_backlog(port: int) -> int | None:
    """The backlog of the TCP socket listening on ``port``, from ``ss`` (None without it)."""
    if not shutil.which("ss"):
        return None
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[2])  # State Recv-Q Send-Q: Send-Q is the backlog


def somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def spawn(argv: list[str], log_path: Path, env: dict[str, str], **popen: Any) -> Any:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, **popen
        )


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Gateway:
    """A gateway process the test started, and how to reach it."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        events: Path,
        sock: str | None,
        tcp: tuple[str, int] | None,
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.events_path = events
        self.sock = sock
        self.tcp = tcp
        #: Every worker PID seen, so the fixture can clean up even after the
        #: supervisor is gone.
        self.seen_workers: set[int] = set()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[str]:
        try:
            return self.events_path.read_text().split("\n")
        except FileNotFoundError:
            return []

    def workers(self) -> list[int]:
        kids = children(self.pid)
        self.seen_workers.update(kids)
        return kids

    def ready_workers(self) -> set[int]:
        """Live workers the supervisor logged as ready."""
        ready = {int(pid) for pid in re.findall(r"worker (\d+) ready", self.log())}
        return ready & set(self.workers())

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    async def connect(self) -> FastCGIClient:
        if self.sock is not None:
            return await FastCGIClient.connect(path=self.sock)
        assert self.tcp is not None
        return await FastCGIClient.connect(host=self.tcp[0], port=self.tcp[1])

    async def get(self, path: str, query: str = "") -> Response:
        """One request on its own connection, without FCGI_KEEP_CONN, like nginx."""
        async with await self.connect() as client:
            return await asyncio.wait_for(
                client.request("GET", path, query=query, keep_conn=False), 30
            )

    async def wait_exit(self, timeout: float = 15.0) -> int:
        await wait_until(lambda: self.proc.poll() is not None, "the gateway to exit", timeout)
        return self.proc.returncode

    async def wait_serving(self, workers: int | None) -> None:
        async def answered() -> bool:
            try:
                return (await self.get("/pid")).status == 200
            except OSError:
                return False

        deadline = time.monotonic() + 15
        while not await answered():
            assert self.proc.poll() is None, f"gateway exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"gateway not serving:\n{self.log()}"
            await asyncio.sleep(0.05)
        if workers:
            await wait_until(lambda: len(self.ready_workers()) == workers, f"{workers} workers")


Launch = Callable[..., Awaitable[Gateway]]


def _kill_if_ours(pid: int) -> None:
    # A worker outliving its supervisor; make sure the PID is still a gateway.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"fcgi_asgi" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
async def launch(tmp_path: Path, sock_path: str) -> AsyncIterator[Launch]:
    started: list[Gateway] = []

    async def start(
        *args: str,
        app: str = APP,
        unix: bool = True,
        tcp: tuple[str, int] | None = None,
        workers: int | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        **popen: Any,
    ) -> Gateway:
        n = len(started)
        log_path = tmp_path / f"gateway{n}.log"
        events = tmp_path / f"events{n}.txt"
        full_env = {**os.environ, "FCGI_TEST_EVENTS": str(events), **(env or {})}
        if argv is None:
            argv = [sys.executable, "-m", "fcgi_asgi", app]
            argv += ["--socket", sock_path] if unix and tcp is None else []
            argv += ["--no-access-log", "--timeout-graceful-shutdown", "5", *args]
        proc = spawn(argv, log_path, full_env, **popen)
        gateway = Gateway(proc, log_path, events, sock_path if unix and not tcp else None, tcp)
        started.append(gateway)
        if wait:
            await gateway.wait_serving(workers)
        return gateway

    yield start
    for gateway in started:
        if gateway.proc.poll() is None:
            gateway.workers()
            gateway.proc.terminate()
            try:
                gateway.proc.wait(10)
            except subprocess.TimeoutExpired:
                gateway.proc.kill()
                gateway.proc.wait(5)
        for pid in gateway.seen_workers:
            _kill_if_ours(pid)


async def start_request(gw: Gateway, path: str, query: str = "") -> asyncio.Task[Response]:
    task = asyncio.ensure_future(gw.get(path, query))
    await asyncio.sleep(0.3)  # the app is running it now
    assert not task.done()
    return task


# -- graceful shutdown -------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "how"),
    [
        (1, "SIGTERM"),
        (2, "SIGTERM"),
        # systemd's default KillMode and `timeout` signal the whole group...
        (2, "SIGTERM to the group"),
        # ... and so does Ctrl-C in a terminal.
        (2, "SIGINT to the group"),
    ],
)
async def test_sigterm_finishes_running_request_and_exits_0(launch, workers, how, sock_path):
    gw = await launch(
        "--workers",
        str(workers),
        workers=workers if workers > 1 else None,
        start_new_session=True,  # its own process group, to signal as a whole
    )
    request = await start_request(gw, "/sleep", "2")
    if how == "SIGTERM":
        gw.signal(signal.SIGTERM)
    else:
        assert os.getpgid(gw.pid) == gw.pid != os.getpgid(0)
        os.killpg(gw.pid, signal.SIGINT if how.startswith("SIGINT") else signal.SIGTERM)
    await wait_until(lambda: not exists(sock_path), "the socket file to go")
    with pytest.raises(OSError):
        await gw.get("/pid")  # no longer accepting
    response = await asyncio.wait_for(request, 10)
    assert response.status == 200 and response.body.startswith(b"slept")
    assert await gw.wait_exit() == 0
    events = gw.events()
    assert sum(e.startswith("startup") for e in events) == workers
    assert sum(e.startswith("shutdown") for e in events) == workers


@pytest.mark.parametrize("workers", [1, 2])
async def test_graceful_timeout_disconnects_the_rest(launch, workers):
    gw = await launch("--workers", str(workers), "--timeout-graceful-shutdown", "1")
    request = await start_request(gw, "/wait-disconnect")
    started = time.monotonic()
    gw.signal(signal.SIGTERM)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(request, 10)
    assert await gw.wait_exit() == 0
    assert time.monotonic() - started < 10
    assert any(e.startswith("disconnect") for e in gw.events())
    assert any(e.startswith("shutdown") for e in gw.events())


@pytest.mark.parametrize("workers", [1, 2])
async def test_second_signal_forces_exit(launch, workers):
    gw = await launch("--workers", str(workers), "--timeout-graceful-shutdown", "30")
    request = await start_request(gw, "/sleep", "30")
    gw.signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert gw.proc.poll() is None  # still waiting for the request
    gw.signal(signal.SIGINT)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(request, 10)
    assert await gw.wait_exit(10) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGQUIT])
async def test_stop_while_workers_start_does_not_wait_for_the_kill(launch, sock_path, sig):
    # Lifespan startup never ends: the workers must give up starting when
    # told to stop, not wait for the supervisor's kill (graceful timeout + 10 s).
    gw = await launch(
        "--workers",
        "2",
        app="tests.apps_cli:app",
        env={"FCGI_TEST_STARTUP_HANG": "1"},
        wait=False,
    )
    await wait_until(lambda: len(gw.workers()) == 2 and exists(sock_path), "2 workers")
    await asyncio.sleep(1.0)  # their apps are starting now
    started = time.monotonic()
    gw.signal(sig)
    assert await gw.wait_exit(20) == 0
    assert time.monotonic() - started < 4, gw.log()
    assert "did not stop in time" not in gw.log()
    assert not exists(sock_path)


async def test_stop_right_after_a_fork_is_not_lost(launch):
    # A SIGTERM the supervisor sends a worker it has just forked, before the
    # worker has its own handlers, must not be lost (the worker would serve
    # on until killed, graceful timeout + 10 s later). The window is short:
    # try a few times.
    for _ in range(15):
        gw = await launch("--workers", "8", "--timeout-graceful-shutdown", "1", wait=False)

        def forked(kids: Path = Path(f"/proc/{gw.pid}/task/{gw.pid}/children")) -> bool:
            try:
                return bool(kids.read_text())  # cheaper than children(): no /proc scan
            except OSError:
                return False

        await wait_until(forked, "a worker", 10)
        gw.signal(signal.SIGTERM)  # the supervisor stops the workers at once
        started = time.monotonic()
        assert await gw.wait_exit(15) == 0
        assert "did not stop in time" not in gw.log(), gw.log()
        assert time.monotonic() - started < 5


async def test_group_sigterm_while_workers_start_logs_no_failure(launch):
    # systemd stops the whole group: workers exit at once and may be reaped
    # before the supervisor reads its own SIGTERM; that is a stop, not a
    # failed start to retry (nor an error in the journal).
    for _ in range(8):
        gw = await launch(
            "--workers",
            "4",
            app="tests.apps_cli:app",
            env={"FCGI_TEST_STARTUP_HANG": "1"},
            wait=False,
            start_new_session=True,
        )
        await wait_until(lambda: len(gw.workers()) == 4, "4 workers", 10)  # noqa: B023
        await asyncio.sleep(0.2)
        os.killpg(gw.pid, signal.SIGTERM)
        assert await gw.wait_exit(10) == 0
        assert "failed to start" not in gw.log(), gw.log()
        assert " died " not in gw.log(), gw.log()


async def test_sighup_while_new_workers_start_stops_them_at_once(launch, tmp_path):
    # The reloaded app hangs in startup; a second SIGHUP (a fixed deploy) must
    # stop the hung new workers at once, not leave them for the kill deadline.
    mode = tmp_path / "mode"
    mode.write_text("ok")
    module = tmp_path / "hanging_app.py"
    module.write_text(
        "import asyncio, pathlib\n"
        f"HANG = pathlib.Path({str(mode)!r}).read_text() == 'hang'\n"
        "async def app(scope, receive, send):\n"
        "    if scope['type'] == 'lifespan':\n"
        "        await receive()\n"
        "        if HANG:\n"
        "            await asyncio.sleep(3600)\n"
        "        await send({'type': 'lifespan.startup.complete'})\n"
        "        await receive()\n"
        "        await send({'type': 'lifespan.shutdown.complete'})\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
    )
    gw = await launch(
        "--workers", "2", "--app-dir", str(tmp_path), app="hanging_app:app", workers=2
    )
    old = set(gw.workers())
    mode.write_text("hang")
    gw.signal(signal.SIGHUP)
    await wait_until(lambda: len(gw.workers()) == 4, "2 new workers")
    hung = set(gw.workers()) - old
    await asyncio.sleep(1.0)  # their apps are starting now
    mode.write_text("ok")
    gw.signal(signal.SIGHUP)
    await wait_until(lambda: not any(alive(pid) for pid in hung), "the hung workers to go", 5)
    await wait_until(lambda: not set(gw.workers()) & old, "the reload")
    assert (await gw.get("/")).status == 200
    assert "did not stop in time" not in gw.log()


# -- workers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loop", "app"),
    [("asyncio", APP), ("uvloop", APP), ("uvloop", "tests.proc_apps:wsgi_app")],
    ids=["asyncio", "uvloop", "wsgi"],
)
async def test_sighup_under_load_loses_nothing(launch, loop, app):
    gw = await launch("--workers", "2", "--loop", loop, app=app, workers=2)
    failures: list[str] = []
    pids: Counter[int] = Counter()
    stop = asyncio.Event()
    sent = 0

    async def client_loop() -> None:
        nonlocal sent
        while not stop.is_set() and sent < 50_000:
            sent += 1
            try:
                r = await gw.get("/pid")
                if r.status != 200:
                    failures.append(f"status {r.status}")
                pids[int(r.body)] += 1
            except (TimeoutError, OSError) as exc:
                failures.append(repr(exc))

    clients = [asyncio.ensure_future(client_loop()) for _ in range(8)]
    try:
        for _ in range(3):
            await asyncio.sleep(0.3)
            old = gw.ready_workers()
            gw.signal(signal.SIGHUP)
            await wait_until(
                lambda old=old: not set(gw.workers()) & old and len(gw.ready_workers()) == 2,
                "the reload",
            )
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*clients), 30)
    assert not failures, failures[:5]
    assert len(pids) == 8, pids  # four generations of two workers all served
    assert sum(pids.values()) == sent


async def test_killed_worker_is_replaced(launch):
    gw = await launch("--workers", "2", workers=2)
    victim = gw.workers()[0]
    os.kill(victim, signal.SIGKILL)
    for _ in range(20):  # the other worker serves meanwhile
        assert (await gw.get("/pid")).status == 200
    await wait_until(
        lambda: victim not in gw.workers() and len(gw.ready_workers()) == 2, "a new worker"
    )
    assert f"worker {victim} died (signal SIGKILL)" in gw.log()
    seen = {int((await gw.get("/pid")).body) for _ in range(50)}
    assert victim not in seen


@pytest.mark.parametrize("workers", [1, 2])
async def test_max_requests_recycles_workers(launch, workers):
    gw = await launch(
        "--workers",
        str(workers),
        "--max-requests",
        "20",
        "--max-requests-jitter",
        "5",
        workers=workers,
    )
    failures: list[str] = []
    pids: set[int] = set()
    deadline = time.monotonic() + 30

    async def client_loop() -> None:
        for _ in range(2000):
            if len(pids) >= 6 or time.monotonic() > deadline:
                return
            try:
                r = await gw.get("/pid")
                assert r.status == 200
                pids.add(int(r.body))
            except (OSError, AssertionError) as exc:
                failures.append(repr(exc))
            await asyncio.sleep(0.002)

    await asyncio.gather(*(client_loop() for _ in range(4)))
    assert not failures, failures[:5]
    assert len(pids) >= 6, pids
    assert "reached its max requests: replacing it" in gw.log()
    # Replaced workers do not pile up: once the load stops, the retiring ones
    # (several at once when their counts end together) are gone.
    await wait_until(lambda: len(gw.workers()) == workers, f"{workers} workers after the load")


async def test_ttin_adds_and_ttou_removes_a_worker(launch):
    gw = await launch("--workers", "2", workers=2)
    gw.signal(signal.SIGTTIN)
    await wait_until(lambda: len(gw.ready_workers()) == 3, "3 workers")
    for _ in range(3):
        gw.signal(signal.SIGTTOU)
        await asyncio.sleep(0.1)
    await wait_until(lambda: len(gw.workers()) == 1, "1 worker")
    assert "keeping the last worker" in gw.log()
    assert (await gw.get("/pid")).status == 200


async def test_broken_reload_keeps_the_old_workers(launch, tmp_path):
    module = tmp_path / "deployed_app.py"
    template = (
        "async def app(scope, receive, send):\n"
        "    if scope['type'] != 'http':\n"
        "        return\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'%s'})\n"
    )
    module.write_text(template % "v1")
    gw = await launch(
        "--workers",
        "2",
        "--app-dir",
        str(tmp_path),
        app="deployed_app:app",
        env={"PYTHONDONTWRITEBYTECODE": "1"},
        workers=2,
    )
    old = gw.ready_workers()
    module.write_text("raise RuntimeError('broken deploy')\n")
    gw.signal(signal.SIGHUP)
    # Two fail at once, then one at a time after a growing delay.
    await wait_until(lambda: gw.log().count("failed to start") >= 4, "four failed starts")
    delays = [float(d) for d in re.findall(r"next attempt in ([\d.]+) s", gw.log())]
    assert delays[:4] == [0.25, 0.5, 1.0, 2.0]
    assert "broken deploy" in gw.log()
    assert gw.ready_workers() == old
    for _ in range(10):
        assert (await gw.get("/")).body == b"v1"
    module.write_text(template % "v2")
    gw.signal(signal.SIGHUP)  # a fixed deploy is tried at once
    await wait_until(
        lambda: not set(gw.workers()) & old and len(gw.ready_workers()) == 2, "the reload"
    )
    assert (await gw.get("/")).body == b"v2"


async def test_workers_stop_when_the_supervisor_dies(launch):
    gw = await launch("--workers", "2", workers=2)
    workers = gw.workers()
    gw.signal(signal.SIGKILL)
    await wait_until(lambda: not any(alive(pid) for pid in workers), "the workers to exit")
    assert "the supervisor is gone: worker stopping" in gw.log()


async def test_app_that_cannot_start_exits_1(launch, sock_path):
    gw = await launch("--workers", "2", app="tests.no_such_module:app", wait=False)
    assert await gw.wait_exit() == 1
    assert "could not import module 'tests.no_such_module'" in gw.log()
    assert not exists(sock_path)


async def test_app_that_exits_while_loading_exits_1(launch, sock_path, tmp_path):
    # sys.exit() at import (a missing setting) ends the single process with
    # status 1; under the supervisor it must too, not be retried forever.
    (tmp_path / "exiting_app.py").write_text("import sys\nsys.exit('DATABASE_URL is not set')\n")
    gw = await launch(
        "--workers", "2", "--app-dir", str(tmp_path), app="exiting_app:app", wait=False
    )
    assert await gw.wait_exit(10) == 1, gw.log()
    assert "DATABASE_URL is not set" in gw.log()
    assert "Traceback" not in gw.log()
    assert not exists(sock_path)


async def test_supervisor_keeps_no_event_loop(launch):
    gw = await launch("--workers", "2", workers=2)

    def fd_targets(pid: int) -> list[str]:
        fds = Path(f"/proc/{pid}/fd")
        targets = []
        for fd in fds.iterdir():
            with contextlib.suppress(OSError):
                targets.append(os.readlink(fd))
        return targets

    assert "anon_inode:[eventpoll]" not in fd_targets(gw.pid)
    assert len(os.listdir(f"/proc/{gw.pid}/task")) == 1  # no threads either
    # The check can see a loop: each worker has one.
    for worker in gw.workers():
        assert "anon_inode:[eventpoll]" in fd_targets(worker)


# -- sockets -------------------------------------------------------------------------


@needs_root
@pytest.mark.parametrize("workers", [1, 2])
async def test_socket_mode_and_owner(launch, sock_path, workers):
    owner = f"nobody:{NOBODY_GROUP}"
    gw = await launch("--workers", str(workers), "--socket-mode", "0660", "--socket-owner", owner)
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert (st.st_uid, st.st_gid) == (NOBODY_UID, NOBODY_GID)
    assert (await gw.get("/pid")).status == 200


@needs_root
async def test_user_drops_privileges_in_workers(launch, sock_path):
    gw = await launch("--workers", "2", "--user", "nobody", workers=2)
    ids = {(await gw.get("/ids")).body for _ in range(20)}
    assert ids == {b"%d %d" % (NOBODY_UID, NOBODY_GID)}
    for worker in gw.workers():
        assert proc_status(worker, "Uid").split() == [str(NOBODY_UID)] * 4
        assert "0" not in proc_status(worker, "Groups").split()
    # The supervisor keeps root (it runs no app code) to remove the socket file;
    # the socket belongs to the app's user by default.
    assert proc_status(gw.pid, "Uid").split()[0] == "0"
    st = os.stat(sock_path)
    assert (st.st_uid, st.st_gid) == (NOBODY_UID, NOBODY_GID)
    gw.signal(signal.SIGTERM)
    assert await gw.wait_exit() == 0
    assert not exists(sock_path)


@needs_root  # to become someone else for the test, and back
def test_user_needs_root(capsys, sock_path):
    os.seteuid(NOBODY_UID)
    try:
        status = cli.main([APP, "--socket", sock_path, "--user", "root"])
    finally:
        os.seteuid(0)
    assert status == 1
    assert "need the gateway to start as root" in capsys.readouterr().err
    assert not exists(sock_path)


def test_unknown_user_is_an_error(capsys, sock_path):
    assert cli.main([APP, "--socket", sock_path, "--user", "no-such-user-here"]) == 1
    assert "no such user: 'no-such-user-here'" in capsys.readouterr().err


@pytest.mark.parametrize(("how", "workers"), [("fd 0", 1), ("fd 0", 2), ("--fd", 2)])
async def test_inherited_socket_relistens_with_backlog(launch, how, workers):
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(5)
    port = listening.getsockname()[1]
    fd = listening.fileno()
    with listening:
        if how == "fd 0":  # as spawn-fcgi and lighttpd's bin-path start it
            gw = await launch("--workers", str(workers), stdin=fd, tcp=("127.0.0.1", port))
        else:
            gw = await launch(
                "--workers", str(workers), "--fd", str(fd), pass_fds=(fd,), tcp=("127.0.0.1", port)
            )
    assert (await gw.get("/pid")).status == 200
    backlog = listen_backlog(port)
    assert backlog in (None, min(2048, somaxconn()))  # not the 5 it was made with


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
async def test_fd_socket_is_not_inherited_by_the_apps_programs(launch, workers):
    # As with systemd's sockets: a program the app starts must not keep the
    # gateway's listening socket open (clients would queue on it after exit).
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(5)
    port = listening.getsockname()[1]
    fd = listening.fileno()
    inode = os.fstat(fd).st_ino
    with listening:
        gw = await launch(*workers, "--fd", str(fd), pass_fds=(fd,), tcp=("127.0.0.1", port))
    response = await gw.get("/child-fds")
    assert response.status == 200 and b"/proc/" in response.body
    assert f"socket:[{inode}]".encode() not in response.body


@pytest.mark.parametrize("workers", [None, 2])
async def test_programs_the_app_starts_do_not_ignore_signals(launch, workers):
    # Workers ignore SIGINT, SIGHUP, SIGTTIN and SIGTTOU (meant for the
    # supervisor), but an ignored signal stays ignored across exec: a program
    # the app starts and stops with SIGINT (ffmpeg, say) would never stop.
    args = ["--workers", str(workers)] if workers else []
    gw = await launch(*args, workers=workers)
    status = (await gw.get("/child-status")).body.decode()
    ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)", status).group(1), 16)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
        assert not ignored & (1 << (sig - 1)), sig.name


async def test_systemd_socket_activation_with_the_example_units(launch, sock_path, notify_socket):
    units = ROOT / "examples" / "systemd"
    socket_unit = (units / "fcgi-asgi.socket").read_text()
    service = (units / "fcgi-asgi.service").read_text()
    assert re.search(r"^Type=notify$", service, re.M)
    assert re.search(r"^ListenStream=/", socket_unit, re.M)
    assert re.search(r"^SocketMode=0660$", socket_unit, re.M)
    assert re.search(r"^ExecReload=/bin/kill -HUP \$MAINPID$", service, re.M)
    assert re.search(r"^KillMode=mixed$", service, re.M)
    exec_start = re.search(r"^ExecStart=(.+)$", service, re.M)
    assert exec_start is not None
    argv = shlex.split(exec_start.group(1))
    assert argv[0].endswith("/fcgi-asgi")
    options = argv[2:]  # everything but the binary and the app is used as written
    assert not {"--socket", "--port", "--fd"} & set(options)
    workers = int(options[options.index("--workers") + 1])

    listening = socket.socket(socket.AF_UNIX)
    listening.bind(sock_path)
    listening.listen(16)
    # Plays systemd's part: the socket on fd 3, LISTEN_PID = the pid that then
    # execs the gateway (exec keeps it), LISTEN_FDS=1.
    launcher = (
        "import os, sys\n"
        "fd = int(sys.argv[1])\n"
        "if fd != 3:\n"
        "    os.dup2(fd, 3)\n"
        "    os.close(fd)\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'fcgi_asgi', *sys.argv[2:]])\n"
    )
    with listening:
        gw = await launch(
            argv=[sys.executable, "-c", launcher, str(listening.fileno()), APP, *options],
            pass_fds=(listening.fileno(),),
            wait=False,
            env={"NOTIFY_SOCKET": notify_socket.path},
        )
    gw.sock = sock_path
    await notify_socket.wait_for("READY")  # Type=notify: systemd waits for this
    assert len(gw.ready_workers()) == workers
    await gw.wait_serving(workers)
    # The app's environment no longer names the socket (its subprocesses must not take it).
    assert (await gw.get("/env", "LISTEN_FDS")).body == b"-"
    old = gw.ready_workers()
    gw.signal(signal.SIGHUP)  # what ExecReload does
    await notify_socket.wait_for("RELOADING")
    await notify_socket.wait_for("READY", count=2)
    await wait_until(lambda: not set(gw.workers()) & old, "the reload")
    assert (await gw.get("/pid")).status == 200
    gw.signal(signal.SIGTERM)
    assert await gw.wait_exit() == 0
    # The socket belongs to systemd: the gateway leaves its file alone.
    assert exists(sock_path)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_loopback(launch):
    port = free_port()
    gw = await launch("--workers", "2", "--host", "::1", "--port", str(port), tcp=("::1", port))
    assert (await gw.get("/pid")).status == 200
    assert f"[::1]:{port}" in gw.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "1", "--socket-mode", "0660"], "apply to --socket only"),
        (["--workers", "0"], "--workers must be a positive integer"),
        (["--max-requests", "-1"], "--max-requests must be 0 or a positive integer"),
        (["--socket", "/tmp/x.sock", "--socket-owner", ":no-such-group-here"], "no such group"),
    ],
)
def test_process_option_errors(capsys, args, message):
    assert cli.main([APP, *args]) == 1
    assert message in capsys.readouterr().err


async def test_status_page_reports_every_worker(launch):
    gw = await launch("--workers", "2", "--status-path", "/fcgi-status", workers=2)
    for _ in range(10):
        assert (await gw.get("/pid")).status == 200

    async def status() -> dict[str, Any]:
        return json.loads((await gw.get("/fcgi-status", "json&full")).body)

    # Workers publish their counters about once a second.
    deadline = time.monotonic() + 10
    while (info := await status())["workers"] != 2 or info["requests served"] < 10:
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.2)
    assert sorted(p["pid"] for p in info["processes"]) == gw.workers()
    old = gw.ready_workers()
    gw.signal(signal.SIGHUP)
    await wait_until(lambda: not set(gw.workers()) & old, "the reload")
    # The old workers' slots are freed: only the new ones are reported.
    deadline = time.monotonic() + 10
    while True:
        info = await status()
        if sorted(p["pid"] for p in info["processes"]) == gw.workers():
            break
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.2)


async def test_one_worker_reloads_on_sighup(launch):
    """`--workers 1` runs the supervisor: SIGHUP swaps the worker, with no gap."""
    gw = await launch("--workers", "1", workers=1)
    old = int((await gw.get("/pid")).body)
    gw.signal(signal.SIGHUP)
    await wait_until(
        lambda: old not in gw.workers() and len(gw.ready_workers()) == 1, "the new worker"
    )
    assert int((await gw.get("/pid")).body) != old


async def test_single_process_ignores_sighup(launch):
    """Without --workers there is no supervisor; SIGHUP must not kill the server."""
    gw = await launch(workers=None)
    first = await gw.get("/pid")
    gw.signal(signal.SIGHUP)
    await asyncio.sleep(0.3)
    assert gw.proc.poll() is None
    assert (await gw.get("/pid")).body == first.body == str(gw.pid).encode()
    await wait_until(lambda: "SIGHUP: ignored" in gw.log(), "the SIGHUP warning")


class NotifySocket:
    """A stand-in for systemd's notification socket: a unix datagram socket
    that also learns each sender's PID (SO_PASSCRED), as systemd does."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[tuple[int, dict[str, str]]] = []

    def _drain(self) -> None:
        creds_size = socket.CMSG_SPACE(12)  # struct ucred: pid, uid, gid
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, creds_size)
            except BlockingIOError:
                return
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], sys.byteorder)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((pid, fields))

    async def wait_for(self, key: str, count: int = 1, timeout: float = 20.0) -> dict[str, str]:
        """The ``count``-th message carrying ``key=1``."""

        def arrived() -> bool:
            self._drain()
            return sum(1 for _, m in self.messages if m.get(key) == "1") >= count

        await wait_until(arrived, f"{key}=1 #{count} on NOTIFY_SOCKET", timeout)
        return [m for _, m in self.messages if m.get(key) == "1"][count - 1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock")
    yield ns
    ns.close()


async def test_systemd_notify_single_process(launch, notify_socket):
    """Type=notify: READY=1 once it serves, STOPPING=1 on SIGTERM, from the main PID."""
    gw = await launch(wait=False, env={"NOTIFY_SOCKET": notify_socket.path})
    ready = await notify_socket.wait_for("READY")
    assert ready["MAINPID"] == str(gw.pid)
    assert "serving on" in ready["STATUS"]
    # Ready means ready: the very first request is answered.
    assert (await gw.get("/pid")).body == str(gw.pid).encode()
    gw.signal(signal.SIGTERM)
    await notify_socket.wait_for("STOPPING")
    assert await gw.wait_exit() == 0
    assert {pid for pid, _ in notify_socket.messages} == {gw.pid}


async def test_systemd_notify_workers_ready_reload_stop(launch, notify_socket):
    """With --workers, READY=1 comes when every worker serves; SIGHUP sends
    RELOADING=1 then READY=1 once new workers serve; only the supervisor speaks."""
    gw = await launch("--workers", "2", wait=False, env={"NOTIFY_SOCKET": notify_socket.path})
    ready = await notify_socket.wait_for("READY")
    assert ready["MAINPID"] == str(gw.pid)
    assert ready["STATUS"].startswith("2 worker(s) serving on")
    old = gw.ready_workers()
    assert len(old) == 2  # both were ready before READY=1
    assert int((await gw.get("/pid")).body) in old

    gw.signal(signal.SIGHUP)
    reloading = await notify_socket.wait_for("RELOADING")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    await notify_socket.wait_for("READY", count=2)
    # The new workers serve; the old ones were told to drain.
    new = gw.ready_workers() - old
    assert len(new) == 2
    for _ in range(4):
        assert int((await gw.get("/pid")).body) in new

    gw.signal(signal.SIGTERM)
    await notify_socket.wait_for("STOPPING")
    assert await gw.wait_exit() == 0
    assert {pid for pid, _ in notify_socket.messages} == {gw.pid}
    # One READY=1 for the start and one for the reload, nothing from the workers.
    assert sum(m.get("READY") == "1" for _, m in notify_socket.messages) == 2


def test_notifier_abstract_address_and_bad_value(caplog):
    from fcgi_asgi.sdnotify import Notifier

    name = f"fcgi-asgi-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).stopping()
        assert sock.recv(4096).decode().splitlines() == ["STOPPING=1", "STATUS=stopping"]
    assert not Notifier(None).enabled and not Notifier(None).ready("x")
    assert not Notifier("relative/path").enabled
    assert "not a unix socket path" in caplog.text
    # A socket that has gone away: logged, never raised.
    assert not Notifier("/nonexistent/notify.sock").ready("x")
    assert "could not notify systemd" in caplog.text


@pytest.mark.skipif(
    not hasattr(asyncio, "eager_task_factory"), reason="eager tasks need Python 3.12+"
)
async def test_app_with_an_eager_task_factory(launch):
    """An app may install asyncio.eager_task_factory: a request's task may then
    be finished when create_task() returns. None may stay counted as running
    (the status page, --max-concurrent-requests) or hold up a graceful stop.
    asyncio's own loop only: uvloop 0.23 passes the factory an argument that
    asyncio's eager factory does not take."""
    gw = await launch(
        "--status-path",
        "/status",
        "--max-concurrent-requests",
        "4",
        "--loop",
        "asyncio",
        app="tests.proc_apps:eager_app",
    )
    for _ in range(20):
        assert (await gw.get("/")).body == b"hello"  # more than the limit of 4, in turn
    slow = asyncio.ensure_future(gw.get("/sleep", "0.3"))  # a task that does suspend
    await asyncio.sleep(0.1)
    status = json.loads((await gw.get("/status", "json")).body)
    assert status["active requests"] == 1
    assert (await slow).body.startswith(b"slept")
    status = json.loads((await gw.get("/status", "json")).body)
    assert status["active requests"] == 0
    gw.signal(signal.SIGTERM)  # nothing left to wait for: it stops at once
    assert await gw.wait_exit(timeout=5) == 0


# -- handing idle connections over on reload and recycle -----------------------------


def _raw_get(rid: int, path: str) -> bytes:
    """The records of a keep-conn GET, as a web server writes them."""
    params = encode_pairs(build_params("GET", path))
    return b"".join(
        (
            encode_begin_request(rid, RESPONDER, KEEP_CONN),
            encode_record(PARAMS, rid, params),
            encode_record(PARAMS, rid),
            encode_record(STDIN, rid),
        )
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
async def test_reload_moves_keep_conn_connections_to_new_workers(launch, loop, tcp):
    """Idle FCGI_KEEP_CONN connections are not closed on SIGHUP: they move to a
    new worker, with a request's first bytes the old one had already read."""
    port = free_port()
    where = ("--host", "127.0.0.1", "--port", str(port)) if tcp else ()
    gw = await launch(
        "--workers",
        "2",
        "--loop",
        loop,
        *where,
        tcp=("127.0.0.1", port) if tcp else None,
        workers=2,
    )
    clients = [await gw.connect() for _ in range(6)]
    try:
        old = gw.ready_workers()
        for c in clients:
            assert int((await c.request("GET", "/pid")).body) in old
        # Two connections get the start of their next request before the
        # reload (the old worker reads it, holding back the partial record) ...
        partial = [_raw_get(7, "/pid") for _ in range(2)]
        pending = []
        for c, raw in zip(clients[:2], partial, strict=True):
            pending.append(ClientRequest(c, 7))
            c.requests[7] = pending[-1]
            await c.send_raw(raw[:5])
        # ... and one has a request running through it.
        running = asyncio.ensure_future(clients[2].request("GET", "/sleep", query="1"))
        await asyncio.sleep(0.3)
        gw.signal(signal.SIGHUP)
        await wait_until(lambda: not set(gw.workers()) & old, "the old workers to exit")
        for c, raw in zip(clients[:2], partial, strict=True):
            await c.send_raw(raw[5:])
        for req in pending:
            response = await asyncio.wait_for(req.response(), 10)
            assert response.status == 200 and int(response.body) not in old
        assert (await asyncio.wait_for(running, 10)).body.startswith(b"slept")
        for c in clients:
            response = await asyncio.wait_for(c.request("GET", "/pid"), 10)
            assert int(response.body) not in old
            assert not c.closed.is_set()
    finally:
        for c in clients:
            await c.close()
    handed = sum(map(int, re.findall(r"handed over (\d+)", gw.log())))
    assert handed == 6, gw.log()


async def test_max_requests_stops_at_n_while_others_serve(launch):
    """With other workers serving, a worker stops taking requests once it has
    served --max-requests: it is replaced after about N, not N plus whatever
    came while a 0.2 s poll noticed or its replacement started."""
    n = 30
    gw = await launch("--workers", "2", "--max-requests", str(n), workers=2)
    others = re.compile(r"worker (\d+) reached its max requests: replacing it, others serve")
    served: Counter[int] = Counter()

    def stopped_early() -> dict[int, int]:
        early = {int(pid) for pid in others.findall(gw.log())}
        live = set(gw.workers())
        return {pid: served[pid] for pid in early if pid not in live}

    for _ in range(3000):  # sequential traffic, paced so that replacements keep up; bounded
        served[int((await gw.get("/pid")).body)] += 1
        if len(stopped_early()) >= 3:
            break
        await asyncio.sleep(0.01)
    early = stopped_early()
    assert len(early) >= 3, (served, gw.log())
    # n - 1: the launch's readiness probe was served before counting began.
    assert all(n - 1 <= count <= n + 3 for count in early.values()), (early, served)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
async def test_sigterm_keeps_a_socket_it_did_not_bind(launch, sock_path, workers):
    """A unix socket passed in (--fd here; systemd's the same way) belongs to
    whoever bound it: after a stop its file is still there and it still
    listens, so clients queue for the next start instead of being refused."""
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(sock_path)
    listening.listen(16)
    fd = listening.fileno()
    with listening:
        gw = await launch(*workers, "--fd", str(fd), pass_fds=(fd,), unix=False, wait=False)
        gw.sock = sock_path
        await gw.wait_serving(2 if workers else None)
        gw.signal(signal.SIGTERM)
        assert await gw.wait_exit() == 0
        assert exists(sock_path)
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(sock_path)  # queued in the backlog, not refused


async def test_one_keep_conn_connection_outlives_recycled_workers(launch):
    """--workers 1 --max-requests: the worker serves on until its replacement
    is ready, then hands the connection over; one keep-conn connection sees
    several workers and is never closed."""
    gw = await launch("--workers", "1", "--max-requests", "5", workers=1)
    pids: list[int] = []
    async with await gw.connect() as client:
        for _ in range(400):  # bounded; a few recycles need far fewer
            response = await asyncio.wait_for(client.request("GET", "/pid"), 10)
            assert response.status == 200
            pids.append(int(response.body))
            if len(set(pids)) >= 3:
                break
            await asyncio.sleep(0.02)
        assert not client.closed.is_set()
    assert len(set(pids)) >= 3, gw.log()
