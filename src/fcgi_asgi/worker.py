"""One worker process: serves the supervisor's listening socket until told to stop.

The supervisor forks it and talks to it over a socketpair, the *channel*:

- the worker writes :data:`READY` once the app has started and it accepts,
  and :data:`RETIRE` at the end of its ``max_requests``-th request, asking to
  be replaced (when no other worker serves, the supervisor starts the
  replacement first, then stops it);
- the supervisor sends :data:`~fcgi_asgi.handoff.HAND_OVER` to replace a
  worker: it drains, handing its idle connections over rather than closing
  them, and passes connections other workers handed over for it to adopt
  (see :mod:`fcgi_asgi.handoff`);
- the supervisor holds the other end: when the supervisor dies, the worker
  reads end-of-file and drains, so no worker outlives its parent.

SIGTERM drains (closing idle connections: the gateway stops) and exits 0
(while the app is still starting, it gives up starting and exits 0 at
once); SIGQUIT cuts running requests (the supervisor
sends it on a second stop signal). A repeated SIGTERM changes nothing, since
``kill -TERM`` of the whole process group (systemd's default KillMode, or
``timeout``) plus the supervisor's own SIGTERM must still drain. SIGINT,
SIGHUP, SIGTTIN and SIGTTOU are ignored: they are meant for the supervisor,
and a terminal sends them to the whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

from .asgi.lifespan import LifespanFailure
from .chroot import confine
from .config import ASGIApp, Config, ConfigError
from .handoff import CONNECTION, HAND_OVER, Handoff, receive
from .listeners import Listener
from .memory import raise_malloc_thresholds
from .privileges import Identity
from .scoreboard import Scoreboard
from .server import FastCGIServer, _new_loop_factory

__all__ = ["BOOT_ERROR", "READY", "RETIRE", "WorkerSpec", "run_worker"]

logger = logging.getLogger("fcgi_asgi.error")

#: Channel message: the worker accepts connections.
READY = b"r"
#: Channel message: the worker has served its max_requests; replace it.
RETIRE = b"m"
#: Exit status of a worker whose app (or lifespan startup) failed to start.
BOOT_ERROR = 3

_IGNORED = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)


@dataclass
class WorkerSpec:
    """What a freshly forked worker needs from its supervisor."""

    config: Config
    #: The supervisor's listening socket (shared; the worker never removes its file).
    sock: socket.socket
    channel: socket.socket
    identity: Identity | None
    #: Requests before asking to be replaced (jitter already added); 0: never.
    max_requests: int
    #: Shared counters of all workers (for the status page) and this worker's slot.
    scoreboard: Scoreboard | None = None
    slot: int = 0
    #: The app when the supervisor imported it (--preload); None: import it here.
    app: ASGIApp | None = None


def _ignore(signum: int, frame: object) -> None:
    """Caught, not SIG_IGN: an ignored signal stays ignored in every program
    the app starts (which then could not be stopped with SIGINT, say)."""


def run_worker(spec: WorkerSpec) -> int:
    """Run the worker in this (freshly forked) process; returns its exit status."""
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, lambda signum, frame: early.append(signum))
    for sig in _IGNORED:
        signal.signal(sig, _ignore)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # The supervisor forks with these blocked; pending ones now reach our handlers.
    signal.pthread_sigmask(
        signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD, *_IGNORED)
    )
    raise_malloc_thresholds()
    try:
        loop_factory = _new_loop_factory(spec.config.loop)
        # Privileges go before the app is imported (no app code runs as root),
        # unless --chroot needs the app imported first.
        spec.app = confine(spec.config, spec.identity, spec.app)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_serve(spec, early))
    except (ConfigError, LifespanFailure) as exc:
        print(f"fcgi-asgi: error: {exc}", file=sys.stderr)
        return BOOT_ERROR
    except OSError as exc:
        print(f"fcgi-asgi: error: worker could not start: {exc}", file=sys.stderr)
        return BOOT_ERROR
    except SystemExit as exc:
        # sys.exit() while the app loads (a missing setting) ends the single
        # process; here it must stop the supervisor too, not be retried forever.
        # Once ready, the supervisor replaces the worker whatever its status.
        print(f"fcgi-asgi: error: the app called sys.exit({exc.code!r})", file=sys.stderr)
        return BOOT_ERROR


async def _serve(spec: WorkerSpec, early: list[int]) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    server = FastCGIServer(spec.config, spec.app, listener=Listener(spec.sock))
    server.scoreboard = spec.scoreboard
    server.slot = spec.slot
    channel = spec.channel
    channel.setblocking(False)
    handoff = Handoff(channel)
    started = stopping = aborting = False

    def on_term() -> None:
        nonlocal stopping
        handoff.enabled = False  # the gateway stops: nobody to hand connections to
        if not started and not stopping and main is not None:
            # Nobody is served yet: give up starting (a hung lifespan startup)
            # rather than make the supervisor wait for its kill deadline.
            main.cancel()
        if started and not stopping:
            logger.info("worker stopping: draining connections")
            server.close()
        stopping = True

    def on_quit() -> None:
        nonlocal aborting
        if not started and not stopping and not aborting and main is not None:
            main.cancel()
        if started and not aborting:
            logger.warning("worker told to stop now: cutting running requests")
            server.abort()
        aborting = True

    def tell(message: bytes) -> None:
        try:
            channel.send(message)
        except OSError:
            parent_gone()

    def parent_gone() -> None:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(channel.fileno())
        if not stopping:
            logger.warning("the supervisor is gone: worker stopping")
            on_term()

    def hand_over() -> None:
        nonlocal stopping
        if stopping:
            return
        logger.info("worker being replaced: draining, handing idle connections over")
        handoff.enabled = True
        server.on_idle = handoff.hand_over
        server.close()
        stopping = True

    def on_channel() -> None:
        for _ in range(64):  # a bounded batch per turn; the reader fires again
            message = receive(channel)
            if message is None:
                return
            data, fds = message
            if not data:
                parent_gone()
                return
            if data[:1] == CONNECTION and len(fds) == 1 and server.ctx is not None:
                handoff.adopt(server.ctx, fds[0], bytes(data[1:]))
                continue
            for fd in fds:  # not ours to serve (none is ever sent before READY)
                os.close(fd)
            if data[:1] == HAND_OVER:
                if started:
                    hand_over()
                else:
                    on_term()

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGQUIT, on_quit)
    # Signals that came before the loop's handlers; like those that come while
    # the app starts, they take effect once it is up.
    stopping = stopping or signal.SIGTERM in early
    aborting = aborting or signal.SIGQUIT in early
    loop.add_reader(channel.fileno(), on_channel)
    if stopping or aborting:
        return 0  # told to stop before the app was even imported
    try:
        await server.start()
    except asyncio.CancelledError:
        if not (stopping or aborting) or main is None:
            raise
        main.uncancel()
        return 0  # start() has cancelled the lifespan
    started = True
    if aborting:
        server.abort()
    elif stopping:
        server.close()
    else:
        tell(READY)

    ctx = server.ctx
    if spec.max_requests and ctx is not None:

        def retire() -> None:
            logger.info(
                "worker served its max requests (%d): asking for a replacement",
                spec.max_requests,
            )
            tell(RETIRE)

        ctx.retire_at = spec.max_requests
        ctx.on_retire = retire
        if ctx.stats.requests_served >= spec.max_requests:  # served before READY went
            retire()

    try:
        await server.serve_forever()
    finally:
        handoff.finish()
    if ctx is not None:
        logger.info(
            "worker exiting: served %d requests, handed over %d and adopted %d connection(s)",
            ctx.stats.requests_served,
            handoff.handed_over,
            handoff.adopted,
        )
    return 0
