"""The gateway over real unix and TCP sockets, driven by the FastCGI client."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import os
import socket
import time
import weakref

import pytest

from fcgi_asgi.client import build_params
from fcgi_asgi.protocol.records import (
    ABORT_REQUEST,
    END_REQUEST,
    FILTER,
    GET_VALUES,
    GET_VALUES_RESULT,
    KEEP_CONN,
    OVERLOADED,
    PARAMS,
    REQUEST_COMPLETE,
    RESPONDER,
    STDIN,
    STDOUT,
    UNKNOWN_ROLE,
    UNKNOWN_TYPE,
    decode_pairs,
    encode_begin_request,
    encode_pairs,
    encode_record,
    parse_end_request,
)
from tests import apps
from tests.conftest import connect

pytestmark = pytest.mark.timeout(60)


async def until(check, tries: int, delay: float) -> None:
    """Poll ``check`` up to ``tries`` times, ``delay`` seconds apart (the test's
    assertions then say what was expected)."""
    for _ in range(tries):
        if check():
            return
        await asyncio.sleep(delay)


@pytest.fixture(params=["unix", "tcp"])
async def server(request, serve):
    return await serve(apps.app, tcp=request.param == "tcp")


async def test_get_scope(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/scope", query="a=1&b=%20")
    assert r.status == 200 and r.reason == "OK"
    assert r.header("content-type") == "application/json"
    scope = json.loads(r.body)
    assert scope["method"] == "GET"
    assert scope["path"] == "/scope"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["client"] == ["127.0.0.1", 50000]
    assert scope["server"] == ["127.0.0.1", 80]
    assert scope["extensions"] == ["fastcgi", "http.response.pathsend"]
    assert r.app_status == 0 and r.protocol_status == REQUEST_COMPLETE


async def test_post_echo(server):
    body = os.urandom(200_000)
    async with await connect(server) as client:
        r = await client.request("POST", "/echo", body=body)
    assert r.status == 200
    assert r.body == body


async def test_upload_10mib_streamed(server):
    """10 MiB sent in 64 KiB pieces reaches the app in chunks, never whole."""
    data = os.urandom(10 << 20)
    async with await connect(server) as client:
        req = await client.begin(build_params("POST", "/hash", content_length=len(data)))
        for i in range(0, len(data), 65536):
            await req.send_body(data[i : i + 65536])
        await req.end_body()
        r = await req.response()
    assert r.body.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
    assert apps.EVENTS["hash_largest_chunk"] < len(data)


async def test_keep_conn_sequential(server):
    async with await connect(server) as client:
        for i in range(5):
            r = await client.request("POST", "/echo", body=b"n%d" % i)
            assert r.body == b"n%d" % i
        assert not client.closed.is_set()


async def test_close_without_keep_conn(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/scope", keep_conn=False)
        assert r.status == 200
        await asyncio.wait_for(client.closed.wait(), 5)


async def test_multiplexed_requests_run_concurrently(server):
    async with await connect(server) as client:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.request("GET", "/sleep", query="0.2") for _ in range(20))
        )
        elapsed = time.monotonic() - started
    assert [r.body for r in results] == [b"slept"] * 20
    assert elapsed < 20 * 0.2 / 4, f"20 multiplexed requests took {elapsed:.2f}s"


async def test_get_values(server):
    async with await connect(server) as client:
        values = await client.get_values(
            [b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS", b"FCGI_NOT_A_NAME"]
        )
    assert values[b"FCGI_MPXS_CONNS"] == b"1"
    assert values[b"FCGI_MAX_REQS"] == b"100"
    assert int(values[b"FCGI_MAX_CONNS"]) > 0
    assert b"FCGI_NOT_A_NAME" not in values


async def test_get_values_repeated_names_answered_once(server):
    """A GET_VALUES asking for the same names over and over fits in one record
    (65535 bytes); each name is answered once, so the reply fits too."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    names = [b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS", b"FCGI_MAX_CONNS"] * 1365
    content = encode_pairs((name, b"") for name in names)
    assert len(content) <= 65535
    async with await connect(server) as client:
        await client.send_raw(encode_record(GET_VALUES, 0, content))
        record = await asyncio.wait_for(client.next_management_record(), 5)
        assert record.type == GET_VALUES_RESULT
        answer = decode_pairs(record.content)
        assert sorted(name for name, _ in answer) == sorted(set(names))
        assert (await client.request("GET", "/scope")).status == 200
    assert not unhandled, unhandled


