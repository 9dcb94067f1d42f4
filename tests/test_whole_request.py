"""A read made of whole requests (nginx's GET in one write, its POST with
the body it buffered, HAProxy's GETs back to back) takes a shorter way
through the connection (records.request_packets): it must answer as the
records one by one would, keep every protocol check, and never take bytes
that belong to a partial record for a request."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from typing import Any

import pytest

from fcgi_asgi import FastCGIServer
from fcgi_asgi.client import ClientRequest, FastCGIClient, build_params
from fcgi_asgi.protocol import records
from fcgi_asgi.protocol.records import (
    CANT_MPX_CONN,
    KEEP_CONN,
    PARAMS,
    RESPONDER,
    STDIN,
    UNKNOWN_ROLE,
    encode_begin_request,
    encode_pairs,
    encode_record,
)
from fcgi_asgi.protocol.request import TASK_NAME
from tests import apps, wsgi_apps
from tests.conftest import Serve, connect

pytestmark = pytest.mark.timeout(30)


def whole_get(rid: int, path: str, keep_conn: bool = True, **headers: str) -> bytes:
    """BEGIN_REQUEST, PARAMS, the empty PARAMS and the empty STDIN, as one write."""
    params = encode_pairs(build_params("GET", path, headers=headers))
    return (
        encode_begin_request(rid, RESPONDER, KEEP_CONN if keep_conn else 0)
        + encode_record(PARAMS, rid, params)
        + encode_record(PARAMS, rid)
        + encode_record(STDIN, rid)
    )


def whole_post(rid: int, path: str, pieces: list[bytes], keep_conn: bool = True) -> bytes:
    """A request with its body in one write, the body in one STDIN record a piece."""
    params = encode_pairs(
        build_params("POST", path, headers={"content-length": str(sum(map(len, pieces)))})
    )
    return (
        encode_begin_request(rid, RESPONDER, KEEP_CONN if keep_conn else 0)
        + encode_record(PARAMS, rid, params)
        + encode_record(PARAMS, rid)
        + b"".join(encode_record(STDIN, rid, piece) for piece in pieces)
        + encode_record(STDIN, rid)
    )


def expect(client: FastCGIClient, rid: int) -> ClientRequest:
    """Register request ``rid`` with the client, to read its response."""
    req = ClientRequest(client, rid)
    client.requests[rid] = req
    return req


@pytest.fixture(autouse=True)
def _fast_path_is_built() -> None:
    if records.request_packets is None:
        pytest.skip("the C speedups are not built (FCGI_ASGI_NO_EXTENSIONS): no fast path")


async def test_whole_gets_are_answered_and_the_connection_goes_on(serve: Serve) -> None:
    server = await serve(apps.app)
    async with await connect(server) as client:
        for rid in (1, 1, 7):
            req = expect(client, rid)
            await client.send_raw(whole_get(rid, "/scope", x_n=str(rid)))
            r = await asyncio.wait_for(req.response(), 5)
            assert r.status == 200 and r.protocol_status == 0
            scope = json.loads(r.body)
            assert scope["path"] == "/scope" and ["x-n", str(rid)] in scope["headers"]
        # The same connection then takes a request sent record by record.
        r = await asyncio.wait_for(client.request("POST", "/echo", body=b"abc"), 5)
        assert r.body == b"abc"


async def test_a_connection_makes_its_reader_only_for_a_read_of_records(serve: Serve) -> None:
    """nginx's whole GETs need no record reader and no write scheduler (two
    objects fewer per connection); the first read that is not whole requests
    makes the reader, over the buffer the fast path checks for held bytes."""
    server = await serve(apps.app)
    async with await connect(server) as client:
        for rid in (1, 1):
            req = expect(client, rid)
            await client.send_raw(whole_get(rid, "/scope"))
            assert (await asyncio.wait_for(req.response(), 5)).status == 200
        (conn,) = server.ctx.connections
        assert conn._reader is None and conn.scheduler is None
        req = expect(client, 1)
        blob = whole_get(1, "/scope")
        await client.send_raw(blob[:13])  # a partial record: held back
        await asyncio.sleep(0.05)
        assert conn._reader is not None and conn._reader.pending is conn._unparsed
        assert bytes(conn._unparsed) == blob[:13]  # the BEGIN_REQUEST record, cut
        await client.send_raw(blob[13:])
        assert (await asyncio.wait_for(req.response(), 5)).status == 200
        assert not conn._unparsed and conn.scheduler is None


@pytest.mark.parametrize("interface", ["asgi", "wsgi-threads", "wsgi-on-loop"])
async def test_the_app_sees_the_empty_body_end_at_once(serve: Serve, interface: str) -> None:
    """The empty STDIN came in the same read: an app reading its body gets
    its end, and does not wait for a record already taken."""
    if interface == "asgi":
        server = await serve(apps.app)
        path, expected = "/echo", b""
    else:
        threads = 2 if interface == "wsgi-threads" else 0
        server = await serve(wsgi_apps.plain_app, interface="wsgi", threads=threads)
        path, expected = "/thread", None
    async with await connect(server) as client:
        req = expect(client, 3)
        await client.send_raw(whole_get(3, path))
        r = await asyncio.wait_for(req.response(), 5)
        assert r.status == 200
        if expected is not None:
            assert r.body == expected
        else:
            assert r.body.endswith(b" 0")  # the thread's name, then 0 bytes read


@pytest.mark.parametrize("interface", ["asgi", "wsgi-threads", "wsgi-on-loop"])
async def test_a_whole_post_reaches_the_app_whole_and_is_not_left_counted(
    serve: Serve, interface: str
) -> None:
    """nginx's POST in one write, its body in several STDIN records: the app
    reads all of it once, in order, and the connection's count of unread body
    goes back to 0 (else it would stop reading for good at some point)."""
    pieces = [bytes([i]) * 30000 for i in range(1, 4)] + [b"tail"]
    if interface == "asgi":
        server = await serve(apps.app)
        path, expected = "/echo", b"".join(pieces)
    else:
        threads = 2 if interface == "wsgi-threads" else 0
        server = await serve(wsgi_apps.plain_app, interface="wsgi", threads=threads)
        path, expected = "/digest", None
    async with await connect(server) as client:
        for rid in (1, 2, 1):
            req = expect(client, rid)
            await client.send_raw(whole_post(rid, path, pieces))
            r = await asyncio.wait_for(req.response(), 5)
            assert r.status == 200 and r.protocol_status == 0
            if expected is not None:
                assert r.body == expected
            else:
                digest = hashlib.sha256(b"".join(pieces)).hexdigest()
                assert r.body == f"{90004} {digest}".encode()
        (conn,) = server.ctx.connections
        assert conn._body_buffered == 0 and not conn.requests
        # Record by record on the same connection still works.
        r = await asyncio.wait_for(client.request("POST", path, body=b"abc"), 5)
        assert r.status == 200


async def test_a_whole_post_answered_without_the_app_drops_its_body(serve: Serve) -> None:
    """The gateway's own page answers at start(), the whole body already fed:
    the body is dropped, not left counted as unread; without FCGI_KEEP_CONN
    the connection then closes."""
    server = await serve(apps.app, ping_path="/ping")
    async with await connect(server) as client:
        req = expect(client, 1)
        await client.send_raw(whole_post(1, "/ping", [b"x" * 40000, b"y" * 40000]))
        r = await asyncio.wait_for(req.response(), 5)
        assert r.status == 200 and r.body == b"pong"
        (conn,) = server.ctx.connections
        assert conn._body_buffered == 0 and not conn.requests
        req = expect(client, 2)
        await client.send_raw(whole_post(2, "/ping", [b"z" * 100], keep_conn=False))
        r = await asyncio.wait_for(req.response(), 5)
        assert r.body == b"pong"
        await asyncio.wait_for(client.closed.wait(), 5)


async def test_a_whole_post_refused_503_drops_its_body(serve: Serve) -> None:
    """--max-concurrent-requests full: the whole POST is answered 503 at
    start() and its body, fed with it, is not left counted as unread."""
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await asyncio.wait_for(release.wait(), 10)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    server = await serve(app, max_concurrent_requests=1)
    async with await connect(server) as held, await connect(server) as other:
        first = asyncio.ensure_future(held.request("GET", "/"))
        for _ in range(200):  # bounded: until the first request runs
            if server.ctx.tasks:
                break
            await asyncio.sleep(0.01)
        req = expect(other, 1)
        await other.send_raw(whole_post(1, "/", [b"p" * 50000, b"q" * 50000]))
        r = await asyncio.wait_for(req.response(), 5)
        assert r.status == 503
        busy = [c for c in server.ctx.connections if not c.requests]
        assert len(busy) == 1 and busy[0]._body_buffered == 0
        release.set()
        assert (await asyncio.wait_for(first, 5)).body == b"done"


async def test_oversized_params_in_a_whole_request_close_the_connection(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(apps.app, max_params_size=4096)
    async with await connect(server) as client:
        req = expect(client, 1)
        await client.send_raw(whole_get(1, "/scope", x_big="y" * 10000))
        await asyncio.wait_for(client.closed.wait(), 5)
        with pytest.raises(ConnectionError):
            await req.response()
    assert "exceed 4096 bytes" in caplog.text


async def test_a_whole_request_while_the_last_one_lingers_is_a_protocol_error(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A request refused without FCGI_KEEP_CONN leaves the connection waiting
    only for the end of its STDIN: a new request there is a protocol error."""
    server = await serve(apps.app)
    async with await connect(server) as client:
        refused = expect(client, 1)
        await client.send_raw(encode_begin_request(1, 7, 0))  # role 7: unknown
        r = await asyncio.wait_for(refused.response(), 5)
        assert r.protocol_status == UNKNOWN_ROLE
        expect(client, 2)
        with caplog.at_level(logging.ERROR, logger="fcgi_asgi.error"):
            await client.send_raw(whole_get(2, "/scope"))
            await asyncio.wait_for(client.closed.wait(), 5)
    assert "after a request without FCGI_KEEP_CONN" in caplog.text


