"""httpx transports that speak FastCGI: call php-fpm, the gateway or any FastCGI app.

::

    transport = FastCGITransport(path="/run/php/php-fpm.sock",
                                 script_filename="/srv/www/index.php")
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.get("/hello?name=x")

:class:`FastCGITransport` is an :class:`httpx.AsyncBaseTransport` written on
anyio (asyncio and trio alike); :class:`SyncFastCGITransport` is its
:class:`httpx.BaseTransport` twin on blocking sockets. Both send the CGI
params a web server sends, keep connections open with FCGI_KEEP_CONN in a
bounded pool, stream the request body and the response, apply httpx's
connect/read/write/pool timeouts and raise httpx's own exceptions.

Needs the ``httpx`` extra: ``pip install 'fcgi-asgi[httpx]'``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

try:
    import anyio
    import anyio.abc
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"fcgi_asgi.httpx needs httpx and anyio ({exc.name} is missing): "
        "pip install 'fcgi-asgi[httpx]'"
    ) from exc

from .cgi_exchange import Body, End, Event, Head, ResponseParser, request_start, stdin_records
from .protocol.records import ProtocolError

__all__ = ["FastCGITransport", "SyncFastCGITransport", "cgi_params"]

_READ_SIZE = 64 << 10
# Hop-by-hop headers are the web server's business, not the application's;
# Proxy is dropped as web servers are told to (httpoxy, CVE-2016-5385).
_DROPPED = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"proxy")
) | {b"transfer-encoding"}
#: RFC 9110 idempotent methods: the only ones retried on a fresh connection.
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))


def cgi_params(
    request: httpx.Request,
    *,
    script_name: str = "",
    script_filename: str | None = None,
    document_root: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[bytes, bytes]:
    """The CGI params a web server would send for ``request`` (RFC 3875, as nginx does).

    ``script_name`` is the prefix the application is mounted at: a path under
    it is split into SCRIPT_NAME and PATH_INFO; otherwise SCRIPT_NAME is empty
    and PATH_INFO is the whole path. ``script_filename`` (php-fpm runs that
    file) and ``document_root`` are sent when given; ``extra`` params come last
    and win. Headers become ``HTTP_*`` params, except hop-by-hop ones and names
    with an underscore (nginx drops those too: ``X-A_B`` would pass for ``X-A-B``).
    """
    url = request.url
    path = url.path
    if script_name and (path == script_name or path.startswith(script_name.rstrip("/") + "/")):
        path_info = path[len(script_name) :]
    else:
        script_name, path_info = "", path
    https = url.scheme == "https"
    params: dict[bytes, bytes] = {
        b"GATEWAY_INTERFACE": b"CGI/1.1",
        b"SERVER_SOFTWARE": b"fcgi-asgi-httpx",
        b"SERVER_PROTOCOL": b"HTTP/1.1",
        b"REQUEST_METHOD": request.method.encode("ascii"),
        b"REQUEST_SCHEME": url.scheme.encode("ascii"),
        b"REQUEST_URI": url.raw_path,
        b"DOCUMENT_URI": path.encode(),
        b"QUERY_STRING": url.query,
        b"SCRIPT_NAME": script_name.encode(),
        b"PATH_INFO": path_info.encode(),
        b"SERVER_NAME": url.raw_host or b"localhost",
        b"SERVER_PORT": str(url.port or (443 if https else 80)).encode(),
        b"SERVER_ADDR": b"127.0.0.1",
        b"REMOTE_ADDR": b"127.0.0.1",
    }
    if https:
        params[b"HTTPS"] = b"on"
    if document_root is not None:
        params[b"DOCUMENT_ROOT"] = document_root.encode()
    if script_filename is not None:
        params[b"SCRIPT_FILENAME"] = script_filename.encode()
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower in _DROPPED or b"_" in name:
            continue
        if lower == b"content-type" or lower == b"content-length":
            params[lower.upper().replace(b"-", b"_")] = value
            continue
        key = b"HTTP_" + lower.upper().replace(b"-", b"_")
        if key in params:  # a repeated header: one param, as HTTP folds it
            params[key] += (b"; " if lower == b"cookie" else b", ") + value
        else:
            params[key] = value
    for extra_name, text in (extra or {}).items():
        params[extra_name.encode()] = text.encode()
    return params


@dataclass
class _Options:
    """What both transports share: where to connect and which params to send."""

    path: str | None
    host: str
    port: int | None
    script_name: str
    script_filename: str | None
    document_root: str | None
    params: Mapping[str, str]
    keep_conn: bool
    max_connections: int
    keepalive_expiry: float

    def __post_init__(self) -> None:
        if (self.path is None) == (self.port is None):
            raise ValueError("give either path= (a unix socket) or port= (with host=)")
        if self.max_connections < 1:
            raise ValueError("max_connections must be 1 or more")

    def params_for(self, request: httpx.Request) -> dict[bytes, bytes]:
        return cgi_params(
            request,
            script_name=self.script_name,
            script_filename=self.script_filename,
            document_root=self.document_root,
            extra=self.params,
        )

    @property
    def where(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"


def _retryable(request: httpx.Request) -> bool:
    """Whether a request may be sent again after a reused connection failed.

    Only when sending it twice does no harm (an idempotent method) and its
    body can be sent again (held in memory, not a one-shot stream).
    """
    return request.method in _IDEMPOTENT and isinstance(request.stream, httpx.ByteStream)


def _readable(sock: socket.socket) -> bool:
    """An idle connection that is readable was closed (or spoke out of turn): stale."""
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _timeout(request: httpx.Request, kind: str) -> float | None:
    value: float | None = request.extensions.get("timeout", {}).get(kind)
    return value


@contextlib.contextmanager
def _mapped(
    request: httpx.Request,
    on_timeout: type[httpx.TimeoutException],
    on_error: type[httpx.NetworkError],
) -> Iterator[None]:
    """Turn socket and anyio errors into httpx's exceptions."""
    try:
        yield
    except TimeoutError as exc:  # before OSError, which it subclasses
        raise on_timeout(f"timed out ({on_timeout.__name__})", request=request) from exc
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        raise on_error(str(exc) or type(exc).__name__, request=request) from exc