async def test_unknown_management_type(server):
    async with await connect(server) as client:
        await client.send_raw(encode_record(42, 0, b"whatever"))
        record = await asyncio.wait_for(client.next_management_record(), 5)
        assert record.type == UNKNOWN_TYPE and record.request_id == 0
        assert record.content[0] == 42
        # A BEGIN_REQUEST with id 0 is a management record of a type we don't know.
        await client.send_raw(encode_begin_request(0))
        record = await asyncio.wait_for(client.next_management_record(), 5)
        assert record.type == UNKNOWN_TYPE and record.content[0] == 1
        # ... and the connection still serves requests.
        r = await client.request("GET", "/scope")
        assert r.status == 200


@pytest.mark.parametrize("role", [FILTER, 7])
async def test_unknown_role(server, role):
    # FILTER unless --roles lists it; AUTHORIZER is refused with a 403
    # instead (test_roles.py).
    async with await connect(server) as client:
        req = await client.begin(build_params("GET", "/scope"), role=role)
        await req.end_body()
        r = await req.response()
        assert r.protocol_status == UNKNOWN_ROLE
        assert r.raw == b""
        r = await client.request("GET", "/scope")
        assert r.status == 200


async def test_overloaded_beyond_multiplex_cap(serve):
    server = await serve(apps.app, max_requests_per_connection=3)
    async with await connect(server) as client:
        tasks = [
            asyncio.ensure_future(client.request("GET", "/sleep", query="0.3")) for _ in range(3)
        ]
        await asyncio.sleep(0.1)
        r = await client.request("GET", "/scope")
        assert r.protocol_status == OVERLOADED
        assert [t.status for t in await asyncio.gather(*tasks)] == [200] * 3


async def test_abort_during_streaming(server):
    async with await connect(server) as client:
        apps.EVENTS.pop("stream_receive_after", None)
        req = await client.begin(build_params("GET", "/stream", query="100000,65536"))
        await req.end_body()
        assert await req.read_stdout()
        await req.abort()
        while await req.read_stdout():
            pass
        assert req.protocol_status == REQUEST_COMPLETE
        await until(lambda: apps.EVENTS.get("stream_receive_after"), tries=100, delay=0.05)
        assert apps.EVENTS["stream_disconnected"] is True
        assert apps.EVENTS["stream_receive_after"] == "http.disconnect"
        # The connection lives on for the next request.
        r = await client.request("GET", "/scope")
        assert r.status == 200


async def test_failed_write_gives_disconnect(serve):
    """A write fails (the web server stopped reading for good) before any read
    sees the connection end: send() raises, and a receive() after that must
    say http.disconnect (ASGI 2.4), not hand out the request body. On a unix
    socket, the client's shutdown(SHUT_RD) makes the gateway's writes fail
    with EPIPE while its reads see no EOF: that order, every time."""
    server = await serve(apps.app)
    # Bursts of 8 small chunks, 20 ms apart: between two bursts the client
    # stops reading, and the next burst's first write fails while the send()
    # after it runs in the same step, before connection_lost.
    params = encode_pairs(build_params("GET", "/stream", query="4000,1024,0.02"))
    request = (
        encode_begin_request(1, RESPONDER, 0)
        + encode_record(PARAMS, 1, params)
        + encode_record(PARAMS, 1)
        + encode_record(STDIN, 1)
    )
    apps.EVENTS.pop("stream_receive_after", None)
    reader, writer = await asyncio.open_unix_connection(server.config.socket)
    try:
        writer.write(request)
        assert await reader.read(65536)  # streaming has begun
        writer.get_extra_info("socket").shutdown(socket.SHUT_RD)
        await until(lambda: apps.EVENTS.get("stream_receive_after"), tries=250, delay=0.02)
    finally:
        writer.close()
    assert apps.EVENTS["stream_disconnected"] is True
    assert apps.EVENTS["stream_receive_after"] == "http.disconnect"


