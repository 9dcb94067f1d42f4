"""A Starlette app with routes, a mount, streaming and lifespan state.

fcgi-asgi examples.starlette_app:app --socket /tmp/starlette.sock
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
    yield {"greeting": "hello from lifespan"}


async def home(request: Request) -> Response:
    return PlainTextResponse(request.state.greeting)


async def item(request: Request) -> Response:
    return JSONResponse(
        {
            "id": request.path_params["item_id"],
            "path": request.url.path,
            "root_path": request.scope["root_path"],
        }
    )


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"chunk {i}\n".encode()
            await asyncio.sleep(0.05)

    return StreamingResponse(chunks(), media_type="text/plain")


api = [Route("/items/{item_id:int}", item)]

app = Starlette(
    routes=[
        Route("/", home),
        Route("/echo", echo, methods=["POST"]),
        Route("/stream", stream),
        *api,
        Mount("/api", routes=api),
    ],
    lifespan=lifespan,
)
