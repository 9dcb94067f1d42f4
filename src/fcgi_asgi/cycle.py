"""One FastCGI request bridged to one ASGI HTTP call.

A :class:`RequestCycle` is created by the connection on BEGIN_REQUEST, fed
PARAMS and STDIN by it, and runs the app as its own task. It turns the app's
``send()`` messages into a CGI response head and STDOUT records, and sends
END_REQUEST exactly once, whatever the app does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from .errors import AppProtocolError, ClientDisconnected
from .records import MAX_CONTENT, STDOUT, encode_end_request, encode_record, encode_stream
from .status import render_status

try:
    from ._speedups import encode_head as _c_encode_head
except ImportError:  # not built: the Python path alone
    _c_encode_head = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .config import ASGIApp
    from .connection import FastCGIConnection

__all__ = ["RequestCycle", "encode_head", "end_records", "resolve_all"]

logger = logging.getLogger("fcgi_asgi.error")

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_STATUS_LINES: dict[int, bytes] = {
    s.value: b"Status: %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in HTTPStatus
}
# Bodies up to this size share one STDOUT record with the head: one write, one
# record, at the cost of copying a few KiB; larger bodies are sliced instead.
_COALESCE_LIMIT = 16 << 10
_READ_CHUNK = 256 << 10
_YIELD_EVERY = 512 << 10
# How long STDIN may stay quiet while an answered request waits for its end.
_STDIN_IDLE = 0.2

_GONE = "the web server aborted the request or closed the connection"
_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}


def _error_page(status: HTTPStatus) -> bytes:
    body = status.phrase.encode()
    return (
        b"Status: %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (status.value, body, len(body), body)
    )


# Whole CGI responses for the errors the gateway answers itself; never a traceback.
_ERROR_PAGES = {s.value: _error_page(s) for s in (HTTPStatus(500), HTTPStatus(504))}

# The records that close a request: an empty STDOUT then END_REQUEST. Request
# ids repeat (web servers always use 1), so each tail is built once.
_end_records: dict[int, bytes] = {}


def end_records(request_id: int) -> bytes:
    """An empty STDOUT record and a successful END_REQUEST for ``request_id``."""
    tail = _end_records.get(request_id)
    if tail is None:
        tail = encode_record(STDOUT, request_id) + encode_end_request(request_id)
        if len(_end_records) < 1024:
            _end_records[request_id] = tail
    return tail


# Response header name -> True if it is a valid token, False for "Status"
# (dropped: CGI would read it as the status line). Apps send the same few
# names over and over: a lookup instead of a regex match and a lower() per
# header (encode_head for 2 headers: 1.2 us -> 0.9 us).
_valid_names: dict[bytes, bool] = {}


def _check_name(name: bytes) -> bool:
    if not _TOKEN.fullmatch(name):
        raise AppProtocolError(f"response header name {name!r} is not a valid token")
    keep = name.lower() != b"status"
    if len(_valid_names) < 1024:
        _valid_names[name] = keep
    return keep


def encode_head(status: Any, headers: Any) -> bytes:
    """Encode a CGI response head (``Status:`` line, headers, blank line).

    Raises :class:`AppProtocolError` for a status that is not a 3-digit
    integer, or a header name or value that is not bytes, not a token, or
    holds CR, LF or NUL: any of them would corrupt the stream.
    """
    if _c_encode_head is not None and type(status) is int:
        line = _STATUS_LINES.get(status)
        if line is not None:
            head = _c_encode_head(line, headers)
            if head is not None:
                return head
    # Anything unusual (and everything without the C speedups): the checks below.
    return encode_head_py(status, headers)


def encode_head_py(status: Any, headers: Any) -> bytes:
    """:func:`encode_head` in Python alone: the checks and their precise errors."""
    if type(status) is not int or not 100 <= status <= 999:
        raise AppProtocolError(f"response status must be an int from 100 to 999, not {status!r}")
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"Status: %d Unknown\r\n" % status
    parts = [line]
    append = parts.append
    valid_name = _valid_names.get
    for header in headers:
        try:
            name, value = header
        except (TypeError, ValueError):
            raise AppProtocolError(
                f"response header {header!r} is not a (name, value) pair"
            ) from None
        if type(name) is not bytes or type(value) is not bytes:
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                raise AppProtocolError(f"response header {header!r} must be a pair of bytes")
            name, value = bytes(name), bytes(value)
        known = valid_name(name)
        if known is None:
            known = _check_name(name)
        if _BAD_VALUE.search(value):
            raise AppProtocolError(f"response header {name!r} has CR, LF or NUL in its value")
        if known:
            append(name + b": " + value + b"\r\n")
    append(b"\r\n")
    return b"".join(parts)


def resolve_all(waiters: list[asyncio.Future[None]]) -> None:
    """Wake every waiter not woken or cancelled yet (already detached from its list)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


