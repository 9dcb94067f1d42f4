"""A request's fields, shared with the C speedups.

:class:`~fcgi_asgi.protocol.request.Request` keeps its state in
:class:`RequestCore`: the C type ``_speedups.RequestCore`` when the speedups
are built, whose ``__init__`` sets every field in one call and whose
``send_fast()`` does a plain ``http.response.start`` and the last
``http.response.body`` of a small response without the Python path; else
:class:`RequestCorePy`, the same fields as ``__slots__``, the same
``__init__`` in Python, and a ``send_fast()`` that always declines.

``send()`` is the app's ASGI ``send``. The C version does what
``send_fast()`` takes at the call and returns an awaitable already
finished (``_speedups.SENT``), so the commonest messages make no coroutine
(1.6k of 56.7k instructions a hello request); every other message, and
every message of a class that overrides ``send_fast()``, goes to the
interface's ``asgi_send()`` coroutine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import FastCGIConnection

__all__ = ["CORE_FIELDS", "RequestCore", "RequestCorePy"]

#: The fields, in both versions (the ASGI bridge's two are here too, so that
#: no request class needs an ``__init__`` of its own).
CORE_FIELDS = (
    "_end_deadline",
    "_final_sent",
    "_stdin_seen",
    "_stdout_sent",
    "_timeout",
    "_unyielded",
    "_waiters",
    "app_error",
    "body",
    "body_size",
    "bytes_received",
    "bytes_sent",
    "conn",
    "disconnected",
    "drain_waiter",
    "end_held",
    "end_pending",
    "ended",
    "head_only",
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
    "unsent_head",
)


class RequestCorePy:
    """:class:`RequestCore` without the speedups."""

    __slots__ = CORE_FIELDS

    conn: FastCGIConnection
    request_id: int
    keep_conn: bool
    #: PARAMS content until the stream ends (the first record as is, more
    #: appended to a bytearray), then None.
    params: bytes | bytearray | None
    #: The request as an ASGI-shaped scope, for the access log and the
    #: gateway's own pages (set by the interface in ``start()``).
    scope: dict[str, Any] | None
    #: Request body received and not read yet, and its size.
    body: list[bytes]
    body_size: int
    stdin_done: bool
    disconnected: bool
    #: The response is written; END_REQUEST waits for the end of STDIN.
    end_pending: bool
    #: The body is complete but the end waits for the interface (ASGI trailers).
    end_held: bool
    #: A HEAD request: the response keeps its head (Content-Length too) but
    #: no body bytes; h2o 2.2 would forward them and corrupt the next
    #: response on the client's connection.
    head_only: bool
    _stdin_seen: float
    _end_deadline: float
    response_started: bool
    response_complete: bool
    ended: bool
    status: int
    #: The loop's clock when the request began.
    started: float
    bytes_sent: int
    bytes_received: int
    timed_out: bool
    _timeout: asyncio.TimerHandle | None
    _unyielded: int
    #: The encoded response head until it is written (with the first body).
    unsent_head: bytes | None
    _stdout_sent: bool
    # Coroutines waiting for news (body, end of body, disconnect); an app
    # may have several (a body reader and a disconnect watcher).
    _waiters: list[asyncio.Future[None]]
    #: Set while send_body() waits for its turn to write (conn.scheduler).
    drain_waiter: asyncio.Future[None] | None
    task: asyncio.Future[None] | None
    # The ASGI bridge's: whether the last http.request went out, and why the
    # app's messages failed (reported when it returns).
    _final_sent: bool
    app_error: str | None

    def __init__(self, conn: FastCGIConnection, request_id: int, keep_conn: bool) -> None:
        self.conn = conn
        self.request_id = request_id
        self.keep_conn = keep_conn
        self.params = b""
        self.scope = None
        self.body = []
        self.body_size = 0
        self.stdin_done = False
        self.disconnected = False
        self.end_pending = False
        self.end_held = False
        self.head_only = False
        self._stdin_seen = self._end_deadline = 0.0
        self.response_started = False
        self.response_complete = False
        self.ended = False
        self.status = 0
        self.started = conn.loop.time()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.timed_out = False
        self._timeout = None
        self._unyielded = 0
        self.unsent_head = None
        self._stdout_sent = False
        self._waiters = []
        self.drain_waiter = None
        self.task = None
        self._final_sent = False
        self.app_error = None

    def send_fast(self, message: Any) -> bool:
        """Do ``message`` (an ASGI send) here if it is a plain response start
        or a small response's last body; False, with nothing done, otherwise
        (always, in this version)."""
        return False

    def send(self, message: Any) -> Awaitable[None]:
        """The ASGI ``send``: here always :meth:`asgi_send`'s coroutine."""
        return self.asgi_send(message)

    def asgi_send(self, message: Any) -> Coroutine[Any, Any, None]:
        """The interface's ``send`` in Python (the ASGI bridge has one)."""
        raise TypeError(f"{type(self).__name__} takes no ASGI messages")


if TYPE_CHECKING:
    RequestCore = RequestCorePy
else:
    try:
        from .._speedups import RequestCore
    except ImportError:  # not built: the fields alone
        RequestCore = RequestCorePy
