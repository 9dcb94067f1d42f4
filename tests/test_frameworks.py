"""Starlette and FastAPI apps served through the gateway over a real socket."""

from __future__ import annotations

import json

from examples.fastapi_app import app as fastapi_app
from examples.starlette_app import app as starlette_app
from tests.conftest import connect


async def test_starlette_routes_lifespan_and_mount(serve):
    server = await serve(starlette_app)
    async with await connect(server) as client:
        r = await client.request("GET", "/")
        assert (r.status, r.body) == (200, b"hello from lifespan")
        r = await client.request("GET", "/items/42")
        assert json.loads(r.body) == {"id": 42, "path": "/items/42", "root_path": ""}
        r = await client.request("GET", "/api/items/7")
        assert json.loads(r.body)["id"] == 7
        r = await client.request("POST", "/echo", body=b"x" * 100_000)
        assert r.body == b"x" * 100_000
        r = await client.request("GET", "/stream")
        assert r.body == b"".join(f"chunk {i}\n".encode() for i in range(5))
        r = await client.request("GET", "/nope")
        assert (r.status, r.reason) == (404, "Not Found")


async def test_starlette_under_root_path(serve):
    server = await serve(starlette_app, root_path="/app")
    async with await connect(server) as client:
        r = await client.request("GET", "/app/items/42")
        assert json.loads(r.body) == {"id": 42, "path": "/app/items/42", "root_path": "/app"}


async def test_fastapi_json_and_validation(serve):
    server = await serve(fastapi_app)
    async with await connect(server) as client:
        r = await client.request("GET", "/items/5", query="q=hi")
        assert json.loads(r.body) == {"item_id": 5, "q": "hi"}
        body = json.dumps({"name": "pen", "price": 1.5, "tags": ["a"]}).encode()
        r = await client.request(
            "POST", "/items", body=body, headers={"content-type": "application/json"}
        )
        assert r.status == 200
        assert json.loads(r.body) == {"name": "pen", "total": 3.0, "tags": ["a"]}
        r = await client.request(
            "POST", "/items", body=b'{"name": 1}', headers={"content-type": "application/json"}
        )
        assert r.status == 422 and r.reason.startswith("Unprocessable")
        assert json.loads(r.body)["detail"][0]["loc"][-1] in ("name", "price")
