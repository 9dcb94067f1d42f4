"""Who may connect, limits, timeouts, and the gateway's own status pages."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import pytest

from fcgi_asgi.client import FastCGIClient, build_params
from fcgi_asgi.protocol.records import (
    OVERLOADED,
    PARAMS,
    REQUEST_COMPLETE,
    encode_begin_request,
    encode_record,
)
from tests import apps
from tests.conftest import connect

pytestmark = pytest.mark.timeout(60)


async def connect_from(server, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.sockets[0].getsockname()[:2]
    return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def test_allow_list_refuses_other_peers(serve, caplog):
    server = await serve(apps.app, tcp=True, allow=("127.0.0.1",))
    reader, writer = await connect_from(server, "127.0.0.2")
    writer.write(encode_begin_request(1))
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
    writer.close()
    assert "refused connection from 127.0.0.2" in caplog.text
    async with await connect(server) as client:  # 127.0.0.1 is served
        assert (await client.request("GET", "/scope")).status == 200


async def test_allow_list_network_prefix(serve):
    server = await serve(apps.app, tcp=True, allow=("127.0.0.0/30",))
    reader, writer = await connect_from(server, "127.0.0.2")
    client = FastCGIClient(reader, writer)
    async with client:
        assert (await client.request("GET", "/scope")).status == 200


async def test_overloaded_beyond_process_cap(serve):
    server = await serve(apps.app, max_concurrent_requests=4)
    clients = [await connect(server) for _ in range(8)]
    try:
        results = await asyncio.gather(*(c.request("GET", "/sleep", query="0.5") for c in clients))
    finally:
        for c in clients:
            await c.close()
    statuses = sorted((r.protocol_status, r.status) for r in results)
    assert statuses == [(REQUEST_COMPLETE, 200)] * 4 + [(OVERLOADED, 0)] * 4


async def test_slowloris_dropped_while_others_served(serve, caplog):
    server = await serve(apps.app, params_timeout=1.0)
    silent = await connect(server)  # sends nothing at all
    partial = await connect(server)  # begins a request, never ends its PARAMS
    await partial.send_raw(encode_begin_request(1) + encode_record(PARAMS, 1, b"\x04"))
    async with await connect(server) as good:
        deadline = time.monotonic() + 10
        while not (silent.closed.is_set() and partial.closed.is_set()):
            assert time.monotonic() < deadline, "stalled peers were never dropped"
            assert (await good.request("GET", "/sleep", query="0.1")).body == b"slept"
    await silent.close()
    await partial.close()
    assert "no complete PARAMS within 1 s" in caplog.text
    assert "no request within 1 s" in caplog.text


async def test_keepalive_timeout_closes_idle_connection(serve):
    server = await serve(apps.app, keepalive_timeout=1.0)
    async with await connect(server) as client:
        assert (await client.request("GET", "/scope")).status == 200
        await asyncio.wait_for(client.closed.wait(), 5)


async def test_busy_connection_is_not_idle(serve):
    server = await serve(apps.app, keepalive_timeout=0.5, params_timeout=0.5)
    async with await connect(server) as client:
        r = await client.request("GET", "/sleep", query="2")
        assert r.body == b"slept"


async def test_request_timeout_gives_504_and_worker_lives(serve, caplog):
    server = await serve(apps.app, request_timeout=0.5)
    async with await connect(server) as client:
        r = await client.request("GET", "/sleep", query="5")
        assert (r.status, r.reason) == (504, "Gateway Timeout")
        assert (await client.request("GET", "/sleep", query="0.1")).body == b"slept"
    assert "request timed out after 0.5 s" in caplog.text


async def test_request_timeout_after_start_truncates(serve):
    server = await serve(apps.app, request_timeout=0.5)
    async with await connect(server) as client:
        req = await client.begin(build_params("GET", "/wait-disconnect"))
        await req.end_body()
        with pytest.raises(ConnectionError):
            while await req.read_stdout():
                pass


async def test_ping_and_status(serve):
    server = await serve(apps.app, status_path="/fcgi-status", ping_path="/fcgi-ping")
    async with await connect(server) as client:
        r = await client.request("GET", "/fcgi-ping")
        assert (r.status, r.body) == (200, b"pong")
        for _ in range(3):
            await client.request("GET", "/scope")
        r = await client.request("GET", "/fcgi-status")
        assert r.header("content-type").startswith("text/plain")
        text = r.body.decode()
        assert "requests served:      4" in text  # ping + 3 app requests
        assert "active requests:      0" in text
        r = await client.request("GET", "/fcgi-status", query="json")
        info = json.loads(r.body)
        assert info["requests served"] == 5
        assert info["accepted conn"] == 1 and info["workers"] == 1
        assert info["listen"].startswith("unix:")
        r = await client.request(
            "GET", "/fcgi-status", headers={"accept": "application/json"}, query="full"
        )
        assert json.loads(r.body)["processes"][0]["requests served"] == 6


async def test_status_counts_active_and_slow(serve):
    server = await serve(apps.app, status_path="/s", slow_request_threshold=0.2)
    async with await connect(server) as client:
        slow = asyncio.ensure_future(client.request("GET", "/sleep", query="0.4"))
        await asyncio.sleep(0.1)
        info = json.loads((await client.request("GET", "/s", query="json")).body)
        assert info["active requests"] == 1
        await slow
        info = json.loads((await client.request("GET", "/s", query="json")).body)
        assert info["slow requests"] == 1 and info["max active requests"] == 1


async def test_access_log_format(serve, caplog):
    caplog.set_level(logging.INFO, logger="fcgi_asgi.access")
    server = await serve(
        apps.app,
        access_log=True,
        access_log_format="{method} {target} {status} {bytes} ua={user_agent} id={request_id}",
    )
    async with await connect(server) as client:
        await client.request(
            "POST", "/echo", query="a=1", body=b"12345", headers={"user-agent": "t/1"}
        )
    assert "POST /echo?a=1 200 5 ua=t/1 id=1" in caplog.text


async def test_default_access_log(serve, caplog):
    caplog.set_level(logging.INFO, logger="fcgi_asgi.access")
    server = await serve(apps.app, access_log=True)
    async with await connect(server) as client:
        await client.request("GET", "/caf%C3%A9", query="x=1")
    assert '127.0.0.1:50000 - "GET /caf%C3%A9?x=1 HTTP/1.1" 404' in caplog.text


def test_bad_access_log_format_is_a_config_error():
    from fcgi_asgi.config import Config, ConfigError

    with pytest.raises(ConfigError, match="unknown field"):
        Config(app="x:y", socket="/tmp/x", access_log_format="{nope}")
    with pytest.raises(ConfigError, match="not an IP address"):
        from fcgi_asgi.allowlist import AllowList

        AllowList(["web-server-1"])


def test_loopback_source_addresses_exist():
    """The allow-list tests rely on 127.0.0.2 reaching 127.0.0.1 over lo."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))


