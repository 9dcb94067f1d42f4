"""Apps of several frameworks handed to the embedding API, for mypy to check.

Not run: ``tests/test_typing.py`` runs ``mypy --strict`` on this file. The
API must accept what uvicorn accepts (frameworks type their scope and
messages their own way), and mypy must still refuse what is no app.
"""

from __future__ import annotations

import falcon.asgi
import litestar
import quart
from django.core.handlers.asgi import ASGIHandler  # type: ignore[import-untyped]
from starlette.applications import Starlette

import fcgi_asgi


async def raw(scope: dict[str, object], receive: object, send: object) -> None:
    """A raw ASGI app typed loosely, as many are."""


async def main() -> None:
    for app in (
        quart.Quart(__name__),
        litestar.Litestar(route_handlers=[]),
        falcon.asgi.App(),
        Starlette(),
        ASGIHandler(),
    ):
        await fcgi_asgi.start_server(app, socket="/tmp/typing.sock")
    await fcgi_asgi.start_server(raw, port=0)
    await fcgi_asgi.start_server("tests.apps:app", port=0)
    fcgi_asgi.run(quart.Quart(__name__), socket="/tmp/typing.sock")
    fcgi_asgi.Config(app=litestar.Litestar(route_handlers=[]), port=0)
    # No app at all: mypy must say so (an unused ignore fails under --strict).
    await fcgi_asgi.start_server(42, port=0)  # type: ignore[arg-type]
