"""fcgi_asgi.httpx against php-fpm (Debian's package), the FastCGI server most
people run: started here with its own config on a unix socket in /tmp."""

from __future__ import annotations

import glob
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fcgi_asgi.httpx import FastCGITransport, SyncFastCGITransport
from tests.webservers import STARTUP_TIMEOUT, Process, socket_path

pytestmark = pytest.mark.anyio

SCRIPT = r"""<?php
$r = $_GET['r'] ?? '';
if ($r === 'redirect') { header('Location: /elsewhere'); exit; }
if ($r === 'teapot') { http_response_code(418); echo 'short and stout'; exit; }
if ($r === 'echo') { echo file_get_contents('php://input'); exit; }
if ($r === 'warn') { error_log('careful'); echo 'warned'; exit; }
if ($r === 'stream') {
    for ($i = 0; $i < 200; $i++) { echo str_repeat(chr(65 + $i % 26), 10000); flush(); }
    exit;
}
header('Content-Type: application/json');
echo json_encode(['server' => $_SERVER, 'get' => $_GET, 'post' => $_POST, 'pid' => getmypid()]);
"""

CONFIG = """[global]
error_log = {workdir}/fpm-error.log
daemonize = no
pid = {workdir}/fpm.pid

[app]
listen = {socket}
pm = static
pm.max_children = 2
pm.status_path = /fpm-status
"""


def php_fpm() -> str:
    """Debian installs php-fpm as php-fpmX.Y in /usr/sbin."""
    found = shutil.which("php-fpm") or sorted(glob.glob("/usr/sbin/php-fpm*"))
    if not found:
        raise RuntimeError("php-fpm is not installed (.ci/run installs Debian's php-fpm)")
    return found if isinstance(found, str) else found[-1]


@pytest.fixture(scope="module")
def fpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    workdir = tmp_path_factory.mktemp("php-fpm")
    sock = socket_path("php-fpm")
    (workdir / "app.php").write_text(SCRIPT)
    (workdir / "fpm.conf").write_text(CONFIG.format(workdir=workdir, socket=sock))
    # -n: no php.ini (Debian's would do); -R: root may run it (the test's own user).
    argv = [php_fpm(), "-n", "-F", "-y", str(workdir / "fpm.conf")]
    if os.geteuid() == 0:
        argv.append("-R")
    proc = Process("php-fpm", argv, workdir / "php-fpm.log")
    proc.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not os.path.exists(sock):
        proc.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"php-fpm did not listen:\n{proc.log_tail()}")
        time.sleep(0.05)
    yield sock, workdir / "app.php"
    proc.stop()


@pytest.fixture
def php(fpm: tuple[str, Path]) -> httpx.AsyncClient:
    # Not an async fixture: pytest-asyncio would run it on asyncio, not the test's backend.
    sock, script = fpm
    transport = FastCGITransport(path=sock, script_filename=str(script), script_name="/app.php")
    return httpx.AsyncClient(transport=transport, base_url="http://php.test")


async def test_params_reach_php(php: httpx.AsyncClient, fpm: tuple[str, Path]) -> None:
    async with php:
        r = await php.get("/app.php/extra/path?a=1&b=%C3%A9", headers={"X-Custom": "v"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        data = r.json()
        server = data["server"]
        assert data["get"] == {"a": "1", "b": "é"}
        assert server["REQUEST_METHOD"] == "GET"
        assert server["REQUEST_URI"] == "/app.php/extra/path?a=1&b=%C3%A9"
        assert server["SCRIPT_NAME"] == "/app.php"
        assert server["PATH_INFO"] == "/extra/path"
        assert server["SCRIPT_FILENAME"] == str(fpm[1])
        assert server["HTTP_X_CUSTOM"] == "v"
        assert server["HTTP_HOST"] == "php.test"


async def test_form_post_and_kept_connection(php: httpx.AsyncClient) -> None:
    async with php:
        pids = set()
        for i in range(4):
            r = await php.post("/app.php", data={"n": str(i)})
            assert r.json()["post"] == {"n": str(i)}
            pids.add(r.json()["pid"])
        # One kept connection stays with one php-fpm child (of the pool's two).
        assert len(pids) == 1


async def test_body_echo_and_streamed_response(php: httpx.AsyncClient) -> None:
    async with php:
        body = os.urandom(300_000)
        r = await php.post("/app.php?r=echo", content=body)
        assert r.content == body
        async with php.stream("GET", "/app.php?r=stream") as r:
            chunks = [chunk async for chunk in r.aiter_raw()]
        assert b"".join(chunks) == b"".join(bytes((65 + i % 26,)) * 10000 for i in range(200))


async def test_status_location_and_stderr(php: httpx.AsyncClient) -> None:
    async with php:
        r = await php.get("/app.php?r=teapot")
        assert (r.status_code, r.reason_phrase, r.text) == (418, "I'm a Teapot", "short and stout")
        r = await php.get("/app.php?r=redirect")
        assert (r.status_code, r.headers["location"]) == (302, "/elsewhere")
        r = await php.get("/app.php?r=warn")
        assert r.text == "warned"
        assert bytes(r.extensions["fastcgi"]["stderr"]) == b"PHP message: careful"


def test_sync_twin_and_fpm_status(fpm: tuple[str, Path]) -> None:
    sock, script = fpm
    transport = SyncFastCGITransport(path=sock, script_filename=str(script))
    with httpx.Client(transport=transport, base_url="http://php.test") as client:
        assert client.get("/?r=teapot").status_code == 418
    # php-fpm's own status page answers on SCRIPT_NAME.
    status = SyncFastCGITransport(path=sock, script_filename=str(script), script_name="/fpm-status")
    with httpx.Client(transport=status, base_url="http://php.test") as client:
        info = client.get("/fpm-status?json").json()
    assert info["pool"] == "app"
    assert info["accepted conn"] >= 1