@pytest.mark.parametrize("how", ["get", "post", "fail"])
async def test_concurrent_receive_calls_all_end(server, how, caplog):
    """Two tasks of one request wait in receive() at once: a body arriving goes
    to one of them, and once the response is sent (or the app fails) both get
    http.disconnect, on a kept connection that stays open. None may hang."""
    async with await connect(server) as client:
        req = await client.begin(
            build_params(
                "POST" if how == "post" else "GET",
                "/two-receivers",
                query="fail" if how == "fail" else "",
            ),
            keep_conn=True,
        )
        await asyncio.sleep(0.1)  # both receivers wait before the body comes
        if how == "post":
            await req.send_body(b"abc")
        await req.end_body()
        body = b""
        while chunk := await req.read_stdout():
            body += chunk
        assert (b"answered" in body) == (how != "fail")
        await asyncio.wait_for(asyncio.gather(*apps.EVENTS["receiver_tasks"]), 2)
        got = apps.EVENTS["receivers"]
        assert sorted(got) == ["a", "b"]
        assert all(messages[-1][0] == "http.disconnect" for messages in got.values())
        requests = sorted(
            m for messages in got.values() for m in messages if m[0] == "http.request"
        )
        expected_body = b"abc" if how == "post" else b""
        assert b"".join(m[1] for m in requests) == expected_body
        assert [m[2] for m in requests][-1:] == [False]
        # The connection lives on.
        assert (await client.request("GET", "/scope")).status == 200


async def test_send_after_abort_raises_client_disconnected(server, caplog):
    """ABORT_REQUEST while the app is between two sends: the next send() raises
    ClientDisconnected (an OSError, ASGI 2.4), not an app error, and nothing is
    logged as an error: the client going away is not the app's fault."""
    apps.EVENTS.pop("second_send", None)
    async with await connect(server) as client:
        req = await client.begin(build_params("GET", "/pause-then-send"), keep_conn=True)
        await req.end_body()
        assert await req.read_stdout()
        await req.abort()
        while await req.read_stdout():
            pass
        assert req.protocol_status == REQUEST_COMPLETE
        await until(lambda: "second_send" in apps.EVENTS, tries=100, delay=0.02)
        assert apps.EVENTS["second_send"] == "ClientDisconnected"
        assert (await client.request("GET", "/scope")).status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_abort_wakes_a_send_waiting_for_the_peer(serve):
    """The web server stops reading a streamed response, then aborts it: the
    app's send(), waiting for the connection to drain, raises at once (it used
    to wait until the peer read again, or the connection closed)."""
    server = await serve(apps.app)
    params = encode_pairs(build_params("GET", "/stream", query="100000,65536"))
    apps.EVENTS.pop("stream_receive_after", None)
    reader, writer = await asyncio.open_unix_connection(server.config.socket)
    try:
        writer.write(
            encode_begin_request(1, RESPONDER, KEEP_CONN)
            + encode_record(PARAMS, 1, params)
            + encode_record(PARAMS, 1)
            + encode_record(STDIN, 1)
        )
        assert await reader.read(65536)  # streaming has begun; now nothing is read
        for _ in range(100):  # until the app waits for the peer
            sent = apps.EVENTS["stream_sent"]
            await asyncio.sleep(0.05)
            if apps.EVENTS["stream_sent"] == sent:
                break
        writer.write(encode_record(ABORT_REQUEST, 1))
        await until(lambda: apps.EVENTS.get("stream_receive_after"), tries=100, delay=0.02)
        assert apps.EVENTS["stream_disconnected"] is True
        assert apps.EVENTS["stream_receive_after"] == "http.disconnect"
    finally:
        writer.close()


