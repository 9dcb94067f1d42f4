"""Hostile or broken peers: floods, random record streams, memory bounds."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgi_asgi.client import build_params
from fcgi_asgi.protocol.records import (
    ABORT_REQUEST,
    BEGIN_REQUEST,
    GET_VALUES,
    KEEP_CONN,
    PARAMS,
    STDIN,
    encode_begin_request,
    encode_pairs,
    encode_record,
)
from tests import apps
from tests.conftest import connect

pytestmark = pytest.mark.timeout(120)


class Silent(asyncio.Protocol):
    """A peer that never reads."""

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        transport.pause_reading()


async def test_get_values_flood_from_a_peer_that_never_reads(serve):
    server = await serve(apps.app)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(Silent, server.config.socket)
    query = encode_record(GET_VALUES, 0, encode_pairs({b"FCGI_MPXS_CONNS": b""}))
    burst = query * 4096
    largest = 0
    for _ in range(400):  # up to ~40 MiB offered
        transport.write(burst)
        await asyncio.sleep(0.005)
        for conn in server.ctx.connections:
            if conn.transport is not None:
                largest = max(largest, conn.transport.get_write_buffer_size())
        if transport.get_write_buffer_size() > 8 << 20:
            break  # the gateway stopped reading: our own buffer grows instead
    assert transport.get_write_buffer_size() > 0
    assert largest < 4 << 20, largest
    transport.abort()
    async with await connect(server) as client:
        assert (await client.request("GET", "/scope")).status == 200


async def test_params_budget_is_per_connection(serve, caplog):
    server = await serve(apps.app, max_params_size=64 << 10)
    async with await connect(server) as client:
        half = encode_pairs({b"HTTP_X": b"y" * (20 << 10)})
        data = b"".join(
            encode_begin_request(rid) + encode_record(PARAMS, rid, half) for rid in range(1, 5)
        )
        await client.send_raw(data)
        await asyncio.wait_for(client.closed.wait(), 5)
    assert "with the connection's other pending requests" in caplog.text


async def test_abort_before_params_end_frees_budget(serve):
    server = await serve(apps.app, max_params_size=64 << 10, params_timeout=1.0)
    async with await connect(server) as client:
        half = encode_pairs({b"HTTP_X": b"y" * (40 << 10)})
        for _ in range(3):
            await client.send_raw(
                encode_begin_request(9, flags=KEEP_CONN)
                + encode_record(PARAMS, 9, half)
                + encode_record(ABORT_REQUEST, 9)
            )
        await asyncio.sleep(1.5)  # past params_timeout: aborted requests must not count
        assert (await client.request("GET", "/scope")).status == 200


record_types = st.sampled_from([BEGIN_REQUEST, ABORT_REQUEST, PARAMS, STDIN, GET_VALUES, 8, 6, 77])


@st.composite
def record_streams(draw):  # type: ignore[no-untyped-def]
    out = []
    for _ in range(draw(st.integers(1, 12))):
        rtype = draw(record_types)
        rid = draw(st.sampled_from([0, 1, 2, 3]))
        if rtype == BEGIN_REQUEST and draw(st.booleans()):
            content = encode_begin_request(rid, draw(st.integers(0, 4)), draw(st.integers(0, 1)))[
                8:
            ]
        elif rtype == PARAMS and draw(st.booleans()):
            content = encode_pairs(
                build_params("GET", draw(st.sampled_from(["/scope", "/echo", "/sleep"])))
            )
        else:
            content = draw(st.binary(max_size=64))
        out.append(encode_record(rtype, rid, content))
    if draw(st.booleans()):
        out.append(draw(st.binary(max_size=16)))  # trailing garbage or a cut record
    return b"".join(out)


@st.composite
def whole_streams(draw):  # type: ignore[no-untyped-def]
    """Whole requests back to back, as nginx (a POST with its body) or HAProxy
    write them, for the connection's short way (records.request_packets): ids
    that may repeat, any role and flags, bodies in 0-3 records, sometimes one
    record swapped for a random one."""
    out = []
    for i in range(draw(st.integers(1, 3))):
        rid = i + 1 if draw(st.integers(0, 4)) else draw(st.sampled_from([1, 2, 3]))
        role = 1 if draw(st.integers(0, 5)) else draw(st.sampled_from([2, 3, 9]))
        path = draw(st.sampled_from(["/scope", "/echo", "/sleep"]))
        out.append(encode_begin_request(rid, role, draw(st.integers(0, 1))))
        out.append(encode_record(PARAMS, rid, encode_pairs(build_params("POST", path))))
        out.append(encode_record(PARAMS, rid))
        for piece in draw(st.lists(st.binary(min_size=1, max_size=3000), max_size=3)):
            out.append(encode_record(STDIN, rid, piece))
        out.append(encode_record(STDIN, rid))
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(out) - 1))
        rtype = draw(record_types)
        out[at] = encode_record(
            rtype, draw(st.sampled_from([0, 1, 2])), draw(st.binary(max_size=16))
        )
    return b"".join(out)


async def test_random_record_streams_never_break_the_server(serve, caplog):
    """Whatever a peer sends, the server logs, closes that connection at worst, and
    goes on serving; the loop's exception handler is never reached."""
    server = await serve(apps.app, params_timeout=1.0)
    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(record_streams() | whole_streams())
    def check(stream: bytes) -> None:
        async def one() -> None:
            reader, writer = await asyncio.open_unix_connection(server.config.socket)
            writer.write(stream)
            with contextlib.suppress(OSError):
                await writer.drain()
            with contextlib.suppress(asyncio.TimeoutError, OSError):
                await asyncio.wait_for(reader.read(1 << 20), 0.05)
            writer.close()

        pending.append(one())

    pending: list = []
    check()
    for coro in pending:
        await coro
    await asyncio.sleep(0.3)
    async with await connect(server) as client:
        assert (await client.request("GET", "/scope")).status == 200
    assert not unhandled, unhandled
    assert "Traceback" not in "\n".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name == "asyncio"
    )
