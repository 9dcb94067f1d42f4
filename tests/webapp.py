"""The apps the web-server tests serve through a real ``fcgi-asgi`` process.

``starlette_app`` is mounted at ``/``; ``fastapi_app`` under ``/app`` (the
gateway runs with ``--root-path /app``). The gateway is a separate process, so
what the app observed (a disconnect, say) is reported back over HTTP through
``/events/{token}`` rather than through shared memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

# token -> what the app saw; read through /events/{token}.
EVENTS: dict[str, dict[str, Any]] = {}
# token -> released by /release/{token}; lets a test hold a response open.
_RELEASE: dict[str, asyncio.Event] = {}
# Every wait in the app is bounded so that a failed test never leaves it hanging.
_MAX_WAIT = 30.0

PATTERN_BLOCK = hashlib.sha256(b"fcgi-asgi").digest() * 2048  # 64 KiB, not all one byte


def pattern(size: int) -> bytes:
    """The ``size`` bytes ``/download`` sends: ``PATTERN_BLOCK`` repeated."""
    whole, rest = divmod(size, len(PATTERN_BLOCK))
    return PATTERN_BLOCK * whole + PATTERN_BLOCK[:rest]


def scope_info(scope: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able parts of a scope, bytes shown as latin-1 text."""
    route = scope.get("route")
    return {
        "path": scope["path"],
        "raw_path": scope["raw_path"].decode("latin-1"),
        "query_string": scope["query_string"].decode("latin-1"),
        "root_path": scope["root_path"],
        "method": scope["method"],
        "http_version": scope["http_version"],
        "scheme": scope["scheme"],
        "client": scope["client"],
        "server": scope["server"],
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "route": getattr(route, "path", None),
        "path_params": scope.get("path_params", {}),
        "pid": os.getpid(),
    }


def _event(token: str) -> dict[str, Any]:
    return EVENTS.setdefault(token, {})


# -- Starlette, mounted at / ------------------------------------------------------


async def show_scope(request: Request) -> Response:
    return JSONResponse(scope_info(request.scope))


async def item(request: Request) -> Response:
    return JSONResponse({"item_id": request.path_params["item_id"], **scope_info(request.scope)})


async def ping(request: Request) -> Response:
    return PlainTextResponse("pong")


async def pid(request: Request) -> Response:
    return PlainTextResponse(str(os.getpid()))


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type="application/octet-stream")


async def digest(request: Request) -> Response:
    """Hashes the body as it streams in; also says how it arrived."""
    h = hashlib.sha256()
    n = chunks = 0
    async for chunk in request.stream():
        h.update(chunk)
        n += len(chunk)
        chunks += 1 if chunk else 0
    return JSONResponse(
        {
            "size": n,
            "sha256": h.hexdigest(),
            "chunks": chunks,
            "content_length": request.headers.get("content-length"),
            "transfer_encoding": request.headers.get("transfer-encoding"),
        }
    )


async def status(request: Request) -> Response:
    code = request.path_params["code"]
    body = b"" if code in (204, 304) else f"status {code}".encode()
    return Response(body, status_code=code, media_type=None if not body else "text/plain")


async def refuse_upload(request: Request) -> Response:
    """Answers at once without reading the body (as a size check would)."""
    return PlainTextResponse("too large", status_code=413)


async def cookies(request: Request) -> Response:
    response = PlainTextResponse("cookies")
    response.set_cookie("a", "1")
    response.set_cookie("b", "2")
    return response


async def boom(request: Request) -> Response:
    raise RuntimeError("the app failed on purpose")


async def events(request: Request) -> Response:
    return JSONResponse(EVENTS.get(request.path_params["token"], {}))


async def release(request: Request) -> Response:
    _RELEASE.setdefault(request.path_params["token"], asyncio.Event()).set()
    return PlainTextResponse("released")


async def sleep(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("s", "0.1")))
    return JSONResponse({"n": request.path_params["n"], "pid": os.getpid()})


async def headers(request: Request) -> Response:
    # [name, [byte, ...]] pairs in order: repeats show, and any byte survives JSON.
    return JSONResponse(
        [[k.decode("latin-1"), list(v)] for k, v in request.scope["headers"]],
        headers={"x-method": request.method},
    )


