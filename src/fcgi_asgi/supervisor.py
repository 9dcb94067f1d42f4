"""The supervisor: the parent process of ``--workers N``.

It binds the listening socket once, forks workers that serve it, and then
only supervises. It runs no event loop and never imports the app, so each
worker it forks imports the app afresh, which is what makes SIGHUP a reload.
With ``--preload`` it does import the app, and SIGHUP re-executes it (see
:mod:`fcgi_asgi.preload`).

Signals it acts on:

- SIGTERM, SIGINT: stop. Workers drain (see :mod:`fcgi_asgi.worker`) and the
  supervisor removes the socket file and exits 0; a second signal (or
  SIGQUIT) makes the workers cut running requests, and a worker still alive
  after its deadline is killed.
- SIGHUP: reload. New workers start; each old one is stopped (drained) once
  a new one is ready to take its place, so the socket is always served. A
  replaced worker hands its idle connections over (through the supervisor,
  see :mod:`fcgi_asgi.handoff`) rather than closing them.
- SIGTTIN, SIGTTOU: one worker more, one fewer (never fewer than one).

With ``--workers-max`` the pool is dynamic: once a second the supervisor
reads the scoreboard and lets :mod:`fcgi_asgi.pool` decide to start workers
(all busy) or stop idle ones.

A worker that dies is replaced. One that dies before it is ready is retried
with an exponential back-off; when no worker has ever started and one fails
to load the app, the supervisor gives up and exits 1 (a broken app at
deploy time is an error to report, not a loop to spin).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import select
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import NoReturn

from .chroot import check_chroot
from .config import ASGIApp, Config, ConfigError
from .handoff import CONNECTION, HAND_OVER, Relay, channel_pair, receive
from .listeners import Listener, open_listener
from .memory import MIB, rss_bytes
from .pool import PoolSettings, PoolWatch, decide
from .preload import ReexecState, preload_app
from .privileges import Identity, resolve_identity
from .scoreboard import Scoreboard
from .sdnotify import Notifier
from .worker import BOOT_ERROR, READY, RETIRE, WorkerSpec, run_worker

__all__ = ["Supervisor", "needs_supervisor", "supervise"]

logger = logging.getLogger("fcgi_asgi.error")

#: First and longest delay before retrying a worker that failed to start.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 10.0
#: Seconds a stopping worker gets beyond the graceful timeout (lifespan
#: shutdown, cancelling) before it is killed.
STOP_MARGIN = 10.0
#: Seconds a worker gets after a second stop signal before it is killed.
FORCE_MARGIN = 5.0
#: Seconds between reads of the workers' memory (--max-worker-memory).
MEMORY_CHECK_INTERVAL = 1.0
#: Seconds between decisions of a dynamic pool (--workers-max).
POOL_CHECK_INTERVAL = 1.0

_HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


def needs_supervisor(config: Config) -> bool:
    """True when the options need worker processes under a supervisor.

    ``--workers`` given at all (even 1: reload on SIGHUP, respawn on a crash),
    recycling after max requests or memory, and switching users (the supervisor keeps
    root to remove the socket file; no app code runs as root) do. Otherwise
    the gateway serves in a single process.
    """
    return (
        config.supervise
        or config.workers > 1
        or config.max_requests > 0
        or config.max_worker_memory > 0
        or config.workers_max > 0
        or config.preload
        or config.chroot is not None
        or bool(config.user or config.group)
    )


def supervise(config: Config) -> int:
    """Bind, run ``config.workers`` workers until stopped; returns the exit status.

    Raises :class:`~fcgi_asgi.config.ConfigError` or
    :class:`~fcgi_asgi.listeners.ListenError` before anything is started.
    """
    return Supervisor(config).run()


@dataclass(eq=False)
class Worker:
    """The supervisor's view of one worker process."""

    pid: int
    channel: socket.socket
    generation: int
    started: float
    #: The worker said it accepts connections.
    ready: bool = False
    #: To be replaced (reload, or it served its max requests): stopped once
    #: a newer worker can take its place.
    obsolete: bool = False
    #: SIGTERM sent: it drains and exits.
    stopping: bool = False
    #: When a stopping worker is killed if still alive (monotonic clock).
    kill_at: float | None = None
    #: Its slot on the scoreboard (None when all were taken).
    slot: int | None = None


