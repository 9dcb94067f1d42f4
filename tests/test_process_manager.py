"""The process manager through real processes: a memory ceiling per worker,
dynamic pools, preloading and chroot (see tests/test_processes.py for the
fixture that starts and stops the gateway)."""

from __future__ import annotations

import asyncio
import re
import time

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