async def test_max_connections_refuses_extra_connections(serve, caplog):
    server = await serve(apps.app, max_connections=2)
    first, second = await connect(server), await connect(server)
    try:
        assert (await first.request("GET", "/scope")).status == 200
        values = await second.get_values([b"FCGI_MAX_CONNS"])
        assert values == {b"FCGI_MAX_CONNS": b"2"}
        third = await connect(server)
        await asyncio.wait_for(third.closed.wait(), 5)
        await third.close()
        assert "--max-connections 2 reached" in caplog.text
    finally:
        await first.close()
    for _ in range(100):  # the freed slot is served again
        if len(server.ctx.connections) < 2:
            break
        await asyncio.sleep(0.02)
    async with await connect(server) as again:
        assert (await again.request("GET", "/scope")).status == 200
    await second.close()


@pytest.mark.parametrize("fmt", ["{method:d}", "{status!z}", "{duration_ms:%}{status:s}"])
def test_access_log_format_that_cannot_render_is_a_config_error(fmt):
    # Before the fix these passed the field-name check and then raised in
    # every request's cleanup, after the response, with a traceback.
    from fcgi_asgi.config import Config, ConfigError

    with pytest.raises(ConfigError, match="--access-log-format: "):
        Config(app="x:y", socket="/tmp/x", access_log_format=fmt)
    Config(app="x:y", socket="/tmp/x", access_log_format="{status:>5} {duration_ms:.1f}")
