"""The WSGI app's threads and the way their results get back to the loop.

:class:`WSGIThreads` is the server's pool (``--threads``). It is not a
``concurrent.futures.ThreadPoolExecutor``: a job is a function and what to
call on the loop with its result, with no ``Future`` (a Condition and two
locks) per request; the executor's ``submit`` was about a third of the
loop's work on a WSGI hello request (py-spy, ``benchmarks/hotpath.py wsgi``).

Results come back through :meth:`WSGIThreads.post`: under load many
requests finish while the loop is busy, and one ``call_soon_threadsafe``
(one wakeup of the loop) then delivers all of them, not one each; those
that finish while the loop lends the threads its GIL need no wakeup at all.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["WSGIThreads"]

logger = logging.getLogger("fcgi_asgi.error")
T = TypeVar("T")

_Job = tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any], None]]


class WSGIThreads:
    """Up to ``max_workers`` threads, started as jobs need them, for one event loop.

    Waking a thread costs a futex call on the loop and a context switch, and
    a woken thread can only wait for the GIL while the loop runs, so jobs
    are not handed to a thread each. At most one idle thread is woken at a
    time: the loop wakes one once per iteration that queued jobs, and a
    thread that takes a job while more are queued wakes the next. A thread
    that finishes its job takes the next without sleeping. A CPU-bound app
    is then served by one or two threads (one wakeup per batch of jobs, not
    per job), and an app that blocks (I/O releases the GIL) still gets a
    thread per queued job within a few microseconds each.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, max_workers: int) -> None:
        self.loop = loop
        self.max_workers = max_workers
        self._jobs: deque[_Job] = deque()
        self._threads: list[threading.Thread] = []
        # Guards the counts below and the idle threads' waits.
        self._idle = threading.Condition(threading.Lock())
        self._waiting = 0  # threads asleep in _idle.wait()
        self._waking = 0  # threads woken (or started) that have not taken a job yet
        # Jobs submitted and not delivered back yet; only the loop changes it.
        self._busy = 0
        #: The most jobs submitted and not delivered back at once.
        self.most_busy = 0
        self._closed = False
        self._inbox: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._scheduled = False
        self._wake_scheduled = False
        # True while the loop has given the GIL away in _wake(): it empties
        # the inbox as soon as it has the GIL back, so a result posted then
        # needs no wakeup of the loop.
        self._loop_yielding = False
        #: Called on the loop after each batch of results is handed over.
        self.after_delivery: Callable[[], None] | None = None
        # Daemon threads, joined at exit: the process waits for apps still
        # running (as with an executor), and idle threads never hold it up.
        atexit.register(self._join)

    def run(
        self, work: Callable[..., Any], args: tuple[Any, ...], then: Callable[[Any], None]
    ) -> None:
        """Call ``work(*args)`` in a thread, then ``then(result)`` on the loop
        (``then(exception)`` if it raised). On the loop only."""
        if self._closed:
            raise RuntimeError("the WSGI threads are shut down")
        self._jobs.append((work, args, then))
        self._busy += 1
        if self._busy > self.most_busy:
            self.most_busy = self._busy
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self.loop.call_soon(self._wake)
        if self._busy > len(self._threads) and len(self._threads) < self.max_workers:
            with self._idle:
                self._waking += 1
            thread = threading.Thread(
                target=self._worker, name=f"fcgi-asgi-wsgi_{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    @property
    def started(self) -> int:
        """Threads started so far (they stay until shutdown)."""
        return len(self._threads)

    @property
    def in_use(self) -> int:
        """Threads running an app (or just done, their result on its way)."""
        return min(self._busy, self.max_workers)

    @property
    def waiting(self) -> int:
        """Jobs waiting for a thread: the pool is full."""
        return max(0, self._busy - self.max_workers)

    def _wake(self) -> None:
        # Once per loop iteration that queued jobs: wake an idle thread
        # unless one is on its way, and let the threads take the GIL now. A
        # busy loop otherwise keeps it until the switch interval (5 ms) runs
        # out, and the jobs wait that long: WSGI hello 13.4k -> 17.2k req/s
        # behind nginx (benchmarks/run.py).
        self._wake_scheduled = False
        with self._idle:
            if self._jobs and self._waiting and not self._waking:
                self._notify()
        self._loop_yielding = True
        time.sleep(0)
        # Cleared before the inbox is read: a result appended after this
        # line sees False and wakes the loop itself (post()).
        self._loop_yielding = False
        if self._inbox:
            self._deliver()

    def _take(self) -> _Job | None:
        """The next job, waiting while there is none; None once shut down.

        Called with ``self._idle`` held, by a thread counted in ``_waking``
        (whoever woke or started it counted it; a thread back from a job
        counts itself).
        """
        jobs, idle = self._jobs, self._idle
        while not jobs:
            self._waking -= 1
            if self._closed:
                return None
            self._waiting += 1
            idle.wait()  # whoever notifies moves it from _waiting to _waking
        self._waking -= 1
        job = jobs.popleft()
        if jobs and self._waiting and not self._waking:
            # More queued behind this one: wake the next thread, in case
            # this job blocks.
            self._notify()
        return job

    def _notify(self) -> None:
        # With self._idle held, and a thread waiting.
        self._waiting -= 1
        self._waking += 1
        self._idle.notify()

    def _worker(self) -> None:
        idle = self._idle
        with idle:
            job = self._take()
        while job is not None:
            work, args, then = job
            result: Any
            try:
                result = work(*args)
            except BaseException as exc:  # a thread has no caller to raise to
                result = exc
            try:
                self.post(self._finished, (then, result))
            except RuntimeError:  # the loop is closed: nobody to tell
                return
            # Let the request go before the next wait: an idle thread would
            # otherwise hold its last request (and environ) until a new job.
            job = None
            del work, args, then, result
            with idle:
                self._waking += 1
                job = self._take()

    def _finished(self, outcome: tuple[Callable[[Any], None], Any]) -> None:
        self._busy -= 1
        then, result = outcome
        then(result)

    def shutdown(self, wait: bool = False, cancel_futures: bool = False) -> None:
        """Take no more jobs; drop the queued ones with ``cancel_futures``
        (their requests have ended); let idle threads go."""
        with self._idle:
            self._closed = True
            if cancel_futures:
                self._jobs.clear()
            self._waking += self._waiting
            self._waiting = 0
            self._idle.notify_all()
        if wait:
            self._join()

    def _join(self) -> None:
        if not self._closed:
            self.shutdown()
        for thread in self._threads:
            thread.join()
        atexit.unregister(self._join)

    def post(self, callback: Callable[[Any], None], arg: Any) -> None:
        """Run ``callback(arg)`` on the loop soon (from any thread).

        deque.append/popleft and the flag's reads and writes are atomic. The
        loop clears the flag before it empties the inbox, so an item
        appended while the flag still reads True is taken by that run; at
        worst a run finds nothing left. Raises RuntimeError once the loop
        is closed.
        """
        self._inbox.append((callback, arg))
        # Read after the append: if the loop is still yielding in _wake(), it
        # empties the inbox once it has the GIL back. The wakeup it saves
        # is a write to the loop's self-pipe, and that system call would
        # hand the GIL to the loop in the middle of this thread's jobs.
        if not self._scheduled and not self._loop_yielding:
            self._scheduled = True
            self.loop.call_soon_threadsafe(self._deliver)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (from an app's thread).

        Stepped by hand rather than made a task: most calls finish in their
        first step (a body chunk written, body already there), and a task
        would cost a loop iteration more each.
        """
        waiter: Future[T] = Future()
        self.post(self._step, (coro, waiter))
        return waiter.result()

    def _step(self, job: tuple[Coroutine[Any, Any, Any], Future[Any]]) -> None:
        coro, waiter = job
        try:
            awaited = coro.send(None)
        except StopIteration as stop:
            waiter.set_result(stop.value)
            return
        except BaseException as exc:  # the app's thread gets it
            waiter.set_exception(exc)
            return
        if awaited is None:  # asyncio.sleep(0): a turn for the others
            self.loop.call_soon(self._step, job)
        else:  # a future: go on when it is done, as a task would
            awaited._asyncio_future_blocking = False
            awaited.add_done_callback(lambda _: self._step(job))

    def _deliver(self) -> None:
        self._scheduled = False
        inbox = self._inbox
        while inbox:
            callback, arg = inbox.popleft()
            try:
                callback(arg)
            except Exception:  # a bug: the other results must still get through
                logger.exception("error handing a WSGI result to the loop")
        if self.after_delivery is not None:
            self.after_delivery()