async def test_abort_gives_disconnect_to_waiting_app(server):
    apps.EVENTS.pop("disconnect_seen", None)
    async with await connect(server) as client:
        req = await client.begin(build_params("GET", "/wait-disconnect"))
        await req.end_body()
        assert await req.read_stdout()
        await req.abort()
        await until(lambda: apps.EVENTS.get("disconnect_seen"), tries=100, delay=0.02)
    assert apps.EVENTS.get("disconnect_seen") is True


async def test_lost_connection_gives_disconnect(server):
    apps.EVENTS.pop("disconnect_seen", None)
    client = await connect(server)
    req = await client.begin(build_params("GET", "/wait-disconnect"))
    await req.end_body()
    assert await req.read_stdout()
    await client.close()
    await until(lambda: apps.EVENTS.get("disconnect_seen"), tries=100, delay=0.02)
    assert apps.EVENTS.get("disconnect_seen") is True


async def test_exception_before_start_gives_500(server, caplog):
    async with await connect(server) as client:
        r = await client.request("GET", "/raise-before")
        assert r.status == 500
        assert r.body == b"Internal Server Error"
        assert b"boom" not in r.raw
        assert r.protocol_status == REQUEST_COMPLETE
        r = await client.request("GET", "/scope")
        assert r.status == 200
    assert "boom before start" in caplog.text
    assert "Traceback" in caplog.text


async def test_an_app_raising_system_exit_ends_its_request_not_the_server(server, caplog):
    async with await connect(server) as client:
        r = await client.request("GET", "/sys-exit")
        assert r.status == 500 and r.protocol_status == REQUEST_COMPLETE
        r = await client.request("GET", "/scope")
        assert r.status == 200
    assert "ASGI application raised SystemExit: 3; it ends this request" in caplog.text


async def test_exception_after_start_truncates(server, caplog):
    async with await connect(server) as client:
        req = await client.begin(build_params("GET", "/raise-after"))
        await req.end_body()
        received = b""
        with pytest.raises(ConnectionError):
            while chunk := await req.read_stdout():
                received += chunk
        assert received.endswith(b"partial")
    assert "boom after start" in caplog.text


async def test_exception_after_start_waits_for_the_end_of_stdin(server):
    """Apache sends the empty STDIN after the PARAMS: the app may fail before
    it comes, and a connection closed by then makes Apache's write fail (it
    answers 503 instead of the truncated 200). The cut waits for STDIN's end."""
    async with await connect(server) as client:
        req = await client.begin(build_params("GET", "/raise-after"))
        received = b""
        while b"partial" not in received:
            chunk = await asyncio.wait_for(req.read_stdout(), 5)
            assert chunk, "the connection closed before the end of STDIN"
            received += chunk
        await asyncio.sleep(0.2)  # the app has failed by now
        assert not client.closed.is_set(), "closed before the end of STDIN"
        await req.end_body()  # a closed connection would fail this write (EPIPE)
        with pytest.raises(ConnectionError):
            while await asyncio.wait_for(req.read_stdout(), 5):
                pass


async def test_exception_after_start_spares_multiplexed_neighbours(server):
    async with await connect(server) as client:
        slow = asyncio.ensure_future(client.request("GET", "/sleep", query="0.3"))
        await asyncio.sleep(0.05)
        r = await client.request("GET", "/raise-after")
        assert r.app_status == 1
        assert r.body == b"partial"
        assert (await slow).body == b"slept"


