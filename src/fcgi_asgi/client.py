"""An asyncio FastCGI client, as a web server would speak to the gateway.

Used by the tests, the benchmarks and health checks. It multiplexes requests
on one connection, streams request bodies in, reads responses incrementally,
sends ABORT_REQUEST and GET_VALUES, and can write raw bytes for protocol tests::

    async with await FastCGIClient.connect(path="/run/app.sock") as client:
        response = await client.request("GET", "/hello")
        print(response.status, response.body)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from .protocol.records import (
    ABORT_REQUEST,
    AUTHORIZER,
    DATA,
    END_REQUEST,
    FILTER,
    GET_VALUES,
    GET_VALUES_RESULT,
    KEEP_CONN,
    PARAMS,
    RESPONDER,
    STDERR,
    STDIN,
    STDOUT,
    Record,
    RecordReader,
    decode_pairs,
    encode_begin_request,
    encode_pairs,
    encode_record,
    encode_stream,
    parse_end_request,
)

__all__ = ["ClientRequest", "FastCGIClient", "Response", "build_params", "parse_cgi_head"]

_QUEUE_RECORDS = 64  # per request: past this the client stops reading (backpressure)


def build_params(
    method: str = "GET",
    path: str = "/",
    *,
    query: str = "",
    headers: Iterable[tuple[str, str | bytes]] | Mapping[str, str | bytes] = (),
    content_length: int | None = None,
    script_name: str = "",
    extra: Mapping[str, str | bytes] | None = None,
) -> dict[bytes, bytes]:
    """CGI params like a web server sends (nginx-style, with REQUEST_URI).

    ``path`` is the raw request path as the client sent it (percent-encoded).
    """
    uri = path + ("?" + query if query else "")
    params: dict[bytes, bytes] = {
        b"GATEWAY_INTERFACE": b"CGI/1.1",
        b"SERVER_SOFTWARE": b"fcgi-asgi-client",
        b"REQUEST_METHOD": method.encode(),
        b"REQUEST_URI": uri.encode(),
        b"QUERY_STRING": query.encode(),
        b"SCRIPT_NAME": script_name.encode(),
        b"PATH_INFO": path[len(script_name) :].encode(),
        b"SERVER_PROTOCOL": b"HTTP/1.1",
        b"SERVER_NAME": b"localhost",
        b"SERVER_ADDR": b"127.0.0.1",
        b"SERVER_PORT": b"80",
        b"REMOTE_ADDR": b"127.0.0.1",
        b"REMOTE_PORT": b"50000",
    }
    if content_length is not None:
        params[b"CONTENT_LENGTH"] = str(content_length).encode()
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        raw = value.encode("latin-1") if isinstance(value, str) else value
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            params[key.encode()] = raw
        else:
            params[b"HTTP_" + key.encode()] = raw
    for key, value in (extra or {}).items():
        params[key.encode()] = value.encode("latin-1") if isinstance(value, str) else value
    return params


def parse_cgi_head(data: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Split CGI output into ``(status, reason, headers, body)``."""
    end = data.find(b"\r\n\r\n")
    sep = 4
    if end < 0:
        end = data.find(b"\n\n")
        sep = 2
    if end < 0:
        raise ValueError("CGI response has no end of head")
    status, reason = 200, "OK"
    headers: list[tuple[str, str]] = []
    for line in data[:end].decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        value = value.strip()
        if name.lower() == "status":
            code, _, reason = value.partition(" ")
            status = int(code)
        else:
            headers.append((name.lower(), value))
    return status, reason, headers, data[end + sep :]


@dataclass
class Response:
    """A whole FastCGI response, parsed."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    stderr: bytes = b""
    app_status: int = 0
    protocol_status: int = 0
    raw: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_list(self, name: str) -> list[str]:
        """Every value of header ``name``, in order."""
        name = name.lower()
        return [v for k, v in self.headers if k == name]


class ClientRequest:
    """One request on a :class:`FastCGIClient` connection."""

    def __init__(self, client: FastCGIClient, request_id: int) -> None:
        self.client = client
        self.request_id = request_id
        self.queue: asyncio.Queue[Record | None] = asyncio.Queue(_QUEUE_RECORDS)
        self.stderr = bytearray()
        self.app_status: int | None = None
        self.protocol_status: int | None = None
        self.ended = False

    async def send_body(self, data: bytes) -> None:
        """Send a chunk of request body as STDIN records (not the end)."""
        if data:
            self.client.write(encode_stream(STDIN, self.request_id, data))
            await self.client.drain()

    async def end_body(self) -> None:
        """Send the empty STDIN record that ends the body."""
        self.client.write([encode_record(STDIN, self.request_id)])
        await self.client.drain()

    async def send_data(self, data: bytes, end: bool = True) -> None:
        """Send FILTER's DATA stream (after STDIN ended); ``end`` sends its empty record."""
        pieces = encode_stream(DATA, self.request_id, data) if data else []
        if end:
            pieces.append(encode_record(DATA, self.request_id))
        self.client.write(pieces)
        await self.client.drain()

    async def abort(self) -> None:
        """Send ABORT_REQUEST for this request."""
        self.client.write([encode_record(ABORT_REQUEST, self.request_id)])
        await self.client.drain()

    async def read_stdout(self) -> bytes:
        """The next chunk of STDOUT; ``b""`` once END_REQUEST has arrived.

        Raises :class:`ConnectionError` if the connection closes first.
        """
        while not self.ended:
            if self.queue.empty() and self.client.closed.is_set():
                self.ended = True
                raise ConnectionError("the FastCGI connection closed before END_REQUEST")
            record = await self.queue.get()
            if record is None:
                self.ended = True
                raise ConnectionError("the FastCGI connection closed before END_REQUEST")
            rtype, _, content = record
            if rtype == STDOUT:
                if content:
                    return content
            elif rtype == STDERR:
                self.stderr += content
            elif rtype == END_REQUEST:
                self.app_status, self.protocol_status = parse_end_request(content)
                self.ended = True
                self.client.release(self.request_id)
        return b""

    async def iter_stdout(self) -> AsyncIterator[bytes]:
        """Iterate over STDOUT chunks until END_REQUEST."""
        while chunk := await self.read_stdout():
            yield chunk

    async def response(self) -> Response:
        """Read the rest of the response and parse it."""
        out = bytearray()
        async for chunk in self.iter_stdout():
            out += chunk
        raw = bytes(out)
        if raw:
            status, reason, headers, body = parse_cgi_head(raw)
        else:
            status, reason, headers, body = 0, "", [], b""
        return Response(
            status,
            reason,
            headers,
            body,
            bytes(self.stderr),
            self.app_status or 0,
            self.protocol_status or 0,
            raw,
        )


