"""Requests sharing one connection: --no-multiplex, turns, stalls and --send-timeout."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fcgi_asgi.client import build_params
from fcgi_asgi.protocol.records import (
    CANT_MPX_CONN,
    END_REQUEST,
    KEEP_CONN,
    PARAMS,
    RESPONDER,
    STDIN,
    STDOUT,
    RecordReader,
    encode_begin_request,
    encode_pairs,
    encode_record,
    parse_end_request,
)
from tests import apps
from tests.conftest import connect

pytestmark = pytest.mark.timeout(60)


async def test_no_multiplex_refuses_a_second_request_with_cant_mpx_conn(serve):
    server = await serve(apps.app, multiplex=False)
    async with await connect(server) as client:
        values = await client.get_values([b"FCGI_MPXS_CONNS", b"FCGI_MAX_REQS"])
        assert values == {b"FCGI_MPXS_CONNS": b"0", b"FCGI_MAX_REQS": b"1"}
        first = asyncio.ensure_future(client.request("GET", "/sleep", query="0.3"))
        await asyncio.sleep(0.1)
        second = await client.request("GET", "/scope")
        assert second.protocol_status == CANT_MPX_CONN
        assert (await first).status == 200
        # One at a time is still served on the same connection.
        assert (await client.request("GET", "/scope")).status == 200


def _request(rid: int, target: str, query: str = "") -> bytes:
    params = encode_pairs(build_params("GET", target, query=query))
    return (
        encode_begin_request(rid, RESPONDER, KEEP_CONN)
        + encode_record(PARAMS, rid, params)
        + encode_record(PARAMS, rid)
        + encode_record(STDIN, rid)
    )


async def _wait_until_held(timeout_tries: int = 200) -> None:
    """Until the /stream app's send() stops advancing (the gateway holds it)."""
    for _ in range(timeout_tries):
        sent = apps.EVENTS.get("stream_sent")
        await asyncio.sleep(0.1)
        if sent is not None and apps.EVENTS.get("stream_sent") == sent:
            return
    raise AssertionError("the stream was never held")


async def test_stalled_stream_is_named_then_cut_by_send_timeout(serve, caplog):
    """A web server that stops reading a stream which shares its connection with
    another request: the gateway logs which request waits, cuts it after
    --send-timeout (END_REQUEST with appStatus 1, the other request lives on),
    and the app's send() raises."""
    caplog.set_level(logging.WARNING, logger="fcgi_asgi.error")
    server = await serve(apps.app, send_timeout=1.5, slow_request_threshold=0.5)
    for key in ("stream_receive_after", "stream_sent"):
        apps.EVENTS.pop(key, None)
    reader, writer = await asyncio.open_unix_connection(server.config.socket)
    try:
        # Request 1 streams 64 KiB chunks without end; request 2 sleeps beside it.
        writer.write(_request(1, "/stream", "100000,65536") + _request(3, "/sleep", "30"))
        first = await reader.read(65536)
        assert first
        await _wait_until_held()
        held_at = apps.EVENTS["stream_sent"]
        for _ in range(100):  # bounded: the cut comes after 1.5 s
            if apps.EVENTS.get("stream_receive_after"):
                break
            await asyncio.sleep(0.05)
        assert apps.EVENTS["stream_disconnected"] is True
        assert apps.EVENTS["stream_receive_after"] == "http.disconnect"
        # Held: not one chunk more was produced once the peer stopped reading.
        assert apps.EVENTS["stream_sent"] - held_at <= 65536
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            "request id 1 (GET /stream" in m and "other request(s) on this multiplexed" in m
            for m in messages
        ), messages
        assert any("request id 1 (GET /stream) cut" in m for m in messages), messages
        # Now read everything: request 1 ends with appStatus 1, the connection lives.
        records = RecordReader()
        records.feed(first)
        ends = {}
        while 1 not in ends:
            data = await asyncio.wait_for(reader.read(1 << 20), 10)
            assert data, "the connection closed"
            for rtype, rid, content in records.feed(data):
                if rtype == END_REQUEST:
                    ends[rid] = parse_end_request(content)
                else:
                    assert rtype == STDOUT
        assert ends[1][0] == 1
        assert 3 not in ends  # still sleeping, not cut
    finally:
        writer.close()