class RequestCycle:
    """The state of one request: params, body queue, response progress."""

    __slots__ = (
        "_end_deadline",
        "_expect_trailers",
        "_final_sent",
        "_head",
        "_stdin_seen",
        "_stdout_sent",
        "_timeout",
        "_unyielded",
        "_waiters",
        "app_error",
        "body",
        "body_size",
        "bytes_sent",
        "conn",
        "disconnected",
        "drain_waiter",
        "end_pending",
        "ended",
        "keep_conn",
        "params",
        "request_id",
        "response_complete",
        "response_started",
        "scope",
        "started",
        "status",
        "stdin_done",
        "task",
        "timed_out",
    )

    def __init__(self, conn: FastCGIConnection, request_id: int, keep_conn: bool) -> None:
        self.conn = conn
        self.request_id = request_id
        self.keep_conn = keep_conn
        # PARAMS content until the stream ends (the first record as is, more
        # appended to a bytearray), then None.
        self.params: bytes | bytearray | None = b""
        self.scope: dict[str, Any] | None = None
        self.body: deque[bytes] = deque()
        self.body_size = 0
        self.stdin_done = False
        self.disconnected = False
        #: The response is written; END_REQUEST waits for the end of STDIN.
        self.end_pending = False
        self._stdin_seen = self._end_deadline = 0.0
        self.response_started = False
        self.response_complete = False
        self.ended = False
        self.status = 0
        self.app_error: str | None = None
        self.started = conn.loop.time()
        self.bytes_sent = 0
        self.timed_out = False
        self._timeout: asyncio.TimerHandle | None = None
        self._unyielded = 0
        self._head: bytes | None = None
        self._stdout_sent = False
        self._final_sent = False
        self._expect_trailers = False
        # receive() calls waiting for news; an app may have several (a body
        # reader and a disconnect watcher), and each must be woken.
        self._waiters: list[asyncio.Future[None]] = []
        #: Set while send() waits for the web server to read (conn.drain()).
        self.drain_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    # -- fed by the connection ------------------------------------------------

    def feed_body(self, data: bytes) -> None:
        """Queue a STDIN chunk for ``receive()``."""
        # stdin_done: data after the end of STDIN (a broken peer) would reach
        # the app as an http.request after the one with more_body=False.
        if self.response_complete or self.disconnected or self.stdin_done:
            if self.end_pending:
                self._stdin_seen = self.conn.loop.time()
            return
        self.body.append(data)
        self.body_size += len(data)
        self.conn.body_buffered(len(data))
        self._wake()

    def end_body(self) -> None:
        """The empty STDIN record arrived: the body is complete."""
        self.stdin_done = True
        if self.end_pending:
            self.end_request_now()
        else:
            self._wake()

    def disconnect(self) -> None:
        """The web server aborted the request or the connection was lost."""
        if self.disconnected:
            return
        self.disconnected = True
        self._drop_body()
        self._wake()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # a send() waiting for the peer raises now

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            resolve_all(waiters)

    def _drop_body(self) -> None:
        if self.body_size:
            self.conn.body_consumed(self.body_size)
            self.body.clear()
            self.body_size = 0

    # -- the ASGI side ----------------------------------------------------------

    async def run(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        """Run the app for this request and make sure the request ends."""
        try:
            await app(scope, self.receive, self.send)
        except ClientDisconnected as exc:
            if self.disconnected:
                # The app let our own disconnect error escape: nothing to report.
                logger.debug("request id %d ended by the client going away", self.request_id)
            else:
                self._app_failed(f"Exception in ASGI application: {exc!r}", exc)
        except Exception as exc:
            self._app_failed(f"Exception in ASGI application: {type(exc).__name__}: {exc}", exc)
        except asyncio.CancelledError:
            if self.timed_out:
                # Our own --request-timeout: the worker goes on, the client gets a 504.
                self._app_failed(
                    f"request timed out after {self.conn.config.request_timeout:g} s; "
                    "ASGI application cancelled",
                    None,
                    status=504,
                )
            else:
                self._app_failed("ASGI application cancelled", None)
                raise
        else:
            if self.app_error is not None:
                self._app_failed(self.app_error, None)
            elif not self.response_started:
                if not self.disconnected:
                    self._app_failed("ASGI application returned without starting a response", None)
            elif not self.response_complete:
                self._app_failed("ASGI application returned without completing the response", None)
            elif self._expect_trailers and not self.ended:
                # Trailers announced but never sent: the body is whole and
                # trailers are dropped anyway, so the request ends as usual.
                logger.debug("request id %d: the app sent no trailers", self.request_id)
                self._expect_trailers = False
                self._finish([])
        finally:
            self._drop_body()
            if self._timeout is not None:
                self._timeout.cancel()
            duration = self.conn.loop.time() - self.started
            ctx = self.conn.ctx
            if duration > self.conn.config.slow_request_threshold:
                ctx.stats.slow_requests += 1
            access = ctx.access_log
            if access is not None and self.response_complete and self.scope:
                access.log(self.scope, self.status, self.bytes_sent, duration, self.request_id)
            if self.task is not None:
                ctx.tasks.discard(self.task)

    def set_timeout(self, task: asyncio.Task[None], seconds: float) -> None:
        """Cancel ``task`` (this request's app) after ``seconds``."""

        def expire() -> None:
            if not task.done():
                self.timed_out = True
                task.cancel()

        self._timeout = self.conn.loop.call_later(seconds, expire)

    def answer_internal(self) -> None:
        """Answer the gateway's own ping or status path, without the app."""
        conn = self.conn
        assert self.scope is not None
        if self.scope["path"] == conn.config.ping_path:
            ctype, body = b"text/plain", b"pong"
        else:
            ctype, body = render_status(conn.ctx.all_workers(), conn.ctx.listen, self.scope)
        head = (
            b"Status: 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\n\r\n" % (ctype, len(body))
        )
        self.status = 200
        self.response_started = self.response_complete = True
        self._finish(encode_stream(STDOUT, self.request_id, head + body))

    def _app_failed(self, message: str, exc: BaseException | None, status: int = 500) -> None:
        log = logger.error if exc is not None or not self.disconnected else logger.debug
        log(
            "%s (request id %d, %s %s)",
            message,
            self.request_id,
            self.scope["method"] if self.scope else "?",
            self.scope["path"] if self.scope else "?",
            exc_info=exc,
        )
        self._wake()  # receive() calls of the app's other tasks: http.disconnect
        if self.ended or self.end_pending:
            # end_pending: the whole response is out, END_REQUEST only waits
            # for the end of STDIN; failing now would cut a complete response.
            return
        if not self._stdout_sent and not self.disconnected:
            # Nothing reached the web server yet: answer a plain error instead.
            self._head = None
            self.response_started = self.response_complete = True
            self.status = status
            self._finish([encode_record(STDOUT, self.request_id, _ERROR_PAGES[status])])
        else:
            self.response_complete = True
            self.conn.request_failed(self)

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: body chunks as they arrive, then ``http.disconnect``."""
        while True:
            if self.disconnected or self.response_complete:
                return _DISCONNECT
            body = self.body
            if body:
                data = body.popleft() if len(body) == 1 else b"".join(body)
                body.clear()
                n = self.body_size
                self.body_size = 0
                self.conn.body_consumed(n)
                more = not self.stdin_done
                if not more:
                    self._final_sent = True
                return {"type": "http.request", "body": data, "more_body": more}
            if self.stdin_done and not self._final_sent:
                self._final_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            waiter = self.conn.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # A receive() given up on (wait_for, a cancelled watcher) leaves
                # nothing behind, however often it is retried.
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise

    async def send(self, message: Any) -> None:
        """ASGI ``send``: response start, body, pathsend and trailers."""
        mtype = message["type"]
        if mtype == "http.response.body":
            await self._send_body(message.get("body", b""), message.get("more_body", False))
        elif mtype == "http.response.start":
            if self.response_started:
                self._fail_app("http.response.start sent twice")
            self._head = encode_head(message["status"], message.get("headers", ()))
            self.status = message["status"]
            self.response_started = True
            self._expect_trailers = bool(message.get("trailers", False))
            if self.disconnected:
                raise ClientDisconnected(_GONE)
            # The head waits for the first body message so that small responses
            # go out as one record in one write; if the app yields first, the
            # head is flushed on its own on the next loop iteration. One callback
            # per iteration serves every request started in it (0.5 us a request
            # less than a callback each, benchmarks/hotpath.py).
            ctx = self.conn.ctx
            if not ctx.pending_heads:
                self.conn.loop.call_soon(ctx.flush_heads)
            ctx.pending_heads.append(self)
        elif mtype == "http.response.pathsend":
            await self._send_path(message["path"])
        elif mtype == "http.response.trailers":
            # Trailers have no place in a CGI response; they are dropped, and
            # the last trailers message ends a response that waited for it.
            if self._expect_trailers and not message.get("more_trailers", False):
                self._expect_trailers = False
                if self.response_complete and not self.ended:
                    self._finish([])
        else:
            self._fail_app(f"unexpected ASGI message type {mtype!r}")

    def flush_head(self) -> None:
        """Write the response head now if it is still waiting for a body."""
        head = self._head
        if head is not None and not self.disconnected and not self.ended:
            self._head = None
            self._stdout_sent = True
            # encode_stream: a head may be larger than one record.
            self.conn.write(encode_stream(STDOUT, self.request_id, head))

    def _fail_app(self, message: str) -> None:
        self.app_error = message
        raise AppProtocolError(message)

    async def _send_body(self, body: Any, more_body: bool) -> None:
        if self.disconnected:
            # First: an aborted request is also complete, and the app must see
            # the client gone (an OSError), not an error of its own.
            raise ClientDisconnected(_GONE)
        if not self.response_started:
            self._fail_app("http.response.body sent before http.response.start")
        if self.response_complete:
            self._fail_app("http.response.body sent after the response was complete")
        if type(body) is not bytes:
            if not isinstance(body, bytes | bytearray | memoryview):
                self._fail_app(f"http.response.body body must be bytes, not {type(body).__name__}")
            body = bytes(body)
        self.bytes_sent += len(body)
        rid = self.request_id
        head = self._head
        if head is not None:
            self._head = None
            if len(body) <= _COALESCE_LIMIT:
                chunk = head + body
                if (
                    not more_body
                    and self.stdin_done
                    and not self._expect_trailers
                    and len(chunk) <= MAX_CONTENT
                ):
                    # The whole of a small response (head + body record, empty
                    # STDOUT, END_REQUEST) as one bytes object in one write,
                    # without the pieces list and _finish (raw hello cycle 4.75 -> 4.6 us).
                    self._stdout_sent = self.response_complete = True
                    self.conn.write([encode_record(STDOUT, rid, chunk) + end_records(rid)])
                    self.conn.request_ended(self)
                    if self._waiters:
                        self._wake()
                    return
                # Framed as a stream: a large head may not fit in one record.
                pieces = encode_stream(STDOUT, rid, chunk)
            else:
                pieces = encode_stream(STDOUT, rid, head) + encode_stream(STDOUT, rid, body)
            self._stdout_sent = True
        elif body:
            pieces = encode_stream(STDOUT, rid, body)
        else:
            pieces = []
        if not more_body:
            self.response_complete = True
            # A receive() still waiting (a disconnect watcher) now gets
            # http.disconnect: the response has been sent (ASGI spec).
            self._wake()
            if not self._expect_trailers:
                self._finish(pieces)
                return
        conn = self.conn
        if pieces:
            if not conn.writable:
                # The connection is going away (a write failed); connection_lost
                # follows on a later loop iteration, but for the app the client is
                # gone now: a receive() after this says http.disconnect.
                self.disconnect()
                raise ClientDisconnected(_GONE)
            conn.write(pieces)
        if conn.write_paused:
            await conn.drain(self)
            if self.disconnected:
                raise ClientDisconnected(_GONE)
            self._unyielded = 0
        else:
            # A peer that reads as fast as the app writes never pauses us, and
            # send() would never suspend: let other tasks and I/O callbacks run
            # (a lost connection is only noticed that way) every few hundred KiB.
            self._unyielded += len(body)
            if self._unyielded > _YIELD_EVERY:
                self._unyielded = 0
                await asyncio.sleep(0)
                if self.disconnected:
                    raise ClientDisconnected(_GONE)

    def _finish(self, pieces: list[bytes | memoryview]) -> None:
        """Write the last of the response and end the request.

        END_REQUEST waits for the end of STDIN when the app answered before
        reading its whole body: web servers still writing the body when the
        request ends misbehave (h2o 2.2 aborts, Apache answers 503).
        """
        rid = self.request_id
        if self.stdin_done:
            pieces.append(end_records(rid))
            self.conn.write(pieces)
            self.conn.request_ended(self)
        else:
            pieces.append(encode_record(STDOUT, rid))
            self.conn.write(pieces)
            self.end_pending = True
            self.conn.drain_stdin()
            loop = self.conn.loop
            self._stdin_seen = now = loop.time()
            self._end_deadline = now + self.conn.config.stdin_linger
            loop.call_later(_STDIN_IDLE, self._check_end)

    def _check_end(self) -> None:
        # nginx stops sending the body once it has the response; h2o keeps
        # sending it. So the END_REQUEST goes out when STDIN ends, or when it
        # has been quiet for _STDIN_IDLE, or after stdin_linger in all.
        if not self.end_pending or self.ended:
            return
        loop = self.conn.loop
        now = loop.time()
        quiet = now - self._stdin_seen
        if quiet >= _STDIN_IDLE or now >= self._end_deadline:
            self.end_request_now()
        else:
            loop.call_later(_STDIN_IDLE - quiet, self._check_end)

    def end_request_now(self) -> None:
        """Send the END_REQUEST held back for the end of STDIN, and end the request."""
        if self.end_pending and not self.ended:
            self.end_pending = False
            self.stdin_done = True  # given up on, or arrived
            self.conn.write([encode_end_request(self.request_id)])
            self.conn.request_ended(self)

    async def _send_path(self, path: str) -> None:
        if self.disconnected:
            raise ClientDisconnected(_GONE)
        if not self.response_started:
            self._fail_app("http.response.pathsend sent before http.response.start")
        if self.response_complete:
            self._fail_app("http.response.pathsend sent after the response was complete")
        # File reads run in the default executor: a slow disk must not stall
        # every other request on the loop.
        loop = self.conn.loop
        f = await loop.run_in_executor(None, open, path, "rb")
        try:
            while chunk := await loop.run_in_executor(None, f.read, _READ_CHUNK):
                await self._send_body(chunk, True)
        finally:
            await loop.run_in_executor(None, f.close)
        await self._send_body(b"", False)
