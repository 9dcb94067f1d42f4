"""The WSGI thread pool on its own: every job runs once, blocked threads do
not hold up queued jobs, shutdown lets every thread go.

What the pool saves (a wakeup per batch of jobs, not per job) is measured by
``benchmarks/run.py --scenarios wsgi-hello`` (CPU per request)."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from typing import Any

import pytest

from fcgi_asgi.wsgi import threads as threads_module
from fcgi_asgi.wsgi.threads import WSGIThreads

pytestmark = pytest.mark.timeout(60)


async def test_every_job_runs_once_and_reports_back_once() -> None:
    """Bursts of jobs, some blocking briefly, some raising: each job's result
    (or exception) comes back exactly once, on the loop."""
    loop = asyncio.get_running_loop()
    pool = WSGIThreads(loop, 4)
    rng = random.Random(1234)
    results: dict[int, Any] = {}
    loop_thread = threading.get_ident()
    done = asyncio.Event()
    total = 0

    def work(n: int, pause: float) -> int:
        if pause:
            time.sleep(pause)
        if n % 97 == 0:
            raise ValueError(n)
        return n * 2

    def then_for(n: int) -> Any:
        def then(result: Any) -> None:
            assert threading.get_ident() == loop_thread
            assert n not in results, f"job {n} reported twice"
            results[n] = result
            if len(results) == total:
                done.set()

        return then

    try:
        for _ in range(150):  # bounded: 150 bursts
            for _ in range(rng.randint(1, 40)):
                pause = rng.choice((0.0, 0.0, 0.0, 0.0005))
                pool.run(work, (total, pause), then_for(total))
                total += 1
            # Sometimes a loop turn between bursts, sometimes none.
            if rng.random() < 0.7:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 30)
    finally:
        pool.shutdown(wait=True)
    assert len(results) == total
    for n, result in results.items():
        if n % 97 == 0:
            assert isinstance(result, ValueError) and result.args == (n,)
        else:
            assert result == n * 2


async def test_blocked_threads_leave_queued_jobs_to_idle_ones() -> None:
    """With threads already started and idle, jobs that block must not keep
    the next queued job waiting: the pool wakes another thread for it."""
    loop = asyncio.get_running_loop()
    pool = WSGIThreads(loop, 4)
    release = threading.Event()
    running = threading.Semaphore(0)
    finished: list[str] = []

    def block(name: str) -> str:
        running.release()
        release.wait(20)
        return name

    def quick(name: str) -> str:
        return name

    try:
        # Start all four threads, then let them go idle.
        for i in range(4):
            pool.run(quick, (f"warm{i}",), finished.append)
        for _ in range(200):  # bounded: until all four reported
            if len(finished) == 4:
                break
            await asyncio.sleep(0.01)
        assert len(finished) == 4 and len(pool._threads) == 4
        # Three jobs that block, queued in one loop turn with a quick one.
        quick_done = asyncio.Event()
        for i in range(3):
            pool.run(block, (f"block{i}",), finished.append)
        pool.run(quick, ("quick",), lambda r: (finished.append(r), quick_done.set()))
        await asyncio.wait_for(quick_done.wait(), 10)
        assert not any(r.startswith("block") for r in finished)  # still blocked
        # The three blocking jobs each have a thread of their own, at once.
        for _ in range(3):
            assert await asyncio.to_thread(running.acquire, True, 10)
    finally:
        release.set()
        pool.shutdown(wait=True)


async def test_shutdown_drops_queued_jobs_and_lets_every_thread_go() -> None:
    loop = asyncio.get_running_loop()
    pool = WSGIThreads(loop, 2)
    release = threading.Event()
    ran: list[int] = []

    def block(n: int) -> None:
        ran.append(n)
        release.wait(20)

    for n in range(6):
        pool.run(block, (n,), lambda _: None)
    for _ in range(200):  # bounded: until both threads hold a job
        if len(ran) == 2:
            break
        await asyncio.sleep(0.01)
    pool.shutdown(cancel_futures=True)
    release.set()
    await asyncio.to_thread(pool.shutdown, True)
    assert sorted(ran) == [0, 1]  # the four queued jobs never ran
    assert not any(t.is_alive() for t in pool._threads)
    with pytest.raises(RuntimeError, match="shut down"):
        pool.run(block, (9,), lambda _: None)


async def test_a_result_posted_while_the_loop_yields_is_taken_without_a_wakeup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_wake() gives the GIL to the thread; a result the thread posts in that
    time is taken by _wake() itself once it has the GIL back, without a write
    to the loop's self-pipe (which would also hand the GIL back mid-batch)."""
    loop = asyncio.get_running_loop()
    pool = WSGIThreads(loop, 1)
    posted = threading.Event()
    post = pool.post

    def post_and_tell(callback: Any, arg: Any) -> None:
        post(callback, arg)
        posted.set()

    class HeldYield:
        """_wake()'s time.sleep(0), held until the thread has posted."""

        @staticmethod
        def sleep(_: float) -> None:
            assert posted.wait(5), "the thread never posted its result"

    monkeypatch.setattr(pool, "post", post_and_tell)
    monkeypatch.setattr(threads_module, "time", HeldYield)
    got: list[tuple[Any, bool]] = []
    delivered = asyncio.Event()

    def then(result: Any) -> None:
        frame, inside_wake = sys._getframe(), False
        while frame is not None:
            inside_wake = inside_wake or frame.f_code.co_name == "_wake"
            frame = frame.f_back  # type: ignore[assignment]
        got.append((result, inside_wake))
        delivered.set()

    try:
        pool.run(lambda: "answer", (), then)
        await asyncio.wait_for(delivered.wait(), 5)
        assert got == [("answer", True)]
        assert not pool._scheduled  # no wakeup of the loop was asked for
    finally:
        pool.shutdown(wait=True)