async def test_bytes_completing_a_partial_record_are_never_a_request(serve: Serve) -> None:
    """A record's header arrives alone; its content, in the next read, has the
    shape of a whole request. It is that record's content (STDIN for an
    unknown id, dropped), not request 1; the request after it is answered."""
    server = await serve(apps.app)
    async with await connect(server) as client:
        smuggled = whole_get(1, "/scope")
        header = encode_record(STDIN, 9, smuggled)[:8]
        never = expect(client, 1)
        await client.send_raw(header)
        await asyncio.sleep(0.05)  # read on its own: held as a partial record
        await client.send_raw(smuggled)
        await asyncio.sleep(0.05)  # its own read too
        later = expect(client, 2)
        await client.send_raw(whole_get(2, "/scope"))
        r = await asyncio.wait_for(later.response(), 5)
        assert r.status == 200
        assert never.queue.empty() and not never.ended


async def test_two_whole_requests_in_one_write_are_both_answered(serve: Serve) -> None:
    """HAProxy's shape on a multiplexed connection."""
    server: FastCGIServer = await serve(apps.app)
    async with await connect(server) as client:
        reqs = [expect(client, rid) for rid in (1, 2)]
        await client.send_raw(whole_get(1, "/scope") + whole_get(2, "/echo"))
        one, two = [await asyncio.wait_for(req.response(), 5) for req in reqs]
        assert json.loads(one.body)["path"] == "/scope"
        assert two.status == 200 and two.body == b""


