"""The AUTHORIZER and FILTER roles on the wire side.

A web server asks an AUTHORIZER whether a request may pass (lighttpd
``"mode" => "authorizer"``, Apache ``mod_authnz_fcgi``): PARAMS only, no
body; a 200 lets the request through, any other response is the client's
answer. A FILTER request carries a second input stream, DATA (the file the
web server read), after STDIN.

RESPONDER requests never touch this module: the connection looks a role
class up here only when BEGIN_REQUEST names another role.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ..errors import ClientDisconnected
from .records import AUTHORIZER, FILTER, RESPONDER, STDOUT, decode_params, encode_record
from .request import GONE, Request

if TYPE_CHECKING:
    from .connection import FastCGIConnection

__all__ = [
    "ROLE_NAMES",
    "AuthorizerRequest",
    "FilterRequest",
    "RefusedAuthorizer",
    "role_classes",
]

logger = logging.getLogger("fcgi_asgi.error")

#: Role numbers of BEGIN_REQUEST and the names ``--roles`` and the scope use.
ROLE_NAMES = {RESPONDER: "responder", AUTHORIZER: "authorizer", FILTER: "filter"}

_FORBIDDEN_BODY = b"Forbidden"
_FORBIDDEN = (
    b"Status: 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nCache-Control: no-store\r\n\r\n%s"
    % (len(_FORBIDDEN_BODY), _FORBIDDEN_BODY)
)


def _variable_header(pair: Any) -> Any:
    name = pair[0] if isinstance(pair, tuple | list) and len(pair) == 2 else None
    if isinstance(name, bytes) and name[:9].lower() == b"variable-":
        return (b"Variable-" + name[9:].upper(), pair[1])
    return pair  # anything malformed is for encode_head to reject


class AuthorizerRequest(Request):
    """An AUTHORIZER request: no body comes (Apache sends no STDIN at all),
    so its end never waits for one."""

    __slots__ = ()
    answers_internal = False

    def __init__(self, conn: FastCGIConnection, request_id: int, keep_conn: bool) -> None:
        super().__init__(conn, request_id, keep_conn)
        self.stdin_done = True

    def set_head(self, status: Any, headers: Any) -> None:
        """Encode the head, with ``Variable-NAME`` headers as ``Variable-`` + NAME upper-cased.

        The web server makes each into the variable NAME of the authorized
        request, case kept; ASGI header names are lower case, CGI's upper.
        """
        super().set_head(status, [_variable_header(pair) for pair in headers])

    def send_fast(self, message: Any) -> bool:
        """Never: the C fast path would skip the set_head() above."""
        return False


class RefusedAuthorizer(AuthorizerRequest):
    """An AUTHORIZER request while the app does not serve that role: 403.

    END_REQUEST(UNKNOWN_ROLE) would be the protocol's answer, but lighttpd
    1.4.69 then lets the request through; a 403 is refused by lighttpd and
    Apache alike (see the README's table).
    """

    __slots__ = ()

    def start(self, params: bytes | bytearray) -> None:
        """Log the refusal and answer 403 at once."""
        uri = decode_params(params).get(b"REQUEST_URI", b"?").decode("latin-1")
        logger.error(
            "AUTHORIZER request id %d from %s for %s refused with 403: the app does not "
            "serve the authorizer role (give --roles responder,authorizer)",
            self.request_id,
            self.conn.peer,
            uri,
        )
        self.status = 403
        self.response_started = self.response_complete = True
        self.finish([encode_record(STDOUT, self.request_id, _FORBIDDEN)])


class FilterRequest(Request):
    """A FILTER request: STDIN, then the DATA stream, both read by the app.

    DATA is counted with the connection's unread body, so reading pauses
    while the app does not read it either. An app that asks for DATA
    before STDIN has ended gives up the rest of STDIN: the web server sends
    DATA only after STDIN, and holding both would need unbounded memory.
    """

    # No __slots__: the interfaces' request classes have slots of their own,
    # and two slotted bases cannot be combined (a filter request may have a dict).

    def __init__(self, conn: FastCGIConnection, request_id: int, keep_conn: bool) -> None:
        super().__init__(conn, request_id, keep_conn)
        self.data: deque[bytes] = deque()
        self.data_size = 0
        self.data_done = False
        self.stdin_dropped = False

    def feed_body(self, data: bytes) -> None:
        """Queue a STDIN chunk, unless the app moved on to the DATA stream."""
        if self.stdin_dropped:
            self.bytes_received += len(data)
            return
        super().feed_body(data)

    def feed_data(self, data: bytes) -> None:
        """Queue a DATA chunk (an empty one ends the stream)."""
        if not data:
            self.data_done = True
        elif self.disconnected or self.response_complete or self.data_done:
            return
        else:
            self.bytes_received += len(data)
            self.data.append(data)
            self.data_size += len(data)
            self.conn.body_buffered(len(data))
        self.wake()

    def drop_body(self) -> None:
        """Forget unread STDIN and DATA."""
        super().drop_body()
        if self.data_size:
            self.conn.body_consumed(self.data_size)
            self.data.clear()
            self.data_size = 0

    async def next_data(self) -> tuple[bytes, bool]:
        """The DATA received and not taken yet, and whether more follows."""
        if not self.stdin_done and not self.stdin_dropped:
            logger.debug(
                "request id %d: the app reads DATA before the end of STDIN; the rest "
                "of STDIN is dropped",
                self.request_id,
            )
            self.stdin_dropped = True
            super().drop_body()
        while True:
            if self.disconnected:
                raise ClientDisconnected(GONE)
            if self.data:
                chunks = self.data
                out = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self.conn.body_consumed(self.data_size)
                self.data_size = 0
                return out, not self.data_done
            if self.data_done:
                return b"", False
            await self.wait()


def role_classes(
    roles: tuple[str, ...], classes: dict[str, type[Request]]
) -> dict[int, type[Request]]:
    """The request class for each role but RESPONDER, from ``--roles`` and the
    interface's ``classes`` by role name; an AUTHORIZER the app does not
    serve gets :class:`RefusedAuthorizer`, a FILTER none (UNKNOWN_ROLE)."""
    table: dict[int, type[Request]] = {AUTHORIZER: RefusedAuthorizer}
    for number, name in ROLE_NAMES.items():
        if number != RESPONDER and name in roles:
            table[number] = classes[name]
    return table
