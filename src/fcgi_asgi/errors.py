"""Exceptions the gateway raises into ASGI applications."""

from __future__ import annotations

__all__ = ["APP_ERRORS", "AppProtocolError", "ClientDisconnected"]

#: What an app may raise that ends its request and not the server: a
#: ``sys.exit()`` or a ``KeyboardInterrupt`` raised by app code is its own
#: bug (signals reach the server through the event loop's handlers, never
#: as exceptions in app code), and taking every other request down with it
#: would lose them.
APP_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the web server aborted the request or the
    connection is gone (ASGI 2.4: an ``OSError`` subclass)."""


class AppProtocolError(RuntimeError):
    """The application sent an ASGI message it must not send at that point
    (a body before the start, a second start, a bad header, ...)."""
