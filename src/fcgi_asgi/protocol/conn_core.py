"""A connection's per-request steps and the fields they use, shared with C.

:class:`~fcgi_asgi.protocol.connection.FastCGIConnection` inherits
:class:`ConnectionCore`: the C type ``_speedups.ConnectionCore`` when the
speedups are built, else :class:`ConnectionCorePy`. Both keep the fields below
(the C type as members, read and written from Python at the speed of
``__slots__``) and do a request's three steps on its connection:

- ``data_received()``: a read that holds one whole request, alone on its
  connection (nginx's GET or buffered POST), opens the request and starts it;
  any other read goes to the connection's general path.
- ``write_last()``: a request's last records, written now when no other
  write can join them in this loop turn.
- ``request_ended()``: the request's END_REQUEST is written: free its id,
  count it, close the connection if the web server did not keep it.

In C these cost about a third of the Python's instructions, with nothing
else different (benchmarks/RESULTS.md); the tests run both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .records import KEEP_CONN, ProtocolError, request_packets

if TYPE_CHECKING:
    from ..context import ServerContext
    from .connection import FastCGIConnection
    from .request import Request

__all__ = ["CONNECTION_FIELDS", "ConnectionCore", "ConnectionCorePy"]

#: The fields, in both versions.
CONNECTION_FIELDS = (
    "_close_when_idle",
    "_held",
    "_hold",
    "_idle_since",
    "_linger_id",
    "_max_params_size",
    "_multiplexed",
    "_on_idle",
    "_params_buffered",
    "_served_any",
    "_unparsed",
    "closing",
    "ctx",
    "loop",
    "requests",
    "requests_begun",
    "transport",
    "write_paused",
)


class ConnectionCorePy:
    """:class:`ConnectionCore` without the speedups."""

    __slots__ = CONNECTION_FIELDS

    ctx: ServerContext
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    requests: dict[int, Request]
    #: BEGIN_REQUESTs seen; 0 means the web server has not sent a request yet.
    requests_begun: int
    write_paused: bool
    closing: bool
    # Empty when no partial record waits: then a read may be a whole request.
    _unparsed: bytearray
    # Small writes wait for the end of the loop turn (see write()).
    _hold: bool
    _held: list[bytes]
    # Whether two requests have run at once here (see _start_multiplexing).
    _multiplexed: bool
    # A finished request without FCGI_KEEP_CONN: the connection closes once
    # that request's STDIN has ended (Apache answers 503 if we close early).
    _linger_id: int | None
    _params_buffered: int
    _max_params_size: int
    # Since when the connection has had no request, and whether it has served
    # any (keep-alive idle), read by check_timeouts().
    _idle_since: float | None
    _served_any: bool
    # Set on server shutdown: close once idle (or pass it to _on_idle).
    _close_when_idle: bool
    _on_idle: Callable[[FastCGIConnection], None] | None

    if TYPE_CHECKING:
        # FastCGIConnection's, which these steps call.
        def _records_received(self, data: bytes) -> None: ...
        def _packets_received(self, packets: list[tuple[int, int, bytes, bytes]]) -> None: ...
        def _protocol_failed(self, exc: ProtocolError) -> None: ...
        def _check_write_backlog(self) -> None: ...
        def _forget_params(self, cycle: Request) -> None: ...
        def _close(self) -> None: ...
        def _linger(self, rid: int) -> None: ...
        def write(self, pieces: list[Any]) -> None: ...

    def data_received(self, data: bytes) -> None:
        """Open and start the one whole request ``data`` holds, alone on this
        connection; hand any other read to the general path."""
        if request_packets is None or self._unparsed or (packets := request_packets(data)) is None:
            self._records_received(data)
            return
        if len(packets) == 1:
            # The commonest read: nginx's request (a GET, or a POST whose body
            # nginx buffered), on a connection with no other request. What
            # _open_whole() does for it, inline.
            rid, flags, params, body = packets[0]
            if (
                not self.requests
                and self._linger_id is None
                and self._params_buffered + len(params) <= self._max_params_size
            ):
                keep_conn = bool(flags & KEEP_CONN)
                if not keep_conn:
                    self._hold = False
                self.requests_begun += 1
                conn: FastCGIConnection = self  # type: ignore[assignment]
                self.requests[rid] = lone = self.ctx.request_class(conn, rid, keep_conn)
                self._idle_since = None
                lone.params = None
                if body:
                    lone.feed_body(body)
                lone.stdin_done = True
                try:
                    lone.start(params)
                except ProtocolError as exc:
                    self._protocol_failed(exc)
                    return
                if self.write_paused:
                    self._check_write_backlog()
                return
        self._packets_received(packets)

    def write_last(self, data: bytes) -> None:
        """Write a request's last records (its END_REQUEST among them).

        On a connection that never ran two requests at once and holds
        nothing, no other write can join them in this loop turn: they go out
        now instead of at the turn's end.
        """
        if self._multiplexed or self._held:
            self.write([data])
            return
        transport = self.transport
        if transport is not None and not self.closing:
            transport.write(data)

    def request_ended(self, cycle: Request) -> None:
        """The cycle wrote its END_REQUEST: free the id, close if not keep-conn."""
        cycle.ended = True
        # ctx.count_served(), inline: one call fewer a request.
        ctx = self.ctx
        stats = ctx.stats
        stats.requests_served += 1
        if stats.requests_served == ctx.retire_at and ctx.on_retire is not None:
            ctx.on_retire()
        requests = self.requests
        rid = cycle.request_id
        if requests.get(rid) is cycle:
            del requests[rid]
        if cycle.params is not None:  # aborted before its PARAMS ended
            self._forget_params(cycle)
        if not requests:
            self._idle_since = self.loop.time()
            self._served_any = True
        if not cycle.keep_conn:
            if cycle.stdin_done:
                self._close()
            else:
                self._linger(rid)
        elif self._close_when_idle and not requests:
            if self._on_idle is not None:
                conn: FastCGIConnection = self  # type: ignore[assignment]
                self._on_idle(conn)
            else:
                self._close()


if TYPE_CHECKING:
    ConnectionCore = ConnectionCorePy
else:
    try:
        from .._speedups import ConnectionCore
    except ImportError:  # not built
        ConnectionCore = ConnectionCorePy