def _inside_read() -> bool:
    """Whether the caller runs inside the connection's read callback: below
    Request.spawn(), which the read calls (data_received() itself may be C,
    without a frame)."""
    frame: Any = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name == "spawn":
            return True
        frame = frame.f_back
    return False


async def where_am_i(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers whether its first step runs inside the connection's read
    callback, and under which task."""
    if scope["type"] != "http":
        return
    inside = _inside_read()
    task = asyncio.current_task()
    body = json.dumps({"inside": inside, "task": task is not None and not task.done()})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


async def test_a_whole_request_starts_its_app_at_once_where_python_can(serve: Serve) -> None:
    """Python 3.12+: the app's first step runs inside the read (an eager
    start), as its own current task; 3.11 has no eager start: a loop turn later."""
    server = await serve(where_am_i)
    async with await connect(server) as client:
        req = expect(client, 1)
        await client.send_raw(whole_get(1, "/"))
        seen = json.loads((await asyncio.wait_for(req.response(), 5)).body)
        assert seen == {"inside": sys.version_info >= (3, 12), "task": True}
        # The body's end in a later read: the app starts a loop turn after PARAMS.
        req = await client.begin(build_params("GET", "/"))
        await asyncio.sleep(0.05)
        await req.end_body()
        seen = json.loads((await asyncio.wait_for(req.response(), 5)).body)
        assert seen == {"inside": False, "task": True}


async def reads_then_where_am_i(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads its body first, then answers where it is as where_am_i does."""
    if scope["type"] != "http":
        return
    message = await receive()
    inside = _inside_read()
    body = json.dumps({"inside": inside, "body": len(message["body"])})
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body.encode()})


