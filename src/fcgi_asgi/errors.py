"""Exceptions the gateway raises into ASGI applications."""

from __future__ import annotations

__all__ = ["AppProtocolError", "ClientDisconnected"]


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the web server aborted the request or the
    connection is gone (ASGI 2.4: an ``OSError`` subclass)."""


class AppProtocolError(RuntimeError):
    """The application sent an ASGI message it must not send at that point
    (a body before the start, a second start, a bad header, ...)."""
