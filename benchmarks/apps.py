"""The ASGI apps every Python backend serves in the benchmark.

``raw`` is a bare ASGI 3 callable; ``starlette_app`` does the same with
Starlette routing and responses; ``wsgi`` is the same routes as a plain WSGI
callable (for fcgi-asgi, flup and uWSGI). They answer the same routes with the
same body bytes, so ``run.py`` can check every backend against one expectation:

    GET  /        200, b"Hello, world!"
    GET  /big     200, 1 MiB of b"x"
    POST /echo    200, the request body's length in decimal
    GET  /stream  200, STREAM_MIB (default 200) MiB of b"x" in 64 KiB chunks

``/stream`` writes one line to stderr when it returns (``stream-done
sent_mib=... seconds=...``): if ``seconds`` is about the client's reading
time, ``send()`` waited for the client; if it is much shorter, the server
buffered the body in memory.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

HELLO = b"Hello, world!"
BIG = b"x" * (1 << 20)
CHUNK = b"x" * (64 << 10)
STREAM_CHUNKS = int(os.environ.get("STREAM_MIB", "200")) * 16

_HELLO_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", b"13")]
_BIG_HEADERS = [
    (b"content-type", b"application/octet-stream"),
    (b"content-length", str(len(BIG)).encode()),
]
_STREAM_HEADERS = [
    (b"content-type", b"application/octet-stream"),
    (b"content-length", str(STREAM_CHUNKS * len(CHUNK)).encode()),
]


def _report(chunks: int, started: float) -> None:
    mib = chunks * len(CHUNK) / (1 << 20)
    seconds = time.monotonic() - started
    print(f"stream-done sent_mib={mib:.1f} seconds={seconds:.2f}", file=sys.stderr, flush=True)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def raw(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The routes above as a bare ASGI app."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    path = scope["path"]
    if path == "/big":
        await send({"type": "http.response.start", "status": 200, "headers": _BIG_HEADERS})
        await send({"type": "http.response.body", "body": BIG})
    elif path == "/echo":
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = str(size).encode()
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        # Never polls receive(): it relies on send() waiting while the client is slow.
        started = time.monotonic()
        sent = 0
        await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
        try:
            for i in range(STREAM_CHUNKS):
                more = i < STREAM_CHUNKS - 1
                await send({"type": "http.response.body", "body": CHUNK, "more_body": more})
                sent += 1
        finally:
            _report(sent, started)
    else:
        await send({"type": "http.response.start", "status": 200, "headers": _HELLO_HEADERS})
        await send({"type": "http.response.body", "body": HELLO})


def _make_starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def hello(request: Request) -> Response:
        return PlainTextResponse("Hello, world!")

    async def big(request: Request) -> Response:
        return Response(BIG, media_type="application/octet-stream")

    async def echo(request: Request) -> Response:
        return PlainTextResponse(str(len(await request.body())))

    async def stream(request: Request) -> Response:
        async def chunks() -> Any:
            started = time.monotonic()
            sent = 0
            try:
                for _ in range(STREAM_CHUNKS):
                    yield CHUNK
                    sent += 1
            finally:
                _report(sent, started)

        length = str(STREAM_CHUNKS * len(CHUNK))
        return StreamingResponse(
            chunks(), media_type="application/octet-stream", headers={"content-length": length}
        )

    return Starlette(
        routes=[
            Route("/", hello),
            Route("/big", big),
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
        ]
    )


_WSGI_HELLO = [("Content-Type", "text/plain"), ("Content-Length", "13")]
_WSGI_BIG = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))]


def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """``/``, ``/big`` and ``/echo`` as a plain WSGI app (no /stream)."""
    path = environ.get("PATH_INFO") or "/"
    if path == "/big":
        start_response("200 OK", _WSGI_BIG)
        return [BIG]
    if path == "/echo":
        stream = environ["wsgi.input"]
        size = 0
        while chunk := stream.read(65536):
            size += len(chunk)
        body = str(size).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    start_response("200 OK", _WSGI_HELLO)
    return [HELLO]


try:
    starlette_app = _make_starlette()
except ImportError:  # a venv without Starlette still serves `raw`
    starlette_app = None
