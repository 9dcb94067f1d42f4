"""What every connection of one server shares: the app, options, lifespan
state, the live connections and request tasks, and the counters."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .accesslog import AccessLog, AccessLogFormat
from .allowlist import AllowList
from .scoreboard import Scoreboard, WorkerStats

if TYPE_CHECKING:
    from .config import ASGIApp, Config
    from .connection import FastCGIConnection
    from .cycle import RequestCycle

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
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    stats: WorkerStats = field(default_factory=WorkerStats)
    #: Requests whose response head waits for its first body message.
    pending_heads: list[RequestCycle] = field(default_factory=list)
    #: Connections closed at once because --max-connections was reached.
    refused_connections: int = 0
    last_refusal_log: float = float("-inf")
    allow: AllowList = field(init=False)
    #: Where finished requests are logged; None with the access log off.
    access_log: AccessLog | None = field(init=False)
    #: Paths the gateway answers itself (status, ping); empty when none are set.
    internal_paths: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        self.allow = AllowList(config.allow)
        self.access_log = (
            AccessLog(AccessLogFormat(config.access_log_format)) if config.access_log else None
        )
        self.internal_paths = frozenset(
            p for p in (config.status_path, config.ping_path) if p is not None
        )
        self.stats.pid = os.getpid()
        self.stats.started = time.time()

    def flush_heads(self) -> None:
        """Write the heads still waiting: their apps yielded before sending a body."""
        cycles = self.pending_heads
        self.pending_heads = []
        for cycle in cycles:
            cycle.flush_head()

    def publish(self) -> None:
        """Refresh the live counters and write them to the scoreboard, if any."""
        stats = self.stats
        stats.active_requests = len(self.tasks)
        stats.updated = time.time()
        if self.scoreboard is not None:
            self.scoreboard.publish(self.slot, stats)

    def all_workers(self) -> list[WorkerStats]:
        """Counters of every worker (this one alone when not supervised)."""
        self.publish()
        if self.scoreboard is None:
            return [self.stats]
        return self.scoreboard.read()
