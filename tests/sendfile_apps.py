"""Apps that answer with a whole file (``?path``), for --sendfile-header."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``http.response.pathsend`` of the file named by the query string."""
    if scope["type"] != "http":
        return
    path = unquote(scope["query_string"].decode())
    size = os.path.getsize(path)
    headers = [(b"content-type", b"application/octet-stream"), (b"x-app", b"asgi")]
    headers.append((b"content-length", str(size).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.pathsend", "path": path})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
    """``wsgi.file_wrapper`` on the file named by the query string."""
    path = unquote(environ["QUERY_STRING"])
    size = os.path.getsize(path)
    start_response(
        "200 OK",
        [
            ("Content-Type", "application/octet-stream"),
            ("X-App", "wsgi"),
            ("Content-Length", str(size)),
        ],
    )
    return environ["wsgi.file_wrapper"](open(path, "rb"))