def _feed(parser: ResponseParser, data: bytes, request: httpx.Request) -> list[Event]:
    if not data:
        raise httpx.RemoteProtocolError(
            "the FastCGI application closed the connection before END_REQUEST", request=request
        )
    try:
        return parser.feed(data)
    except ProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc


def _response(
    head: Head | None, stream: httpx.AsyncByteStream | httpx.SyncByteStream, info: dict[str, Any]
) -> httpx.Response:
    if head is None:
        # END_REQUEST with a protocolStatus (OVERLOADED, ...) and no output:
        # the application refused the request, as a web server answers it.
        head = Head(503, "Service Unavailable", [])
    return httpx.Response(
        head.status,
        headers=head.headers,
        stream=stream,
        extensions={
            "http_version": b"HTTP/1.1",
            "reason_phrase": head.reason.encode("latin-1", "replace"),
            "fastcgi": info,
        },
    )


class _Configured:
    """The constructor both transports share (see :class:`FastCGITransport`)."""

    _options: _Options

    def __init__(
        self,
        path: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        script_name: str = "",
        script_filename: str | None = None,
        document_root: str | None = None,
        params: Mapping[str, str] | None = None,
        keep_conn: bool = True,
        max_connections: int = 10,
        keepalive_expiry: float = 5.0,
    ) -> None:
        self._options = _Options(
            path,
            host,
            port,
            script_name,
            script_filename,
            document_root,
            dict(params or {}),
            keep_conn,
            max_connections,
            keepalive_expiry,
        )
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError


class _StaleConnection(Exception):
    """A reused connection failed before any byte of the response came back."""


@dataclass(eq=False)
class _Exchange:
    """One request on one connection: its parser and what it has parsed so far."""

    request: httpx.Request
    reused: bool
    parser: ResponseParser = field(default_factory=ResponseParser)
    events: list[Event] = field(default_factory=list)
    #: The response's ``fastcgi`` extension: stderr now, the statuses at the end.
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.info["stderr"] = self.parser.stderr

    def head_or_end(self) -> bool:
        return any(isinstance(e, Head | End) for e in self.events)

    def take_body(self) -> list[bytes]:
        chunks = [e.data for e in self.events if isinstance(e, Body)]
        self.events.clear()
        return chunks

    def finished(self) -> bool:
        end = self.parser.end
        if end is not None:
            self.info["app_status"] = end.app_status
            self.info["protocol_status"] = end.protocol_status
        return end is not None

    def raise_stale(self, exc: Exception) -> None:
        """Turn a send/receive failure into a retry if the connection was reused and
        nothing of the response came back yet."""
        if self.reused and not self.parser.started:
            raise _StaleConnection(str(exc)) from exc


# -- async ---------------------------------------------------------------------


class _AsyncConnection:
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.served = 0
        self.idle_since = 0.0

    def stale(self, expiry: float) -> bool:
        if time.monotonic() - self.idle_since > expiry:
            return True
        return _readable(self.stream.extra(anyio.abc.SocketAttribute.raw_socket))

    async def send(self, data: bytes, request: httpx.Request) -> None:
        with (
            _mapped(request, httpx.WriteTimeout, httpx.WriteError),
            anyio.fail_after(_timeout(request, "write")),
        ):
            await self.stream.send(data)

    async def receive(self, request: httpx.Request) -> bytes:
        with (
            _mapped(request, httpx.ReadTimeout, httpx.ReadError),
            anyio.fail_after(_timeout(request, "read")),
        ):
            try:
                return await self.stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                return b""

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
            await self.stream.aclose()


