"""The process manager through real processes: a memory ceiling per worker,
dynamic pools, preloading and chroot (see tests/test_processes.py for the
fixture that starts and stops the gateway)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest

from tests.test_processes import launch, wait_until  # noqa: F401 (a fixture)

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
    replaced = re.findall(r"worker (\d+) uses (\d+) MiB \(RSS\), more than --max-worker", log)
    assert {int(pid) for pid, _ in replaced} >= first, log
    assert all(int(mib) > 120 for _, mib in replaced)
    assert len(gw.ready_workers()) == 2


# -- dynamic pools ------------------------------------------------------------------


async def test_dynamic_pool_grows_under_a_burst_and_shrinks_when_idle(launch):  # noqa: F811
    gw = await launch(
        "--workers-min",
        "1",
        "--workers-max",
        "3",
        "--worker-idle-timeout",
        "1",
        "--status-path",
        "/fcgi-status",
        app=APP,
        workers=1,
    )

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
