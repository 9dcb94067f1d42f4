"""One FastCGI request, the wire side every interface shares.

A :class:`Request` is created by the connection on BEGIN_REQUEST and fed
PARAMS and STDIN by it. It holds the request body with read flow control,
frames the response into STDOUT records with backpressure, holds
END_REQUEST back until STDIN has ended (the linger web servers need), sends
it exactly once, and answers the gateway's own error pages. An interface
(the ASGI bridge, the WSGI bridge) subclasses it: :meth:`Request.start`
runs the app once PARAMS are complete, and the interface turns what the
app does into :meth:`set_head` and :meth:`send_body` calls.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import traceback
from bisect import bisect_left
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any

from ..errors import ClientDisconnected
from ..metrics import METRICS_CONTENT_TYPE, render_metrics
from ..pool import pool_status
from ..scoreboard import DURATION_BUCKETS, REFUSED_CONCURRENT
from ..status import render_status
from .core import RequestCore
from .head import encode_head
from .offload import offload_head, offload_value
from .records import (
    MAX_CONTENT,
    STDERR,
    STDOUT,
    encode_end_request,
    encode_record,
    encode_stream,
    whole_response,
)

__all__ = ["GONE", "Request", "end_records", "resolve_all", "wait_in"]

logger = logging.getLogger("fcgi_asgi.error")

# Bodies up to this size share one STDOUT record with the head: one write, one
# record, at the cost of copying a few KiB; larger bodies are sliced instead.
_COALESCE_LIMIT = 16 << 10
_YIELD_EVERY = 512 << 10
# How long STDIN may stay quiet while an answered request waits for its end.
_STDIN_IDLE = 0.2

#: Why ``send()`` (or a WSGI write) raises :class:`ClientDisconnected`.
GONE = "the web server aborted the request or closed the connection"


def _error_page(status: HTTPStatus, extra: bytes = b"") -> bytes:
    body = status.phrase.encode()
    return (
        b"Status: %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (status.value, body, len(body), extra, body)
    )


# Whole CGI responses for the errors the gateway answers itself; never a traceback.
_ERROR_PAGES = {s.value: _error_page(s) for s in (HTTPStatus(500), HTTPStatus(504))}
#: Seconds a client refused by --max-concurrent-requests is asked to wait.
RETRY_AFTER = 1
_ERROR_PAGES[503] = _error_page(HTTPStatus(503), b"Retry-After: %d\r\n" % RETRY_AFTER)

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


def _stderr_text(message: str, where: tuple[int, str, str], exc: BaseException | None) -> str:
    """A failed request's log line (and traceback) as sent to FCGI_STDERR."""
    rid, method, path = where
    text = f"{message} (request id {rid}, {method} {path})\n"
    if exc is not None:
        text += "".join(traceback.format_exception(exc))
    return text


#: Python 3.12+: a task can run its first step as it is made.
_EAGER = sys.version_info >= (3, 12)
#: The name of every request's task. Given one, a task costs Python 3.11 no
#: "Task-N" formatted for it (1.4k of the 62k instructions of a request).
TASK_NAME = "fcgi-asgi request"

if sys.version_info >= (3, 12):

    def start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], eager: bool
    ) -> asyncio.Future[None]:
        """The task running ``coro``: ``loop.create_task(coro)`` when a task
        factory is set, else a task named :data:`TASK_NAME`; with ``eager``,
        it runs its first step now (Python 3.12's eager start), so a request
        answered without waiting needs no turn of the loop."""
        if loop.get_task_factory() is not None:
            return loop.create_task(coro)
        return asyncio.Task(coro, loop=loop, name=TASK_NAME, eager_start=eager)

else:

    def start_task(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, None], eager: bool
    ) -> asyncio.Future[None]:
        """The task running ``coro``: ``loop.create_task(coro)`` when a task
        factory is set, else a task named :data:`TASK_NAME` (Python 3.11 has
        no eager start)."""
        if loop.get_task_factory() is not None:
            return loop.create_task(coro)
        return asyncio.Task(coro, loop=loop, name=TASK_NAME)


