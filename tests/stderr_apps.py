"""Apps whose failures should reach the web server's error log (--stderr-to-web-server)."""

from __future__ import annotations

from typing import Any


class MarkedError(RuntimeError):
    """An app failure with a message the tests look for."""


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/boom`` raises; anything else answers 200."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/boom":
        raise MarkedError("asgi-app-exploded-7341")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """``/errors`` writes two lines to wsgi.errors and answers 200; ``/boom`` raises."""
    if environ["PATH_INFO"] == "/boom":
        raise MarkedError("wsgi-app-exploded-5512")
    if environ["PATH_INFO"] == "/errors":
        environ["wsgi.errors"].write("wsgi-errors-line-one\nwsgi-errors-")
        environ["wsgi.errors"].write("line-two\n")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
