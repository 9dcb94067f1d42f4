"""--sendfile-header: whole-file responses handed to the web server.

Through our client (the header, no body, the map, the fallbacks) and
through nginx (X-Accel-Redirect to an internal location) and lighttpd
(X-Sendfile), which then send the file themselves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fcgi_asgi.config import Config, ConfigError
from tests import sendfile_apps
from tests.conftest import connect
from tests.webservers import Gateway, WebServer, start_gateways, start_webserver

APPS = {"asgi": sendfile_apps.asgi_app, "wsgi": sendfile_apps.wsgi_app}


@pytest.mark.parametrize("interface", APPS)
async def test_a_file_becomes_the_header(serve, tmp_path, interface):
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(200_000))
    server = await serve(APPS[interface], sendfile_header="x-sendfile")
    async with await connect(server) as client:
        r = await client.request("GET", "/f", query=str(f))
    assert r.status == 200
    assert r.header("x-sendfile") == str(f.resolve())
    assert r.body == b""
    assert r.header("content-length") is None  # the web server sets the file's
    assert r.header("x-app") == interface


@pytest.mark.parametrize("interface", APPS)
async def test_the_map_rewrites_and_unmapped_files_stream(serve, tmp_path, interface):
    inside, outside = tmp_path / "files", tmp_path / "other"
    inside.mkdir()
    outside.mkdir()
    (inside / "a.bin").write_bytes(b"a" * 1000)
    (outside / "b.bin").write_bytes(b"b" * 1000)
    server = await serve(
        APPS[interface],
        sendfile_header="X-Accel-Redirect",
        sendfile_map=(f"{inside.resolve()}/=/protected/",),
    )
    async with await connect(server) as client:
        mapped = await client.request("GET", "/f", query=str(inside / "a.bin"))
        # ".." must not escape the mapped prefix into an offload.
        sneaky = await client.request("GET", "/f", query=f"{inside}/../other/b.bin")
    assert mapped.header("x-accel-redirect") == "/protected/a.bin"
    assert mapped.body == b""
    assert sneaky.header("x-accel-redirect") is None
    assert sneaky.body == b"b" * 1000


async def test_without_the_option_files_stream(serve, tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"x" * 5000)
    server = await serve(sendfile_apps.asgi_app)
    async with await connect(server) as client:
        r = await client.request("GET", "/f", query=str(f))
    assert r.body == b"x" * 5000 and r.header("x-sendfile") is None


def test_sendfile_options_are_checked():
    assert Config(app="m:a", sendfile_header="x-accel-redirect").sendfile_header == (
        "X-Accel-Redirect"
    )
    with pytest.raises(ConfigError, match="must be one of"):
        Config(app="m:a", sendfile_header="X-Send")
    with pytest.raises(ConfigError, match="needs"):
        Config(app="m:a", sendfile_map=("/a=/b",))
    with pytest.raises(ConfigError, match="FROM=TO"):
        Config(app="m:a", sendfile_header="X-Sendfile", sendfile_map=("relative=/b",))


SERVERS = {
    "nginx": ("X-Accel-Redirect", "/protected-files/"),
    "lighttpd": ("X-Sendfile", None),
}


@pytest.fixture(scope="module", params=[(s, i) for s in SERVERS for i in APPS])
def offloading(request: Any, workdir: Path) -> Iterator[tuple[WebServer, Path]]:
    server, interface = request.param
    files = workdir / f"files-{server}-{interface}"
    files.mkdir()
    files.chmod(0o755)
    header, uri = SERVERS[server]
    extra = ["--sendfile-header", header, "--metrics-path", "/gateway-metrics"]
    if uri is not None:
        extra += ["--sendfile-map", f"{files}/={uri}"]
    gw = Gateway(f"tests.sendfile_apps:{interface}_app", workdir, extra=tuple(extra))
    start_gateways(gw)
    try:
        (files / "ready.txt").write_text("ready")
        ws = start_webserver(
            server,
            "sendfile",
            workdir,
            f"/files?{files}/ready.txt",
            socket=gw.socket,
            files=files,
        )
        try:
            yield ws, files
        finally:
            ws.stop()
    finally:
        gw.stop()


def test_the_web_server_sends_the_file(offloading):
    ws, files = offloading
    data = os.urandom(3 << 20)
    f = files / "big.bin"
    f.write_bytes(data)
    f.chmod(0o644)
    r = httpx.get(f"{ws.base_url}/files?{f}", timeout=20)
    assert r.status_code == 200, ws.logs()
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
    assert r.headers["content-length"] == str(len(data))
    # The header itself never reaches the client.
    assert "x-sendfile" not in r.headers and "x-accel-redirect" not in r.headers
    # And the gateway sent none of the file's bytes itself.
    metrics = httpx.get(f"{ws.base_url}/gateway-metrics", timeout=10).text
    sent = [ln for ln in metrics.splitlines() if ln.startswith("fcgi_asgi_response_body_bytes")]
    assert sent and int(float(sent[0].split()[-1])) < 1000, sent
