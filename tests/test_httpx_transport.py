"""fcgi_asgi.httpx against our gateway (a real process) and against small fake
FastCGI servers that misbehave on purpose, on asyncio and trio (anyio's plugin)."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from fcgi_asgi.cgi_exchange import BadResponse, parse_head
from fcgi_asgi.httpx import FastCGITransport, SyncFastCGITransport, cgi_params
from fcgi_asgi.protocol.records import (
    STDIN,
    STDOUT,
    RecordReader,
    encode_end_request,
    encode_record,
)
from tests.webservers import Gateway, start_gateways

pytestmark = pytest.mark.anyio

STATUS = "/fcgi-status"
BOUND = 20  # seconds any one test step may take before it counts as a hang


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gateway]]:
    workdir = tmp_path_factory.mktemp("httpx")
    extra = ("--status-path", STATUS)
    gws = {
        "unix": Gateway("tests.apps:app", workdir, name="httpx-unix", extra=extra),
        "tcp": Gateway("tests.apps:app", workdir, name="httpx-tcp", tcp=True, extra=extra),
    }
    start_gateways(*gws.values())
    yield gws
    for gw in gws.values():
        gw.stop()


@pytest.fixture(params=["unix", "tcp"])
def gateway(request: Any, gateways: dict[str, Gateway]) -> Gateway:
    return gateways[str(request.param)]


def where(gw: Gateway) -> dict[str, Any]:
    return {"path": gw.socket} if gw.socket is not None else {"port": gw.port}


def accepted(gw: Gateway) -> int:
    """The gateway's own count of accepted connections (its status page; one more each call)."""
    with httpx.Client(
        transport=SyncFastCGITransport(**where(gw), keep_conn=False), base_url="http://gw"
    ) as client:
        return int(client.get(STATUS + "?json").json()["accepted conn"])


def client(gw: Gateway, **options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=FastCGITransport(**where(gw), **options), base_url="http://example.test:8080"
    )


async def test_params_and_keep_conn_reuse(gateway: Gateway) -> None:
    before = accepted(gateway)
    async with client(gateway) as c:
        for i in range(5):
            r = await c.get(f"/scope?i={i}", headers={"X-Test": "yes", "Cookie": "a=1"})
            assert r.status_code == 200
            scope = r.json()
            assert scope["method"] == "GET"
            assert scope["path"] == "/scope"
            assert scope["query_string"] == f"i={i}"
            assert scope["server"][1] == 8080  # SERVER_PORT from the URL
            headers = dict(scope["headers"])
            assert headers["x-test"] == "yes"
            assert headers["host"] == "example.test:8080"
    # Five requests on one kept connection, plus the status request's own one.
    assert accepted(gateway) - before == 2


async def test_keep_conn_off_opens_a_connection_each(gateway: Gateway) -> None:
    before = accepted(gateway)
    async with client(gateway, keep_conn=False) as c:
        for _ in range(3):
            assert (await c.get("/scope")).status_code == 200
    assert accepted(gateway) - before == 4


async def test_pool_is_bounded(gateway: Gateway) -> None:
    before = accepted(gateway)
    async with client(gateway, max_connections=2) as c:
        results: list[int] = []

        async def one() -> None:
            results.append((await c.get("/sleep?0.1")).status_code)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(one)
    assert results == [200] * 6
    assert accepted(gateway) - before == 3  # two pooled connections and the status request


async def test_streaming_request_body(gateway: Gateway) -> None:
    chunks = [bytes((i,)) * 50_000 for i in range(40)]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async with client(gateway) as c:
        r = await c.post("/hash", content=body())
    whole = b"".join(chunks)
    assert r.text == f"{len(whole)} {hashlib.sha256(whole).hexdigest()}"


async def test_post_echo_with_content_length(gateway: Gateway) -> None:
    data = bytes(range(256)) * 1000
    async with client(gateway) as c:
        r = await c.post("/echo", content=data, headers={"Content-Type": "application/x-test"})
    assert r.status_code == 200
    assert r.content == data


async def test_response_streams_before_the_app_finishes(gateway: Gateway) -> None:
    # /wait-disconnect sends "first" and then waits until the client goes away:
    # a transport that read the whole response first would hang here.
    before = accepted(gateway)
    async with client(gateway) as c:
        with anyio.fail_after(BOUND):
            async with c.stream("GET", "/wait-disconnect") as r:
                first = await r.aiter_raw().__anext__()
        assert first == b"first"
        # The unfinished connection was dropped, not pooled: a new one serves this.
        assert (await c.get("/scope")).status_code == 200
    assert accepted(gateway) - before == 3


async def test_large_streamed_download(gateway: Gateway) -> None:
    async with client(gateway) as c, c.stream("GET", "/stream?300,65536") as r:
        total = 0
        async for chunk in r.aiter_raw():
            total += len(chunk)
    assert total == 300 * 65536
    assert r.extensions["fastcgi"]["protocol_status"] == 0


