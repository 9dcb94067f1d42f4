"""The WSGI bridge: a WSGI app on a FastCGI request, in a bounded thread pool.

:class:`WSGIRequest` runs the app in a worker thread of the server's pool
(``--threads``) and keeps all wire work on the event loop: the thread hands
each piece of the response to the loop and waits until the shared
:class:`~fcgi_asgi.protocol.request.Request` has written it, so the app's
thread waits while the web server is not reading and memory stays bounded.
``wsgi.input`` reads wait the same way for STDIN records; the loop never
blocks. Requests beyond the pool wait for a free thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from wsgiref.util import FileWrapper

from ..asgi.scope import scope_from_params
from ..config import DEFAULT_THREADS
from ..errors import APP_ERRORS, AppProtocolError, ClientDisconnected
from ..protocol.records import decode_params_latin1
from ..protocol.request import GONE, Request
from .environ import ErrorStream, InputStream, build_environ
from .threads import WSGIThreads

if TYPE_CHECKING:
    from ..context import ServerContext
    from ..protocol.connection import FastCGIConnection

__all__ = ["WSGIRequest", "thread_pool"]

logger = logging.getLogger("fcgi_asgi.error")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

_STATUS = re.compile(r"([1-9][0-9][0-9]) [^\r\n\x00]*")
# Status lines already checked, and their codes: apps send the same few over
# and over, and a lookup is cheaper than the match (WSGI hello: about 0.5 us).
_status_codes: dict[str, int] = {}


def thread_pool(ctx: ServerContext, loop: asyncio.AbstractEventLoop) -> WSGIThreads:
    """The server's WSGI threads (``--threads``), made on first use; with
    ``--threads 0``, the threads that take over from the loop (see
    :meth:`WSGIRequest.end_body`)."""
    pool = ctx.executor
    if pool is None:
        pool = ctx.executor = WSGIThreads(loop, ctx.config.threads or DEFAULT_THREADS)
        # The responses of a batch leave now, not a loop turn later: that
        # turn may first hand the GIL to the app's threads (26-27k -> 20.5k
        # req/s WSGI hello behind nginx when they waited).
        pool.after_delivery = ctx.end_turn
    return pool


def _close(result: Any) -> None:
    """Call the response iterable's ``close()``, if it has one (PEP 3333)."""
    close = getattr(result, "close", None)
    if close is not None:
        close()


#: What the app's run on the loop returns once a thread has taken over.
_HANDED_OFF = object()


def _as_bytes(data: Any) -> bytes:
    """A piece of the response body as bytes; a clear error for anything else
    (bytes(5) would be five zero bytes)."""
    if type(data) is bytes:
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AppProtocolError(f"WSGI body must be bytes, not {type(data).__name__}")
    return bytes(data)


class _AppRun(asyncio.Future[None]):
    """A WSGI request's app running in its thread, as ``ctx.tasks`` holds it.

    Not a task: the thread's result comes back through
    :meth:`WSGIThreads.post`, with no coroutine to step on the loop.
    Cancelling it (``--request-timeout``, the end of a graceful shutdown)
    ends the request at once; the thread runs on until the app returns.
    """

    def __init__(self, request: WSGIRequest) -> None:
        super().__init__(loop=request.conn.loop)
        self.request: WSGIRequest | None = request

    def finished(self) -> None:
        """The request is over: resolve, and let go of the request. The two
        refer to each other, and a cycle would leave every request's objects
        to the garbage collector (about 5 us a WSGI hello request)."""
        self.request = None
        self.set_result(None)

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg):
            return False
        request = self.request
        assert request is not None  # not finished, or super().cancel() said False
        request.app_cancelled("WSGI", "still runs in its thread until it returns")
        request.disconnect()  # the app's next read or write raises ClientDisconnected
        request.done()
        return True


