"""Small writes held to the end of the loop turn: responses answered in one
turn leave in one write, in order, and nothing held is lost when the
connection closes."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from fcgi_asgi.asgi.bridge import ASGIRequest
from fcgi_asgi.client import build_params
from fcgi_asgi.protocol.connection import HOLD_LIMIT
from fcgi_asgi.protocol.records import (
    END_REQUEST,
    GET_VALUES,
    GET_VALUES_RESULT,
    KEEP_CONN,
    PARAMS,
    RESPONDER,
    STDIN,
    STDOUT,
    RecordReader,
    decode_pairs,
    encode_begin_request,
    encode_pairs,
    encode_record,
)
from tests.test_processes import launch  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(60)


def _request(rid: int, path: str, keep_conn: bool = True) -> bytes:
    params = encode_pairs(build_params("GET", path))
    return (
        encode_begin_request(rid, RESPONDER, KEEP_CONN if keep_conn else 0)
        + encode_record(PARAMS, rid, params)
        + encode_record(PARAMS, rid)
        + encode_record(STDIN, rid)
    )


def _read_records(sock: socket.socket, until_ended: int) -> dict[int, list[tuple[int, bytes]]]:
    """Records per request id until ``until_ended`` END_REQUESTs (or EOF)."""
    reader = RecordReader()
    got: dict[int, list[tuple[int, bytes]]] = {}
    ended = 0
    deadline = time.monotonic() + 20
    while ended < until_ended:
        assert time.monotonic() < deadline, f"only {ended} of {until_ended} requests ended"
        data = sock.recv(1 << 16)
        if not data:
            break
        for rtype, rid, content in reader.feed(data):
            got.setdefault(rid, []).append((rtype, bytes(content)))
            ended += rtype == END_REQUEST
    return got


def _writes(pids: list[int]) -> int:
    """write(2)-family calls the processes made so far (/proc/PID/io)."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("syscw:"):
                total += int(line.split()[1])
    return total


async def test_responses_of_one_loop_turn_leave_in_one_write(launch, sock_path):  # noqa: F811
    """32 requests multiplexed in one packet are answered in a handful of
    writes, not one each (uvloop writes each transport.write() at once)."""
    gw = await launch("--workers", "1", app="tests.proc_apps:app", workers=1)
    pids = gw.workers()
    n = 32
    packet = b"".join(_request(rid, "/pid") for rid in range(1, n + 1))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    try:
        sock.connect(sock_path)
        # Warm up: the first request of a worker imports and allocates.
        sock.sendall(_request(1, "/pid"))
        _read_records(sock, 1)
        before = _writes(pids)
        sock.sendall(packet)
        got = await asyncio.to_thread(_read_records, sock, n)
        writes = _writes(pids) - before
    finally:
        sock.close()
    assert sorted(got) == list(range(1, n + 1))
    for records in got.values():
        body = b"".join(content for rtype, content in records if rtype == STDOUT)
        assert body.endswith(str(pids[0]).encode()), body
        assert records[-1][0] == END_REQUEST
    # The packet may be read in two or three pieces; one write per response
    # would be 32.
    assert writes <= 6, f"{writes} writes for {n} responses"


async def test_a_reply_held_for_the_turn_goes_out_before_a_protocol_error_closes(serve):
    """GET_VALUES is answered while the packet is parsed; a record that breaks
    the protocol right behind it closes the connection, after the held answer."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("no request should reach the app")

    server = await serve(app)
    query = encode_record(GET_VALUES, 0, encode_pairs([(b"FCGI_MPXS_CONNS", b"")]))
    bad = encode_record(GET_VALUES_RESULT, 1)  # a web server never sends this
    reader, writer = await asyncio.open_unix_connection(server.config.socket)
    try:
        writer.write(query + bad)
        data = await asyncio.wait_for(reader.read(), 10)  # to EOF
    finally:
        writer.close()
    records = list(RecordReader().feed(data))
    assert [r[0] for r in records] == [GET_VALUES_RESULT]
    assert decode_pairs(records[0][2]) == [(b"FCGI_MPXS_CONNS", b"1")]


async def test_a_response_without_keep_conn_is_whole_before_the_close(serve):
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"bye"})

    server = await serve(app)
    reader, writer = await asyncio.open_unix_connection(server.config.socket)
    try:
        writer.write(_request(1, "/", keep_conn=False))
        data = await asyncio.wait_for(reader.read(), 10)  # to EOF
    finally:
        writer.close()
    records = list(RecordReader().feed(data))
    assert [r[0] for r in records] == [STDOUT, STDOUT, END_REQUEST]
    assert bytes(records[0][2]).endswith(b"\r\n\r\nbye")


async def test_held_and_direct_writes_keep_their_order(serve):
    """Small chunks are held, a chunk over HOLD_LIMIT goes out at once: it must
    not overtake the small ones before it, on one connection or across two
    multiplexed requests."""
    small = [bytes([65 + i % 26]) * 100 for i in range(60)]
    large = b"L" * (HOLD_LIMIT * 4)
    expected = b"".join(small[:30]) + large + b"".join(small[30:])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in small[:30]:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": large, "more_body": True})
        for piece in small[30:]:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    server = await serve(app)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    try:
        await asyncio.to_thread(sock.connect, server.config.socket)
        sock.sendall(_request(1, "/") + _request(2, "/"))
        got = await asyncio.to_thread(_read_records, sock, 2)
    finally:
        sock.close()
    for rid in (1, 2):
        stream = b"".join(content for rtype, content in got[rid] if rtype == STDOUT)
        assert stream.split(b"\r\n\r\n", 1)[1] == expected
        assert got[rid][-1][0] == END_REQUEST


@pytest.mark.parametrize("speedups", [True, False], ids=["C send_fast", "Python send_whole"])
async def test_the_last_write_of_a_lone_request_leaves_in_its_send(serve, monkeypatch, speedups):
    """On a connection that runs one request at a time, nothing can join a
    response's last records in this loop turn: they leave in the send() that
    ends the request, not at the turn's end. Multiplexed, they are held
    (test_responses_of_one_loop_turn_leave_in_one_write)."""
    if not speedups:
        from fcgi_asgi.protocol.core import RequestCorePy

        monkeypatch.setattr(ASGIRequest, "send_fast", RequestCorePy.send_fast)
    seen: list[bytes] = []
    peer: list[socket.socket] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"now"})
        try:
            seen.append(peer[0].recv(65536, socket.MSG_DONTWAIT))
        except BlockingIOError:
            seen.append(b"")

    server = await serve(app)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.append(sock)
    try:
        sock.connect(server.config.socket)
        sock.setblocking(False)
        for i in range(3):  # the first and later requests of a keep-conn connection
            await asyncio.get_running_loop().sock_sendall(sock, _request(1, "/"))
            for _ in range(500):
                if len(seen) > i:
                    break
                await asyncio.sleep(0.01)
            assert len(seen) == i + 1, "the app did not run"
            got = seen[i]
            records = list(RecordReader().feed(got))
            assert [r[0] for r in records] == [STDOUT, STDOUT, END_REQUEST], got
            assert bytes(records[0][2]).endswith(b"\r\n\r\nnow")
    finally:
        sock.close()