async def _raw_download(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/download/{size}``: ``pattern(size)`` in 256 KiB pieces, with Content-Length."""
    size = int(scope["path"].rsplit("/", 1)[1])
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(size).encode()),
                (b"x-method", scope["method"].encode()),
            ],
        }
    )
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    data = memoryview(pattern(size))
    step = 256 << 10
    for start in range(0, size, step):
        await send(
            {
                "type": "http.response.body",
                "body": bytes(data[start : start + step]),
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b""})


async def _raw_held(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/held/{token}``: sends ``first``, waits for ``/release/{token}``, sends ``last``."""
    token = scope["path"].rsplit("/", 1)[1]
    released = _RELEASE.setdefault(token, asyncio.Event())
    ev = _event(token)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
    ev["first_sent"] = True
    try:
        await asyncio.wait_for(released.wait(), _MAX_WAIT)
    except TimeoutError:
        ev["timed_out"] = True
    await send({"type": "http.response.body", "body": b"last\n"})
    ev["finished"] = True


async def _raw_endless(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/endless/{token}``: streams until the client is gone, then records what
    ``send()`` raised and what ``receive()`` gave next (ASGI 2.4)."""
    token = scope["path"].rsplit("/", 1)[1]
    ev = _event(token)
    ev.update(sent=0)
    chunk = b"z" * (64 << 10)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _MAX_WAIT
    try:
        while loop.time() < deadline:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            ev["sent"] += len(chunk)
        ev["outcome"] = "deadline"
        await send({"type": "http.response.body", "body": b""})
    except OSError as exc:
        ev["send_error"] = type(exc).__name__
        message = await asyncio.wait_for(receive(), 5)
        ev["outcome"] = message["type"]


async def _raw_hop_by_hop(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/hop-by-hop/...``: streams ``pattern(256 KiB)`` under hop-by-hop headers of
    its own, as BlackSheep does (``Transfer-Encoding: chunked`` and friends)."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"transfer-encoding", b"chunked"),
                (b"Connection", b"keep-alive, X-Private-Hop"),
                (b"keep-alive", b"timeout=5"),
                (b"x-private-hop", b"1"),
                (b"x-kept", b"yes"),
            ],
        }
    )
    data = pattern(256 << 10)
    for start in range(0, len(data), 64 << 10):
        piece = data[start : start + (64 << 10)]
        await send({"type": "http.response.body", "body": piece, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _raw_fail_midway(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/fail-midway``: part of the body, then the app raises."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    raise RuntimeError("the app failed mid-response on purpose")


starlette_app = Starlette(
    routes=[
        Route("/ping", ping),
        Route("/pid", pid),
        Route("/café/{rest:path}", show_scope),
        Route("/items/{item_id:int}", item),
        Route("/echo", echo, methods=["POST"]),
        Route("/digest", digest, methods=["POST", "PUT"]),
        Route("/status/{code:int}", status),
        Route("/cookies", cookies),
        Route("/refuse", refuse_upload, methods=["POST"]),
        Route("/boom", boom),
        Route("/events/{token}", events),
        Route("/release/{token}", release),
        Route("/sleep/{n:int}", sleep),
        Route("/headers", headers, methods=["GET", "POST"]),
        Mount("/download", _raw_download),
        Mount("/held", _raw_held),
        Mount("/endless", _raw_endless),
        Mount("/hop-by-hop", _raw_hop_by_hop),
        Mount("/fail-midway", _raw_fail_midway),
        # A nested router: it must see its own route under the mount point.
        Mount("/mounted", routes=[Route("/café/{rest:path}", show_scope)]),
    ]
)


# -- FastAPI, mounted under /app (the gateway runs with --root-path /app) --------

fastapi_app = FastAPI()


class Item(BaseModel):
    name: str
    price: float


@fastapi_app.get("/ping")
async def api_ping() -> dict[str, str]:
    return {"ping": "pong"}


@fastapi_app.get("/café/{rest:path}")
async def api_scope(request: Request, rest: str) -> dict[str, Any]:
    return {"rest": rest, **scope_info(request.scope)}


@fastapi_app.post("/items")
async def api_create(new: Item, request: Request) -> dict[str, Any]:
    return {"name": new.name, "price": new.price, "root_path": request.scope["root_path"]}


@fastapi_app.get("/items/{item_id}")
async def api_item(item_id: int, request: Request) -> dict[str, Any]:
    return {"item_id": item_id, **scope_info(request.scope)}