async def test_read_timeout_then_the_pool_goes_on(gateway: Gateway) -> None:
    async with client(gateway, max_connections=1) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/sleep?3", timeout=httpx.Timeout(5, read=0.2))
        # The timed-out connection freed its slot (max_connections=1).
        assert (await c.get("/scope")).status_code == 200


async def test_pool_timeout(gateway: Gateway) -> None:
    async with client(gateway, max_connections=1) as c, c.stream("GET", "/wait-disconnect"):
        with pytest.raises(httpx.PoolTimeout):
            await c.get("/scope", timeout=httpx.Timeout(5, pool=0.2))


async def test_connect_error(tmp_path: Path) -> None:
    transport = FastCGITransport(path=str(tmp_path / "nobody.sock"))
    async with httpx.AsyncClient(transport=transport) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("http://x/")


def test_sync_twin(gateway: Gateway) -> None:
    before = accepted(gateway)
    data = b"x" * 200_000
    with httpx.Client(
        transport=SyncFastCGITransport(**where(gateway)), base_url="http://localhost"
    ) as c:
        assert c.post("/echo", content=data).content == data
        assert c.post("/hash", content=iter([b"a" * 70_000, b"b"])).text.startswith("70001 ")
        with c.stream("GET", "/wait-disconnect") as r:
            assert next(r.iter_raw()) == b"first"
        assert c.get("/scope").json()["path"] == "/scope"
        with pytest.raises(httpx.ReadTimeout):
            c.get("/sleep?3", timeout=httpx.Timeout(5, read=0.2))
    # echo+hash+wait on one connection, then /scope on a new one (the stream
    # was cut), /sleep on it too, plus the status request.
    assert accepted(gateway) - before == 3


# -- fake FastCGI servers -------------------------------------------------------


class FakeServer:
    """A unix-socket FastCGI server in a thread: ``handle(conn, index)`` per connection."""

    def __init__(self, path: str, handle: Callable[[socket.socket, int], None]) -> None:
        self.path = path
        self.handle = handle
        self.accepted = 0
        self.closing = False
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen(8)
        self.listener.settimeout(BOUND)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for _ in range(8):  # bounded: no test opens more
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.closing:
                conn.close()
                return
            index = self.accepted
            self.accepted += 1
            with conn:
                conn.settimeout(BOUND)
                self.handle(conn, index)

    def close(self) -> None:
        # close() alone does not wake a thread blocked in accept(): a connection does.
        self.closing = True
        with socket.socket(socket.AF_UNIX) as wake, contextlib.suppress(OSError):
            wake.connect(self.path)
        self.thread.join(BOUND)
        self.listener.close()


@pytest.fixture
def fake(sock_path: str) -> Iterator[Callable[[Callable[[socket.socket, int], None]], FakeServer]]:
    servers: list[FakeServer] = []

    def start(handle: Callable[[socket.socket, int], None]) -> FakeServer:
        servers.append(FakeServer(sock_path, handle))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def read_request(conn: socket.socket) -> bool:
    """Read one request up to its empty STDIN record; False if the client closed first."""
    reader = RecordReader()
    while True:
        data = conn.recv(65536)
        if not data:
            return False
        for record in reader.feed(data):
            if record.type == STDIN and not record.content:
                return True


def stdout(data: bytes) -> bytes:
    return encode_record(STDOUT, 1, data)


ANSWER = stdout(b"Content-Type: text/plain\r\n\r\nhello") + stdout(b"") + encode_end_request(1)


async def test_server_dies_mid_response(fake: Any, sock_path: str) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(stdout(b"Status: 200 OK\r\n\r\npart of the body"))

    fake(handle)
    transport = FastCGITransport(path=sock_path)
    async with httpx.AsyncClient(transport=transport) as c, c.stream("GET", "http://x/") as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError, match="before END_REQUEST"):
            await r.aread()


async def test_write_timeout(fake: Any, sock_path: str) -> None:
    done = threading.Event()

    def handle(conn: socket.socket, index: int) -> None:
        done.wait(BOUND)  # never reads: the client's writes fill the socket buffers

    fake(handle)
    try:
        async with httpx.AsyncClient(transport=FastCGITransport(path=sock_path)) as c:
            with pytest.raises(httpx.WriteTimeout):
                await c.post(
                    "http://x/", content=b"x" * (16 << 20), timeout=httpx.Timeout(5, write=0.3)
                )
    finally:
        done.set()


async def test_malformed_record(fake: Any, sock_path: str) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(b"\x02" + bytes(7))  # version 2

    fake(handle)
    async with httpx.AsyncClient(transport=FastCGITransport(path=sock_path)) as c:
        with pytest.raises(httpx.RemoteProtocolError, match="version"):
            await c.get("http://x/")


async def test_bad_cgi_head(fake: Any, sock_path: str) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(stdout(b"no colon here\r\n\r\n") + encode_end_request(1))

    fake(handle)
    async with httpx.AsyncClient(transport=FastCGITransport(path=sock_path)) as c:
        with pytest.raises(httpx.RemoteProtocolError, match="bad CGI header line"):
            await c.get("http://x/")


