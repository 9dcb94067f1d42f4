"""The part of a request's state that the C speedups' fast path shares.

:class:`~fcgi_asgi.protocol.request.Request` keeps these fields in
:class:`RequestCore`: the C type ``_speedups.RequestCore`` when the speedups
are built, whose ``send_fast()`` does a plain ``http.response.start`` and the
last ``http.response.body`` of a small response without the Python path
(4.9k of the 70.7k instructions of a hello request), else
:class:`RequestCorePy`, the same fields as ``__slots__`` and a
``send_fast()`` that always declines.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import FastCGIConnection

__all__ = ["CORE_FIELDS", "RequestCore", "RequestCorePy"]

#: The fields, in both versions.
CORE_FIELDS = (
    "_stdout_sent",
    "_waiters",
    "bytes_sent",
    "conn",
    "disconnected",
    "end_held",
    "head_only",
    "request_id",
    "response_complete",
    "response_started",
    "status",
    "stdin_done",
    "unsent_head",
)


class RequestCorePy:
    """:class:`RequestCore` without the speedups: the fields alone."""

    __slots__ = CORE_FIELDS

    conn: FastCGIConnection
    request_id: int
    #: The encoded response head until it is written (with the first body).
    unsent_head: bytes | None
    status: int
    bytes_sent: int
    response_started: bool
    response_complete: bool
    disconnected: bool
    #: A HEAD request: the response keeps its head (Content-Length too) but
    #: no body bytes; h2o 2.2 would forward them and corrupt the next
    #: response on the client's connection.
    head_only: bool
    stdin_done: bool
    #: The body is complete but the end waits for the interface (ASGI trailers).
    end_held: bool
    _stdout_sent: bool
    # Coroutines waiting for news (body, end of body, disconnect); an app
    # may have several (a body reader and a disconnect watcher).
    _waiters: list[asyncio.Future[None]]

    def send_fast(self, message: Any) -> bool:
        """Do ``message`` (an ASGI send) here if it is a plain response start
        or a small response's last body; False, with nothing done, otherwise
        (always, in this version)."""
        return False


if TYPE_CHECKING:
    RequestCore = RequestCorePy
else:
    try:
        from .._speedups import RequestCore
    except ImportError:  # not built: the fields alone
        RequestCore = RequestCorePy
