"""One FastCGI request and its response, from the client's side, free of I/O.

What a web server does with a FastCGI application, as bytes in and events
out: :func:`request_start` frames BEGIN_REQUEST and PARAMS,
:func:`stdin_records` the body, and :class:`ResponseParser` turns what the
application sends back into a parsed CGI response head, body chunks and the
END_REQUEST. The httpx transports (:mod:`fcgi_asgi.httpx`) put sockets around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

from .protocol.records import (
    END_REQUEST,
    KEEP_CONN,
    PARAMS,
    RESPONDER,
    STDERR,
    STDIN,
    STDOUT,
    ProtocolError,
    RecordReader,
    encode_begin_request,
    encode_pairs,
    encode_record,
    encode_stream,
    parse_end_request,
)

__all__ = [
    "BadResponse",
    "Body",
    "End",
    "Head",
    "ResponseParser",
    "request_start",
    "stdin_records",
]

#: The request id of every exchange: one request at a time per connection,
#: as nginx and php-fpm do (php-fpm resets a connection that multiplexes).
REQUEST_ID = 1
#: A response head larger than this is refused (nginx's default buffers are 4-8 KiB).
MAX_HEAD = 64 << 10
#: STDERR kept per response for the caller to see; more is counted, not kept.
MAX_STDERR = 64 << 10


class BadResponse(ProtocolError):
    """The application's CGI response head could not be parsed."""


@dataclass(frozen=True)
class Head:
    """The parsed CGI response head."""

    status: int
    reason: str
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Body:
    """A chunk of the response body."""

    data: bytes


@dataclass(frozen=True)
class End:
    """END_REQUEST arrived: the response is complete."""

    app_status: int
    protocol_status: int


Event = Head | Body | End


def request_start(params: Mapping[bytes, bytes], *, keep_conn: bool) -> bytes:
    """BEGIN_REQUEST (RESPONDER) and the whole PARAMS stream, as one byte string."""
    data = encode_pairs(params)
    pieces: list[bytes | memoryview] = [
        encode_begin_request(REQUEST_ID, RESPONDER, KEEP_CONN if keep_conn else 0)
    ]
    pieces += encode_stream(PARAMS, REQUEST_ID, data)
    pieces.append(encode_record(PARAMS, REQUEST_ID))
    return b"".join(pieces)


def stdin_records(chunk: bytes) -> bytes:
    """A chunk of request body as STDIN records; ``b""`` gives the end-of-body record."""
    if not chunk:
        return encode_record(STDIN, REQUEST_ID)
    return b"".join(encode_stream(STDIN, REQUEST_ID, chunk))


def parse_head(data: bytes) -> Head:
    """Parse a CGI response head (without its blank line) per RFC 3875 section 6.

    ``Status:`` gives the status; a ``Location:`` without one is a redirect
    (302), as web servers answer it; neither means 200.
    """
    status: int | None = None
    reason = ""
    headers: list[tuple[bytes, bytes]] = []
    location = False
    for line in data.split(b"\n"):
        line = line.removesuffix(b"\r")
        if not line:
            continue  # only an empty head has one
        name, sep, value = line.partition(b":")
        name = name.strip()
        if not sep or not name or b" " in name or b"\t" in name:
            raise BadResponse(f"the application sent a bad CGI header line {line[:100]!r}")
        value = value.strip()
        lname = name.lower()
        if lname == b"status":
            code, _, text = value.partition(b" ")
            if len(code) != 3 or not code.isdigit() or code[:1] == b"0":
                raise BadResponse(f"the application sent a bad Status: {value[:100]!r}")
            status = int(code)
            reason = text.decode("latin-1").strip()
            continue
        if lname == b"location":
            location = True
        headers.append((name, value))
    if status is None:
        status = 302 if location else 200
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    return Head(status, reason, headers)


@dataclass
class ResponseParser:
    """Turns the application's bytes into :class:`Head`, :class:`Body` and :class:`End`.

    Raises :class:`~fcgi_asgi.protocol.records.ProtocolError` for anything a broken
    application sends: a bad record, a record for another request, a head
    that does not parse or is too large, bytes after END_REQUEST.
    """

    reader: RecordReader = field(default_factory=RecordReader)
    #: STDERR output (the first :data:`MAX_STDERR` bytes).
    stderr: bytearray = field(default_factory=bytearray)
    #: Any byte of the response has arrived (then a retry is no longer safe).
    started: bool = False
    head: Head | None = None
    end: End | None = None
    _head_buf: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; returns the events it completes, in order."""
        if data:
            self.started = True
        events: list[Event] = []
        for rtype, rid, content in self.reader.feed(data):
            if rid == 0:
                continue  # a management record (UNKNOWN_TYPE): nothing asked for it
            if self.end is not None:
                raise ProtocolError(f"the application sent record type {rtype} after END_REQUEST")
            if rid != REQUEST_ID:
                raise ProtocolError(
                    f"the application sent a record for request id {rid}; only {REQUEST_ID} exists"
                )
            if rtype == STDOUT:
                if content:
                    self._stdout(content, events)
            elif rtype == STDERR:
                room = MAX_STDERR - len(self.stderr)
                if room > 0:
                    self.stderr += content[:room]
            elif rtype == END_REQUEST:
                app_status, protocol_status = parse_end_request(content)
                if self.head is None and (self._head_buf or not protocol_status):
                    raise BadResponse(
                        "the application ended the request without a complete CGI response head"
                    )
                self.end = End(app_status, protocol_status)
                events.append(self.end)
            else:
                raise ProtocolError(f"the application sent record type {rtype} to a client")
        if self.end is not None and self.reader.buffered:
            raise ProtocolError("the application sent a partial record after END_REQUEST")
        return events

    def _stdout(self, content: bytes, events: list[Event]) -> None:
        if self.head is not None:
            events.append(Body(content))
            return
        buf = self._head_buf
        start = max(0, len(buf) - 3)
        buf += content
        end, sep = _find_blank_line(buf, start)
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise BadResponse(f"the CGI response head exceeds {MAX_HEAD} bytes")
            return
        self.head = parse_head(bytes(buf[:end]))
        events.append(self.head)
        rest = bytes(buf[end + sep :])
        self._head_buf = bytearray()
        if rest:
            events.append(Body(rest))


def _find_blank_line(buf: bytearray, start: int) -> tuple[int, int]:
    """Where the head ends and how long its blank line is; (-1, 0) if not yet."""
    crlf = buf.find(b"\r\n\r\n", start)
    lf = buf.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf, 2
    if crlf >= 0:
        return crlf, 4
    return -1, 0
