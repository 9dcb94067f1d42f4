"""WSGI apps on the gateway, over a real socket with the FastCGI client.

Every app here is wrapped in ``wsgiref.validate.validator`` (see
``tests/wsgi_apps.py``): a PEP 3333 violation by the gateway fails the request.
"""

from __future__ import annotations

import ast
import asyncio
import gc
import hashlib
import io
import logging
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fcgi_asgi import FastCGIServer
from fcgi_asgi.client import build_params
from fcgi_asgi.config import AppLoadError, Config, ConfigError
from fcgi_asgi.interface import detect_interface
from fcgi_asgi.protocol.records import (
    PARAMS,
    STDIN,
    encode_begin_request,
    encode_pairs,
    encode_record,
)
from fcgi_asgi.wsgi.environ import InputStream
from tests import apps, wsgi_apps
from tests.conftest import connect
from tests.test_backpressure import StalledReader

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[16, 0], ids=["threads", "on-loop"])
async def server(serve, request):
    """The WSGI app in the thread pool, and on the loop (``--threads 0``)."""
    return await serve(wsgi_apps.plain_app, interface="wsgi", threads=request.param)


async def test_hello(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/hello")
    assert r.status == 200
    assert r.body == b"Hello, world!"
    assert r.header("content-length") == "13"


async def test_auto_detects_a_wsgi_app_and_its_one_piece_response(serve):
    server = await serve(wsgi_apps.plain_app_unwrapped)
    async with await connect(server) as client:
        r = await client.request("GET", "/hello")
        r2 = await client.request("POST", "/write")
    assert (r.status, r.body) == (200, b"Hello, world!")
    assert (r2.status, r2.body) == (200, b"written and returned")


async def test_environ_paths_follow_the_scope_rules(serve):
    server = await serve(wsgi_apps.plain_app, interface="wsgi", root_path="/app")
    params = {
        b"SCRIPT_NAME": b"/app/environ",
        b"REQUEST_URI": b"/app/environ?x=%20",
        b"CONTENT_LENGTH": b"",
        b"HTTP_CONTENT_TYPE": b"text/x-dup",
        b"HTTP_X_TEST": b"caf\xe9",
    }
    async with await connect(server) as client:
        r = await client.request("GET", "/app/environ", query="x=%20", params=params)
    assert r.status == 200, r.body
    env = ast.literal_eval(r.body.decode())
    assert env["SCRIPT_NAME"] == "/app"
    assert env["PATH_INFO"] == "/environ"
    assert env["QUERY_STRING"] == "x=%20"
    assert env["REQUEST_URI"] == "/app/environ?x=%20"
    assert env["CONTENT_LENGTH"] is None  # nginx's empty one is no length
    assert env["HTTP_X_TEST"] == "caf\xe9"  # latin-1 native string


async def test_percent_encoded_utf8_path_is_a_latin1_native_string(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/caf%C3%A9/x")
    assert r.status == 200, r.body
    assert ast.literal_eval(r.body.decode()) == ("", "/caf\xc3\xa9/x")


@pytest.mark.parametrize("size", [0, 1000, 3 << 20])
async def test_body_streams_through_wsgi_input(server, size):
    body = b"first line\n" + os.urandom(size)
    async with await connect(server) as client:
        r = await client.request("POST", "/digest", body=body)
    assert r.status == 200, r.body
    assert r.body.decode() == f"{len(body)} {hashlib.sha256(body).hexdigest()}"


async def test_start_response_exc_info_replaces_an_unsent_head(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/exc-info")
    assert r.status == 503
    assert r.header("x-replaced") == "1"
    assert r.body == b"replaced"


async def test_app_exception_gives_500_and_a_logged_traceback(server, caplog):
    async with await connect(server) as client:
        r = await client.request("GET", "/boom")
        again = await client.request("GET", "/hello")
    assert r.status == 500
    assert b"failed on purpose" not in r.body
    assert "the WSGI app failed on purpose" in caplog.text
    assert again.status == 200


@pytest.mark.parametrize("path", ["/sys-exit", "/keyboard-interrupt"])
async def test_an_app_raising_system_exit_ends_its_request_not_the_server(server, path, caplog):
    async with await connect(server) as client:
        r = await client.request("GET", path)
        again = await client.request("GET", "/hello")
    assert r.status == 500
    assert "it ends this request, not the server" in caplog.text
    assert again.status == 200 and again.body == b"Hello, world!"


async def test_head_keeps_its_head_but_sends_no_body(server):
    async with await connect(server) as client:
        r = await client.request("HEAD", "/hello")
    assert r.status == 200
    assert r.header("content-length") == "13"
    assert r.body == b""


async def test_hop_by_hop_headers_are_dropped(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/hop-by-hop")
    assert r.status == 200
    assert r.body == b"one two"
    names = {name.lower() for name, _ in r.headers}
    assert "connection" not in names and "x-hop" not in names


async def test_file_wrapper(server):
    async with await connect(server) as client:
        r = await client.request("GET", "/file")
    assert r.status == 200
    assert r.body == b"f" * 100_000


async def test_threads_bound_the_requests_running_at_once(serve):
    server = await serve(wsgi_apps.plain_app, interface="wsgi", threads=2)
    token = "threads-bound"

    async def one() -> int:
        async with await connect(server) as client:
            return (await client.request("GET", "/sleep", query=token)).status

    statuses = await asyncio.gather(*(one() for _ in range(5)))
    assert statuses == [200] * 5  # the ones beyond the pool waited, none was refused
    assert wsgi_apps.EVENTS[token]["most"] == 2


async def test_graceful_shutdown_waits_for_a_running_thread(serve):
    server = await serve(wsgi_apps.plain_app, interface="wsgi", timeout_graceful_shutdown=10)
    token = "shutdown-waits"
    async with await connect(server) as client:
        pending = asyncio.ensure_future(client.request("GET", "/sleep", query=token))
        for _ in range(100):  # bounded: until the app's thread runs
            if wsgi_apps.EVENTS.get(token, {}).get("running"):
                break
            await asyncio.sleep(0.01)
        await server.aclose()
        r = await pending
    assert r.status == 200 and r.body == b"GET"


async def test_disconnect_mid_stream_closes_the_iterable(server):
    token = "disconnect-closes"
    client = await connect(server)
    params = build_params("GET", "/stream", query=str(200 << 20), headers={"X-Token": token})
    req = await client.begin(params)
    await req.end_body()
    for _ in range(200):  # bounded: until the app has streamed a little
        if wsgi_apps.EVENTS.get(token, {}).get("sent", 0) > 1 << 20:
            break
        await asyncio.sleep(0.02)
    await client.close()  # the web server goes away mid-response
    for _ in range(200):
        if wsgi_apps.EVENTS.get(token, {}).get("closed"):
            break
        await asyncio.sleep(0.02)
    ev = wsgi_apps.EVENTS[token]
    assert ev.get("closed"), ev
    assert ev["sent"] < 200 << 20


def test_auto_tells_asgi_from_wsgi_and_says_when_it_cannot() -> None:
    assert detect_interface(apps.app) == "asgi"
    assert detect_interface(wsgi_apps.flask_app_unwrapped) == "wsgi"
    assert detect_interface(wsgi_apps.plain_app_unwrapped) == "wsgi"
    with pytest.raises(AppLoadError, match=r"asgi or .*wsgi"):
        detect_interface(wsgi_apps.plain_app)  # (*args): cannot be told
    with pytest.raises(AppLoadError, match="app factory: give factory"):
        detect_interface(lambda: None)
    with pytest.raises(AppLoadError, match="use interface= wsgi"):
        detect_interface(wsgi_apps.flask_app_unwrapped, "asgi")
    with pytest.raises(AppLoadError, match="use interface= asgi"):
        detect_interface(apps.app, "wsgi")


async def test_a_wsgi_app_given_as_asgi_fails_at_start(sock_path):
    server = FastCGIServer(
        Config(app=wsgi_apps.flask_app_unwrapped, socket=sock_path, interface="asgi")
    )
    with pytest.raises(AppLoadError, match="WSGI app"):
        await server.start()


async def test_wsgi_errors_reach_the_error_log(serve, caplog):
    def app(environ, start_response):
        environ["wsgi.errors"].write("a line from the app\npart")
        environ["wsgi.errors"].flush()
        start_response("200 OK", [])
        return [b""]

    server = await serve(app)
    with caplog.at_level(logging.ERROR, logger="fcgi_asgi.error"):
        async with await connect(server) as client:
            r = await client.request("GET", "/")
    assert r.status == 200
    assert [m for m in caplog.messages if "from the app" in m or m == "part"] == [
        "a line from the app",
        "part",
    ]


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("threads", [16, 0], ids=["threads", "on-loop"])
async def test_200mib_stream_to_a_stalled_reader_keeps_memory_flat(serve, threads):
    """The app's thread waits while the web server reads nothing; then all of it
    arrives intact, and the process never held more than a few buffers. With
    ``--threads 0`` the loop starts the stream and a thread takes it over."""
    size = 200 << 20
    token = f"stalled-reader-{threads}"
    server = await serve(wsgi_apps.plain_app, interface="wsgi", threads=threads)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_unix_connection(StalledReader, server.config.socket)
    transport.pause_reading()
    params = build_params("GET", "/stream", query=str(size), headers={"X-Token": token})
    transport.write(
        encode_begin_request(1)
        + encode_record(PARAMS, 1, encode_pairs(params))
        + encode_record(PARAMS, 1)
        + encode_record(STDIN, 1)
    )
    rss_before = _rss()
    max_rss = 0
    for _ in range(40):  # 2 s of reading nothing
        await asyncio.sleep(0.05)
        max_rss = max(max_rss, _rss())
    sent_while_stalled = wsgi_apps.EVENTS[token]["sent"]
    assert proto.received == 0, "the stalled peer read anyway"
    # The app's thread got at most a write buffer plus kernel socket buffers ahead.
    assert sent_while_stalled < 8 << 20, sent_while_stalled
    transport.resume_reading()
    while not proto.done.done():  # bounded by the wait_for below
        max_rss = max(max_rss, _rss())
        await asyncio.wait([proto.done], timeout=0.1)
    await asyncio.wait_for(proto.done, 60)
    transport.close()
    expected = hashlib.sha256(b"Status: 200 OK\r\nContent-Type: application/octet-stream\r\n")
    expected.update(b"Content-Length: %d\r\n\r\n" % size)
    for start in range(0, size, 64 << 20):
        expected.update(wsgi_apps.stream_pattern(min(64 << 20, size - start)))
    assert proto.digest.hexdigest() == expected.hexdigest()
    assert max_rss - rss_before < 16 << 20, (max_rss - rss_before) >> 20
    assert wsgi_apps.EVENTS[token]["closed"]


async def _until_running(token: str) -> None:
    for _ in range(200):  # bounded: until the app's thread runs
        if wsgi_apps.EVENTS.get(token, {}).get("running"):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no app thread ran for {token}")


async def test_max_concurrent_requests_answers_503_with_retry_after(serve, caplog):
    server = await serve(wsgi_apps.plain_app, interface="wsgi", max_concurrent_requests=1)
    token = "wsgi-limit"
    async with await connect(server) as first, await connect(server) as second:
        busy = asyncio.ensure_future(first.request("GET", "/sleep", query=token))
        await _until_running(token)
        with caplog.at_level(logging.WARNING, logger="fcgi_asgi.error"):
            refused = await second.request("GET", "/sleep", query=token)
        held = await busy
        # The slot is free again once the running request has ended.
        after = await second.request("GET", "/hello")
    assert (refused.status, refused.header("retry-after")) == (503, "1")
    assert any("answered 503" in m for m in caplog.messages)
    assert (held.status, held.body) == (200, b"GET")
    assert wsgi_apps.EVENTS[token]["most"] == 1  # the refused one never ran
    assert (after.status, after.body) == (200, b"Hello, world!")


async def test_request_timeout_answers_504_while_the_thread_runs_on(serve, caplog):
    server = await serve(wsgi_apps.plain_app, interface="wsgi", request_timeout=0.1)
    token = "wsgi-timeout"
    async with await connect(server) as client:
        with caplog.at_level(logging.ERROR, logger="fcgi_asgi.error"):
            r = await client.request("GET", "/sleep", query=token)
        assert r.status == 504
        assert any("timed out" in m for m in caplog.messages)
        for _ in range(100):  # bounded: until the app's late return was handled
            if wsgi_apps.EVENTS[token]["running"] == 0:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)
        # The connection and the pool go on; the late return wrote nothing.
        again = await client.request("GET", "/hello")
    assert (again.status, again.body) == (200, b"Hello, world!")
    assert server.ctx.tasks == set()


async def test_a_body_piece_that_is_not_bytes_is_an_error(serve, caplog):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [5]  # bytes(5) would be five zero bytes

    server = await serve(app)
    with caplog.at_level(logging.ERROR, logger="fcgi_asgi.error"):
        async with await connect(server) as client:
            r = await client.request("GET", "/")
    assert r.status == 500
    assert any("WSGI body must be bytes, not int" in m for m in caplog.messages)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, b"False"),
        ({"workers": 2}, b"True"),
        # A dynamic pool that starts with one worker may grow.
        ({"workers_min": 1, "workers_max": 3}, b"True"),
        ({"workers_min": 1, "workers_max": 1}, b"False"),
    ],
)
async def test_wsgi_multiprocess_says_whether_other_processes_may_serve(serve, options, expected):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(environ["wsgi.multiprocess"]).encode()]

    server = await serve(app, **options)
    async with await connect(server) as client:
        r = await client.request("GET", "/")
    assert r.body == expected