async def test_small_response_overtakes_waiting_stream_chunks(serve):
    """Two streams wait for a peer that stopped reading; a small request begins
    on the same connection. Its response is written ahead of the streams' next
    chunks: once the peer reads again, it arrives before more than the bytes
    that were already in the buffers."""
    server = await serve(apps.app)
    apps.EVENTS.pop("stream_sent", None)
    reader, writer = await asyncio.open_unix_connection(server.config.socket)
    try:
        writer.write(
            _request(1, "/stream", "100000,65536") + _request(3, "/stream", "100000,65536")
        )
        first = await reader.read(65536)
        assert first
        await _wait_until_held()
        writer.write(_request(5, "/scope"))
        await writer.drain()
        await asyncio.sleep(0.3)  # the small request is answered meanwhile
        records = RecordReader()
        records.feed(first)
        stream_bytes = 0
        for _ in range(10000):  # bounded
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the connection closed"
            done = False
            for rtype, rid, content in records.feed(data):
                if rid == 5 and rtype == END_REQUEST:
                    done = True
                elif rid != 5:
                    stream_bytes += len(content)
            if done:
                break
        # Only what was buffered before it (the transport's 32 KiB limit for a
        # shared connection, the socket buffer, a chunk in flight) came first.
        assert stream_bytes < 450_000, stream_bytes  # 590 KB before the write scheduler
    finally:
        writer.close()


async def test_send_timeout_alone_drops_the_connection(serve, caplog):
    """A web server that reads none of a lone response for --send-timeout: the
    connection is dropped at once (not closed gracefully behind a buffer nobody
    reads) and the app's send() raises."""
    caplog.set_level(logging.WARNING, logger="fcgi_asgi.error")
    server = await serve(apps.app, send_timeout=1.0)
    for key in ("stream_receive_after", "stream_sent"):
        apps.EVENTS.pop(key, None)
    reader, writer = await asyncio.open_unix_connection(server.config.socket)
    try:
        writer.write(_request(1, "/stream", "100000,65536"))
        assert await reader.read(65536)
        await _wait_until_held()
        for _ in range(100):  # bounded: the cut comes after 1 s
            if apps.EVENTS.get("stream_receive_after"):
                break
            await asyncio.sleep(0.05)
        assert apps.EVENTS["stream_disconnected"] is True
        assert not server.ctx.connections, "the stalled connection is still open"
        assert any("cut" in r.getMessage() for r in caplog.records)
    finally:
        writer.close()


async def test_send_timeout_spares_a_slow_but_steady_reader(serve, caplog):
    """A peer that reads a little at a time is making progress, not stalled: the
    timeout counts from the last time the web server read anything."""
    caplog.set_level(logging.WARNING, logger="fcgi_asgi.error")
    server = await serve(apps.app, send_timeout=3.0)
    for key in ("stream_receive_after", "stream_sent", "stream_disconnected"):
        apps.EVENTS.pop(key, None)
    reader, writer = await asyncio.open_unix_connection(server.config.socket)
    try:
        writer.write(_request(1, "/stream", "100000,65536"))
        received = 0
        for _ in range(120):  # 6 s at 160 KB/s
            data = await asyncio.wait_for(reader.read(8192), 10)
            assert data, "the gateway closed the connection"
            received += len(data)
            await asyncio.sleep(0.05)
        assert not apps.EVENTS.get("stream_disconnected")
        assert not [r for r in caplog.records if "cut" in r.getMessage()]
        assert server.ctx.connections
    finally:
        writer.close()
