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
from .asgi.roles import asgi_role_classes
from .config import AppLoadError, opt
from .protocol.request import Request
from .protocol.roles import role_classes
from .wsgi.bridge import WSGIRequest
from .wsgi.roles import wsgi_role_classes

__all__ = ["Interface", "detect_interface", "request_class", "role_request_classes"]

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


def detect_interface(
    app: Any, requested: Interface = "auto", name: str = "the app", factory: bool = False
) -> str:
    """``"asgi"`` or ``"wsgi"`` for ``app``; :class:`AppLoadError` if it fits neither
    (or not the ``requested`` one), with a message that names the fix."""
    if inspect.isclass(app):
        # Instantiated with the scope, as ASGI 2 apps are.
        raise AppLoadError(f"{name} looks like an ASGI 2 app (a class); only ASGI 3 is served")
    is_async = _is_async(app)
    count = _positional_count(app)
    if requested == "asgi":
        if not is_async and count == 2:
            raise AppLoadError(
                f"{name} is a WSGI app (it takes environ, start_response); "
                f"use {opt('interface')} wsgi"
            )
        return "asgi"
    if requested == "wsgi":
        if is_async:
            raise AppLoadError(
                f"{name} is an async callable, not a WSGI app; use {opt('interface')} asgi"
            )
        return "wsgi"
    if is_async:
        return "asgi"
    if count == 2:
        return "wsgi"
    if count == 0:
        if factory:
            raise AppLoadError(
                f"app factory {name} returned {type(app).__name__}, which takes no "
                "arguments: not an app"
            )
        raise AppLoadError(
            f"{name} takes no arguments, so it looks like an app factory: "
            f"give {opt('factory')} to call it"
        )
    if count == 3:
        return "asgi"  # a sync callable returning an awaitable (a wrapper)
    raise AppLoadError(
        f"cannot tell whether {name} is an ASGI 3 or a WSGI app; "
        f"give {opt('interface')} asgi or {opt('interface')} wsgi"
    )


def request_class(interface: str) -> type[Request]:
    """The request class of an interface (``"asgi"`` or ``"wsgi"``)."""
    return WSGIRequest if interface == "wsgi" else ASGIRequest


def role_request_classes(interface: str, roles: tuple[str, ...]) -> dict[int, type[Request]]:
    """What a BEGIN_REQUEST for each role but RESPONDER makes, for ``--roles``."""
    classes = wsgi_role_classes() if interface == "wsgi" else asgi_role_classes()
    return role_classes(roles, classes)