async def test_a_whole_post_is_read_at_once_where_python_starts_the_app_at_once(
    serve: Serve,
) -> None:
    """The body came in the same read: Python 3.12+ starts the app inside
    it, and its receive() returns the whole body without waiting a turn."""
    server = await serve(reads_then_where_am_i)
    async with await connect(server) as client:
        req = expect(client, 1)
        await client.send_raw(whole_post(1, "/", [b"a" * 40000, b"b" * 30000]))
        seen = json.loads((await asyncio.wait_for(req.response(), 5)).body)
        assert seen == {"inside": sys.version_info >= (3, 12), "body": 70000}


async def test_a_task_factory_set_by_the_app_is_used(serve: Serve) -> None:
    """An eager start bypasses the loop's task factory, so it is not taken when one is set."""
    loop = asyncio.get_running_loop()
    made: list[object] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    server = await serve(where_am_i)
    loop.set_task_factory(factory)
    try:
        async with await connect(server) as client:
            req = expect(client, 1)
            await client.send_raw(whole_get(1, "/"))
            seen = json.loads((await asyncio.wait_for(req.response(), 5)).body)
    finally:
        loop.set_task_factory(None)
    assert seen == {"inside": False, "task": True}
    assert any(getattr(coro, "__qualname__", "") == "ASGIRequest.run" for coro in made)


async def test_a_request_task_is_named_without_a_task_factory(serve: Serve) -> None:
    """Without a task factory the gateway makes the request's task itself, named
    TASK_NAME (Python 3.11 would format a "Task-N" for each), whether the request
    came whole (eager on 3.12+) or its body came later."""
    names: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # no lifespan
        task = asyncio.current_task()
        names.append(task.get_name() if task is not None else "no task")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server = await serve(app)
    async with await connect(server) as client:
        req = expect(client, 1)
        await client.send_raw(whole_get(1, "/"))
        assert (await asyncio.wait_for(req.response(), 5)).body == b"ok"
        later = await client.begin(build_params("POST", "/"))
        await asyncio.sleep(0.05)
        await later.end_body()
        assert (await asyncio.wait_for(later.response(), 5)).body == b"ok"
    assert names == [TASK_NAME, TASK_NAME]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks need Python 3.12+")
