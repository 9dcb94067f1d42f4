"""nginx, lighttpd, Apache httpd, Caddy and h2o in front of real gateway processes.

Each web server runs on its example config from ``examples/<server>/``
(rendered with temporary paths and free ports) and is driven by a real HTTP
client. The gateways are ``python -m fcgi_asgi`` subprocesses serving
``tests/webapp.py``: the Starlette app at ``/`` and the FastAPI app under
``/app`` (``--root-path /app``). Servers start once per module and parameter,
gateways once per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest

from fcgi_asgi.asgi.scope import build_scope
from tests.webapp import pattern
from tests.webservers import (
    SERVERS,
    Gateway,
    Process,
    WebServer,
    gateway_args,
    socket_path,
    start_gateways,
    start_webserver,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)

PERCENT_PATH = "/caf%C3%A9/a%2Fb"
QUERY = "x=1&y=%20&z=caf%C3%A9"
MiB = 1 << 20


# -- fixtures -------------------------------------------------------------------------


class Gateways:
    """The session's gateway processes."""

    def __init__(self, workdir: Path) -> None:
        # As the HAProxy examples say: with the default 100, the PARAMS of the
        # requests HAProxy 2.6 multiplexes on one connection overflow its buffer
        # and it answers 500 (IH--); the matrix's 200 concurrent requests did.
        limit = ("--max-requests-per-connection", "16")
        self.root = Gateway("tests.webapp:starlette_app", workdir, name="root", extra=limit)
        self.prefixed = Gateway(
            "tests.webapp:fastapi_app", workdir, name="prefixed", root_path="/app", extra=limit
        )
        self.tcp = Gateway("tests.webapp:starlette_app", workdir, name="tcp", tcp=True, extra=limit)
        self.all = (self.root, self.prefixed, self.tcp)


@pytest.fixture(scope="session")
def gateways(workdir: Path) -> Iterator[Gateways]:
    gws = Gateways(workdir)
    try:
        start_gateways(*gws.all)
        yield gws
    finally:
        for gw in gws.all:
            gw.stop()
    for gw in gws.all:
        # A gateway that died under a web server is a failure, not a detail.
        assert gw.popen is not None and gw.popen.returncode == 0, gw.log_tail()


def _start(server: str, variant: str, workdir: Path, **values: Any) -> Iterator[WebServer]:
    ws = start_webserver(server, variant, workdir, **values)
    try:
        yield ws
    finally:
        ws.stop()


@pytest.fixture(scope="module", params=SERVERS)
def site(request: Any, workdir: Path, gateways: Gateways) -> Iterator[WebServer]:
    """The tuned config (examples/<server>/site.*) over unix sockets."""
    yield from _start(
        request.param,
        "site",
        workdir,
        socket=gateways.root.socket,
        app_socket=gateways.prefixed.socket,
    )


@pytest.fixture(scope="module", params=SERVERS)
def stock(request: Any, workdir: Path, gateways: Gateways) -> Iterator[WebServer]:
    """The newcomer's snippet (examples/<server>/stock.*)."""
    yield from _start(
        request.param,
        "stock",
        workdir,
        socket=gateways.root.socket,
        app_socket=gateways.prefixed.socket,
    )


@pytest.fixture(scope="module", params=SERVERS)
def tcp_site(request: Any, workdir: Path, gateways: Gateways) -> Iterator[WebServer]:
    """The TCP variant (examples/<server>/tcp.*)."""
    yield from _start(request.param, "tcp", workdir, backend_port=gateways.tcp.port)