async def test_a_malformed_status_is_an_error_also_after_good_ones(serve, caplog):
    """Good status lines are remembered once checked; a bad one is still
    refused, whether or not it starts like a good one."""
    statuses = {"/ok": "200 OK", "/no-space": "200OK", "/two-digits": "99 Low", "/int": 200}
    statuses["/crlf"] = "200 OK\r\nX-Injected: 1"

    def app(environ, start_response):
        start_response(statuses[environ["PATH_INFO"]], [("Content-Type", "text/plain")])
        return [b"body"]

    server = await serve(app)
    with caplog.at_level(logging.ERROR, logger="fcgi_asgi.error"):
        async with await connect(server) as client:
            first = await client.request("GET", "/ok")
            bad = {p: await client.request("GET", p) for p in statuses if p != "/ok"}
            again = await client.request("GET", "/ok")
    assert first.status == again.status == 200 and again.body == b"body"
    assert {p: r.status for p, r in bad.items()} == dict.fromkeys(bad, 500)
    assert all(b"X-Injected" not in r.raw for r in bad.values())
    refused = [m for m in caplog.messages if "WSGI status must be like '200 OK'" in m]
    assert len(refused) == 4


# -- --threads 0: the app on the loop ------------------------------------------------


async def test_threads_0_runs_the_app_on_the_loop_once_the_body_is_in(serve):
    """A small body: the app runs on the loop's own thread, with the whole body.
    A body larger than the read buffer goes to a thread that reads it as it
    comes (the loop cannot wait for it inside the app)."""
    server = await serve(wsgi_apps.plain_app, interface="wsgi", threads=0)
    loop_thread = __import__("threading").current_thread().name
    async with await connect(server) as client:
        r = await client.request("POST", "/thread", body=b"x" * 5000)
        big = await client.request("POST", "/thread", body=b"y" * (3 << 20))
    assert r.body.decode() == f"{loop_thread} 5000"
    name, size = big.body.decode().split()
    assert name.startswith("fcgi-asgi-wsgi") and int(size) == 3 << 20