def resolve_all(waiters: list[asyncio.Future[None]]) -> None:
    """Wake every waiter not woken or cancelled yet (already detached from its list)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


async def wait_in(waiters: list[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    """Wait on ``waiter``, kept in ``waiters`` until :func:`resolve_all` wakes it.

    A wait given up on (wait_for, a cancelled watcher) leaves nothing
    behind in ``waiters``, however often it is retried.
    """
    waiters.append(waiter)
    try:
        await waiter
    except asyncio.CancelledError:
        if waiter in waiters:
            waiters.remove(waiter)
        raise


class Request(RequestCore):
    """The state of one request: params, body queue, response progress.

    Everything here runs on the event loop; interfaces that run the app in
    a thread call in through the loop. The response's fields are in
    :class:`~fcgi_asgi.protocol.core.RequestCore`, shared with the C fast path.
    """

    __slots__ = ()

    #: Whether the gateway's own paths (--ping-path...) answer here; never
    #: for an AUTHORIZER, whose 200 would let the request through.
    answers_internal = True

    # -- fed by the connection ------------------------------------------------

    def start(self, params: bytes | bytearray) -> None:
        """PARAMS are complete: build the request and run the app (interfaces)."""
        raise NotImplementedError

    def feed_body(self, data: bytes) -> None:
        """Queue a STDIN chunk for the app."""
        self.bytes_received += len(data)
        # stdin_done: data after the end of STDIN (a broken peer) would reach
        # the app after the end of its body.
        if self.response_complete or self.disconnected or self.stdin_done:
            if self.end_pending:
                self._stdin_seen = self.conn.loop.time()
            return
        self.body.append(data)
        self.body_size += len(data)
        self.conn.body_buffered(len(data))
        self.wake()

    def end_body(self) -> None:
        """The empty STDIN record arrived: the body is complete."""
        self.stdin_done = True
        if self.end_pending:
            self.end_request_now()
        else:
            self.wake()

    def disconnect(self) -> None:
        """The web server aborted the request or the connection was lost."""
        if self.disconnected:
            return
        self.disconnected = True
        self.drop_body()
        self.wake()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # a send_body() waiting for the peer raises now

    def wake(self) -> None:
        """Wake every coroutine waiting in :meth:`wait`."""
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            resolve_all(waiters)

    async def wait(self) -> None:
        """Wait for news: more body, its end, the response done, or a disconnect."""
        await wait_in(self._waiters, self.conn.loop.create_future())

    def take_body(self) -> bytes:
        """All the body received and not taken yet (b"" when none), and let
        reading resume once the connection's unread body is small again."""
        body = self.body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        n = self.body_size
        self.body_size = 0
        self.conn.body_consumed(n)
        return data

    def drop_body(self) -> None:
        """Forget the unread body (the app will not read it)."""
        if self.body_size:
            self.conn.body_consumed(self.body_size)
            self.body.clear()
            self.body_size = 0

    # -- the response -----------------------------------------------------------

    def set_head(self, status: Any, headers: Any) -> None:
        """Encode the response head; it waits for the first body to share a write.

        Raises :class:`~fcgi_asgi.errors.AppProtocolError` for a malformed
        status or header, and :class:`ClientDisconnected` once the client is gone.
        """
        self.unsent_head = encode_head(status, headers)
        self.status = status
        self.response_started = True
        if self.disconnected:
            raise ClientDisconnected(GONE)
        # If the app yields before its first body, the head is written on its
        # own at the end of the loop turn.
        conn = self.conn
        ctx = conn.ctx
        ctx.pending_heads.append(self)
        if not ctx.turn_end_due:
            ctx.at_turn_end(conn.loop)

    def flush_head(self) -> None:
        """Write the response head now if it is still waiting for a body."""
        head = self.unsent_head
        if head is not None and not self.disconnected and not self.ended:
            self.unsent_head = None
            self._stdout_sent = True
            # encode_stream: a head may be larger than one record.
            self.conn.write(encode_stream(STDOUT, self.request_id, head))

    def send_whole(self, body: bytes) -> bool:
        """Send the whole response now if it is small, ``body`` its last piece.

        Head and body as one STDOUT record, the empty STDOUT and END_REQUEST,
        one bytes object in one write, without the pieces list and finish()
        (raw hello cycle 4.75 -> 4.6 us); synchronous, so an interface can
        skip the send_body() coroutine (85,970 -> 84,689 instructions a hello
        request). False, with nothing done, when the response does not fit
        or cannot end yet.
        """
        head = self.unsent_head
        if self.head_only:
            body = b""  # and not counted as sent in the access log
        if (
            head is None
            or len(body) > _COALESCE_LIMIT
            or not self.stdin_done
            or self.end_held
            or len(head) + len(body) > MAX_CONTENT
        ):
            return False
        self.unsent_head = None
        self.bytes_sent += len(body)
        rid = self.request_id
        self._stdout_sent = self.response_complete = True
        self.conn.write_last(whole_response(rid, head, body))
        self.conn.request_ended(self)
        if self._waiters:
            self.wake()
        return True

    async def send_body(self, body: bytes, more_body: bool, wait: bool = True) -> None:
        """Write a piece of the response body; the last one ends the request.

        Waits while the web server is not reading (``wait=False``: writes at
        once, for a caller that cannot wait); raises
        :class:`ClientDisconnected` once it is gone.
        """
        if not more_body and self.send_whole(body):
            return
        if self.head_only:
            body = b""  # and not counted as sent in the access log
        self.bytes_sent += len(body)
        rid = self.request_id
        head = self.unsent_head
        if head is not None:
            self.unsent_head = None
            if len(body) <= _COALESCE_LIMIT:
                # Framed as a stream: a large head may not fit in one record.
                pieces = encode_stream(STDOUT, rid, head + body)
            else:
                pieces = encode_stream(STDOUT, rid, head) + encode_stream(STDOUT, rid, body)
            self._stdout_sent = True
        elif body:
            pieces = encode_stream(STDOUT, rid, body)
        else:
            pieces = []
        if not more_body:
            self.response_complete = True
            # A waiter still there (a disconnect watcher) now learns that the
            # response has been sent.
            self.wake()
            if not self.end_held:
                self.finish(pieces)
                return
        conn = self.conn
        if pieces:
            if not conn.writable:
                # The connection is going away (a write failed); connection_lost
                # follows on a later loop iteration, but for the app the client is
                # gone now.
                self.disconnect()
                raise ClientDisconnected(GONE)
            if (conn.write_paused or conn.scheduler) and wait:
                # The web server is not reading, or other streams of this
                # connection wait for it: take turns (write_scheduler.py).
                await conn.take_turns().wait_turn(conn, self, pieces)
                if self.disconnected:
                    raise ClientDisconnected(GONE)
                self._unyielded = 0
                return
            conn.write(pieces)
        if not conn.write_paused:
            # A peer that reads as fast as the app writes never pauses us, and
            # we would never suspend: let other tasks and I/O callbacks run
            # (a lost connection is only noticed that way) every few hundred KiB.
            self._unyielded += len(body)
            if self._unyielded > _YIELD_EVERY and wait:
                self._unyielded = 0
                await asyncio.sleep(0)
                if self.disconnected:
                    raise ClientDisconnected(GONE)

    def finish(self, pieces: list[bytes | memoryview]) -> None:
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

    def answer_internal(self) -> None:
        """Answer the gateway's own ping or status path, without the app."""
        self.drop_body()  # a whole request's body came with it (_open_whole)
        conn = self.conn
        assert self.scope is not None
        path = self.scope["path"]
        if path == conn.config.ping_path:
            ctype, body = b"text/plain", b"pong"
        elif path == conn.config.metrics_path:
            ctype = METRICS_CONTENT_TYPE
            body = render_metrics(conn.ctx.all_workers(), conn.ctx.supervisor_stats())
        else:
            workers = conn.ctx.all_workers()
            pool = pool_status(conn.config, workers)
            ctype, body = render_status(workers, conn.ctx.listen, self.scope, pool=pool)
        head = (
            b"Status: 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            b"Cache-Control: no-store\r\n\r\n" % (ctype, len(body))
        )
        self.status = 200
        self.response_started = self.response_complete = True
        self.finish(encode_stream(STDOUT, self.request_id, head + body))

    def answer_unavailable(self) -> None:
        """Answer 503 with Retry-After, without the app (--max-concurrent-requests)."""
        self.drop_body()  # a whole request's body came with it (_open_whole)
        self.status = 503
        self.response_started = self.response_complete = True
        self.finish([encode_record(STDOUT, self.request_id, _ERROR_PAGES[503])])

    def fail(self, message: str, exc: BaseException | None, status: int = 500) -> None:
        """The app failed: log it, answer an error page if nothing was sent
        yet, else cut the response so the web server sees it incomplete."""
        log = logger.error if exc is not None or not self.disconnected else logger.debug
        where = (
            self.request_id,
            self.scope["method"] if self.scope else "?",
            self.scope["path"] if self.scope else "?",
        )
        log("%s (request id %d, %s %s)", message, *where, exc_info=exc)
        if self.conn.config.stderr_to_web_server:
            self.send_stderr(_stderr_text(message, where, exc))
        self.wake()  # the app's other waiters learn that the request is over
        if self.ended or self.end_pending:
            # end_pending: the whole response is out, END_REQUEST only waits
            # for the end of STDIN; failing now would cut a complete response.
            return
        if not self._stdout_sent and not self.disconnected:
            # Nothing reached the web server yet: answer a plain error instead.
            self.unsent_head = None
            self.response_started = self.response_complete = True
            self.status = status
            self.finish([encode_record(STDOUT, self.request_id, _ERROR_PAGES[status])])
        else:
            self.response_complete = True
            self.conn.request_failed(self)

    def offload(self, path: str) -> bool:
        """Answer with ``--sendfile-header`` for the file at ``path`` instead of
        its bytes; False (stream it) when off, when the head already went
        out, or when the path maps to nothing (protocol/offload.py)."""
        config = self.conn.config
        head = self.unsent_head
        if config.sendfile_header is None or head is None:
            return False
        value = offload_value(path, config.sendfile_map)
        if value is None:
            return False
        self.unsent_head = offload_head(head, config.sendfile_header, value)
        return True

    def send_stderr(self, text: str) -> None:
        """Send ``text`` to the web server's error log as FCGI_STDERR
        (``--stderr-to-web-server``); dropped once the request has ended."""
        if self.ended or self.disconnected or not text:
            return
        self.conn.write(encode_stream(STDERR, self.request_id, text.encode("utf-8", "replace")))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` (the app on this request) as the request's task.

        The request takes its task out of ``ctx.tasks`` when it ends, which
        costs less than a done callback (one loop callback fewer per request).
        """
        conn = self.conn
        if conn.config.max_concurrent_requests and not self.admit():
            coro.close()
            return
        loop = conn.loop
        if _EAGER or loop.get_task_factory() is not None:
            # A request whose body is all here (a whole request in one read)
            # starts its app now where Python can (3.12+); a task factory,
            # when set, makes the task.
            self.task = task = start_task(loop, coro, _EAGER and self.stdin_done)
        else:
            # Python 3.11's case of start_task(), inline: one call fewer.
            self.task = task = asyncio.Task(coro, loop=loop, name=TASK_NAME)
        if task.done():
            # An eager start (ours, or an app's eager task factory) ran the
            # whole request inside it: nothing is left to track.
            return
        # track(task), inline: one call fewer a request.
        ctx = conn.ctx
        tasks = ctx.tasks
        tasks.add(task)
        if len(tasks) > ctx.stats.max_active_requests:
            ctx.stats.max_active_requests = len(tasks)
        if conn.config.request_timeout is not None:
            self.set_timeout(task, conn.config.request_timeout)

    def admit(self) -> bool:
        """True when the app may run; else a 503 is answered (--max-concurrent-requests)."""
        conn = self.conn
        ctx = conn.ctx
        limit = conn.config.max_concurrent_requests
        if limit and len(ctx.tasks) >= limit:
            # A 503 rather than END_REQUEST(OVERLOADED), which web servers turn
            # into a 502, a 500 or an empty 200 (see the README). Checked once
            # PARAMS are in, so the gateway's own pages answer even when full.
            logger.warning(
                "request id %d from %s answered 503: %d requests already run in this process",
                self.request_id,
                conn.peer,
                len(ctx.tasks),
            )
            ctx.stats.refused[REFUSED_CONCURRENT] += 1
            self.answer_unavailable()
            return False
        return True

    def track(self, task: asyncio.Future[None]) -> None:
        """Count ``task`` (the app's run: a task, or a future for a thread) as
        running, and cancel it after --request-timeout (spawn() does the
        same inline)."""
        self.task = task
        conn = self.conn
        ctx = conn.ctx
        tasks = ctx.tasks
        tasks.add(task)
        if len(tasks) > ctx.stats.max_active_requests:
            ctx.stats.max_active_requests = len(tasks)
        if conn.config.request_timeout is not None:
            self.set_timeout(task, conn.config.request_timeout)

    def app_raised(self, exc: BaseException, interface: str) -> None:
        """The app (an ``interface`` app: "ASGI", "WSGI") raised ``exc``."""
        if isinstance(exc, ClientDisconnected) and self.disconnected:
            # The app let our own disconnect error escape: nothing to report.
            logger.debug("request id %d ended by the client going away", self.request_id)
        elif isinstance(exc, ClientDisconnected):
            self.fail(f"Exception in {interface} application: {exc!r}", exc)
        elif not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt
            self.fail(
                f"{interface} application raised {type(exc).__name__}: {exc}; "
                "it ends this request, not the server",
                exc,
            )
        else:
            self.fail(f"Exception in {interface} application: {type(exc).__name__}: {exc}", exc)

    def app_cancelled(self, interface: str, on_timeout: str = "cancelled") -> bool:
        """The app's task was cancelled; True when by our own --request-timeout
        (the worker goes on, the client gets a 504), else the caller re-raises."""
        if self.timed_out:
            self.fail(
                f"request timed out after {self.conn.config.request_timeout:g} s; "
                f"{interface} application {on_timeout}",
                None,
                status=504,
            )
            return True
        self.fail(f"{interface} application cancelled", None)
        return False

    def describe(self) -> str:
        """``METHOD path`` of this request, for log lines."""
        scope = self.scope
        return f"{scope['method']} {scope['path']}" if scope else "params not complete"

    def set_timeout(self, task: asyncio.Future[None], seconds: float) -> None:
        """Cancel ``task`` (this request's app) after ``seconds``."""

        def expire() -> None:
            if not task.done():
                self.timed_out = True
                task.cancel()

        self._timeout = self.conn.loop.call_later(seconds, expire)

    def done(self) -> None:
        """The app is done with this request: count it, log it, forget its task."""
        if self.body_size:
            self.drop_body()
        if self._timeout is not None:
            self._timeout.cancel()
        conn = self.conn
        duration = conn.loop.time() - self.started
        ctx = conn.ctx
        # The metrics' counters, inline: a method call for them cost 0.1 us a
        # request (benchmarks/instructions.py).
        stats = ctx.stats
        status = self.status
        stats.status_classes[status // 100 if 100 <= status < 600 else 0] += 1
        stats.duration_buckets[bisect_left(DURATION_BUCKETS, duration)] += 1
        stats.duration_sum += duration
        stats.request_bytes += self.bytes_received
        stats.response_bytes += self.bytes_sent
        if duration > conn.config.slow_request_threshold:
            stats.slow_requests += 1
        access = ctx.access_log
        if access is not None and self.response_complete and self.scope:
            access.log(self.scope, self.status, self.bytes_sent, duration, self.request_id)
        ctx.tasks.discard(self.task)  # not there when it never waited (an eager start)
