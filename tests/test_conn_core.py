"""ConnectionCore (a connection's per-request steps in C) does what
ConnectionCorePy, its Python version, does: for any run of reads, the same
bytes to the web server, the same fields and the same errors; and its fields
are the ones the Python version declares."""

from __future__ import annotations

import asyncio
import gc
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgi_asgi.config import Config
from fcgi_asgi.context import ServerContext
from fcgi_asgi.protocol import conn_core
from fcgi_asgi.protocol.connection import FastCGIConnection
from fcgi_asgi.protocol.records import (
    ABORT_REQUEST,
    KEEP_CONN,
    PARAMS,
    STDIN,
    encode_begin_request,
    encode_pairs,
    encode_record,
    encode_stream,
)
from tests import apps
from tests.conftest import read_available

pytestmark = pytest.mark.timeout(120)

_HAVE_C = conn_core.ConnectionCore is not conn_core.ConnectionCorePy
needs_c = pytest.mark.skipif(
    not _HAVE_C, reason="the C speedups are not built (FCGI_ASGI_NO_EXTENSIONS)"
)


class PythonSteps(FastCGIConnection):
    """A connection whose three steps are ConnectionCorePy's."""

    data_received = conn_core.ConnectionCorePy.data_received  # type: ignore[assignment]
    write_last = conn_core.ConnectionCorePy.write_last  # type: ignore[assignment]
    request_ended = conn_core.ConnectionCorePy.request_ended  # type: ignore[assignment]


@needs_c
def test_connection_fields_are_the_same_in_c_and_python() -> None:
    """The C members are the Python version's slots, and FastCGIConnection
    keeps none of them in its own dict (its __init__ sets each one)."""
    members = {
        name
        for name, value in vars(conn_core.ConnectionCore).items()
        if type(value).__name__ == "member_descriptor"
    }
    assert members == set(conn_core.CONNECTION_FIELDS)
    assert members == set(conn_core.ConnectionCorePy.__slots__)
    config = Config(app=apps.app, socket="/tmp/unused.sock", access_log=False)
    ctx = ServerContext(app=apps.app, config=config, state={})
    loop = asyncio.new_event_loop()
    try:
        conn = FastCGIConnection(ctx, loop=loop)
        assert not members & set(vars(conn))
        for name in members:
            getattr(conn, name)  # every field set
    finally:
        loop.close()


@needs_c
def test_steps_refuse_a_connection_whose_fields_are_not_set() -> None:
    """A ConnectionCore made without FastCGIConnection's __init__ raises a
    clear error instead of reading a missing field."""

    class Bare(conn_core.ConnectionCore):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            pass

    bare = Bare()
    for name, arg in (("data_received", b""), ("write_last", b""), ("request_ended", None)):
        with pytest.raises(AttributeError, match="not set"):
            getattr(bare, name)(arg)
    del bare
    gc.collect()


def _request(rid: int, path: str, keep: bool, body: bytes, bad_params: bool) -> bytes:
    pairs = encode_pairs(
        [
            (b"REQUEST_METHOD", b"POST" if body else b"GET"),
            (b"SCRIPT_NAME", b""),
            (b"PATH_INFO", path.encode()),
            (b"QUERY_STRING", b""),
            (b"SERVER_PROTOCOL", b"HTTP/1.1"),
            (b"CONTENT_LENGTH", str(len(body)).encode()),
        ]
    )
    if bad_params:
        pairs += b"\x7f\x05ab"  # a pair whose lengths overrun the data
    data = encode_begin_request(rid, flags=KEEP_CONN if keep else 0)
    data += encode_record(PARAMS, rid, pairs) + encode_record(PARAMS, rid)
    if body:
        data += b"".join(encode_stream(STDIN, rid, body))
    return data + encode_record(STDIN, rid)


@st.composite
def _stream(draw: st.DrawFn) -> list[bytes]:
    """Reads a web server may send: whole requests one at a time (nginx),
    several in one read (HAProxy), requests cut anywhere, aborts."""
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 4))):
        rid = draw(st.sampled_from([1, 1, 2, 3]))
        path = draw(st.sampled_from(["/", "/echo", "/status", "/no-response", "/raise-before"]))
        keep = draw(st.integers(0, 4)) > 0
        body = draw(st.sampled_from([b"", b"", b"hello", b"x" * 70000]))
        packet = _request(rid, path, keep, body, draw(st.integers(0, 9)) == 0)
        if draw(st.integers(0, 9)) == 0:
            packet += encode_record(ABORT_REQUEST, rid)
        parts.append(packet)
    reads: list[bytes] = []
    for part in parts:
        how = draw(st.sampled_from(["whole", "whole", "with next", "cut"]))
        if how == "cut" and len(part) > 1:
            cut = draw(st.integers(1, len(part) - 1))
            reads += [part[:cut], part[cut:]]
        elif how == "with next" and reads:
            reads[-1] += part
        else:
            reads.append(part)
    return reads


_COMPARED = [f for f in conn_core.CONNECTION_FIELDS if f not in ("ctx", "loop", "transport")]


async def _run(cls: type[FastCGIConnection], reads: list[bytes]) -> tuple[Any, ...]:
    """Feed ``reads`` one by one to a ``cls`` connection on a real socket; the
    bytes the peer got, the fields after each read, and requests served."""
    loop = asyncio.get_running_loop()
    config = Config(app=apps.app, socket="/tmp/unused.sock", access_log=False)
    ctx = ServerContext(app=apps.app, config=config, state={})
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    seen: list[Any] = []
    try:
        transport, conn = await loop.connect_accepted_socket(lambda: cls(ctx, loop=loop), ours)
        for data in reads:
            if conn.closing:
                break
            peer.sendall(data)
            for _ in range(20):  # read, run the apps, end the turn
                await asyncio.sleep(0)
            fields = {name: getattr(conn, name) for name in _COMPARED}
            fields["_idle_since"] = fields["_idle_since"] is None
            fields["_unparsed"] = bytes(fields["_unparsed"])
            fields["requests"] = sorted(fields["requests"])
            seen.append(fields)
        got = read_available(peer)
        transport.abort()
        await asyncio.sleep(0)
        return got, seen, ctx.stats.requests_served
    finally:
        peer.close()


@needs_c
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reads=_stream())
def test_c_steps_do_what_the_python_steps_do(reads: list[bytes]) -> None:
    """Any run of reads: identical bytes to the web server, fields after each
    read and requests counted."""

    async def both() -> None:
        c_result = await _run(FastCGIConnection, reads)
        py_result = await _run(PythonSteps, reads)
        assert c_result == py_result

    asyncio.run(both())
