"""What every connection of one server shares: the app, options, lifespan
state, the live connections and request tasks, and the counters."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .accesslog import AccessLog, AccessLogFormat
from .allowlist import AllowList
from .asgi.bridge import ASGIRequest
from .protocol.records import AUTHORIZER
from .protocol.roles import RefusedAuthorizer
from .scoreboard import (
    REFUSED_MAX_CONNECTIONS,
    Scoreboard,
    SupervisorStats,
    WorkerStats,
)

if TYPE_CHECKING:
    from .config import ASGIApp, Config
    from .protocol.connection import FastCGIConnection
    from .protocol.request import Request
    from .wsgi.threads import WSGIThreads

__all__ = ["ServerContext"]


@dataclass(eq=False)
class ServerContext:
    """Shared, per-server state handed to each :class:`FastCGIConnection`."""

    app: ASGIApp
    config: Config
    #: Lifespan state; each request's scope gets a shallow copy.
    state: dict[str, Any] | None = None
    #: Where the server listens, for the status page.
    listen: str = "-"
    #: The listener is a unix socket: its peers have no address to ask for.
    unix: bool = False
    #: Set by a supervisor: the shared scoreboard and this worker's slot in it.
    scoreboard: Scoreboard | None = None
    slot: int = 0
    connections: set[FastCGIConnection] = field(default_factory=set)
    #: The apps running: tasks (ASGI), futures of thread runs (WSGI).
    tasks: set[asyncio.Future[None]] = field(default_factory=set)
    stats: WorkerStats = field(default_factory=WorkerStats)
    #: Requests whose response head waits for its first body message.
    pending_heads: list[Request] = field(default_factory=list)
    #: Connections holding small writes for the end of this loop turn.
    held_writes: list[FastCGIConnection] = field(default_factory=list)
    #: :meth:`end_turn` is scheduled.
    turn_end_due: bool = False
    #: Connections closed at once because --max-connections was reached.
    refused_connections: int = 0
    last_refusal_log: float = float("-inf")
    #: Called once when requests_served reaches retire_at (0: never); a
    #: worker with --max-requests asks to be replaced there.
    retire_at: int = 0
    on_retire: Callable[[], None] | None = None
    allow: AllowList = field(init=False)
    #: Where finished requests are logged; None with the access log off.
    access_log: AccessLog | None = field(init=False)
    #: Paths the gateway answers itself (status, ping); empty when none are set.
    internal_paths: frozenset[str] = field(init=False)
    #: What each BEGIN_REQUEST makes: the wire side plus the app's interface.
    request_class: type[Request] = ASGIRequest
    #: What a BEGIN_REQUEST for another role makes (``--roles``; protocol/roles.py).
    role_classes: dict[int, type[Request]] = field(
        default_factory=lambda: {AUTHORIZER: RefusedAuthorizer}
    )
    #: The WSGI app's threads (``--threads``), made on the first WSGI request.
    executor: WSGIThreads | None = None

    def __post_init__(self) -> None:
        config = self.config
        self.allow = AllowList(config.allow)
        self.access_log = (
            AccessLog(AccessLogFormat(config.access_log_format)) if config.access_log else None
        )
        self.internal_paths = frozenset(
            p for p in (config.status_path, config.ping_path, config.metrics_path) if p is not None
        )
        self.stats.pid = os.getpid()
        self.stats.started = time.time()

    def count_served(self) -> None:
        """Count one finished request (at its end, so --max-requests is exact)."""
        stats = self.stats
        stats.requests_served += 1
        if stats.requests_served == self.retire_at and self.on_retire is not None:
            self.on_retire()

    def at_turn_end(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have :meth:`end_turn` run once, after what this turn of ``loop``
        (the running loop, which the caller knows) runs."""
        if not self.turn_end_due:
            self.turn_end_due = True
            # One callback a turn serves every request of the turn (0.5 us a
            # request less than one each, benchmarks/hotpath.py). The loop is
            # passed in: asyncio.get_running_loop() makes a getpid() system
            # call on Python 3.11.
            loop.call_soon(self.end_turn)

    def end_turn(self) -> None:
        """Write the heads whose apps yielded before sending a body, then every
        connection's held writes."""
        self.turn_end_due = False
        if self.pending_heads:
            cycles = self.pending_heads
            self.pending_heads = []
            for cycle in cycles:
                if cycle.unsent_head is not None:  # most went out with their body
                    cycle.flush_head()
        conns = self.held_writes
        if conns:
            self.held_writes = []
            for conn in conns:
                conn.release_held()

    def publish(self) -> None:
        """Refresh the live counters and write them to the scoreboard, if any."""
        stats = self.stats
        stats.active_requests = len(self.tasks)
        stats.refused[REFUSED_MAX_CONNECTIONS] = self.refused_connections
        pool = self.executor
        if pool is not None:
            stats.wsgi_threads = pool.started
            stats.wsgi_threads_busy = pool.in_use
            stats.wsgi_threads_max_busy = min(pool.most_busy, pool.max_workers)
            stats.wsgi_waiting = pool.waiting
        stats.updated = time.time()
        if self.scoreboard is not None:
            self.scoreboard.publish(self.slot, stats)

    def all_workers(self) -> list[WorkerStats]:
        """Counters of every worker (this one alone when not supervised)."""
        self.publish()
        if self.scoreboard is None:
            return [self.stats]
        return self.scoreboard.read()

    def supervisor_stats(self) -> SupervisorStats | None:
        """The supervisor's counters (reloads, restarts, exited workers), if supervised."""
        return self.scoreboard.supervisor() if self.scoreboard is not None else None
