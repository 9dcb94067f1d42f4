"""The FastCGI connection: an :class:`asyncio.Protocol` per web server socket.

It feeds received bytes to the sans-IO :class:`~fcgi_asgi.protocol.records.RecordReader`,
keeps the table of live requests by id, answers management records, runs
each request as its own task, and applies flow control both ways: reading
pauses while too much request body is unread, and ``send()`` waits while the
web server is not reading the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..logconfig import TRACE
from ..scoreboard import REFUSED_ALLOW, REFUSED_PER_CONNECTION
from .conn_core import ConnectionCore
from .records import (
    ABORT_REQUEST,
    BEGIN_REQUEST,
    CANT_MPX_CONN,
    DATA,
    GET_VALUES,
    GET_VALUES_RESULT,
    KEEP_CONN,
    OVERLOADED,
    PARAMS,
    RESPONDER,
    STDIN,
    STDOUT,
    UNKNOWN_ROLE,
    MalformedRecord,
    ParamsTooLarge,
    ProtocolError,
    RecordReader,
    decode_pairs,
    encode_end_request,
    encode_pairs,
    encode_record,
    encode_unknown_type,
    parse_begin_request,
)
from .request import Request, end_records
from .roles import ROLE_NAMES, FilterRequest
from .write_scheduler import WriteScheduler

if TYPE_CHECKING:
    from ..context import ServerContext

__all__ = ["FastCGIConnection"]

logger = logging.getLogger("fcgi_asgi.error")

# Write buffer and kernel send buffer of a connection that multiplexes: at a
# slow stream's 200 KB/s, 32 KiB queued ahead of a small response cost 0.16 s.
MUX_WRITE_BUFFER = 32 << 10
MUX_SOCKET_BUFFER = 64 << 10
#: Bytes of small writes a connection holds back until the end of the loop
#: turn; a larger write goes out at once, after what was held.
HOLD_LIMIT = 16 << 10
#: Whether writelines() keeps flow control, per transport class (_watch_writes).
_GATHERS: dict[type, bool] = {}
_RECORD_NAMES = {
    1: "BEGIN_REQUEST",
    2: "ABORT_REQUEST",
    3: "END_REQUEST",
    4: "PARAMS",
    5: "STDIN",
    6: "STDOUT",
    7: "STDERR",
    8: "DATA",
    9: "GET_VALUES",
    10: "GET_VALUES_RESULT",
    11: "UNKNOWN_TYPE",
}


class FastCGIConnection(ConnectionCore, asyncio.Protocol):
    """One connection from a web server, carrying one or many requests.

    Its per-request steps (``data_received``, ``write_last``,
    ``request_ended``) and their fields are in :class:`~.conn_core.ConnectionCore`.
    """

    def __init__(
        self,
        ctx: ServerContext,
        adopted: bytes | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.ctx = ctx
        self.config = ctx.config
        # The listener passes its loop: asyncio.get_running_loop() makes a
        # getpid() system call on Python 3.11, once a connection.
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.transport = None
        self.peer = "-"
        self._traced = False
        self.requests = {}
        self.requests_begun = 0
        self.write_paused = False
        self.closing = False
        # The reader comes with the first read that is not whole requests
        # (_records_received); nginx's GETs and buffered POSTs never need one.
        self._reader: RecordReader | None = None
        self._unparsed = bytearray()
        self._gather_writes = False
        self._hold = True
        self._held = []
        self._held_size = 0
        #: Streaming responses' chunks waiting for the peer to read, in turns;
        #: made by take_turns() when a response first has to wait.
        self.scheduler: WriteScheduler | None = None
        # Reading pauses for either of two reasons: too much unread request body,
        # or a peer that keeps sending while it reads none of what we write
        # (replies to GET_VALUES or refused requests must not pile up).
        self._reading_paused = False
        self._paused_for_body = False
        self._paused_for_write = False
        self._body_buffered = 0
        self._params_buffered = 0
        self._max_params_size = self.config.max_params_size
        self._linger_id = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._close_when_idle = False
        self._on_idle = None
        # Handed over by another worker (see handoff.py): already accepted,
        # with the bytes that worker had read but not parsed.
        self._adopted = adopted
        # Timeout bookkeeping, read by check_timeouts() about once a second:
        # since when a BEGIN_REQUEST waits for PARAMS (and _idle_since).
        self._idle_since = self.loop.time()
        self._served_any = False
        self._params_since: float | None = None
        self._multiplexed = False
        # Bytes in the write buffer at the last check_timeouts(), to see progress.
        self._unsent_at_check = 0

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; same interface.
        # (No typing.cast(): a call per connection.)
        tr: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport = tr
        ctx = self.ctx
        if self._adopted is not None:
            self._connection_adopted(tr, self._adopted)
            return
        ctx.stats.accepted_connections += 1
        if ctx.unix:
            # A web server's end of a unix socket is unnamed: not asking saves a
            # getpeername() and a socket object per connection (uvloop; about 2 us
            # of the 45 us a request costs without keep-conn).
            self.peer = "unix"
        elif not self._peer_allowed(tr):
            return
        limit = self.config.max_connections
        if limit and len(ctx.connections) >= limit:
            self._refuse_over_limit(limit)
            return
        self._watch_writes(tr)
        ctx.connections.add(self)
        self._traced = traced = logger.isEnabledFor(TRACE)
        if traced:
            logger.log(TRACE, "connection from %s opened", self.peer)

    def _peer_allowed(self, transport: asyncio.Transport) -> bool:
        """Name the peer of a TCP connection; False (and the connection
        aborted) when --allow does not let it in."""
        ctx = self.ctx
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
            if ctx.allow and not ctx.allow.allows(peer[0]):
                logger.warning(
                    "refused connection from %s: not in the allow list (%s)", self.peer, ctx.allow
                )
                ctx.stats.refused[REFUSED_ALLOW] += 1
                self.closing = True
                transport.abort()
                return False
        elif peer:
            self.peer = str(peer)
        else:
            self.peer = "unix"
        return True

    def _refuse_over_limit(self, limit: int) -> None:
        # Closed rather than left waiting: a web server with several
        # backends (nginx fastcgi_next_upstream) then tries another one.
        ctx = self.ctx
        ctx.refused_connections += 1
        now = self.loop.time()
        if now - ctx.last_refusal_log >= 1.0:
            ctx.last_refusal_log = now
            logger.warning(
                "refused connection from %s: --max-connections %d reached (%d refused so far)",
                self.peer,
                limit,
                ctx.refused_connections,
            )
        self.closing = True
        assert self.transport is not None
        self.transport.abort()

    def _watch_writes(self, transport: asyncio.Transport) -> None:
        """Set the write buffer's limits, and how writes go out on this transport."""
        size = self.config.write_buffer_size
        transport.set_write_buffer_limits(size, size // 4)
        # writelines() only where it keeps flow control: asyncio's own transport
        # on Python 3.12 buffers without ever calling pause_writing() (and on
        # 3.11 it joins the pieces anyway), so there the pieces are joined here.
        kind = type(transport)
        gathers = _GATHERS.get(kind)
        if gathers is None:
            gathers = _GATHERS[kind] = kind.__module__.startswith("uvloop")
        self._gather_writes = gathers

    def _connection_adopted(self, transport: asyncio.Transport, carried: bytes) -> None:
        # Counted, checked against the allow list and the connection limit
        # where it was accepted; refusing it now would lose its next request.
        self._adopted = None
        self.peer = "unix" if self.ctx.unix else "handed-over"
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        self._watch_writes(transport)
        self.ctx.connections.add(self)
        self._traced = logger.isEnabledFor(TRACE)
        if carried:
            self.data_received(carried)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._traced:
            logger.log(TRACE, "connection from %s closed (%s)", self.peer, exc or "cleanly")
        self.closing = True
        self.ctx.connections.discard(self)
        if self._held:
            self._held.clear()
            self._held_size = 0
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        requests = self.requests
        if requests:
            self.requests = {}
            for cycle in requests.values():
                cycle.ended = True
                cycle.disconnect()
        self.write_paused = False
        if self.scheduler is not None:
            self.scheduler.release_all()
        self.transport = None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        scheduler = self.scheduler
        if scheduler:
            scheduler.run(self)
        if self._paused_for_write:
            self._paused_for_write = False
            self._update_reading()

    def take_turns(self) -> WriteScheduler:
        """The scheduler of this connection's waiting response chunks (made now
        if none had to wait yet)."""
        scheduler = self.scheduler
        if scheduler is None:
            scheduler = self.scheduler = WriteScheduler()
        return scheduler

    def eof_received(self) -> bool | None:
        # Web servers abort requests by closing the connection; none half-closes
        # and still waits for an answer. So EOF is a disconnect for every
        # request, and the transport closes (as Go's net/http/fcgi does).
        return None

    def _packets_received(self, packets: list[tuple[int, int, bytes, bytes]]) -> None:
        """Whole requests of one read (records.request_packets) that
        data_received() does not start alone: HAProxy's several GETs on a
        multiplexed connection, or one beside others."""
        try:
            if len(packets) == 1:
                rid, flags, params, body = packets[0]
                if (cycle := self._open_whole(rid, flags, params, body)) is not None:
                    cycle.start(params)
            else:
                # All opened before any app runs (its first step may run
                # now, Python 3.12+): the connection knows it is shared.
                opened = [
                    (cycle, params)
                    for rid, flags, params, body in packets
                    if (cycle := self._open_whole(rid, flags, params, body)) is not None
                ]
                for cycle, params in opened:
                    cycle.start(params)
        except ProtocolError as exc:
            self._protocol_failed(exc)
            return
        self._check_write_backlog()

    def _records_received(self, data: bytes) -> None:
        """A read that is not whole requests: its records one by one."""
        try:
            reader = self._reader
            if reader is None:
                reader = self._reader = RecordReader(self._unparsed)
            for rtype, rid, content in reader.feed(data):
                if rid == 0:
                    self._management(rtype, content)
                    continue
                cycle = self.requests.get(rid)
                if rtype == STDIN:
                    if cycle is None:
                        if rid == self._linger_id and not content:
                            self._close()
                        continue
                    if cycle.params is not None:
                        raise ProtocolError(f"STDIN for request id {rid} before its PARAMS ended")
                    if content:
                        cycle.feed_body(content)
                    else:
                        cycle.end_body()
                elif rtype == PARAMS:
                    if cycle is None:
                        continue
                    self._params(cycle, content)
                elif rtype == BEGIN_REQUEST:
                    self._begin(rid, content)
                elif rtype == ABORT_REQUEST:
                    if cycle is not None:
                        cycle.disconnect()
                        self._end_aborted(cycle)
                elif rtype == DATA:
                    # FILTER's second stream; any other role takes no DATA.
                    if isinstance(cycle, FilterRequest):
                        cycle.feed_data(content)
                else:
                    name = _RECORD_NAMES.get(rtype, f"type {rtype}")
                    raise ProtocolError(f"unexpected {name} record for request id {rid}")
        except ProtocolError as exc:
            self._protocol_failed(exc)
            return
        self._check_write_backlog()

    def _protocol_failed(self, exc: ProtocolError) -> None:
        self.fail(f"FastCGI protocol error from {self.peer}: {exc}")

    def _check_write_backlog(self) -> None:
        """After a read: stop reading from a peer that is not reading what we write."""
        # Streaming responses keep the write buffer near its high-water mark;
        # far above it, the peer is not reading: stop taking more work from it.
        # (Pausing at the mark itself would starve reads, and so ABORT_REQUEST,
        # while a fast app streams to a slow reader.)
        if (
            self.write_paused
            and self.transport is not None
            and self.transport.get_write_buffer_size() > 4 * self.config.write_buffer_size
        ):
            self._paused_for_write = True
            self._update_reading()

    # -- records ------------------------------------------------------------------

    def _management(self, rtype: int, content: bytes) -> None:
        if rtype == GET_VALUES:
            mpxs = self.config.multiplex
            known = {
                b"FCGI_MAX_CONNS": str(self.config.max_connections_hint).encode(),
                b"FCGI_MAX_REQS": (
                    str(self.config.max_requests_per_connection).encode() if mpxs else b"1"
                ),
                b"FCGI_MPXS_CONNS": b"1" if mpxs else b"0",
            }
            asked = decode_pairs(content)
            # Each name answered once: a query repeating names fills one record,
            # and its answer (longer per name) would not fit in one.
            answer = [(name, known.pop(name)) for name, _ in asked if name in known]
            self.write([encode_record(GET_VALUES_RESULT, 0, encode_pairs(answer))])
        else:
            logger.debug("unknown management record type %d from %s", rtype, self.peer)
            self.write([encode_unknown_type(rtype)])

    def _open_whole(self, rid: int, flags: int, params: bytes, body: bytes) -> Request | None:
        """BEGIN_REQUEST, PARAMS and the whole STDIN, read at once
        (records.request_packets): the request, ready to start with
        ``params``, its whole ``body`` already fed (so an app started at
        once, Python 3.12+, reads it without waiting), as the records one by
        one would open it; None when refused."""
        # The commonest one, alone on its connection, data_received() opens
        # itself (conn_core.py).
        cycle = self._open(rid, RESPONDER, flags)
        if cycle is None:
            if rid == self._linger_id:
                self._close()  # refused, its STDIN is over: as the records would
            return None
        # Counted with the params other requests here are still sending, as
        # the records one by one would.
        if self._params_buffered + len(params) > self.config.max_params_size:
            raise self._params_too_large(rid, bool(self._params_buffered))
        cycle.params = None
        if body:
            cycle.feed_body(body)
        cycle.stdin_done = True
        return cycle

    def _params_too_large(self, rid: int, with_others: bool) -> ParamsTooLarge:
        """The error for request ``rid``'s PARAMS over the limit, ``with_others``
        when other requests' pending params count towards it."""
        others = " (with the connection's other pending requests)" if with_others else ""
        return ParamsTooLarge(
            f"PARAMS for request id {rid} exceed {self.config.max_params_size} bytes{others}"
        )

    def _begin(self, rid: int, content: bytes) -> None:
        try:
            role, flags = parse_begin_request(content)
        except MalformedRecord as exc:
            raise ProtocolError(str(exc)) from None
        if self._open(rid, role, flags) is not None and self._params_since is None:
            self._params_since = self.loop.time()

    def _open(self, rid: int, role: int, flags: int) -> Request | None:
        """Start request ``rid``, or refuse it with END_REQUEST; None when refused."""
        requests = self.requests
        if requests and rid in requests:
            raise ProtocolError(f"BEGIN_REQUEST for request id {rid}, which is already in use")
        keep_conn = bool(flags & KEEP_CONN)
        if not keep_conn:
            # The connection closes after this request: its one write has
            # nothing to wait for.
            self._hold = False
        self.requests_begun += 1
        cls = self.ctx.request_class if role == RESPONDER else self._role_class(rid, role)
        if cls is None:
            self._reject(rid, UNKNOWN_ROLE, keep_conn)
            return None
        # Only a connection already running a request can be refused for
        # multiplexing (--max-requests-per-connection is at least 1).
        if requests and not self._may_add(rid, keep_conn):
            return None
        if self._linger_id is not None:
            raise ProtocolError(
                f"BEGIN_REQUEST for request id {rid} after a request without FCGI_KEEP_CONN"
            )
        requests[rid] = cycle = cls(self, rid, keep_conn)
        if len(requests) == 2 and not self._multiplexed:
            self._start_multiplexing()
        self._idle_since = None
        return cycle

    def _may_add(self, rid: int, keep_conn: bool) -> bool:
        """Whether request ``rid`` may run beside those running here; if not,
        it is refused with END_REQUEST."""
        requests = self.requests
        if not self.config.multiplex:
            logger.warning(
                "request id %d from %s refused: --no-multiplex and request id %d runs "
                "on this connection",
                rid,
                self.peer,
                next(iter(requests)),
            )
            self._reject(rid, CANT_MPX_CONN, keep_conn)
            return False
        if len(requests) >= self.config.max_requests_per_connection:
            logger.warning(
                "request id %d from %s refused: %d requests already run on this connection",
                rid,
                self.peer,
                len(requests),
            )
            self.ctx.stats.refused[REFUSED_PER_CONNECTION] += 1
            self._reject(rid, OVERLOADED, keep_conn)
            return False
        return True

    def _role_class(self, rid: int, role: int) -> type[Request] | None:
        """The request class for a role other than RESPONDER (see protocol/roles.py)."""
        cls = self.ctx.role_classes.get(role)
        if cls is None:
            logger.warning(
                "request id %d from %s asks for role %d (%s), which the app does not serve "
                "(see --roles)",
                rid,
                self.peer,
                role,
                ROLE_NAMES.get(role, "unknown"),
            )
        return cls

    def _start_multiplexing(self) -> None:
        """Keep little of the response bytes queued ahead on a shared connection.

        A web server that multiplexes (HAProxy) reads the connection at the
        pace of its slowest stream, and a small response waits behind every
        byte queued before it: in the transport buffer and in the socket's
        send buffer. So from the first concurrent request on, streams queue
        in the write scheduler instead, where small responses overtake them.
        """
        self._multiplexed = True
        transport = self.transport
        if transport is None:
            return
        transport.set_write_buffer_limits(high=MUX_WRITE_BUFFER, low=MUX_WRITE_BUFFER // 4)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MUX_SOCKET_BUFFER)

    def _reject(self, rid: int, protocol_status: int, keep_conn: bool) -> None:
        self.write([encode_end_request(rid, 0, protocol_status)])
        if not keep_conn:
            self._linger(rid)

    def _params(self, cycle: Request, content: bytes) -> None:
        params = cycle.params
        if params is None:
            raise ProtocolError(f"PARAMS for request id {cycle.request_id} after its PARAMS ended")
        if content:
            if not params:
                # nginx sends all params in one record: keep it as is, no copy.
                params = content
            elif type(params) is bytes:
                params = bytearray(params) + content
            else:
                params += content
            cycle.params = params
            self._params_buffered += len(content)
            # The limit holds per request and for the connection as a whole, so
            # many half-sent requests cannot add up to many times the limit.
            if self._params_buffered > self.config.max_params_size:
                raise self._params_too_large(cycle.request_id, len(params) < self._params_buffered)
            return
        cycle.params = None
        self._params_buffered -= len(params)
        # Alone on its connection (nginx's case), this request was the last one
        # sending params: no generator over the table (0.2 us per request).
        if self._params_since is not None and (
            len(self.requests) == 1 or all(c.params is None for c in self.requests.values())
        ):
            self._params_since = None
        cycle.start(params)

    # -- called by request cycles --------------------------------------------------

    def write(self, pieces: list[Any]) -> None:
        """Write record pieces in one go (joined when small, else writelines).

        Up to :data:`HOLD_LIMIT` bytes wait for the end of the loop turn and
        go out in one write with whatever else this connection wrote in that
        turn. Held back, the responses of a turn reach the web server
        together, and a multiplexed connection gets them in one write instead
        of one each (through HAProxy: 18.8 -> 15.7 us of our CPU and 19.5 ->
        15.8 us of HAProxy's a request, benchmarks/RESULTS.md).
        """
        transport = self.transport
        if transport is None or self.closing:
            return
        if len(pieces) == 1:
            data = pieces[0]
        elif self._gather_writes and (len(pieces) > 4 or sum(map(len, pieces)) > 16384):
            self.release_held()
            transport.writelines(pieces)  # large bodies: no copy into one buffer
            return
        else:
            data = b"".join(pieces)  # one small write beats writelines' bookkeeping
        size = self._held_size + len(data)
        # bytes only: a memoryview may show an app's buffer, which can change.
        if size <= HOLD_LIMIT and type(data) is bytes and self._hold:
            held = self._held
            if not held:
                ctx = self.ctx
                ctx.held_writes.append(self)
                if not ctx.turn_end_due:
                    ctx.at_turn_end(self.loop)
            held.append(data)
            self._held_size = size
            return
        if self._held:
            self.release_held()
        transport.write(data)

    def release_held(self) -> None:
        """Write what :meth:`write` held back; close now if a close waited for it."""
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        self._held_size = 0
        transport = self.transport
        if transport is not None:
            transport.write(data)
            if self.closing:
                transport.close()

    @property
    def reading_paused_for_body(self) -> bool:
        """Whether reading stopped because too much request body is unread."""
        return self._paused_for_body

    @property
    def writable(self) -> bool:
        """False once nothing written can reach the peer any more."""
        transport = self.transport
        return transport is not None and not self.closing and not transport.is_closing()

    def body_buffered(self, n: int) -> None:
        """Count unread request body; pause reading above the configured size."""
        self._body_buffered += n
        if not self._paused_for_body and self._body_buffered > self.config.read_buffer_size:
            self._paused_for_body = True
            self._update_reading()

    def body_consumed(self, n: int) -> None:
        """The app read (or the gateway dropped) ``n`` bytes of request body."""
        self._body_buffered -= n
        if self._paused_for_body and self._body_buffered <= self.config.read_buffer_size // 2:
            self._paused_for_body = False
            self._update_reading()

    def _update_reading(self) -> None:
        pause = self._paused_for_body or self._paused_for_write
        if pause == self._reading_paused or self.transport is None or self.closing:
            return
        self._reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _forget_params(self, cycle: Request) -> None:
        """An ended request's PARAMS no longer count (request_ended())."""
        if cycle.params is not None:
            self._params_buffered -= len(cycle.params)
            cycle.params = None
            if all(c.params is None for c in self.requests.values()):
                self._params_since = None

    def request_failed(self, cycle: Request) -> None:
        """The app failed after part of the response was written.

        Alone on its connection, the request is cut by closing the connection
        without END_REQUEST (once its STDIN has ended, or after
        ``stdin_linger``), so the web server sees a truncated response and
        does not pass it off as complete. With other requests multiplexed
        beside it, it ends with END_REQUEST(appStatus=1) so they live on.
        """
        if cycle.ended:
            return
        if len(self.requests) > 1:
            cycle.ended = True
            self.requests.pop(cycle.request_id, None)
            self.write(
                [encode_record(STDOUT, cycle.request_id), encode_end_request(cycle.request_id, 1)]
            )
            self.ctx.count_served()
            if not cycle.keep_conn:
                self._close()
        else:
            cycle.ended = True
            self.requests.pop(cycle.request_id, None)
            if cycle.stdin_done:
                self._close()
            else:
                # Apache writes the empty STDIN after the app may have failed;
                # closing first makes that write fail and Apache answers 503
                # instead of passing the truncated response on.
                self._linger(cycle.request_id)

    def _end_aborted(self, cycle: Request) -> None:
        if cycle.ended:
            return
        if cycle.end_pending:  # its STDOUT is already closed
            cycle.end_request_now()
            return
        # The app goes on until it notices http.disconnect; the id is freed now
        # (as Go's net/http/fcgi does) so the web server is answered at once.
        cycle.response_complete = True
        self.write([end_records(cycle.request_id)])
        cycle.stdin_done = True  # nothing more will be read for it
        self.request_ended(cycle)

    def drain_stdin(self) -> None:
        """A request was answered before its body was read: keep reading (the
        rest of its STDIN is dropped) even if reading paused for that body."""
        if self._paused_for_body:
            self._paused_for_body = False
            self._update_reading()

    def _linger(self, rid: int) -> None:
        self._linger_id = rid
        if self._paused_for_body:
            self._paused_for_body = False
            self._update_reading()
        self._linger_timer = self.loop.call_later(self.config.stdin_linger, self._close)

    def check_timeouts(self, now: float) -> None:
        """Drop a peer stalling on PARAMS; close a keep-conn connection idle too long;
        warn about, then cut, responses the web server stopped reading."""
        if self.closing:
            return
        config = self.config
        if self.scheduler:
            self._check_send_stalls(now, self.scheduler)
        since = self._params_since
        if since is not None and now - since > config.params_timeout:
            self.fail(
                f"{self.peer} sent no complete PARAMS within {config.params_timeout:g} s "
                "(stalled or slow peer)"
            )
        elif self._idle_since is not None and not self.requests:
            limit = config.keepalive_timeout if self._served_any else config.params_timeout
            if now - self._idle_since > limit:
                if self._served_any:
                    logger.debug("closing connection from %s idle for %g s", self.peer, limit)
                else:
                    logger.warning(
                        "dropping connection from %s: no request within %g s", self.peer, limit
                    )
                self._close()

    def _check_send_stalls(self, now: float, scheduler: WriteScheduler) -> None:
        """Name the requests whose responses wait for the web server to read, while
        they hold up others on this connection; cut them after --send-timeout."""
        config = self.config
        transport = self.transport
        unsent = transport.get_write_buffer_size() if transport is not None else 0
        if unsent < self._unsent_at_check:
            # The web server read some of the buffer since the last check: a
            # slow reader, not a stalled one (nginx's send_timeout also counts
            # from the last progress).
            scheduler.progressed(now)
        self._unsent_at_check = unsent
        for item in scheduler.waiting():
            cycle = item.cycle
            if item.future.done() or cycle.ended:
                continue
            waited = now - item.since
            if config.send_timeout is not None and waited > config.send_timeout:
                logger.warning(
                    "request id %d (%s) cut: the web server read none of its response "
                    "for %g s (--send-timeout; a client that stopped reading?)",
                    cycle.request_id,
                    cycle.describe(),
                    config.send_timeout,
                )
                cycle.disconnect()
                if len(self.requests) > 1:
                    self.request_failed(cycle)
                else:
                    # Alone: close at once (a graceful close would wait for the
                    # peer to read the buffered rest, which it does not).
                    self._abort()
                    return
            elif not item.warned and waited > config.slow_request_threshold:
                item.warned = True
                others = len(self.requests) - 1
                if others:
                    # HAProxy stops reading a connection while one stream's
                    # buffer is full: every request on it waits for that client.
                    logger.warning(
                        "request id %d (%s, %d bytes sent) has waited %.1f s for the web "
                        "server to read its response; %d other request(s) on this "
                        "multiplexed connection from %s may wait with it (a slow client; "
                        "see the README on HAProxy)",
                        cycle.request_id,
                        cycle.describe(),
                        cycle.bytes_sent,
                        waited,
                        others,
                        self.peer,
                    )

    # -- closing ------------------------------------------------------------------

    def _close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        if self.transport is not None and not self._held:
            self.transport.close()
        # else release_held() closes it, after the bytes held for this turn.

    def _abort(self) -> None:
        """Drop the connection now, buffered output and all."""
        self._held.clear()
        self._held_size = 0
        self.fail_quietly()
        if self.transport is not None:
            self.transport.abort()

    def fail(self, message: str) -> None:
        """Log a connection-level error and close this connection only."""
        logger.error("%s; closing the connection", message)
        self.fail_quietly()

    def fail_quietly(self) -> None:
        """Close this connection; its requests see ``http.disconnect``."""
        for cycle in list(self.requests.values()):
            cycle.ended = True
            cycle.disconnect()
        self.requests.clear()
        self._close()

    def shutdown(self, on_idle: Callable[[FastCGIConnection], None] | None = None) -> None:
        """Close now if idle; otherwise close once the running requests end.

        A connection that has not begun a request yet stays open: the web
        server has likely written one that is not read yet (the server's
        drain closes it after a grace). One lingering for the rest of a
        finished request's STDIN closes when that ends, as usual.

        With ``on_idle``, the connection is not closed: ``on_idle`` is called
        with it now if idle, else each time its last running request ends
        (it hands the connection to another process, see :meth:`detach`).
        """
        self._close_when_idle = True
        self._on_idle = on_idle
        if on_idle is not None:
            if not self.requests:
                on_idle(self)
        elif not self.requests and self.requests_begun and self._linger_id is None:
            self._close()

    @property
    def detachable(self) -> bool:
        """True when the connection can move to another process now.

        No request is running or lingering, everything written has reached
        the kernel, and what was read has been parsed (bar the start of a
        record, which :meth:`detach` carries along): the next byte on the
        socket begins or continues a record nobody has acted on yet.
        """
        transport = self.transport
        return (
            not self.requests
            and self._linger_id is None
            and not self.closing
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
            and not self._held
        )

    def detach(self) -> tuple[int, bytes]:
        """Give up the connection without closing it: returns a duplicate of
        its file descriptor and the bytes read but not yet parsed.

        The caller owns the descriptor. This process stops reading at once
        and closes its own descriptor, which leaves the socket open (the
        duplicate holds it), so the peer sees nothing.
        """
        transport = self.transport
        assert transport is not None and self.detachable
        sock = transport.get_extra_info("socket")
        fd = os.dup(sock.fileno())
        carried = bytes(self._unparsed)  # what a reader would hold back
        self._unparsed.clear()
        self.closing = True
        transport.close()  # stops reading now; the write buffer is empty
        return fd, carried