class FastCGITransport(_Configured, httpx.AsyncBaseTransport):
    """An httpx async transport to a FastCGI application (asyncio or trio, via anyio).

    Give ``path`` (a unix socket) or ``port`` (and ``host``, default
    127.0.0.1). ``script_name``, ``script_filename``, ``document_root`` and
    ``params`` shape the CGI params (see :func:`cgi_params`); php-fpm needs
    ``script_filename``. With ``keep_conn`` (the default) connections stay
    open for the next request, at most ``max_connections`` in all, each idle
    for at most ``keepalive_expiry`` seconds. One request runs per connection
    at a time, as web servers do. The request body is sent in full before the
    response is read, as httpx's own HTTP/1.1 transport does.
    A streamed body of unknown length is sent without CONTENT_LENGTH (our
    gateway reads it to the end of FCGI_STDIN; php-fpm reads it as empty).

    A reused connection found closed before any byte of the response came
    back is replaced and the request sent again, once, when that is safe:
    an idempotent method and a body held in memory.

    Each response carries a ``fastcgi`` extension: ``stderr`` (what the app
    wrote to FCGI_STDERR, up to 64 KiB) and, once the body has been read,
    ``app_status`` and ``protocol_status`` from END_REQUEST. A request the
    application refuses (END_REQUEST with OVERLOADED, say) is answered 503.
    """

    def _setup(self) -> None:
        self._idle: list[_AsyncConnection] = []
        # Made on first use: an anyio primitive belongs to the running event loop.
        self._slots: anyio.Semaphore | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the application; the response body streams from the socket."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        params = self._options.params_for(request)
        if self._slots is None:
            self._slots = anyio.Semaphore(self._options.max_connections)
        slots = self._slots
        with _mapped(request, httpx.PoolTimeout, httpx.ConnectError):
            with anyio.fail_after(_timeout(request, "pool")):
                await slots.acquire()
        retry = _retryable(request)
        try:
            while True:
                conn = await self._connection(request)
                exchange = _Exchange(request, reused=conn.served > 0)
                try:
                    await self._start(conn, exchange, params)
                except _StaleConnection:
                    await conn.aclose()
                    if retry:
                        retry = False
                        continue
                    raise httpx.RemoteProtocolError(
                        "the FastCGI application closed a kept connection", request=request
                    ) from None
                except BaseException:
                    await conn.aclose()
                    raise
                break
        except BaseException:
            slots.release()
            raise
        head = next((e for e in exchange.events if isinstance(e, Head)), None)
        stream = _AsyncResponseStream(self, conn, exchange)
        return _response(head, stream, exchange.info)

    async def _connection(self, request: httpx.Request) -> _AsyncConnection:
        expiry = self._options.keepalive_expiry
        while self._idle:
            conn = self._idle.pop()
            if not conn.stale(expiry):
                return conn
            await conn.aclose()
        opts = self._options
        with (
            _mapped(request, httpx.ConnectTimeout, httpx.ConnectError),
            anyio.fail_after(_timeout(request, "connect")),
        ):
            if opts.path is not None:
                stream: anyio.abc.SocketStream = await anyio.connect_unix(opts.path)
            else:
                assert opts.port is not None
                stream = await anyio.connect_tcp(opts.host, opts.port)
        return _AsyncConnection(stream)

    async def _start(
        self, conn: _AsyncConnection, exchange: _Exchange, params: dict[bytes, bytes]
    ) -> None:
        """Send the request and read up to the response head."""
        request = exchange.request
        try:
            await conn.send(request_start(params, keep_conn=self._options.keep_conn), request)
            assert isinstance(request.stream, httpx.AsyncByteStream)
            async for chunk in request.stream:
                if chunk:
                    await conn.send(stdin_records(chunk), request)
            await conn.send(stdin_records(b""), request)
            while not exchange.head_or_end():
                exchange.events += _feed(exchange.parser, await conn.receive(request), request)
        except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            exchange.raise_stale(exc)
            raise

    def _release(self, conn: _AsyncConnection, reusable: bool) -> None:
        """Put ``conn`` back in the pool (or drop it) and free its slot."""
        if reusable and self._options.keep_conn and not self._closed:
            conn.served += 1
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        if self._slots is not None:
            self._slots.release()

    async def aclose(self) -> None:
        """Close the idle connections; connections of open responses close with them."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()


class _AsyncResponseStream(httpx.AsyncByteStream):
    def __init__(
        self, transport: FastCGITransport, conn: _AsyncConnection, exchange: _Exchange
    ) -> None:
        self._transport = transport
        self._conn: _AsyncConnection | None = conn
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        exchange = self._exchange
        request = exchange.request
        for chunk in exchange.take_body():
            yield chunk
        conn = self._conn
        while conn is not None and not exchange.finished():
            exchange.events += _feed(exchange.parser, await conn.receive(request), request)
            for chunk in exchange.take_body():
                yield chunk
        await self.aclose()

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        reusable = self._exchange.finished()
        if not reusable:
            # Unread output would be read as the next response's: drop the connection.
            await conn.aclose()
        self._transport._release(conn, reusable)


# -- sync ----------------------------------------------------------------------


class _SyncConnection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.served = 0
        self.idle_since = 0.0

    def stale(self, expiry: float) -> bool:
        return time.monotonic() - self.idle_since > expiry or _readable(self.sock)

    def send(self, data: bytes, request: httpx.Request) -> None:
        with _mapped(request, httpx.WriteTimeout, httpx.WriteError):
            self.sock.settimeout(_timeout(request, "write"))
            self.sock.sendall(data)

    def receive(self, request: httpx.Request) -> bytes:
        with _mapped(request, httpx.ReadTimeout, httpx.ReadError):
            self.sock.settimeout(_timeout(request, "read"))
            return self.sock.recv(_READ_SIZE)

    def close(self) -> None:
        self.sock.close()


class SyncFastCGITransport(_Configured, httpx.BaseTransport):
    """The blocking twin of :class:`FastCGITransport`, for :class:`httpx.Client`.

    Same arguments and behaviour, on plain sockets; safe to share between threads.
    """

    def _setup(self) -> None:
        self._idle: list[_SyncConnection] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self._options.max_connections)
        self._closed = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the application; the response body streams from the socket."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        params = self._options.params_for(request)
        pool_timeout = _timeout(request, "pool")
        if not self._slots.acquire(timeout=pool_timeout):
            raise httpx.PoolTimeout("no free FastCGI connection in time", request=request)
        retry = _retryable(request)
        try:
            while True:
                conn = self._connection(request)
                exchange = _Exchange(request, reused=conn.served > 0)
                try:
                    self._start(conn, exchange, params)
                except _StaleConnection:
                    conn.close()
                    if retry:
                        retry = False
                        continue
                    raise httpx.RemoteProtocolError(
                        "the FastCGI application closed a kept connection", request=request
                    ) from None
                except BaseException:
                    conn.close()
                    raise
                break
        except BaseException:
            self._slots.release()
            raise
        head = next((e for e in exchange.events if isinstance(e, Head)), None)
        return _response(head, _SyncResponseStream(self, conn, exchange), exchange.info)

    def _connection(self, request: httpx.Request) -> _SyncConnection:
        expiry = self._options.keepalive_expiry
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                break
            if not conn.stale(expiry):
                return conn
            conn.close()
        opts = self._options
        with _mapped(request, httpx.ConnectTimeout, httpx.ConnectError):
            if opts.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(_timeout(request, "connect"))
                    sock.connect(opts.path)
                except BaseException:
                    sock.close()
                    raise
            else:
                assert opts.port is not None
                sock = socket.create_connection(
                    (opts.host, opts.port), timeout=_timeout(request, "connect")
                )
        return _SyncConnection(sock)

    def _start(
        self, conn: _SyncConnection, exchange: _Exchange, params: dict[bytes, bytes]
    ) -> None:
        request = exchange.request
        try:
            conn.send(request_start(params, keep_conn=self._options.keep_conn), request)
            assert isinstance(request.stream, httpx.SyncByteStream)
            for chunk in request.stream:
                if chunk:
                    conn.send(stdin_records(chunk), request)
            conn.send(stdin_records(b""), request)
            while not exchange.head_or_end():
                exchange.events += _feed(exchange.parser, conn.receive(request), request)
        except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError) as exc:
            exchange.raise_stale(exc)
            raise

    def _release(self, conn: _SyncConnection, reusable: bool) -> None:
        with self._lock:
            if reusable and self._options.keep_conn and not self._closed:
                conn.served += 1
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
        self._slots.release()

    def close(self) -> None:
        """Close the idle connections; connections of open responses close with them."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _SyncResponseStream(httpx.SyncByteStream):
    def __init__(
        self, transport: SyncFastCGITransport, conn: _SyncConnection, exchange: _Exchange
    ) -> None:
        self._transport = transport
        self._conn: _SyncConnection | None = conn
        self._exchange = exchange

    def __iter__(self) -> Iterator[bytes]:
        exchange = self._exchange
        request = exchange.request
        yield from exchange.take_body()
        conn = self._conn
        while conn is not None and not exchange.finished():
            exchange.events += _feed(exchange.parser, conn.receive(request), request)
            yield from exchange.take_body()
        self.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        reusable = self._exchange.finished()
        if not reusable:
            conn.close()
        self._transport._release(conn, reusable)
