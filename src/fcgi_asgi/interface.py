"""Which interface an app speaks: ASGI 3 or WSGI (``--interface``).

Told apart at start, as uvicorn does: an ASGI 3 app is an ``async``
callable of ``(scope, receive, send)``, a WSGI app a plain callable of
``(environ, start_response)``. What cannot be told is a one-line error that
names the fix.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from .asgi.bridge import ASGIRequest
from .config import AppLoadError
from .protocol.request import Request
from .wsgi.bridge import WSGIRequest

__all__ = ["Interface", "detect_interface", "request_class"]

Interface = Literal["auto", "asgi", "wsgi"]


def _positional_count(app: Any) -> int | None:
    try:
        sig = inspect.signature(app)
    except (TypeError, ValueError):
        return None
    params = sig.parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _is_async(app: Any) -> bool:
    call = getattr(app, "__call__", None)  # noqa: B004 - an instance's __call__
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call)


def detect_interface(app: Any, requested: Interface = "auto", name: str = "the app") -> str:
    """``"asgi"`` or ``"wsgi"`` for ``app``; :class:`AppLoadError` if it fits neither
    (or not the ``requested`` one)."""
    is_async = _is_async(app)
    count = _positional_count(app)
    if requested == "asgi":
        if not is_async and count == 2:
            raise AppLoadError(
                f"{name} takes (environ, start_response): a WSGI app; use --interface wsgi"
            )
        return "asgi"
    if requested == "wsgi":
        if is_async:
            raise AppLoadError(f"{name} is an async callable, not a WSGI app; use --interface asgi")
        return "wsgi"
    if is_async:
        return "asgi"
    if count == 2:
        return "wsgi"
    if count == 0:
        raise AppLoadError(f"{name} takes no arguments: an app factory? use --factory")
    if count == 3:
        return "asgi"  # a sync callable returning an awaitable (a wrapper)
    raise AppLoadError(
        f"cannot tell whether {name} is an ASGI 3 or a WSGI app; "
        "give --interface asgi or --interface wsgi"
    )


def request_class(interface: str) -> type[Request]:
    """The request class of an interface (``"asgi"`` or ``"wsgi"``)."""
    return WSGIRequest if interface == "wsgi" else ASGIRequest