@pytest.mark.parametrize("neighbour", [False, True])
async def test_exception_after_complete_response_keeps_it(server, neighbour, caplog):
    """An app fails after sending its whole response, while END_REQUEST waits for
    the rest of an unread body: the response stays complete (END_REQUEST with
    appStatus 0, after one end of STDOUT), alone or beside another request."""
    async with await connect(server) as client:
        other = None
        if neighbour:
            other = asyncio.ensure_future(client.request("GET", "/sleep", query="0.5"))
            await asyncio.sleep(0.05)
        req = await client.begin(build_params("POST", "/raise-after-complete", content_length=5000))
        await req.send_body(b"x" * 1000)
        chunks = []
        while True:
            record = await asyncio.wait_for(req.queue.get(), 5)
            assert record is not None, "connection closed before END_REQUEST"
            chunks.append(record)
            if record.type == END_REQUEST:
                break
        stdout = [r.content for r in chunks if r.type == STDOUT]
        assert stdout[-1] == b"" and b"" not in stdout[:-1]
        assert b"".join(stdout).endswith(b"\r\n\r\ncomplete")
        assert parse_end_request(chunks[-1].content) == (0, REQUEST_COMPLETE)
        if other is not None:
            assert (await asyncio.wait_for(other, 5)).body == b"slept"
        client.release(req.request_id)
        assert (await client.request("GET", "/scope")).status == 200
    assert "boom after the response" in caplog.text


async def test_app_errors_are_500(server):
    async with await connect(server) as client:
        for path in ("/no-response", "/bad-header", "/body-before-start"):
            r = await client.request("GET", path)
            assert r.status == 500, path
            assert b"never" not in r.raw


async def test_status_codes_and_cookies(server):
    async with await connect(server) as client:
        for code, reason in ((201, "Created"), (204, "No Content"), (418, "I'm a Teapot")):
            r = await client.request("GET", "/status", query=str(code))
            assert (r.status, r.reason) == (code, reason)
        r = await client.request("GET", "/cookies")
        assert r.header_list("set-cookie") == ["a=1", "b=2"]


async def test_pathsend(server, tmp_path):
    data = os.urandom(300_000)
    f = tmp_path / "file.bin"
    f.write_bytes(data)
    async with await connect(server) as client:
        r = await client.request("GET", "/pathsend", query=str(f))
    assert r.status == 200 and r.body == data


