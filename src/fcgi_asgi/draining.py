"""Graceful stop of one server: stop accepting, drain, then cut what is left.

Used on SIGTERM/SIGINT and, in worker processes, when a worker is replaced
(reload, max-requests, fewer workers). The rule throughout is that a
connection the kernel handed to this process is served, not dropped: other
workers sharing the listening socket cannot pick it up once it is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import ServerContext
    from .protocol.connection import FastCGIConnection

__all__ = ["cut_remaining", "drain", "stop_accepting"]

logger = logging.getLogger("fcgi_asgi.error")

#: How long a connection that has not sent its first request yet is kept
#: open during a drain. Web servers write the request right after connecting,
#: so a few seconds cover a busy loop; a peer that stays silent is closed.
FIRST_REQUEST_GRACE = 5.0
#: Seconds apps get to react to ``http.disconnect`` before they are cancelled.
DISCONNECT_GRACE = 1.0
_POLL = 0.05


async def stop_accepting(server: asyncio.Server) -> None:
    """Close ``server`` without losing connections it has already accepted.

    asyncio's selector loop accepts a burst of connections in one callback
    and attaches each to the server in a task that runs later; closing the
    server in between makes those tasks fail and the connections are closed
    unserved. So the accept callback is removed first, the pending tasks get
    to attach their transports, and only then is the server closed. (uvloop
    attaches in the accept callback itself; ``remove_reader`` is a no-op there.)
    """
    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        loop.remove_reader(sock.fileno())
    # Two turns: one for the accept tasks to create their transports, one for
    # the connection_made callbacks those schedule.
    for _ in range(2):
        await asyncio.sleep(0)
    server.close()
    await asyncio.sleep(0)


async def drain(
    ctx: ServerContext,
    timeout: float,
    abort: asyncio.Event,
    on_idle: Callable[[FastCGIConnection], None] | None = None,
) -> bool:
    """Let connections finish their requests and close, for up to ``timeout`` s.

    Idle connections close at once; busy ones close when their requests end;
    a connection that has not begun a request yet gets
    :data:`FIRST_REQUEST_GRACE` seconds to send it. Connections that arrive
    while draining (accepted just before :func:`stop_accepting`) are treated
    the same. With ``on_idle`` (a worker handing its connections over), idle
    connections are passed to it instead of closed, and offered again on
    each turn until they are gone. Returns True when everything finished,
    False on timeout or when ``abort`` was set.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    fresh_deadline = start + min(timeout, FIRST_REQUEST_GRACE)
    told: set[FastCGIConnection] = set()
    while not abort.is_set():
        now = loop.time()
        for conn in list(ctx.connections):
            if conn not in told:
                told.add(conn)
                conn.shutdown(on_idle)
            elif on_idle is not None:
                if not conn.requests:  # e.g. its last response was still being written
                    on_idle(conn)
            elif now >= fresh_deadline and not conn.requests_begun and not conn.requests:
                conn.fail_quietly()
        if not ctx.connections and not ctx.tasks:
            return True
        if now >= deadline:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(abort.wait(), min(_POLL, deadline - now))
    return False


async def cut_remaining(ctx: ServerContext) -> None:
    """Disconnect every connection, then cancel requests that still run.

    Disconnecting first lets an app waiting in ``receive()`` see
    ``http.disconnect`` (and ``send()`` raise) and end on its own terms;
    what still runs after :data:`DISCONNECT_GRACE` is cancelled.
    """
    pending = set(ctx.tasks)
    if pending:
        logger.warning("cutting %d request(s) still running at shutdown", len(pending))
    for conn in list(ctx.connections):
        conn.fail_quietly()
    if pending:
        _, still = await asyncio.wait(pending, timeout=DISCONNECT_GRACE)
        for task in still:
            task.cancel()
        if still:
            await asyncio.wait(still, timeout=5)
    if ctx.executor is not None:
        # WSGI threads still running cannot be stopped; the process waits
        # for them when it exits.
        ctx.executor.shutdown(wait=False, cancel_futures=True)