class FastCGIClient:
    """A FastCGI connection to an application (the gateway, php-fpm, ...)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.requests: dict[int, ClientRequest] = {}
        self.management: asyncio.Queue[Record | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self._ids = itertools.count(1)
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def connect(
        cls, path: str | None = None, host: str | None = None, port: int | None = None
    ) -> FastCGIClient:
        """Open a connection to a unix socket ``path`` or TCP ``host:port``."""
        if path is not None:
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            reader, writer = await asyncio.open_connection(host or "127.0.0.1", port)
        return cls(reader, writer)

    async def __aenter__(self) -> FastCGIClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection and stop reading."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def write(self, pieces: Iterable[bytes | memoryview]) -> None:
        """Write raw bytes (records) to the connection."""
        # Joined: asyncio's writelines() on Python 3.12 skips flow control.
        self.writer.write(b"".join(pieces))

    async def drain(self) -> None:
        """Wait while the application is not reading."""
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        """Write arbitrary bytes, for protocol tests."""
        self.writer.write(data)
        await self.writer.drain()

    def release(self, request_id: int) -> None:
        """Forget a finished request so its id can be reused."""
        self.requests.pop(request_id, None)

    def _next_id(self) -> int:
        for _ in range(0xFFFF):
            rid = next(self._ids)
            if rid > 0xFFFF:
                self._ids = itertools.count(2)
                rid = 1
            if rid not in self.requests:
                return rid
        raise RuntimeError("no free request id")

    async def begin(
        self,
        params: Mapping[bytes, bytes],
        *,
        keep_conn: bool = True,
        role: int = RESPONDER,
        request_id: int | None = None,
        params_record_size: int = 65535,
    ) -> ClientRequest:
        """Send BEGIN_REQUEST and PARAMS; returns the request to stream STDIN to."""
        rid = request_id if request_id is not None else self._next_id()
        req = ClientRequest(self, rid)
        self.requests[rid] = req
        data = encode_pairs(params)
        pieces: list[bytes | memoryview] = [
            encode_begin_request(rid, role, KEEP_CONN if keep_conn else 0)
        ]
        for start in range(0, len(data), params_record_size):
            pieces.append(encode_record(PARAMS, rid, data[start : start + params_record_size]))
        pieces.append(encode_record(PARAMS, rid))
        self.write(pieces)
        await self.drain()
        return req

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        query: str = "",
        headers: Iterable[tuple[str, str | bytes]] | Mapping[str, str | bytes] = (),
        body: bytes = b"",
        keep_conn: bool = True,
        params: Mapping[bytes, bytes] | None = None,
        role: int = RESPONDER,
        data: bytes = b"",
    ) -> Response:
        """Send a whole request and return the whole response.

        An AUTHORIZER request goes without STDIN (as Apache sends it); a
        FILTER request sends ``data`` as its DATA stream after the body.
        """
        if params is None:
            params = build_params(
                method,
                path,
                query=query,
                headers=headers,
                content_length=len(body) if body or method in ("POST", "PUT") else None,
            )
        req = await self.begin(params, keep_conn=keep_conn, role=role)
        if role != AUTHORIZER:
            await req.send_body(body)
            await req.end_body()
        if role == FILTER:
            await req.send_data(data)
        return await req.response()

    async def get_values(self, names: Iterable[bytes]) -> dict[bytes, bytes]:
        """Ask GET_VALUES for ``names``; returns the GET_VALUES_RESULT pairs."""
        self.write([encode_record(GET_VALUES, 0, encode_pairs((n, b"") for n in names))])
        await self.drain()
        record = await self.next_management_record()
        if record.type != GET_VALUES_RESULT:
            raise ValueError(f"expected GET_VALUES_RESULT, got record type {record.type}")
        return dict(decode_pairs(record.content))

    async def next_management_record(self) -> Record:
        """The next record with request id 0."""
        record = await self.management.get()
        if record is None:
            raise ConnectionError("the FastCGI connection closed")
        return record

    async def _read_loop(self) -> None:
        parser = RecordReader()
        try:
            while True:
                data = await self.reader.read(256 << 10)
                if not data:
                    break
                for record in parser.feed(data):
                    if record.request_id == 0:
                        self.management.put_nowait(record)
                        continue
                    req = self.requests.get(record.request_id)
                    if req is not None:
                        await req.queue.put(record)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            self.management.put_nowait(None)
            for req in list(self.requests.values()):
                # A full queue is drained by its reader, who then sees `closed`.
                if not req.queue.full():
                    req.queue.put_nowait(None)
