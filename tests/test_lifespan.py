"""Lifespan modes against apps that do and do not support the protocol."""

from __future__ import annotations

import asyncio
import os

import pytest

from fcgi_asgi import start_server
from fcgi_asgi.asgi.lifespan import LifespanFailure
from tests.conftest import connect


async def http_only(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("only http here")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def returns_on_lifespan(scope, receive, send):
    if scope["type"] == "lifespan":
        return
    await http_only(scope, receive, send)


async def failing_startup(scope, receive, send):
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "cannot reach the database"})


@pytest.mark.parametrize("app", [http_only, returns_on_lifespan])
async def test_auto_tolerates_apps_without_lifespan(serve, app, caplog):
    server = await serve(app, lifespan="auto")
    async with await connect(server) as client:
        assert (await client.request("GET", "/")).body == b"ok"


async def test_on_requires_lifespan(serve):
    with pytest.raises(LifespanFailure, match="only http here"):
        await serve(http_only, lifespan="on")


async def test_off_never_calls_lifespan(serve):
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["type"])
        await http_only(scope, receive, send)

    server = await serve(app, lifespan="off")
    async with await connect(server) as client:
        await client.request("GET", "/")
    assert calls == ["http"]


@pytest.mark.parametrize("mode", ["auto", "on"])
async def test_startup_failure_is_raised_with_the_apps_message(serve, mode, sock_path):
    with pytest.raises(LifespanFailure, match="cannot reach the database"):
        await serve(failing_startup, lifespan=mode)
    assert not os.path.exists(sock_path)


def lingering_lifespan(events: list[str], answer: bool):
    """A lifespan that, after startup.failed (``answer``) or without answering
    at all, keeps waiting; ``events`` records that it was cancelled."""

    async def app(scope, receive, send):
        try:
            await receive()
            if answer:
                await send({"type": "lifespan.startup.failed", "message": "no config"})
            await receive()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    return app


@pytest.mark.parametrize("how", ["startup.failed", "given up"])
async def test_failed_startup_leaves_no_lifespan_task_behind(sock_path, how):
    events: list[str] = []
    app = lingering_lifespan(events, answer=how == "startup.failed")
    if how == "startup.failed":
        with pytest.raises(LifespanFailure, match="no config"):
            await start_server(app, path=sock_path, lifespan="on")
    else:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await start_server(app, path=sock_path, lifespan="on")
    # By the time start_server() has failed, not some time later.
    assert events == ["cancelled"]
    assert not os.path.exists(sock_path)


async def test_abort_cuts_a_hung_lifespan_shutdown(serve, caplog):
    events: list[str] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            try:
                await asyncio.sleep(3600)  # never answers lifespan.shutdown
            except asyncio.CancelledError:
                events.append("cancelled")
                raise
        await http_only(scope, receive, send)

    server = await serve(app, lifespan="on")
    closing = asyncio.ensure_future(server.aclose())
    await asyncio.sleep(0.3)
    assert not closing.done()
    server.abort()
    await asyncio.wait_for(closing, 5)
    assert events == ["cancelled"]
    assert "lifespan shutdown cancelled" in caplog.text