class Supervisor:
    """Forks, watches and replaces worker processes; see the module docs."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.target = config.workers
        self.workers: dict[int, Worker] = {}
        self.listener: Listener | None = None
        self.identity: Identity | None = None
        self._generation = 0
        self._stopping = False
        self._forced = False
        self._exit_code = 0
        self._ever_ready = False
        self._failures = 0
        self._next_spawn = 0.0
        self._signals: list[int] = []
        self._by_fd: dict[int, Worker] = {}
        self._poll = select.poll()  # poll, not epoll: the parent keeps no event loop fd
        # Connections handed over by replaced workers, on their way to serving ones.
        self._relay = Relay()
        self._wake_r = self._wake_w = -1
        # Shared before any fork, so that every worker's status page can
        # report on all. Old workers draining during a reload, and SIGTTIN,
        # need slots beyond --workers.
        self.scoreboard = Scoreboard(max(64, 4 * max(config.workers, config.workers_max)))
        self._free_slots = set(range(self.scoreboard.slots))
        # systemd hears from the supervisor alone (workers never see the socket).
        self._notifier = Notifier.from_environ(unset=True)
        self._announced = False
        self._memory_checked = 0.0
        #: The app, imported before forking (--preload); None: each worker imports it.
        self.app: ASGIApp | None = None
        self._reexec_wanted = False
        self.pool = PoolSettings.from_config(config)
        self._pool_watch = PoolWatch()
        self._pool_checked = 0.0
        # --workers-min 0: with no worker left, poll the listening socket and
        # start one when a connection waits in its backlog.
        self._on_demand = self.pool is not None and self.pool.minimum == 0
        self._listener_watched = False

    # -- running ----------------------------------------------------------------

    def run(self) -> int:
        """Bind, start the workers and supervise them until stopped."""
        config = self.config
        self.identity = resolve_identity(config.user, config.group)
        check_chroot(config.chroot, self.identity)
        inherited = ReexecState.from_environ()
        if inherited is None:
            if config.preload:
                self._preload(first=True)  # a broken app fails before binding anything
            self.listener = open_listener(config, self.identity)
        else:
            self._resume(inherited)
            if config.preload:
                self._preload(first=False)
        assert self.listener is not None
        logger.info(
            "fcgi-asgi supervisor %d listening on %s, %d worker(s)",
            os.getpid(),
            self.listener.describe(),
            self.target,
        )
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll.register(self._wake_r, select.POLLIN)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _HANDLED}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        # Blocked across a --preload re-exec (see _reexec_self); handled from here.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        try:
            self._main_loop()
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close_listener()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            for worker in list(self.workers.values()):
                # Only after an unexpected error here: never leave workers behind.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
        logger.info("fcgi-asgi supervisor exiting")
        return self._exit_code

    def _main_loop(self) -> None:
        while True:
            # Signals first: after a stop signal to the whole group (systemd),
            # workers that exited already are stopped ones, not failures.
            self._handle_signals()
            self._reap()
            if self._stopping and not self.workers:
                return
            self._manage()
            self._announce()
            if self._relay:
                self._relay.forward(self._serving_channels())
            if self._on_demand:
                self._watch_listener()
            for fd, _ in self._poll.poll(self._next_timeout() * 1000):
                if self._listener_watched and fd == self._listener_fd():
                    self._connection_waits()
                elif fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self._wake_r, 512):
                            pass
                else:
                    self._read_channel(fd)

    def _listener_fd(self) -> int:
        assert self.listener is not None
        return self.listener.sock.fileno()

    def _watch_listener(self) -> None:
        # Watched while the pool has no worker that accepts, and not stopping.
        idle_pool = (
            not self._stopping
            and self.target == 0
            and not any(not w.obsolete and not w.stopping for w in self.workers.values())
        )
        if idle_pool and self._relay:
            # Connections handed over and nobody to take them: demand as well.
            self._connection_waits()
        elif idle_pool != self._listener_watched:
            if idle_pool:
                self._poll.register(self._listener_fd(), select.POLLIN)
            else:
                self._poll.unregister(self._listener_fd())
            self._listener_watched = idle_pool

    def _connection_waits(self) -> None:
        """A connection waits and no worker accepts (--workers-min 0): start one."""
        if self._listener_watched:
            self._poll.unregister(self._listener_fd())
            self._listener_watched = False
        if self.target == 0 and not self._stopping:
            self.target = 1
            logger.info("pool grows to 1 worker(s): a connection waits")

    def _on_signal(self, signum: int, frame: object) -> None:
        # Runs between bytecodes of the main loop; the wakeup fd ends its poll().
        self._signals.append(signum)

    def _next_timeout(self) -> float:
        now = time.monotonic()
        timeout = 1.0
        for worker in self.workers.values():
            if worker.kill_at is not None:
                timeout = min(timeout, worker.kill_at - now)
        if not self._stopping and self._failures:
            timeout = min(timeout, self._next_spawn - now)
        if self._relay:
            timeout = min(timeout, 0.01)  # a worker's channel was full: try again soon
        return max(timeout, 0.01)

    # -- signals ----------------------------------------------------------------

    def _handle_signals(self) -> None:
        while self._signals:
            sig = self._signals.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                name = signal.Signals(sig).name
                if not self._stopping:
                    logger.info("received %s, stopping: workers drain", name)
                    self._begin_stop()
                    if sig == signal.SIGQUIT:
                        self._force_stop()
                elif not self._forced:
                    logger.warning("received %s again: cutting running requests", name)
                    self._force_stop()
            elif self._stopping:
                continue
            elif sig == signal.SIGHUP and self.config.preload:
                # The new image reloads: it imports the new code and drains
                # every worker it takes over. Re-executing ends this image, so
                # it comes after the other signals.
                self._reexec_wanted = True
            elif sig == signal.SIGHUP:
                self._reload()
            elif sig == signal.SIGTTIN:
                self.target += 1
                logger.info("received SIGTTIN: %d worker(s)", self.target)
            elif sig == signal.SIGTTOU:
                if self.target > 1:
                    self.target -= 1
                    logger.info("received SIGTTOU: %d worker(s)", self.target)
                else:
                    logger.info("received SIGTTOU: keeping the last worker")
        # Connections on their way between workers are passed on first.
        if self._reexec_wanted and not self._stopping and not self._relay:
            self._reexec_self()

    def _reload(self) -> None:
        self._generation += 1
        self.scoreboard.count(reloads=1)
        self._announced = False
        self._notifier.reloading()
        for worker in self.workers.values():
            worker.obsolete = True
        # A fixed deploy is tried at once, whatever the back-off had reached.
        self._failures = 0
        self._next_spawn = 0.0
        logger.info(
            "received SIGHUP: starting %d new worker(s), then draining the old", self.target
        )

    # -- --preload -------------------------------------------------------------

    def _preload(self, first: bool) -> None:
        try:
            self.app = preload_app(self.config, self.identity)
        except ConfigError as exc:
            if first:
                raise  # a broken app at first start: an error to report
            # A broken deploy: the old workers keep serving while new ones,
            # importing the app themselves, fail and are retried.
            logger.error("--preload: %s; workers will import the app themselves", exc)
            return
        logger.info("--preload: app imported, workers share it")

    def _reexec_self(self) -> NoReturn:
        # A new image imports the new code; the workers carry on meanwhile.
        assert self.listener is not None
        logger.info("received SIGHUP: re-executing the supervisor to load the new code (--preload)")
        self._notifier.reloading()
        listener = self.listener
        # Until the new image has its handlers: a second SIGHUP would kill it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        ReexecState(
            listener.sock.fileno(),
            listener.path,
            listener.file_id,
            [(w.pid, w.channel.fileno(), w.stopping) for w in self.workers.values()],
        ).reexec(self._notifier.address)

    def _resume(self, inherited: ReexecState) -> None:
        self.listener = inherited.listener()
        # Inheritable only across the exec: not into the app's own programs.
        self.listener.sock.set_inheritable(False)
        self._ever_ready = True
        now = time.monotonic()
        for pid, fd, stopping in inherited.workers:
            channel = socket.socket(fileno=fd) if fd >= 0 else _closed_socket()
            worker = Worker(pid, channel, -1, now, ready=True, obsolete=True)
            self.workers[pid] = worker
            if stopping:
                self._stop(worker)
            if fd >= 0:
                channel.set_inheritable(False)
                channel.setblocking(False)
                self._by_fd[fd] = worker
                self._poll.register(fd, select.POLLIN)
        logger.info("took over %d worker(s) of the previous supervisor", len(self.workers))

    def _begin_stop(self) -> None:
        self._stopping = True
        self._notifier.stopping()
        # New clients get a clear refusal now rather than waiting in a
        # backlog nobody will accept from.
        self._close_listener()
        self._relay.close_all()
        for worker in self.workers.values():
            if worker.stopping:  # handing connections over: it closes them now
                self._signal(worker, signal.SIGTERM)
            else:
                self._stop(worker)

    def _force_stop(self) -> None:
        self._forced = True
        deadline = time.monotonic() + FORCE_MARGIN
        for worker in self.workers.values():
            self._signal(worker, signal.SIGQUIT)
            if worker.kill_at is None or worker.kill_at > deadline:
                worker.kill_at = deadline

    # -- workers ----------------------------------------------------------------

    def _manage(self) -> None:
        now = time.monotonic()
        for worker in list(self.workers.values()):
            if worker.kill_at is not None and now >= worker.kill_at:
                logger.error("worker %d did not stop in time: killing it", worker.pid)
                self._signal(worker, signal.SIGKILL)
                worker.kill_at = None
        if self._stopping:
            return
        self._check_memory(now)
        if self.pool is not None:
            self._resize_pool(now)
        fresh = sorted(
            (w for w in self.workers.values() if not w.obsolete and not w.stopping),
            key=lambda w: w.started,
        )
        # Fewer workers asked for (SIGTTOU): stop the oldest.
        while len(fresh) > self.target:
            self._stop(fresh.pop(0), hand_over=True)
        missing = self.target - len(fresh)
        if missing > 0 and now >= self._next_spawn:
            # While starting fails, retry one at a time.
            for _ in range(missing if not self._failures else 1):
                try:
                    fresh.append(self._spawn())
                except OSError as exc:  # fork or socketpair: out of processes or fds
                    self._start_failed(f"could not start a worker: {exc}")
                    break
        # Replace obsolete workers: one not ready yet serves nobody and goes at
        # once; a ready one goes only when enough ready workers remain.
        obsolete = [w for w in self.workers.values() if w.obsolete and not w.stopping]
        for worker in obsolete:
            if not worker.ready:
                self._stop(worker)
        serving = sorted((w for w in obsolete if w.ready), key=lambda w: w.started)
        surplus = sum(w.ready for w in fresh) + len(serving) - self.target
        for worker in serving[: max(surplus, 0)]:
            self._stop(worker, hand_over=True)

    def _serving_channels(self) -> list[socket.socket]:
        return [
            w.channel
            for w in self.workers.values()
            if w.ready and not w.obsolete and not w.stopping and w.channel.fileno() >= 0
        ]

    def _check_memory(self, now: float) -> None:
        # A worker past --max-worker-memory is replaced as one past its max
        # requests is: its replacement starts first, then it drains.
        limit = self.config.max_worker_memory * MIB
        if not limit or now - self._memory_checked < MEMORY_CHECK_INTERVAL:
            return
        self._memory_checked = now
        for worker in self.workers.values():
            if not worker.ready or worker.obsolete or worker.stopping:
                continue
            rss = rss_bytes(worker.pid)
            if rss is not None and rss > limit:
                worker.obsolete = True
                logger.warning(
                    "worker %d uses %.1f MiB (RSS), more than --max-worker-memory %d: replacing it",
                    worker.pid,
                    # Rounded up: just past 120 must not read "120.0, more than 120".
                    math.ceil(rss * 10 / MIB) / 10,
                    self.config.max_worker_memory,
                )

    def _resize_pool(self, now: float) -> None:
        # Once a second: workers publish their counters about as often.
        if now - self._pool_checked < POOL_CHECK_INTERVAL or self._failures:
            return
        assert self.pool is not None
        self._pool_checked = now
        current = [w for w in self.workers.values() if not w.obsolete and not w.stopping]
        loads = self._pool_watch.observe(
            now, ((w.pid, w.ready) for w in current), self.scoreboard.read()
        )
        decision = decide(self.pool, loads)
        # Below the minimum (at start, after a crash) the usual respawn covers it.
        if decision.start and len(current) + decision.start > self.target:
            self.target = len(current) + decision.start
            busy = sum(load.busy for load in loads)
            logger.info(
                "pool grows to %d worker(s): %d of %d busy", self.target, busy, len(current)
            )
        idle = {load.pid: load.idle_for for load in loads}
        if decision.stop:
            self.target = len(current)
        for pid in decision.stop:
            self.target -= 1
            logger.info(
                "pool shrinks to %d worker(s): worker %d idle for %.0f s",
                self.target,
                pid,
                idle[pid],
            )
            # Others serve on and take its idle connections; the last one of
            # an on-demand pool closes them (the web server opens new ones).
            self._stop(self.workers[pid], hand_over=self.target > 0)

    def _announce(self) -> None:
        # READY=1 once --workers ready workers of the current generation serve
        # and every older one has been told to drain (start, and each reload).
        if self._announced or self._stopping or not self._notifier.enabled:
            return
        current = [w for w in self.workers.values() if not w.obsolete and not w.stopping]
        if sum(w.ready for w in current) < self.target or any(
            w.obsolete and not w.stopping for w in self.workers.values()
        ):
            return
        self._announced = True
        assert self.listener is not None
        self._notifier.ready(f"{self.target} worker(s) serving on {self.listener.describe()}")

    def _spawn(self) -> Worker:
        assert self.listener is not None
        config = self.config
        max_requests = 0
        if config.max_requests:
            max_requests = config.max_requests + random.randint(0, config.max_requests_jitter)
        slot = min(self._free_slots, default=None)
        if slot is None:
            logger.warning("no free status slot: the status page will miss a worker")
        parent_end, child_end = channel_pair()
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the fork, and in the child until run_worker() has its
        # handlers: a SIGTERM sent to a just-forked worker would otherwise run
        # the supervisor's handler in the child and be lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            parent_end.close()
            child_end.close()
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if pid == 0:  # the worker
            status = 1
            try:
                parent_end.close()
                self._forget_in_child()
                spec = WorkerSpec(
                    config,
                    self.listener.sock,
                    child_end,
                    self.identity,
                    max_requests,
                    self.scoreboard if slot is not None else None,
                    slot or 0,
                    app=self.app,
                )
                status = run_worker(spec)
            except BaseException:
                traceback.print_exc()
            finally:
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                # Never return into the supervisor's stack.
                os._exit(status)
        child_end.close()
        parent_end.setblocking(False)
        worker = Worker(pid, parent_end, self._generation, time.monotonic(), slot=slot)
        if slot is not None:
            self._free_slots.discard(slot)
        self.workers[pid] = worker
        self._by_fd[parent_end.fileno()] = worker
        self._poll.register(parent_end.fileno(), select.POLLIN)
        logger.info("started worker %d (generation %d)", pid, self._generation)
        return worker

    def _forget_in_child(self) -> None:
        """In a new worker: drop the supervisor's signal handling and other fds."""
        signal.set_wakeup_fd(-1)
        for sig in _HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self._wake_r)
        os.close(self._wake_w)
        # Siblings' channel ends must close here, or a worker would not see
        # end-of-file on its channel when the supervisor dies.
        for worker in self.workers.values():
            worker.channel.close()
        # Likewise connections on their way to a worker: a copy here would
        # keep them open after their new owner closes them.
        self._relay.close_all()

    def _stop(self, worker: Worker, hand_over: bool = False) -> None:
        """Drain ``worker``: with ``hand_over`` (it is replaced, others serve on)
        it passes its idle connections on; else (the gateway stops) it closes them."""
        worker.stopping = True
        worker.kill_at = time.monotonic() + self.config.timeout_graceful_shutdown + STOP_MARGIN
        if hand_over and worker.ready and worker.channel.fileno() >= 0:
            try:
                worker.channel.send(HAND_OVER)
                return
            except OSError:
                pass  # full or gone: a plain stop
        self._signal(worker, signal.SIGTERM)

    def _signal(self, worker: Worker, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, sig)

    def _read_channel(self, fd: int, batch: int = 64) -> None:
        # A bounded batch: a worker handing over many connections must not
        # keep the supervisor from its other duties; poll() reports the rest.
        worker = self._by_fd.get(fd)
        if worker is None:
            return
        for _ in range(batch):
            message = receive(worker.channel)
            if message is None:
                return
            data, fds = message
            if not data:  # the worker is exiting; _reap() collects it
                self._unwatch(worker)
                return
            self._on_message(worker, data, fds)

    def _on_message(self, worker: Worker, data: bytes, fds: list[int]) -> None:
        if data[:1] == CONNECTION:
            if self._stopping:
                for fd in fds:
                    os.close(fd)
            else:
                self._relay.take(data, fds)
            return
        if READY in data and not worker.ready:
            worker.ready = True
            self._ever_ready = True
            self._failures = 0
            self._next_spawn = 0.0
            logger.info("worker %d ready", worker.pid)
        if RETIRE in data and not worker.obsolete and not worker.stopping:
            worker.obsolete = True
            self.scoreboard.count(worker_restarts=1)
            if self._serving_channels():
                # Others serve the socket: it stops taking requests now, and
                # its idle connections move to them (_manage starts the new one).
                logger.info(
                    "worker %d reached its max requests: replacing it, others serve meanwhile",
                    worker.pid,
                )
                self._stop(worker, hand_over=True)
            else:
                logger.info(
                    "worker %d reached its max requests: replacing it once a new one is ready",
                    worker.pid,
                )

    def _unwatch(self, worker: Worker) -> None:
        fd = worker.channel.fileno()
        if fd >= 0 and self._by_fd.pop(fd, None) is not None:
            self._poll.unregister(fd)
        worker.channel.close()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                # Connections it handed over just before exiting are still
                # queued on its channel: take them before closing it.
                if worker.channel.fileno() >= 0:
                    self._read_channel(worker.channel.fileno(), batch=1 << 20)
                self._unwatch(worker)
                if worker.slot is not None:
                    self.scoreboard.clear(worker.slot)
                    self._free_slots.add(worker.slot)
                self._exited(worker, status)

    def _exited(self, worker: Worker, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if worker.stopping:
            logger.info("worker %d stopped (%s)", worker.pid, how)
            return
        if worker.ready:
            logger.warning("worker %d died (%s): starting another", worker.pid, how)
            self.scoreboard.count(worker_restarts=1)
            return
        if code == BOOT_ERROR and not self._ever_ready:
            logger.error("worker %d could not start the app (%s): stopping", worker.pid, how)
            self._exit_code = 1
            self._begin_stop()
            return
        self._start_failed(f"worker {worker.pid} failed to start ({how})")

    def _start_failed(self, what: str) -> None:
        self._failures += 1
        delay = min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_MAX)
        self._next_spawn = time.monotonic() + delay
        logger.error("%s: next attempt in %.2f s", what, delay)

    def _close_listener(self) -> None:
        listener = self.listener
        if listener is None:
            return
        listener.remove_file()
        with contextlib.suppress(OSError):
            listener.sock.close()


def _closed_socket() -> socket.socket:
    """A stand-in channel for a worker whose channel had already closed."""
    sock = socket.socket(socket.AF_UNIX)
    sock.close()
    return sock
