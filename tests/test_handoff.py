"""No request lost on reload or recycle, through nginx, with and without keep-alive.

A ``--workers 2`` gateway behind nginx serves client loops of POSTs (1-16 KiB
bodies, echoed and checked) and GETs while it is reloaded (SIGHUP) several
times and its workers recycle (``--max-requests``). With ``fastcgi_keep_conn``
and an upstream ``keepalive`` pool, a draining worker that closed its idle
connections would race nginx writing a request on one: nginx retries a GET
but answers a POST 502. The gateway hands those connections to a new worker
instead (see ``fcgi_asgi.handoff``), so every request must be answered 200.
"""

from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.webservers import Gateway, start_gateways, start_webserver, wait_for

pytestmark = pytest.mark.timeout(180)

RELOADS = 4
RECYCLES = 3
CLIENTS = 12
#: Low enough that workers recycle several times while the test runs.
MAX_REQUESTS = ("--max-requests", "400", "--max-requests-jitter", "100")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # nginx's workers drop root: they must be able to enter the directory.
    path = Path(f"/tmp/fcgi-asgi-handoff-{os.getpid()}")
    path.mkdir(exist_ok=True)
    path.chmod(0o755)
    yield path


def worker_pids(gw: Gateway) -> set[int]:
    """Live worker PIDs the supervisor logged as ready."""
    text = gw.log.read_text(errors="replace")
    ready = {int(pid) for pid in re.findall(r"worker (\d+) ready", text)}
    return {pid for pid in ready if Path(f"/proc/{pid}").exists()}


def recycles(gw: Gateway) -> int:
    return gw.log.read_text(errors="replace").count("reached its max requests")


@pytest.mark.parametrize(
    ("variant", "tcp"),
    [("site", False), ("tcp", True), ("stock", False)],
    ids=["keep-conn-unix", "keep-conn-tcp", "conn-per-request-unix"],
)
def test_reloads_and_recycles_under_post_load_lose_nothing(
    workdir: Path, variant: str, tcp: bool
) -> None:
    gw = Gateway(
        "tests.webapp:starlette_app",
        workdir,
        name=f"handoff-{variant}",
        tcp=tcp,
        extra=("--workers", "2", *MAX_REQUESTS, "--log-level", "info"),
    )
    start_gateways(gw)
    if tcp:
        ws = start_webserver("nginx", variant, workdir, backend_port=gw.port)
    else:
        ws = start_webserver("nginx", variant, workdir, socket=gw.socket, app_socket=gw.socket)
    failures: list[str] = []
    counts = {"post": 0, "get": 0}
    stop = threading.Event()

    def load(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=ws.base_url, timeout=30) as c:
            for _ in range(20_000):  # bounded; stopped by the event long before
                if stop.is_set():
                    return
                body = rng.randbytes(rng.randint(1024, 16 * 1024))
                try:
                    r = c.post("/echo", content=body)
                    if r.status_code != 200 or r.content != body:
                        failures.append(f"POST {r.status_code} {len(r.content)}/{len(body)}")
                    counts["post"] += 1
                    r = c.get("/pid")
                    if r.status_code != 200:
                        failures.append(f"GET {r.status_code}")
                    counts["get"] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(CLIENTS)]
    try:
        wait_for(lambda: len(worker_pids(gw)) == 2, timeout=20)
        for t in threads:
            t.start()
        for _ in range(RELOADS):
            time.sleep(0.5)
            old = worker_pids(gw)
            os.kill(gw.pid, signal.SIGHUP)
            assert wait_for(lambda old=old: not worker_pids(gw) & old, timeout=30), gw.log_tail()
        # Then recycling alone (during a reload, workers already being
        # replaced do not recycle).
        assert wait_for(lambda: recycles(gw) >= RECYCLES, timeout=60), gw.log_tail()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        ws.stop()
        code = gw.stop()
    log = gw.log.read_text(errors="replace")
    assert counts["post"] > 200, counts
    assert not failures, (
        f"{len(failures)} of {sum(counts.values())} failed: {failures[:5]}\n{ws.logs()}"
    )
    assert code == 0, gw.log_tail()
    assert recycles(gw) >= RECYCLES
    if variant != "stock":
        # The keep-alive connections moved instead of closing.
        handed = sum(map(int, re.findall(r"handed over (\d+)", log)))
        assert handed > 0, log[-2000:]