async def test_trailers_ignored(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/trailers")
    assert r.status == 200 and r.body == b"body"


async def test_trailers_announced_but_never_sent(server):
    """An app that announces trailers and returns without sending them still
    ends its request: the body is complete, and trailers are dropped anyway."""
    async with await connect(server) as client:
        r = await asyncio.wait_for(client.request("GET", "/trailers", query="missing"), 5)
        assert r.status == 200 and r.body == b"body"
        assert r.protocol_status == REQUEST_COMPLETE
        assert (await client.request("GET", "/scope")).status == 200


async def test_lifespan_state(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/scope")
    assert json.loads(r.body)["state"] == {"started": "yes"}


async def test_lifespan_shutdown_runs(serve):
    apps.EVENTS.pop("shutdown", None)
    server = await serve(apps.app)
    await server.aclose()
    assert apps.EVENTS.get("shutdown") is True


async def test_protocol_violation_closes_only_that_connection(server, caplog):
    async with await connect(server) as good, await connect(server) as bad:
        slow = asyncio.ensure_future(good.request("GET", "/sleep", query="0.2"))
        await bad.send_raw(b"\x02" + b"\x00" * 7)  # version 2
        await asyncio.wait_for(bad.closed.wait(), 5)
        assert (await slow).body == b"slept"
    assert "version 2" in caplog.text


async def test_duplicate_request_id_is_a_connection_error(server, caplog):
    async with await connect(server) as client:
        await client.send_raw(encode_begin_request(7) + encode_begin_request(7))
        await asyncio.wait_for(client.closed.wait(), 5)
    assert "already in use" in caplog.text


async def test_oversized_params_close_the_connection(serve, caplog):
    server = await serve(apps.app, max_params_size=4096)
    async with await connect(server) as client:
        params = build_params("GET", "/scope", headers={"x-big": "y" * 10000})
        await client.begin(params)
        await asyncio.wait_for(client.closed.wait(), 5)
    assert "exceed 4096 bytes" in caplog.text


@pytest.mark.parametrize("first", [b"\x00", b"\x01"])
async def test_garbage_never_hangs(serve, first):
    """Garbage is either a bad header (closed at once) or, when it happens to start
    like a record, a request that never completes (closed at the params timeout)."""
    server = await serve(apps.app, params_timeout=1.0)
    async with await connect(server) as client:
        await client.send_raw(first + os.urandom(4095))
        await asyncio.wait_for(client.closed.wait(), 5)


async def test_get_values_unknown_type_constant():
    assert GET_VALUES == 9


async def test_stdin_after_the_end_of_stdin_is_dropped(server):
    """STDIN data after the empty STDIN record (a broken peer) never reaches the
    app as another http.request after more_body=False; a second empty STDIN is
    harmless too."""
    async with await connect(server) as client:
        req = await client.begin(build_params("POST", "/read-then-listen", content_length=3))
        await req.send_body(b"abc")
        await req.end_body()
        await asyncio.sleep(0.05)  # the app has read its body and listens
        await req.send_body(b"xyz")
        await req.end_body()
        r = await asyncio.wait_for(req.response(), 5)
        assert r.body == b"abc | nothing"
        assert (await client.request("GET", "/scope")).status == 200


async def test_head_goes_out_while_the_app_waits(server):
    """The head waits for the first body only while the app does not yield."""
    async with await connect(server) as client:
        req = await client.begin(build_params("GET", "/head-then-wait"))
        await req.end_body()
        first = await asyncio.wait_for(req.read_stdout(), 0.4)  # before the app's 0.5 s sleep
        assert first == b"Status: 202 Accepted\r\nx-a: 1\r\n\r\n"
        assert await req.read_stdout() == b"later"


@pytest.mark.parametrize("size", [65000, 65535, 140000])
@pytest.mark.parametrize("how", ["with-body", "yield"])
async def test_response_head_larger_than_a_record(server, size, how, caplog):
    """A head too large for one STDOUT record is split over several, whether it
    goes out with the body or alone; a neighbour's head flushed in the same loop
    iteration goes out too."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    query = f"{size},yield" if how == "yield" else str(size)
    async with await connect(server) as client:
        big, small = await asyncio.wait_for(
            asyncio.gather(
                client.request("GET", "/big-head", query=query),
                client.request("GET", "/big-head", query="10,yield"),
            ),
            5,
        )
    assert big.status == 200 and big.header("x-big") == "v" * size
    assert big.body == b"after the head" and big.protocol_status == REQUEST_COMPLETE
    assert small.status == 200 and small.body == b"after the head"
    assert not unhandled, unhandled
    assert "Exception in ASGI application" not in caplog.text


async def test_end_request_waits_while_stdin_keeps_coming(server):
    """An app that answers before reading its body: END_REQUEST waits for the end of
    STDIN while the web server is still sending it (h2o 2.2 aborts otherwise)."""
    from fcgi_asgi.protocol.records import END_REQUEST

    async with await connect(server) as client:
        req = await client.begin(build_params("POST", "/status", query="201", content_length=9000))
        await req.send_body(b"x" * 1000)
        assert (await asyncio.wait_for(req.read_stdout(), 5)).startswith(b"Status: 201 Created")
        for _ in range(8):  # 0.4 s of STDIN, never quiet for 0.2 s
            await req.send_body(b"y" * 1000)
            await asyncio.sleep(0.05)
        assert all(r is not None and r.type != END_REQUEST for r in list(req.queue._queue))
        await req.end_body()
        assert await asyncio.wait_for(req.read_stdout(), 5) == b""
        assert req.protocol_status == REQUEST_COMPLETE
        assert (await client.request("GET", "/scope")).status == 200


async def test_end_request_goes_out_when_stdin_goes_quiet(server):
    """nginx stops sending the body once it has the response: END_REQUEST must not
    wait for an empty STDIN record that will never come."""
    async with await connect(server) as client:
        req = await client.begin(build_params("POST", "/status", query="202", content_length=5000))
        await req.send_body(b"x" * 1000)
        started = time.monotonic()
        r = await asyncio.wait_for(req.response(), 5)
        assert r.status == 202 and r.protocol_status == REQUEST_COMPLETE
        assert time.monotonic() - started < 2.0  # quiet for 0.2 s, not stdin_linger (5 s)
        assert (await client.request("GET", "/scope")).status == 200


async def test_wait_closed_waits_for_close_and_does_not_start_it(serve):
    """As asyncio.Server.wait_closed(): a task watching for the end of the
    server must not end it."""
    server = await serve(apps.app)
    watcher = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0.2)
    async with await connect(server) as client:
        assert (await client.request("GET", "/sleep", query="0")).body == b"slept"
    assert not watcher.done()
    server.close()
    await asyncio.wait_for(watcher, 5)
    assert not server.sockets


async def _body_on_head(scope, receive, send):
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"5")],
        }
    )
    await send({"type": "http.response.body", "body": b"hel", "more_body": True})
    await send({"type": "http.response.body", "body": b"lo"})


@pytest.mark.parametrize("method", ["HEAD", "GET"])
async def test_head_response_keeps_its_head_but_no_body(serve, caplog, method):
    server = await serve(_body_on_head, access_log=True, access_log_format="{method} {bytes}")
    with caplog.at_level(logging.INFO, logger="fcgi_asgi.access"):
        async with await connect(server) as client:
            r = await client.request(method, "/")
        await until(lambda: "fcgi_asgi.access" in {rec.name for rec in caplog.records}, 50, 0.02)
    assert r.status == 200
    assert r.header("content-length") == "5"
    sent = {"HEAD": b"", "GET": b"hello"}[method]
    assert r.body == sent
    # Not sent, so not counted as sent in the access log.
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "fcgi_asgi.access"]
    assert lines == [f"{method} {len(sent)}"]


@pytest.mark.parametrize(
    ("interface", "threads", "tcp"),
    [("asgi", 16, False), ("asgi", 16, True), ("wsgi", 16, False), ("wsgi", 0, False)],
    ids=["asgi-unix", "asgi-tcp", "wsgi-threads", "wsgi-loop"],
)
async def test_a_closed_connection_is_freed_by_reference_counting(
    serve, interface: str, threads: int, tcp: bool
) -> None:
    """Nothing of a connection's stays in a reference cycle once it closes:
    it is freed at once, not at the cyclic garbage collector's next pass
    (with a connection per request, nginx's default, closed connections
    would pile up for it, and each pass would cost the time to scan them)."""
    from tests import wsgi_apps

    if interface == "asgi":
        server = await serve(apps.app, tcp=tcp)
        path = "/scope"
    else:
        server = await serve(wsgi_apps.plain_app, interface="wsgi", threads=threads)
        path = "/hello"
    ctx = server.ctx
    assert ctx is not None
    gc.collect()
    gc.disable()
    try:
        closed = []
        for _ in range(3):
            async with await connect(server) as client:
                r = await client.request("GET", path)
                assert r.status == 200, r.body
                [conn] = ctx.connections
                closed.append(weakref.ref(conn))
                del conn
            await until(lambda: not ctx.connections, 200, 0.01)
            assert not ctx.connections
        for _ in range(3):
            await asyncio.sleep(0)
        assert [ref() for ref in closed] == [None, None, None]
    finally:
        gc.enable()
