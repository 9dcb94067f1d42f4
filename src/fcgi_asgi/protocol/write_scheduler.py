"""Fair turns for the responses that share one FastCGI connection.

FastCGI has no flow control per request: when a web server stops reading a
connection (HAProxy does while one of its streams' buffers is full), every
request multiplexed on it waits. Without care, each streaming response would
add its next chunk to the transport buffer as soon as the buffer drains, and a
small response written after them would sit behind all of that.

So while the peer is not reading, a streaming ``send()`` leaves its chunk
here instead of in the transport and waits for its turn; when the transport
drains, queued chunks go out round-robin, at most :data:`QUANTUM` bytes per
turn, until the transport is full again. A response that completes in one
write (the usual small answer) never queues: it goes straight to the
transport, ahead of every queued stream chunk.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import FastCGIConnection
    from .request import Request

__all__ = ["QUANTUM", "Pending", "WriteScheduler"]

#: Bytes one request may write per turn: one full STDOUT record.
QUANTUM = 64 << 10

Pieces = list[bytes | memoryview]


class Pending:
    """One request's chunk waiting for its turn."""

    __slots__ = ("cycle", "future", "pieces", "since", "warned")

    def __init__(
        self, cycle: Request, pieces: Pieces, future: asyncio.Future[None], now: float
    ) -> None:
        self.cycle = cycle
        self.pieces = pieces
        self.future = future
        #: Since when this request's response has made no progress.
        self.since = now
        #: Whether the stall has been logged.
        self.warned = False


def _split(pieces: Pieces, limit: int) -> tuple[Pieces, Pieces]:
    """Cut record pieces (header, payload, header, payload, ...) after the first
    records that reach ``limit`` bytes; never inside a record."""
    size = 0
    for i in range(1, len(pieces), 2):
        size += len(pieces[i - 1]) + len(pieces[i])
        if size >= limit:
            return pieces[: i + 1], pieces[i + 1 :]
    return pieces, []


class WriteScheduler:
    """The queue of stream chunks waiting for a connection's peer to read.

    Its methods take the connection from their caller rather than keeping it:
    a reference back would make a cycle, and then every connection, once
    closed, would wait for the cyclic garbage collector to be freed.
    """

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[Pending] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __len__(self) -> int:
        return len(self._queue)

    def waiting(self) -> list[Pending]:
        """The chunks waiting now, the longest-waiting turn first."""
        return list(self._queue)

    def progressed(self, now: float) -> None:
        """The peer read some output: no waiting chunk is stalled as of ``now``."""
        for item in self._queue:
            item.since = now

    async def wait_turn(self, conn: FastCGIConnection, cycle: Request, pieces: Pieces) -> None:
        """Queue ``pieces`` of ``cycle``'s response on ``conn``; return once they
        are in the transport, or dropped because the request or connection is gone."""
        loop = conn.loop
        future = loop.create_future()
        item = Pending(cycle, pieces, future, loop.time())
        self._queue.append(item)
        # An abort resolves it (Request.disconnect); run() then skips it.
        cycle.drain_waiter = future
        try:
            await future
        except asyncio.CancelledError:
            # A cancelled send() (--request-timeout, shutdown): its chunk must
            # not go out later, after the request has ended.
            if item in self._queue:
                self._queue.remove(item)
            raise
        finally:
            cycle.drain_waiter = None

    def run(self, conn: FastCGIConnection) -> None:
        """Write queued chunks to ``conn``, a turn each, until its transport is full again."""
        queue = self._queue
        while queue and not conn.write_paused and conn.writable:
            item = queue.popleft()
            if item.future.done():
                continue  # its request was aborted while it waited
            now, rest = _split(item.pieces, QUANTUM)
            conn.write(now)
            if rest:
                item.pieces = rest
                item.since = conn.loop.time()
                queue.append(item)
            else:
                item.future.set_result(None)

    def release_all(self) -> None:
        """The connection is gone: wake every waiting send() (they see the disconnect)."""
        queue, self._queue = self._queue, deque()
        for item in queue:
            if not item.future.done():
                item.future.set_result(None)