class WSGIRequest(Request):
    """One FastCGI request bridged to one WSGI call."""

    __slots__ = ("_environ", "_headers", "_on_loop_now", "_status")

    #: ``environ["FCGI_ROLE"]``, as libfcgi and Apache spell the role.
    role_param = "RESPONDER"
    #: Whether ``--threads 0`` may run this request's app on the loop (a
    #: FILTER's DATA reads would have to wait there).
    inline_ok = True

    def __init__(self, conn: FastCGIConnection, request_id: int, keep_conn: bool) -> None:
        Request.__init__(self, conn, request_id, keep_conn)
        # Set by start_response in the app's thread, read on the loop when
        # the first body goes out (the thread waits for that).
        self._status: int | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        # --threads 0: the environ waiting for the end of STDIN, and whether
        # the app is running on the loop right now.
        self._environ: dict[str, Any] | None = None
        self._on_loop_now = False

    def start(self, params: bytes | bytearray) -> None:
        """Build the environ and run the app in the thread pool."""
        conn = self.conn
        ctx = conn.ctx
        decoded = decode_params_latin1(params)
        # The C scope where it applies (a few us less than build_scope).
        self.scope = scope = scope_from_params(params, conn.config.root_path)
        self.head_only = scope["method"] == "HEAD"
        if ctx.internal_paths and scope["path"] in ctx.internal_paths and self.answers_internal:
            self.answer_internal()
            return
        if not self.admit():
            return
        environ = build_environ(
            decoded,
            scope,
            InputStream(self._fetch_body),
            ErrorStream(self._stderr_from_thread if conn.config.stderr_to_web_server else None),
            multiprocess=conn.config.workers > 1 or conn.config.workers_max > 1,
        )
        environ["FCGI_ROLE"] = role = self.role_param
        if role != "RESPONDER":
            self.add_role_environ(environ)
        self.track(_AppRun(self))
        if conn.config.threads == 0 and self.inline_ok:
            self._environ = environ
            if self.stdin_done:
                self._run_inline()
            return  # the app runs at the end of STDIN (end_body)
        self._run_in_thread(environ)

    def _run_in_thread(self, environ: dict[str, Any]) -> None:
        """Call the app in the pool; the loop hears back in _app_returned."""
        ctx = self.conn.ctx
        thread_pool(ctx, self.conn.loop).run(self._call_app, (ctx.app, environ), self._app_returned)

    # -- --threads 0: the app on the loop -------------------------------------------

    def end_body(self) -> None:
        """The body is complete: with ``--threads 0``, call the app now."""
        Request.end_body(self)
        if self._environ is not None:
            self._run_inline()

    def feed_body(self, data: bytes) -> None:
        """Queue a STDIN chunk; with ``--threads 0``, a body that made the
        connection stop reading goes to a thread, which reads it as it comes."""
        Request.feed_body(self, data)
        environ = self._environ
        if environ is not None and self.conn.reading_paused_for_body:
            self._environ = None
            self._run_in_thread(environ)

    def disconnect(self) -> None:
        """The web server went away: an app not called yet is not called."""
        Request.disconnect(self)
        if self._environ is not None:
            self._environ = None
            run = self.task
            if run is not None and not run.done():
                self.done()
                cast(_AppRun, run).finished()

    def _run_inline(self) -> None:
        """Call the app on the loop (``--threads 0``), its body all here."""
        environ, self._environ = self._environ, None
        run = self.task
        if environ is None or run is None or run.done():
            return  # cancelled (--request-timeout) while its body came
        self._on_loop_now = True
        outcome: Any
        try:
            outcome = self._call_app_on_loop(cast(WSGIApp, self.conn.ctx.app), environ)
        except APP_ERRORS as exc:
            outcome = exc
        finally:
            self._on_loop_now = False
        if outcome is not _HANDED_OFF:
            self._app_returned(outcome)

    def _call_app_on_loop(self, app: WSGIApp, environ: dict[str, Any]) -> Any:
        """Call the app and write its response while the web server keeps up;
        once it does not, a thread iterates the rest (and waits for it)."""
        result = app(environ, self._start_response)
        handed_off = False
        try:
            if self.conn.config.sendfile_header is not None and self._offloaded(result):
                return None
            if type(result) in (list, tuple) and len(result) <= 1:
                return _as_bytes(result[0]) if result else b""
            chunks = iter(result)
            conn = self.conn
            for chunk in chunks:
                if not chunk:
                    continue
                if conn.write_paused or conn.scheduler:
                    handed_off = True
                    # Cleared before the thread starts: from then on its
                    # writes must wait their turn on the loop.
                    self._on_loop_now = False
                    pool = thread_pool(conn.ctx, conn.loop)
                    pool.run(self._stream_rest, (chunk, chunks, result), self._app_returned)
                    return _HANDED_OFF
                self._write(chunk)
            return b""
        finally:
            if not handed_off:
                _close(result)

    def _stream_rest(self, first: Any, chunks: Any, result: Any) -> bytes:
        """The rest of a response the loop began (app's thread, --threads 0)."""
        try:
            self._write(first)
            self._write_all(chunks)
            return b""
        finally:
            _close(result)

    def _write_all(self, chunks: Any) -> None:
        """Write each non-empty piece of the response iterable (app's thread)."""
        for chunk in chunks:
            if chunk:
                self._write(chunk)

    def _now(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop, which we are on, in its one step
        (--threads 0: what the app calls there never has to wait)."""
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        coro.close()
        raise RuntimeError("a WSGI call on the loop had to wait")

    def add_role_environ(self, environ: dict[str, Any]) -> None:
        """Add what a role other than RESPONDER gives the app (protocol/roles.py)."""

    def _app_returned(self, outcome: bytes | BaseException | None) -> None:
        """On the loop: the app returned (the body of a one-piece response,
        b"" once it streamed, None once offloaded to the web server) or
        raised; end the request."""
        run = self.task
        if run is None or run.done():
            return  # cancelled meanwhile: the request has ended already
        try:
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is not None:
                self._send_last(outcome)
        except APP_ERRORS as exc:
            self.app_raised(exc, "WSGI")
        finally:
            self.done()
            cast(_AppRun, run).finished()

    def _send_last(self, data: bytes) -> None:
        """Send the last piece of the response, on the loop, without a task.

        The last piece of a WSGI response never waits (send_body() writes it
        and ends the request; what the web server has not read yet stays in
        the transport, as with an ASGI app's last body), so its coroutine
        finishes in its first step; a small whole response skips it.
        """
        if self._status is not None and not self.response_started and not self.disconnected:
            self.set_head(self._status, self._headers)
            if self.send_whole(data):
                return
        coro = self._send(data, False)
        try:
            coro.send(None)
        except StopIteration:
            return
        coro.close()
        raise RuntimeError("the last piece of a WSGI response had to wait")

    # -- in the app's thread ----------------------------------------------------

    def _threads(self) -> WSGIThreads:
        pool = self.conn.ctx.executor
        assert pool is not None  # made before the app's thread started
        return pool

    def _on_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the event loop and wait for its result (app's
        thread; called on the loop itself with ``--threads 0``)."""
        if self._on_loop_now:
            return self._now(coro)
        return self._threads().call(coro)

    def _call_app(self, app: WSGIApp, environ: dict[str, Any]) -> bytes | None:
        """Call the app and stream its response; return the body of a
        one-piece response for the loop to send (one thread hop fewer)."""
        result = app(environ, self._start_response)
        try:
            if self.conn.config.sendfile_header is not None and self._offloaded(result):
                return None
            if type(result) in (list, tuple) and len(result) <= 1:
                return _as_bytes(result[0]) if result else b""
            self._write_all(result)
            return b""
        finally:
            _close(result)

    def _offloaded(self, result: Any) -> bool:
        """Whether a ``wsgi.file_wrapper`` response on a real file went out as
        ``--sendfile-header`` (app's thread)."""
        if type(result) is not FileWrapper:
            return False
        name = getattr(result.filelike, "name", None)
        if not isinstance(name, str):
            return False
        done: bool = self._on_loop(self._send_file(name))
        return done

    def _start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.response_started:
                    # Too late for another head: the app's error goes on up.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self._status is not None:
            raise AppProtocolError("start_response() called again without exc_info")
        code = _status_codes.get(status) if type(status) is str else None
        if code is None:
            if type(status) is not str or not _STATUS.fullmatch(status):
                raise AppProtocolError(f"WSGI status must be like '200 OK', not {status!r}")
            code = int(status[:3])
            if len(_status_codes) < 1024:
                _status_codes[status] = code
        try:
            encoded = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
        except (AttributeError, UnicodeEncodeError, ValueError, TypeError):
            raise AppProtocolError(
                f"WSGI response headers must be (str, str) pairs in latin-1, not {headers!r}"
            ) from None
        self._headers = encoded
        self._status = code
        return self._write

    def _write(self, data: bytes) -> None:
        """The ``write()`` callable, and each piece of the response iterable."""
        if self._on_loop_now:
            # --threads 0: the loop cannot wait inside the app; pieces of the
            # iterable only get here while the web server keeps up.
            self._now(self._send(_as_bytes(data), True, False))
        else:
            self._on_loop(self._send(_as_bytes(data), True))

    def _stderr_from_thread(self, text: str) -> None:
        """A ``wsgi.errors`` line for FCGI_STDERR; queued on the loop before
        anything the thread sends later, so it precedes END_REQUEST."""
        pool = self.conn.ctx.executor
        if pool is not None and not self._on_loop_now:
            # In the pool's inbox, in order with the thread's results (the
            # loop may take those without a loop callback: WSGIThreads._wake).
            pool.post(self.send_stderr, text)
        else:
            self.conn.loop.call_soon_threadsafe(self.send_stderr, text)

    def _fetch_body(self) -> bytes:
        """The next piece of the request body, b"" at its end (for wsgi.input).

        What has arrived already is taken without a round trip through the
        loop (a 64 KiB POST comes in several STDIN records): a list's append
        and pop are each one call under the GIL, so atomic, and the loop is
        told afterwards so that reading resumes. stdin_done is read first:
        once it is set, every piece of the body is in the list.
        """
        if self._on_loop_now:
            # --threads 0: the whole body is here; one piece, joined once.
            if self.disconnected:
                raise ClientDisconnected(GONE)
            return self.take_body()
        done = self.stdin_done
        if self.body:
            try:
                data = self.body.pop(0)
            except IndexError:  # taken by the loop meanwhile (a disconnect)
                data = b""
            if data:
                self._threads().post(self._consumed, len(data))
                return data
        if self.disconnected:
            raise ClientDisconnected(GONE)
        if done:
            return b""
        data = self._on_loop(self._next_body())
        return cast(bytes, data)

    # -- on the loop ------------------------------------------------------------

    async def _send(self, data: bytes, more_body: bool, wait: bool = True) -> None:
        if self.disconnected:
            raise ClientDisconnected(GONE)
        if not self.response_started:
            if self._status is None:
                raise AppProtocolError("the WSGI application did not call start_response()")
            self.set_head(self._status, self._headers)
        if self.response_complete:
            return  # already cut short (an app still writing after a timeout)
        await self.send_body(data, more_body, wait)

    def _consumed(self, n: int) -> None:
        # At most what is still counted: drop_body() may have counted it already.
        n = min(n, self.body_size)
        self.body_size -= n
        self.conn.body_consumed(n)

    async def _send_file(self, path: str) -> bool:
        if self.disconnected:
            raise ClientDisconnected(GONE)
        if self.response_started:
            return False
        if self._status is None:
            raise AppProtocolError("the WSGI application did not call start_response()")
        self.set_head(self._status, self._headers)
        if not self.offload(path):
            return False  # streamed after all; the head waits for the body
        await self.send_body(b"", False)
        return True

    async def _next_body(self) -> bytes:
        while True:
            if self.body:
                return self.take_body()
            if self.disconnected:
                raise ClientDisconnected(GONE)
            if self.stdin_done or self.response_complete:
                return b""
            await self.wait()
