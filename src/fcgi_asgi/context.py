"""What every connection of one server shares: the app, options, lifespan
state, and the live connections and request tasks (for graceful shutdown)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import ASGIApp, Config
    from .connection import FastCGIConnection

__all__ = ["ServerContext"]


@dataclass(eq=False)
class ServerContext:
    """Shared, per-server state handed to each :class:`FastCGIConnection`."""

    app: ASGIApp
    config: Config
    #: Lifespan state; each request's scope gets a shallow copy.
    state: dict[str, Any] | None = None
    connections: set[FastCGIConnection] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: Requests answered since start (including error answers).
    requests_served: int = 0
    connections_accepted: int = 0