def client(ws: WebServer, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("timeout", 30)
    return httpx.Client(base_url=ws.base_url, **kwargs)


def get_json(ws: WebServer, target: str) -> dict[str, Any]:
    with client(ws) as c:
        r = c.get(target)
    assert r.status_code == 200, f"{target}: {r.status_code} {r.text[:300]}\n{ws.logs()}"
    # The percent-encoding must reach the server as written, not re-encoded.
    assert r.request.url.raw_path.decode() == target
    data: dict[str, Any] = r.json()
    return data


TEXT = {"content-type": "text/x-test"}


def header_values(r: httpx.Response) -> dict[str, list[bytes]]:
    """What ``/headers`` reports: each request header's values, as the app saw them."""
    assert r.status_code == 200, r.text[:300]
    grouped: dict[str, list[bytes]] = {}
    for name, value in r.json():
        grouped.setdefault(name, []).append(bytes(value))
    return grouped


def assert_app_saw(
    info: dict[str, Any], *, path: str, raw_path: str, root_path: str, query: str = QUERY
) -> None:
    assert info["path"] == path
    assert info["raw_path"] == raw_path
    assert info["root_path"] == root_path
    assert info["query_string"] == query


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


# -- the matrix: tuned configs over unix sockets -------------------------------------


class TestMatrix:
    def test_listens_on_loopback_only(self, site: WebServer) -> None:
        # The configs name 127.0.0.1; Caddy listened on every interface until bound.
        assert listening_addresses(site.port) == {"127.0.0.1"}

    def test_percent_path_at_root(self, site: WebServer) -> None:
        info = get_json(site, f"{PERCENT_PATH}?{QUERY}")
        assert_app_saw(info, path="/café/a/b", raw_path=PERCENT_PATH, root_path="")
        assert info["route"] == "/café/{rest:path}"
        assert info["path_params"] == {"rest": "a/b"}

    def test_percent_path_in_a_starlette_mount(self, site: WebServer) -> None:
        info = get_json(site, f"/mounted{PERCENT_PATH}?{QUERY}")
        assert_app_saw(
            info, path="/mounted/café/a/b", raw_path=f"/mounted{PERCENT_PATH}", root_path="/mounted"
        )
        assert info["route"] == "/café/{rest:path}"
        assert info["path_params"] == {"rest": "a/b"}

    def test_percent_path_under_prefix(self, site: WebServer) -> None:
        info = get_json(site, f"/app{PERCENT_PATH}?{QUERY}")
        assert_app_saw(info, path="/app/café/a/b", raw_path=f"/app{PERCENT_PATH}", root_path="/app")
        assert info["route"] == "/café/{rest:path}"
        assert info["rest"] == "a/b"

    def test_fastapi_json_and_validation_error(self, site: WebServer) -> None:
        with client(site) as c:
            ok = c.post("/app/items", json={"name": "tea", "price": 2.5})
            bad = c.post("/app/items", json={"name": "tea"})
            item = c.get("/app/items/42")
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"name": "tea", "price": 2.5, "root_path": "/app"}
        assert bad.status_code == 422, bad.text
        assert bad.headers["content-type"] == "application/json"
        [error] = bad.json()["detail"]
        assert error["loc"] == ["body", "price"] and error["type"] == "missing"
        assert item.status_code == 200 and item.json()["item_id"] == 42

    @pytest.mark.parametrize("size", [MiB, 10 * MiB], ids=["1MiB", "10MiB"])
    def test_post_echo(self, site: WebServer, size: int) -> None:
        body = os.urandom(size)
        with client(site) as c:
            r = c.post("/echo", content=body)
        assert r.status_code == 200, r.text[:300]
        assert len(r.content) == size
        assert r.content == body

    def test_chunked_upload(self, site: WebServer) -> None:
        pieces = [os.urandom(64 << 10) for _ in range(48)]  # 3 MiB

        def body() -> Iterator[bytes]:
            yield from pieces

        with client(site) as c:
            r = c.post("/digest", content=body())
        assert r.request.headers["transfer-encoding"] == "chunked"
        if site.server == "haproxy":
            # HAProxy must send CONTENT_LENGTH (its manual, 10.2): a chunked body
            # larger than its buffer is refused before any FastCGI request (400,
            # "PH--"); one that fits is sent with its length (next test).
            assert r.status_code == 400, r.text[:300]
            return
        assert r.status_code == 200, r.text[:300]
        data = b"".join(pieces)
        assert r.json()["size"] == len(data)
        assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()

    def test_streaming_first_chunk_before_app_finishes(self, site: WebServer) -> None:
        token = secrets.token_hex(8)
        # A server that buffers the response never shows "first" while the app
        # waits; the read timeout then fails the test.
        with (
            client(site, timeout=httpx.Timeout(30, read=10)) as c,
            c.stream("GET", f"/held/{token}") as r,
        ):
            assert r.status_code == 200
            chunks = r.iter_raw()
            first = next(chunks)
            assert first.startswith(b"first\n")
            with client(site) as other:
                assert other.get(f"/events/{token}").json() == {"first_sent": True}
                assert other.get(f"/release/{token}").status_code == 200
            rest = first + b"".join(chunks)
        assert rest == b"first\nlast\n"

    def test_download_50mib_intact(self, site: WebServer) -> None:
        size = 50 * MiB
        h = hashlib.sha256()
        n = 0
        with client(site) as c, c.stream("GET", f"/download/{size}") as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                h.update(chunk)
                n += len(chunk)
        assert n == size
        assert h.hexdigest() == _pattern_sha256(size)

    def test_two_set_cookie_headers(self, site: WebServer) -> None:
        with client(site) as c:
            r = c.get("/cookies")
        assert r.status_code == 200
        cookies = r.headers.get_list("set-cookie")
        assert [x.split(";")[0] for x in cookies] == ["a=1", "b=2"]
        assert r.text == "cookies"

    @pytest.mark.parametrize("code", [201, 204, 304, 404, 418, 500])
    def test_status_and_reason(self, site: WebServer, code: int) -> None:
        with client(site) as c:
            r = c.get(f"/status/{code}")
        assert r.status_code == code
        assert r.reason_phrase.lower() == expected_reason(site.server, code).lower()
        # The CGI "Status:" line sets the status; it is no header for the client.
        assert "status" not in r.headers
        if code in (204, 304):
            assert r.content == b""
        else:
            assert r.text == f"status {code}"

    def test_head(self, site: WebServer) -> None:
        with client(site) as c:
            r = c.head("/download/1000")
        assert r.status_code == 200
        assert r.headers["x-method"] == "HEAD"  # the app saw HEAD, not GET
        assert r.content == b""

    def test_head_then_get_pipelined_on_one_connection(self, site: WebServer) -> None:
        # Starlette sends the body of a HEAD response too. Body bytes in the
        # FastCGI response make h2o 2.2 forward them, and the pipelined GET's
        # response then starts in the middle of them (issue 9, defect 1).
        requests = (
            b"HEAD /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as s:
            s.sendall(requests)
            data = b""
            for _ in range(100):  # bounded: the two small responses need a few reads
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, data
        assert head.startswith(b"HTTP/1.1 200"), data
        if b"\r\nconnection: close" in head.lower():
            # h2o 2.2 closes the client connection after a HEAD whose
            # Content-Length (kept, as it must be) has no body behind it: the
            # client retries the GET elsewhere. Nothing may follow the head.
            assert site.server == "h2o", data
            assert rest == b"", data
            return
        # The GET's response comes right after the HEAD's head, and only it.
        assert rest.startswith(b"HTTP/1.1 200"), f"{data!r}\n{site.logs()}"
        assert rest.count(b"HTTP/1.1") == 1, data
        assert b"\r\n\r\n" in rest and b"pong" in rest.partition(b"\r\n\r\n")[2], data

    def test_app_hop_by_hop_headers_are_dropped(self, site: WebServer) -> None:
        # The app's own Transfer-Encoding: chunked made lighttpd and Caddy answer
        # 200 with an empty body (issue 9, defect 2); CGI leaves transfer coding
        # and connection management to the web server.
        with client(site) as c:
            r = c.get("/hop-by-hop/stream")
        assert r.status_code == 200, site.logs()
        assert r.content == pattern(256 << 10), f"{len(r.content)} bytes\n{site.logs()}"
        assert r.headers["x-kept"] == "yes"
        # Named in the app's Connection header: hop-by-hop as well.
        assert "x-private-hop" not in r.headers

    def test_latin1_request_header(self, site: WebServer) -> None:
        value = b"caf\xe9 \xff"
        with client(site) as c:
            r = c.get("/headers", headers={"X-Latin": value})
        assert r.status_code == 200
        assert header_values(r)["x-latin"] == [value]

    def test_content_headers_reach_the_app_once(self, site: WebServer) -> None:
        body = b"x" * 1000
        with client(site) as c:
            sized = header_values(c.post("/headers", content=body, headers=TEXT))
            chunked = header_values(c.post("/headers", content=iter([body]), headers=TEXT))
        assert sized["content-type"] == [b"text/x-test"]
        assert sized["content-length"] == [b"1000"]
        assert chunked["content-type"] == [b"text/x-test"]
        # Servers that buffer a chunked body send its length; the others none.
        assert chunked.get("content-length", [b"1000"]) == [b"1000"]

    async def test_200_concurrent_requests(self, site: WebServer) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=site.base_url, timeout=60, limits=limits) as c:
            responses = await asyncio.gather(*(c.get(f"/sleep/{i}?s=0.2") for i in range(200)))
        assert [r.status_code for r in responses] == [200] * 200, site.logs()
        assert [r.json()["n"] for r in responses] == list(range(200))

    def test_client_disconnect_reaches_app(self, site: WebServer) -> None:
        token = secrets.token_hex(8)
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as s:
            s.sendall(f"GET /endless/{token} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("ascii"))
            received = 0
            while received < 2 * MiB:
                data = s.recv(65536)
                assert data, "the server closed the connection before the client did"
                received += len(data)
        with client(site) as c:
            seen = wait_for(lambda: c.get(f"/events/{token}").json().get("outcome"), timeout=10)
            events = c.get(f"/events/{token}").json()
        assert seen == "http.disconnect", events
        # ASGI 2.4: send() raised an OSError (ours), then receive() said disconnect.
        assert events["send_error"] == "ClientDisconnected", events

    def test_answer_before_reading_the_body(self, site: WebServer) -> None:
        """The app answers 413 without reading a 4 MiB body: the gateway must read the
        rest before closing (Apache answers 503, AH01075, if it closes early). The
        client reads while it sends, as browsers do: h2o closes its client
        connection as soon as it has answered, so a client that only reads after
        sending everything would miss the answer there (not the gateway's doing)."""
        body = os.urandom(4 * MiB)
        head = (
            f"POST /refuse HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as s:

            def upload() -> None:
                with contextlib.suppress(OSError):
                    s.sendall(head + body)

            sender = threading.Thread(target=upload, daemon=True)
            sender.start()
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while b"too large" not in answer and len(answer) < 65536:
                    data = s.recv(65536)
                    if not data:
                        break
                    answer += data
            sender.join(10)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"too large" in answer
        with client(site) as c:
            assert c.get("/ping").text == "pong"

    def test_app_exception_gives_500_then_next_request_works(self, site: WebServer) -> None:
        with client(site) as c:
            r = c.get("/boom")
            assert r.status_code == 500
            assert b"on purpose" not in r.content
            assert c.get("/ping").text == "pong"


_pattern_hashes: dict[int, str] = {}


def _pattern_sha256(size: int) -> str:
    if size not in _pattern_hashes:
        _pattern_hashes[size] = hashlib.sha256(pattern(size)).hexdigest()
    return _pattern_hashes[size]


# What each server puts in the status line: most pass the gateway's reason on
# (or use the same standard phrase); lighttpd uses its own table, which has no
# entry for 418, and sends none.
def expected_reason(server: str, code: int) -> str:
    if server == "lighttpd" and code == 418:
        return ""
    return HTTPStatus(code).phrase


# -- the TCP variants -----------------------------------------------------------------


class TestTcp:
    def test_listens_on_loopback_only(self, tcp_site: WebServer) -> None:
        # The configs name 127.0.0.1; Caddy listened on every interface until bound.
        assert listening_addresses(tcp_site.port) == {"127.0.0.1"}

    def test_percent_path(self, tcp_site: WebServer) -> None:
        info = get_json(tcp_site, f"{PERCENT_PATH}?{QUERY}")
        assert_app_saw(info, path="/café/a/b", raw_path=PERCENT_PATH, root_path="")
        assert info["path_params"] == {"rest": "a/b"}

    def test_post_echo_1mib(self, tcp_site: WebServer) -> None:
        body = os.urandom(MiB)
        with client(tcp_site) as c:
            r = c.post("/echo", content=body)
        assert r.status_code == 200 and r.content == body

    def test_streaming(self, tcp_site: WebServer) -> None:
        token = secrets.token_hex(8)
        with (
            client(tcp_site, timeout=httpx.Timeout(30, read=10)) as c,
            c.stream("GET", f"/held/{token}") as r,
        ):
            chunks = r.iter_raw()
            assert next(chunks).startswith(b"first\n")
            with client(tcp_site) as other:
                other.get(f"/release/{token}")
            assert b"".join(chunks).endswith(b"last\n")

    def test_download_intact(self, tcp_site: WebServer) -> None:
        size = 20 * MiB
        with client(tcp_site) as c:
            r = c.get(f"/download/{size}")
        assert len(r.content) == size
        assert hashlib.sha256(r.content).hexdigest() == _pattern_sha256(size)


# -- the newcomer's snippets ----------------------------------------------------------


class TestStock:
    def test_listens_on_loopback_only(self, stock: WebServer) -> None:
        # The configs name 127.0.0.1; Caddy listened on every interface until bound.
        assert listening_addresses(stock.port) == {"127.0.0.1"}

    def test_starlette_routes_at_root(self, stock: WebServer) -> None:
        info = get_json(stock, "/items/42?x=1")
        # lighttpd sends SCRIPT_NAME=/items PATH_INFO=/42 here: no root_path from it.
        assert_app_saw(info, path="/items/42", raw_path="/items/42", root_path="", query="x=1")
        assert info["item_id"] == 42 and info["route"] == "/items/{item_id:int}"

    def test_percent_path_at_root(self, stock: WebServer) -> None:
        # No %2F: Apache's stock settings answer 404 for it (AllowEncodedSlashes).
        info = get_json(stock, "/caf%C3%A9/x/y?q=%C3%A9")
        assert_app_saw(
            info, path="/café/x/y", raw_path="/caf%C3%A9/x/y", root_path="", query="q=%C3%A9"
        )
        assert info["path_params"] == {"rest": "x/y"}

    def test_starlette_mount(self, stock: WebServer) -> None:
        info = get_json(stock, "/mounted/caf%C3%A9/x")
        assert info["path_params"] == {"rest": "x"}
        assert info["root_path"] == "/mounted" and info["path"] == "/mounted/café/x"

    def test_fastapi_under_prefix_with_root_path(self, stock: WebServer) -> None:
        info = get_json(stock, "/app/items/42?x=1")
        assert_app_saw(
            info, path="/app/items/42", raw_path="/app/items/42", root_path="/app", query="x=1"
        )
        assert info["item_id"] == 42
        info = get_json(stock, "/app/caf%C3%A9/x")
        assert info["rest"] == "x" and info["path"] == "/app/café/x"

    def test_fastapi_json_and_422(self, stock: WebServer) -> None:
        with client(stock) as c:
            ok = c.post("/app/items", json={"name": "tea", "price": 1})
            bad = c.post(
                "/app/items", content=b"{not json", headers={"content-type": "application/json"}
            )
        assert ok.status_code == 200 and ok.json()["price"] == 1.0
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["type"] == "json_invalid"

    def test_post_echo(self, stock: WebServer) -> None:
        body = os.urandom(200_000)
        with client(stock) as c:
            r = c.post("/echo", content=body)
        assert r.status_code == 200 and r.content == body


# -- spawned mode: the listening socket on fd 0 ---------------------------------------


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def test_lighttpd_bin_path_spawns_the_gateway(workdir: Path) -> None:
    sock = socket_path("spawned")
    gateway = " ".join(
        [sys.executable, "-m", "fcgi_asgi", *gateway_args("tests.webapp:starlette_app")]
    )
    ws = start_webserver("lighttpd", "spawned", workdir, socket=sock, gateway=gateway)
    spawned_pid = None
    try:
        info = get_json(ws, f"{PERCENT_PATH}?{QUERY}")
        assert_app_saw(info, path="/café/a/b", raw_path=PERCENT_PATH, root_path="")
        spawned_pid = info["pid"]
        # lighttpd itself started this gateway, with no --socket: fd 0 it is.
        assert _parent_pid(spawned_pid) == ws.pid
        cmdline = Path(f"/proc/{spawned_pid}/cmdline").read_bytes().split(b"\0")
        assert b"--socket" not in cmdline and b"--fd" not in cmdline
        with client(ws) as c:
            body = os.urandom(MiB)
            assert c.post("/echo", content=body).content == body
    finally:
        ws.stop()
        if spawned_pid is not None:
            # lighttpd stops what it spawned; make sure, and never leave it behind.
            gone = wait_for(lambda: not Path(f"/proc/{spawned_pid}").exists(), timeout=10)
            if not gone:
                os.kill(spawned_pid, signal.SIGKILL)
            assert gone, "lighttpd left its spawned gateway running"


def test_spawn_fcgi_runs_the_gateway(workdir: Path, gateways: Gateways) -> None:
    sock = socket_path("spawn-fcgi")
    # -n: spawn-fcgi binds the socket, then execs the gateway in its own
    # process (no fork), so this PID is the gateway's.
    argv = ["spawn-fcgi", "-n", "-s", sock, "-M", "0666", "--"]
    argv += [sys.executable, "-m", "fcgi_asgi", *gateway_args("tests.webapp:starlette_app")]
    gw = Process("spawn-fcgi gateway", argv, workdir / f"spawn-fcgi-{secrets.token_hex(3)}.log")
    gw.start()
    try:
        ws = start_webserver(
            "nginx", "stock", workdir, socket=sock, app_socket=gateways.prefixed.socket
        )
        try:
            info = get_json(ws, "/items/42?x=1")
            assert info["item_id"] == 42 and info["root_path"] == ""
            assert info["pid"] == gw.pid
        finally:
            ws.stop()
    finally:
        code = gw.stop()
        if os.path.exists(sock):
            os.unlink(sock)
    assert code == 0, gw.log_tail()  # SIGTERM: a clean shutdown


# -- two gateways behind a balancer -----------------------------------------------------


@pytest.mark.parametrize("server", ["nginx", "lighttpd", "haproxy"])
async def test_balancer_spreads_and_survives_a_dead_backend(server: str, workdir: Path) -> None:
    # HAProxy's health checks ask the gateway's ping path over FastCGI.
    ping = ("--ping-path", "/fcgi-ping")
    a = Gateway("tests.webapp:starlette_app", workdir, name="backend-a", tcp=True, extra=ping)
    b = Gateway("tests.webapp:starlette_app", workdir, name="backend-b", tcp=True, extra=ping)
    try:
        start_gateways(a, b)
        ws = start_webserver(
            server, "balancer", workdir, backend_port=a.port, backend_port_2=b.port
        )
    except BaseException:
        a.stop()
        b.stop()
        raise
    try:
        await _balancer_checks(ws, a, b)
    finally:
        ws.stop()
        a.stop()
        b.stop()


async def _balancer_checks(ws: WebServer, a: Gateway, b: Gateway) -> None:
    concurrency = 8
    killed = False
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=ws.base_url, timeout=30, limits=limits) as c:

        async def one(i: int) -> tuple[int, int | None, bool]:
            started_after_kill = killed
            try:
                r = await c.get(f"/sleep/{i}?s=0.02")
            except httpx.TransportError:
                return 0, None, started_after_kill
            pid = r.json()["pid"] if r.status_code == 200 else None
            return r.status_code, pid, started_after_kill

        # Spread: both backends answer.
        results = await asyncio.gather(*(one(i) for i in range(40)))
        assert {status for status, _, _ in results} == {200}
        assert {pid for _, pid, _ in results} == {a.pid, b.pid}

        # Kill A mid-load (SIGKILL: a crash, not a graceful stop).
        sem = asyncio.Semaphore(concurrency)
        done = 0

        async def limited(i: int) -> tuple[int, int | None, bool]:
            nonlocal done
            async with sem:
                result = await one(i)
                done += 1
                return result

        tasks = [asyncio.ensure_future(limited(i)) for i in range(300)]
        for _ in range(500):
            if done >= 60:
                break
            await asyncio.sleep(0.01)
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        killed = True
        results = await asyncio.gather(*tasks)
        failed = [r for r in results if r[0] != 200]
        # Only requests in flight on A when it died may fail.
        assert len(failed) <= concurrency, failed
        assert not [r for r in failed if r[2]], f"requests sent after the kill failed: {failed}"
        assert {pid for _, pid, after in results if after} == {b.pid}

        # Afterwards every request is answered, by B.
        after = await asyncio.gather(*(one(i) for i in range(40)))
        assert [(status, pid) for status, pid, _ in after] == [(200, b.pid)] * 40, ws.logs()


@pytest.mark.parametrize("keepalive", ["On", "Off"])
def test_apache_shows_a_truncated_response(
    workdir: Path, gateways: Gateways, keepalive: str
) -> None:
    """An app failing mid-response: the gateway closes the connection without
    END_REQUEST and Apache passes the truncation on (no last chunk). Apache
    ignores END_REQUEST's appStatus and keeps the client connection alive
    after such a response, so the client waits for KeepAliveTimeout before it
    sees the end; with ``KeepAlive Off`` the connection closes at once (what
    the README documents). A long KeepAliveTimeout shows which one happened."""
    ws = WebServer(
        "apache2",
        "site",
        workdir,
        socket=gateways.root.socket,
        app_socket=gateways.prefixed.socket,
    )
    ws.config.write_text(ws.config.read_text() + f"\nKeepAlive {keepalive}\nKeepAliveTimeout 120\n")
    ws.start()
    try:
        ws.wait_ready()
        # KeepAlive Off closes at once; with it on, the connection is still
        # open long after the response stopped (KeepAliveTimeout is 120 s).
        with socket.create_connection(("127.0.0.1", ws.port), timeout=3) as s:
            s.sendall(b"GET /fail-midway/ HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            closed = False
            with contextlib.suppress(TimeoutError):
                while len(data) < 65536:
                    chunk = s.recv(65536)
                    if not chunk:
                        closed = True
                        break
                    data += chunk
    finally:
        ws.stop()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), data
    assert b"partial" in body and not body.endswith(b"0\r\n\r\n"), data  # visibly cut
    assert closed == (keepalive == "Off")


# -- what each server sends, recorded live ----------------------------------------------

# For GET /items/42?x=1 and /app/items/42: SCRIPT_NAME, PATH_INFO (None: not
# sent), and REQUEST_URI as each server's stock config sends them. The README's
# compatibility table is this data.
SENDS: dict[str, dict[str, tuple[str | None, str | None]]] = {
    "nginx": {"/items/42": ("/items/42", None), "/app/items/42": ("/app/items/42", None)},
    "lighttpd": {"/items/42": ("/items", "/42"), "/app/items/42": ("/app", "/items/42")},
    "apache2": {"/items/42": ("/items/42", None), "/app/items/42": ("/app/items/42", None)},
    "caddy": {"/items/42": ("", "/items/42"), "/app/items/42": ("", "/app/items/42")},
    "h2o": {"/items/42": ("", "/items/42"), "/app/items/42": ("", "/app/items/42")},
    "haproxy": {"/items/42": ("/items/42", None), "/app/items/42": ("/app/items/42", None)},
}


@pytest.fixture(scope="module")
def recorder(workdir: Path) -> Iterator[str]:
    sock = socket_path("recorder")
    proc = Process(
        "recorder",
        [sys.executable, "-m", "tests.recorder", "--socket", sock],
        workdir / "recorder.log",
        cwd=Path(__file__).resolve().parent.parent,
    )
    proc.start()
    try:
        # Ready once it has made its socket connectable for unprivileged workers.
        ready = wait_for(
            lambda: os.path.exists(sock) and os.stat(sock).st_mode & 0o777 == 0o666, timeout=10
        )
        assert ready, proc.log_tail()
        yield sock
    finally:
        proc.stop()
        if os.path.exists(sock):
            os.unlink(sock)


@pytest.mark.parametrize("server", SERVERS)
def test_stock_params_give_the_right_scope(server: str, workdir: Path, recorder: str) -> None:
    """Record what the stock config sends and check the scope built from it."""
    ws = start_webserver(
        server, "stock", workdir, ready_path="/items/1", socket=recorder, app_socket=recorder
    )
    try:
        with client(ws) as c:
            recorded = {
                target: dict(c.get(f"{target}?x=1").json()["params"])
                for target in ("/items/42", "/app/items/42")
            }
    finally:
        ws.stop()
    for target, params in recorded.items():
        assert (params.get("SCRIPT_NAME"), params.get("PATH_INFO")) == SENDS[server][target]
        assert params["REQUEST_URI"] == f"{target}?x=1"
        raw = {k.encode("latin-1"): v.encode("latin-1") for k, v in params.items()}
        root_path = "/app" if target.startswith("/app/") else None
        scope = build_scope(raw, root_path=root_path)
        assert scope["path"] == target
        assert scope["raw_path"] == target.encode()
        assert scope["root_path"] == (root_path or "")
        assert scope["query_string"] == b"x=1"


@pytest.mark.parametrize("config", ["stock", "site"])
def test_reload_under_load_through_nginx_loses_nothing(workdir: Path, config: str) -> None:
    """SIGHUP to a `--workers 2` gateway behind nginx while client loops POST and GET:
    every request answered, the workers replaced. ``stock`` opens a connection per
    request; ``site`` keeps connections (FCGI_KEEP_CONN, upstream keepalive), which the
    old workers hand over to the new ones (tests/test_handoff.py loads it harder)."""
    gw = Gateway("tests.webapp:starlette_app", workdir, name="reload", extra=("--workers", "2"))
    other = Gateway("tests.webapp:fastapi_app", workdir, name="reload-app", root_path="/app")
    start_gateways(gw, other)
    ws = start_webserver("nginx", config, workdir, socket=gw.socket, app_socket=other.socket)
    try:
        with client(ws) as c:
            before = {c.get("/pid").text for _ in range(20)}
        statuses: list[int] = []
        pids: set[str] = set()
        stop = threading.Event()

        def load() -> None:
            with client(ws) as c:
                for _ in range(5000):  # bounded; stopped by the event long before
                    if stop.is_set():
                        return
                    try:
                        r = c.post("/echo", content=b"abc")
                        statuses.append(r.status_code)
                        r = c.get("/pid")
                        statuses.append(r.status_code)
                        pids.add(r.text)
                    except httpx.HTTPError:
                        statuses.append(0)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        # Load before, during and after the reload, counted in requests rather
        # than seconds: a loaded machine answers fewer per second.
        wait_for(lambda: len(statuses) >= 50, timeout=30)
        os.kill(gw.pid, signal.SIGHUP)
        wait_for(lambda: pids - before, timeout=15)  # the new workers answer
        after_reload = len(statuses)
        wait_for(lambda: len(statuses) >= after_reload + 50, timeout=30)
        stop.set()
        for t in threads:
            t.join(15)
        assert len(statuses) > 100
        assert statuses.count(200) == len(statuses), (
            f"{len(statuses) - statuses.count(200)} of {len(statuses)} failed\n{ws.logs()}"
        )
        assert pids - before, "no new worker answered after SIGHUP"
    finally:
        ws.stop()
        assert gw.stop() == 0, gw.log_tail()
        other.stop()


@pytest.mark.parametrize("multiplex", [True, False], ids=["multiplex", "no-multiplex"])
async def test_haproxy_multiplexes_as_the_gateway_says(workdir: Path, multiplex: bool) -> None:
    """HAProxy's site.conf asks GET_VALUES: 40 concurrent requests share connections,
    unless the gateway says FCGI_MPXS_CONNS=0 (--no-multiplex); then each has its own
    and none is refused with CANT_MPX_CONN."""
    extra = ("--status-path", "/fcgi-status", "--max-requests-per-connection", "16")
    extra += () if multiplex else ("--no-multiplex",)
    gw = Gateway("tests.webapp:starlette_app", workdir, name="mpx", extra=extra)
    other = Gateway("tests.webapp:fastapi_app", workdir, name="mpx-app", root_path="/app")
    start_gateways(gw, other)
    try:
        ws = start_webserver("haproxy", "site", workdir, socket=gw.socket, app_socket=other.socket)
        try:
            limits = httpx.Limits(max_connections=40)
            async with httpx.AsyncClient(base_url=ws.base_url, timeout=30, limits=limits) as c:
                # Browser-sized headers: the PARAMS of 16 requests fill much of
                # HAProxy's 16 KiB buffer (more would get 500s, see site.conf).
                hdrs = {"user-agent": "Mozilla/5.0 " + "x" * 400, "accept-language": "en-US"}
                rs = await asyncio.gather(
                    *(c.get(f"/sleep/{i}?s=0.5", headers=hdrs) for i in range(40))
                )
                status = (await c.get("/fcgi-status?json")).json()
        finally:
            ws.stop()
    finally:
        gw.stop()
        other.stop()
    assert [r.status_code for r in rs] == [200] * 40, ws.logs()
    assert status["max active requests"] >= 20
    if multiplex:
        assert status["accepted conn"] <= 30, status
    else:
        assert status["accepted conn"] > 40, status
        assert "refused" not in gw.log_tail(200)


class _SlowReader(threading.Thread):
    """A client that really reads slowly: a 4 KiB receive buffer, 4 KiB every 20 ms."""

    def __init__(self, port: int, target: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.target, self.stop = port, target, stop
        self.received = 0

    def run(self) -> None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(30)
            with contextlib.suppress(OSError):
                s.connect(("127.0.0.1", self.port))
                s.sendall(f"GET {self.target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                for _ in range(100_000):  # bounded; the event ends it long before
                    if self.stop.is_set():
                        return
                    data = s.recv(4096)
                    if not data:
                        return
                    self.received += len(data)
                    time.sleep(0.02)


def test_haproxy_small_requests_pass_beside_slow_streams(workdir: Path) -> None:
    """4 slow clients stream through HAProxy's multiplexed backend; small requests
    through the same HAProxy all complete meanwhile, and the gateway holds the
    streams (their apps are only a little ahead of what the clients read)."""
    gw = Gateway(
        "tests.webapp:starlette_app",
        workdir,
        name="slow",
        extra=("--max-requests-per-connection", "16"),
    )
    other = Gateway("tests.webapp:fastapi_app", workdir, name="slow-app", root_path="/app")
    start_gateways(gw, other)
    stop = threading.Event()
    tokens = [secrets.token_hex(8) for _ in range(4)]
    try:
        ws = start_webserver("haproxy", "site", workdir, socket=gw.socket, app_socket=other.socket)
        try:
            readers = [_SlowReader(ws.port, f"/endless/{t}", stop) for t in tokens]
            for r in readers:
                r.start()
            assert wait_for(lambda: all(r.received > 64 << 10 for r in readers), timeout=30)
            with client(ws) as c:
                small = [c.get("/ping") for _ in range(10)]
                assert [r.status_code for r in small] == [200] * 10
                assert all(r.is_alive() for r in readers)  # still streaming
                received = [r.received for r in readers]  # (read on before `sent` is asked)
                sent = [c.get(f"/events/{t}").json()["sent"] for t in tokens]
        finally:
            stop.set()
            ws.stop()
    finally:
        gw.stop()
        other.stop()
    for s, r in zip(sent, received, strict=True):
        # What the app sent but the client has not read sits in bounded buffers
        # (HAProxy's, the sockets', the gateway's 32 KiB): far from the 30 s of
        # 64 KiB chunks an unheld app would have pushed.
        assert r - 1024 < s < r + (4 << 20), (sent, received)  # 1024: the response head


async def test_haproxy_split_keeps_stalled_downloads_off_the_shared_connections(
    workdir: Path,
) -> None:
    """examples/haproxy/split.conf: four clients that read nothing of their
    downloads hold a FastCGI connection each, and 40 concurrent small requests
    still all complete, sharing connections. On site.conf, where downloads are
    multiplexed too, a stalled download holds up its connection's other requests."""
    extra = ("--status-path", "/fcgi-status", "--max-requests-per-connection", "16")
    gw = Gateway("tests.webapp:starlette_app", workdir, name="split", extra=extra)
    start_gateways(gw)
    stalled: list[socket.socket] = []
    try:
        ws = start_webserver("haproxy", "split", workdir, socket=gw.socket)
        try:
            for _ in range(4):
                s = socket.socket()
                # A small receive buffer: the download really stops moving.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(10)
                s.connect(("127.0.0.1", ws.port))
                s.sendall(b"GET /download/33554432 HTTP/1.1\r\nHost: x\r\n\r\n")
                stalled.append(s)
            async with httpx.AsyncClient(base_url=ws.base_url, timeout=30) as c:

                async def active() -> int:
                    # The gateway answers its status page itself: not counted.
                    r = await c.get("/fcgi-status?json")
                    return int(r.json()["active requests"])

                for _ in range(200):  # bounded: up to 10 s for the four to start
                    if await active() >= 4:
                        break
                    await asyncio.sleep(0.05)
                before = (await c.get("/fcgi-status?json")).json()
                assert before["active requests"] == 4, before
                limits = httpx.Limits(max_connections=40)
                async with httpx.AsyncClient(
                    base_url=ws.base_url, timeout=10, limits=limits
                ) as small:
                    rs = await asyncio.gather(*(small.get(f"/sleep/{i}?s=0.3") for i in range(40)))
                after = (await c.get("/fcgi-status?json")).json()
        finally:
            for s in stalled:
                s.close()
            ws.stop()
    finally:
        gw.stop()
    assert [r.status_code for r in rs] == [200] * 40, ws.logs()
    assert [r.json()["n"] for r in rs] == list(range(40))
    # The small requests shared connections (HAProxy opens several before it
    # reuses one: 24 for 40 here), while each stalled download has its own.
    new = after["accepted conn"] - before["accepted conn"]
    assert new <= 30, (before, after)
    assert before["accepted conn"] >= 4 + 1, before  # + 1: the status page's