async def test_threads_0_request_aborted_before_its_body_ended_never_runs(serve):
    """An app on the loop waits for the end of STDIN; a request aborted before
    it is not run, and nothing of it is left counted as running."""
    server = await serve(wsgi_apps.plain_app, interface="wsgi", threads=0)
    async with await connect(server) as client:
        req = await client.begin(build_params("POST", "/thread", content_length=100))
        await req.send_body(b"z" * 50)
        await asyncio.sleep(0.1)
        assert len(server.ctx.tasks) == 1
        await req.abort()
        for _ in range(100):  # bounded
            if not server.ctx.tasks:
                break
            await asyncio.sleep(0.01)
        assert not server.ctx.tasks
        r = await client.request("POST", "/thread", body=b"ok")
    assert r.body.endswith(b" 2")


def test_threads_must_not_be_negative() -> None:
    with pytest.raises(ConfigError, match=r"threads.*or 0 to run"):
        Config(app=wsgi_apps.plain_app, socket="/tmp/x.sock", threads=-1)


@given(
    chunks=st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    ops=st.lists(st.tuples(st.sampled_from(["read", "readline", "all"]), st.integers(-1, 400))),
)
def test_wsgi_input_reads_like_a_file(chunks, ops) -> None:
    """wsgi.input over STDIN pieces of any size reads as a file over their
    concatenation would: read(n) gives n bytes until the end, readline() stops
    after a newline, read() takes the rest."""
    pieces = iter(chunks)
    stream = InputStream(lambda: next(pieces, b""))
    reference = io.BytesIO(b"".join(chunks))
    for op, n in ops:
        if op == "read":
            assert stream.read(n) == reference.read(n)
        elif op == "readline":
            assert stream.readline(n) == reference.readline(n)
        else:
            assert stream.read() == reference.read()
    assert stream.read() == reference.read()


async def test_a_finished_request_is_freed_without_the_garbage_collector(server):
    """The request and its run refer to each other while it runs; once it is
    over nothing may keep a cycle, or every request's objects wait for the
    garbage collector (5 us a hello request, benchmarks/hotpath.py)."""
    gc.collect()
    gc.disable()
    try:
        async with await connect(server) as client:
            r = await client.request("GET", "/remember")
            assert r.body == b"remembered"
            for _ in range(3):  # the loop's own callbacks let go of it
                await asyncio.sleep(0)
            assert wsgi_apps.REMEMBERED[-1]() is None
    finally:
        gc.enable()
