"""What kind of callable an application is, told from its signature alone.

uvicorn tells ASGI 2 from ASGI 3 the same way; here WSGI apps (``environ,
start_response``) and app factories (no arguments) are told apart too, so
that a wrong one is an error at start rather than a 500 on every request.
"""

from __future__ import annotations

import inspect
from typing import Literal

__all__ = ["AppKind", "app_kind"]

AppKind = Literal["asgi3", "asgi2", "wsgi", "factory"]


def app_kind(app: object) -> AppKind:
    """``"asgi3"``, ``"asgi2"``, ``"wsgi"`` or ``"factory"`` for a callable.

    A signature that says nothing (``*args``, a C callable) counts as ASGI 3:
    the app then runs and tells for itself.
    """
    if inspect.isclass(app):
        return "asgi2"  # instantiated with the scope, as ASGI 2 does
    # An instance (Starlette, Django's handlers) is async when its __call__ is.
    is_async = inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(type(app).__call__)
    try:
        params = list(inspect.signature(app).parameters.values())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "asgi3"
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return "asgi3"
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if not required and not is_async:
        return "factory"
    if len(positional) == 1:
        return "asgi2"
    if len(positional) == 2 and not is_async:
        return "wsgi"
    return "asgi3"