async def test_requests_finished_by_an_eager_task_factory_are_not_left_counted(
    serve: Serve,
) -> None:
    """An app's eager task factory can finish a request inside create_task(),
    whether its body ended in the same read or a later one: it must not stay
    in the running tasks (the status page, --max-concurrent-requests, a
    graceful stop's wait)."""
    loop = asyncio.get_running_loop()

    def eager(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=loop, eager_start=True, **kwargs)

    server = await serve(apps.app)
    loop.set_task_factory(eager)
    try:
        async with await connect(server) as client:
            req = expect(client, 1)
            await client.send_raw(whole_get(1, "/scope"))
            assert (await asyncio.wait_for(req.response(), 5)).status == 200
            # The body's end in a later read: the task is made without it.
            req = await client.begin(build_params("GET", "/scope"))
            await asyncio.sleep(0.05)
            await req.end_body()
            assert (await asyncio.wait_for(req.response(), 5)).status == 200
            assert server.ctx is not None
            assert server.ctx.tasks == set()
    finally:
        loop.set_task_factory(None)


@pytest.mark.parametrize("path", ["/raise-before", "/sys-exit"])
async def test_an_app_failing_in_its_first_step_answers_500_and_the_server_goes_on(
    serve: Serve, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On 3.12+ that first step runs inside the read: what the app raises
    there (SystemExit too) must end the request, not the read or the server."""
    server = await serve(apps.app)
    async with await connect(server) as client:
        req = expect(client, 1)
        await client.send_raw(whole_get(1, path))
        r = await asyncio.wait_for(req.response(), 5)
        assert r.status == 500 and r.protocol_status == 0
        req = expect(client, 2)
        await client.send_raw(whole_get(2, "/scope"))
        assert (await asyncio.wait_for(req.response(), 5)).status == 200
    assert "application" in caplog.text


async def test_a_whole_request_beside_a_running_one_is_multiplexed_or_refused(
    serve: Serve,
) -> None:
    """While a request runs, a whole request is answered beside it, or refused
    with CANT_MPX_CONN under --no-multiplex, as its records would be."""
    for multiplex in (True, False):
        server = await serve(apps.app, multiplex=multiplex)
        async with await connect(server) as client:
            slow = await client.begin(build_params("GET", "/sleep", query="0.3"))
            await slow.end_body()
            await asyncio.sleep(0.05)  # running
            req = expect(client, 2)
            await client.send_raw(whole_get(2, "/scope"))
            r = await asyncio.wait_for(req.response(), 5)
            if multiplex:
                assert r.status == 200 and json.loads(r.body)["path"] == "/scope"
            else:
                assert r.protocol_status == CANT_MPX_CONN and r.raw == b""
            assert (await asyncio.wait_for(slow.response(), 5)).body == b"slept"
        await server.aclose()


async def test_one_id_twice_in_one_read_is_a_protocol_error(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(apps.app)
    async with await connect(server) as client:
        expect(client, 1)
        await client.send_raw(whole_get(1, "/scope") * 2)
        await asyncio.wait_for(client.closed.wait(), 5)
    assert "already in use" in caplog.text


async def test_params_of_a_whole_request_count_with_others_still_sending(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """--max-params-size holds for the connection's pending params too."""
    server = await serve(apps.app, max_params_size=4096)
    async with await connect(server) as client:
        half = encode_pairs(build_params("GET", "/scope", headers={"x-a": "y" * 3000}))
        await client.send_raw(encode_begin_request(1, RESPONDER, KEEP_CONN))
        await client.send_raw(encode_record(PARAMS, 1, half))  # its PARAMS not ended
        await asyncio.sleep(0.05)
        expect(client, 2)
        await client.send_raw(whole_get(2, "/scope", x_b="z" * 1500))
        await asyncio.wait_for(client.closed.wait(), 5)
    assert "exceed 4096 bytes (with the connection's other pending requests)" in caplog.text