async def test_location_stderr_and_refusal(fake: Any, sock_path: str) -> None:
    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(
            encode_record(7, 1, b"a warning")
            + stdout(b"Location: http://elsewhere/\n\n")
            + stdout(b"")
            + encode_end_request(1, 0)
        )
        read_request(conn)
        conn.sendall(encode_end_request(1, 0, 2))  # OVERLOADED, no output

    fake(handle)
    async with httpx.AsyncClient(transport=FastCGITransport(path=sock_path)) as c:
        r = await c.get("http://x/")
        assert r.status_code == 302
        assert r.headers["location"] == "http://elsewhere/"
        assert bytes(r.extensions["fastcgi"]["stderr"]) == b"a warning"
        r = await c.get("http://x/")
        assert r.status_code == 503
        assert r.extensions["fastcgi"]["protocol_status"] == 2


async def test_closed_idle_connection_is_not_reused(fake: Any, sock_path: str) -> None:
    # The server closes each connection after one answer, keep-conn or not. POST
    # is never retried: only finding the idle connection closed lets it through.
    closed = threading.Semaphore(0)

    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(ANSWER)
        conn.close()
        closed.release()

    server = fake(handle)
    async with httpx.AsyncClient(transport=FastCGITransport(path=sock_path)) as c:
        for _ in range(3):
            assert (await c.post("http://x/", content=b"data")).text == "hello"
            assert closed.acquire(timeout=BOUND)
    assert server.accepted == 3


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
async def test_retry_only_when_safe(fake: Any, sock_path: str, method: str, retried: bool) -> None:
    # First connection: one answer, then the next request is read and the
    # connection closed unanswered (the race of a server closing an idle
    # connection as the client reuses it). Later connections answer.
    def handle(conn: socket.socket, index: int) -> None:
        read_request(conn)
        conn.sendall(ANSWER)
        if index == 0:
            read_request(conn)

    server = fake(handle)
    async with httpx.AsyncClient(transport=FastCGITransport(path=sock_path)) as c:
        assert (await c.request(method, "http://x/", content=b"1")).text == "hello"
        if retried:
            assert (await c.request(method, "http://x/", content=b"2")).text == "hello"
        else:
            with pytest.raises(httpx.RemoteProtocolError, match="kept connection"):
                await c.request(method, "http://x/", content=b"2")
    assert server.accepted == (2 if retried else 1)


def test_parse_head() -> None:
    head = parse_head(b"Status: 404 Not Here\r\nX-A: 1\r\nx-a: 2")
    assert (head.status, head.reason, head.headers) == (
        404,
        "Not Here",
        [(b"X-A", b"1"), (b"x-a", b"2")],
    )
    assert parse_head(b"Location: /x").status == 302
    assert parse_head(b"Content-Type: text/html").status == 200
    assert parse_head(b"Status: 201").reason == "Created"
    for bad in (b"Status: 20", b"Status: abc", b"X A: 1", b"nothing"):
        with pytest.raises(BadResponse):
            parse_head(bad)


def test_cgi_params() -> None:
    request = httpx.Request(
        "POST",
        "https://[::1]:8443/app/items/%C3%A9?q=1",
        headers=[
            ("Content-Type", "text/plain"),
            ("X-Multi", "a"),
            ("X-Multi", "b"),
            ("Cookie", "a=1"),
            ("Cookie", "b=2"),
            ("X-Under_Score", "dropped"),
            ("Proxy", "http://evil/"),
            ("Transfer-Encoding", "chunked"),
        ],
        content=b"abc",
    )
    params = cgi_params(request, script_name="/app", script_filename="/srv/index.php")
    assert params[b"REQUEST_METHOD"] == b"POST"
    assert params[b"REQUEST_URI"] == b"/app/items/%C3%A9?q=1"
    assert params[b"QUERY_STRING"] == b"q=1"
    assert params[b"SCRIPT_NAME"] == b"/app"
    assert params[b"PATH_INFO"] == "/items/é".encode()
    assert params[b"SCRIPT_FILENAME"] == b"/srv/index.php"
    assert (params[b"SERVER_NAME"], params[b"SERVER_PORT"], params[b"HTTPS"]) == (
        b"::1",
        b"8443",
        b"on",
    )
    assert params[b"CONTENT_TYPE"] == b"text/plain"
    assert params[b"CONTENT_LENGTH"] == b"3"
    assert params[b"HTTP_X_MULTI"] == b"a, b"
    assert params[b"HTTP_COOKIE"] == b"a=1; b=2"
    for dropped in (b"HTTP_X_UNDER_SCORE", b"HTTP_PROXY", b"HTTP_TRANSFER_ENCODING"):
        assert dropped not in params
    # Outside the mount point: the whole path is PATH_INFO.
    other = cgi_params(httpx.Request("GET", "http://h/elsewhere"), script_name="/app")
    assert (other[b"SCRIPT_NAME"], other[b"PATH_INFO"]) == (b"", b"/elsewhere")
