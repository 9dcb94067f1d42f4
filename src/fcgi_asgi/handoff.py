"""Moving idle FastCGI connections from a draining worker to a serving one.

Closing an idle keep-conn connection (``FCGI_KEEP_CONN``, nginx's upstream
``keepalive``) always races with the web server writing its next request on
it: nginx may already have taken the connection from its pool, and it does
not retry a POST (502). So a worker replaced on reload, on ``--max-requests``
or on SIGTTOU does not close such connections: once one is idle (no request
running, its last response handed to the kernel) it passes the socket, with
any bytes it read but has not parsed, to the supervisor, which passes them
on to a serving worker. The socket never closes; bytes the web server writes
meanwhile wait in the kernel for the new owner. Connections with a request
running finish it first and move once idle.

Messages on a worker's channel (a ``SOCK_SEQPACKET`` socketpair, so each
``send`` is one message, with a file descriptor as ``SCM_RIGHTS``):

- :data:`CONNECTION` + carried bytes, with one descriptor: from a worker,
  "take this connection"; from the supervisor, "adopt this connection";
- :data:`HAND_OVER`, from the supervisor: drain, handing idle connections over.

A worker told to stop (SIGTERM: the whole gateway stops) closes its idle
connections instead, as does a single process: there is nobody to hand them to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections import deque
from typing import TYPE_CHECKING

from .protocol.connection import FastCGIConnection

if TYPE_CHECKING:
    from .context import ServerContext

__all__ = [
    "CONNECTION",
    "HAND_OVER",
    "Handoff",
    "Relay",
    "channel_pair",
    "receive",
]

logger = logging.getLogger("fcgi_asgi.error")

#: Channel message: a connection (the descriptor), then the bytes carried along.
CONNECTION = b"c"
#: Channel message from the supervisor: drain, handing idle connections over.
HAND_OVER = b"h"
#: Largest message: the type byte and at most one unparsed record (8 + 65535 + 255).
MAX_MESSAGE = 1 << 17
#: Descriptors accepted with one message (one is sent; more is an error).
_MAX_FDS = 4
#: Seconds between tries while the channel is full.
_RETRY = 0.01


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of message sockets for the supervisor and one worker."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def receive(channel: socket.socket) -> tuple[bytes, list[int]] | None:
    """One message and its descriptors; None when nothing is waiting.

    End-of-file (the peer is gone) is an empty message.
    """
    try:
        data, fds, flags, _ = socket.recv_fds(channel, MAX_MESSAGE, _MAX_FDS)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b"", []
    for fd in fds:
        # Not left to programs the app starts: they would hold the socket open.
        os.set_inheritable(fd, False)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or (fds and data[:1] != CONNECTION):
        # Only our own processes write here: a bug, not a peer to guard against.
        logger.error("malformed message on a worker channel (%d bytes): dropped", len(data))
        for fd in fds:
            os.close(fd)
        return b"?", []  # a type nobody acts on
    return data, fds


def _send(channel: socket.socket, carried: bytes, fd: int) -> bool:
    """Send one connection; False while the channel is full."""
    try:
        socket.send_fds(channel, [CONNECTION + carried], [fd])
    except (BlockingIOError, InterruptedError):
        return False
    return True


class Handoff:
    """A worker's side: hands connections over, and adopts those handed to it."""

    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        #: True once the supervisor said HAND_OVER, False again on SIGTERM.
        self.enabled = False
        self.handed_over = 0
        self.adopted = 0
        self._outbox: deque[tuple[int, bytes]] = deque()
        self._retry: asyncio.TimerHandle | None = None

    def hand_over(self, conn: FastCGIConnection) -> None:
        """Pass ``conn`` to the supervisor if it is idle; a no-op otherwise
        (the drain offers it again). Closes it instead when stopping."""
        if not self.enabled:
            conn.shutdown()  # the gateway stops: close as usual
            return
        if not conn.detachable:
            return
        self._outbox.append(conn.detach())
        self.flush()

    def flush(self) -> None:
        """Send what waits; retried shortly while the channel is full."""
        while self._outbox:
            fd, carried = self._outbox[0]
            try:
                if not _send(self.channel, carried, fd):
                    if self._retry is None:
                        loop = asyncio.get_running_loop()
                        self._retry = loop.call_later(_RETRY, self._retried)
                    return
            except OSError as exc:  # the supervisor is gone: nobody to take it
                logger.warning("could not hand a connection over (%s): closing it", exc)
            else:
                self.handed_over += 1
            self._outbox.popleft()
            os.close(fd)

    def _retried(self) -> None:
        self._retry = None
        self.flush()

    def finish(self, timeout: float = 5.0) -> None:
        """Before the worker exits: send what still waits, blocking up to ``timeout`` s."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if not self._outbox:
            return
        self.channel.settimeout(timeout)
        try:
            self.flush()
        except TimeoutError:
            pass
        finally:
            for fd, _ in self._outbox:
                os.close(fd)
            self._outbox.clear()

    def adopt(self, ctx: ServerContext, fd: int, carried: bytes) -> None:
        """Serve a connection another worker handed over."""
        try:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
        except OSError as exc:
            os.close(fd)
            logger.error("could not adopt a handed-over connection: %s", exc)
            return
        self.adopted += 1

        loop = asyncio.get_running_loop()

        def factory() -> FastCGIConnection:
            return FastCGIConnection(ctx, adopted=carried, loop=loop)

        task = loop.create_task(loop.connect_accepted_socket(factory, sock))
        task.add_done_callback(_adopted)


def _adopted(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("could not adopt a handed-over connection: %s", exc)


class Relay:
    """The supervisor's side: connections waiting to be passed to a worker."""

    def __init__(self) -> None:
        self._waiting: deque[tuple[bytes, int]] = deque()
        self._turn = 0
        self.relayed = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def take(self, data: bytes, fds: list[int]) -> None:
        """Keep a connection a worker handed over until :meth:`forward`."""
        for fd in fds:
            self._waiting.append((data[len(CONNECTION) :], fd))

    def forward(self, channels: list[socket.socket]) -> None:
        """Pass waiting connections to ``channels`` (serving workers) in turn.

        With none (no worker ready yet) they wait here: the web server's
        next request waits in the socket, it is not refused.
        """
        while self._waiting and channels:
            carried, fd = self._waiting[0]
            self._turn = (self._turn + 1) % len(channels)
            for i in range(len(channels)):
                channel = channels[(self._turn + i) % len(channels)]
                with contextlib.suppress(OSError):
                    if _send(channel, carried, fd):
                        break
            else:
                return  # every channel is full: try again on the next turn
            self._waiting.popleft()
            os.close(fd)
            self.relayed += 1

    def close_all(self) -> None:
        """Close what waits (the gateway stops, or in a new worker: its copies)."""
        while self._waiting:
            os.close(self._waiting.popleft()[1])
