"""--stderr-to-web-server: a request's error log lines also go out as FCGI_STDERR.

Through our client (the STDERR records themselves) and through nginx, whose
error log shows them as "FastCGI sent in stderr".
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import stderr_apps
from tests.conftest import connect
from tests.webservers import Gateway, WebServer, start_gateways, start_webserver, wait_for


@pytest.mark.parametrize("on", [True, False])
async def test_an_app_exception_goes_to_stderr_records(serve, on):
    server = await serve(stderr_apps.asgi_app, stderr_to_web_server=on)
    async with await connect(server) as client:
        r = await client.request("GET", "/boom")
        ok = await client.request("GET", "/fine")
    assert r.status == 500
    assert b"asgi-app-exploded-7341" not in r.body  # never to the client
    if on:
        assert b"Exception in ASGI application: MarkedError: asgi-app-exploded-7341" in r.stderr
        assert b"GET /boom" in r.stderr
        assert b"Traceback" in r.stderr
    else:
        assert r.stderr == b""
    assert ok.stderr == b""


async def test_wsgi_errors_lines_go_to_stderr_records(serve):
    server = await serve(stderr_apps.wsgi_app, interface="wsgi", stderr_to_web_server=True)
    async with await connect(server) as client:
        r = await client.request("GET", "/errors")
    assert r.status == 200
    assert r.stderr == b"wsgi-errors-line-one\nwsgi-errors-line-two\n"


@pytest.fixture(scope="module")
def nginx(request: Any, workdir: Path) -> Iterator[tuple[str, WebServer]]:
    app = f"tests.stderr_apps:{request.param}_app"
    gw = Gateway(app, workdir, tcp=True, extra=("--stderr-to-web-server",))
    start_gateways(gw)
    try:
        ws = start_webserver("nginx", "tcp", workdir, "/fine", backend_port=gw.port)
        try:
            yield request.param, ws
        finally:
            ws.stop()
    finally:
        gw.stop()


def _nginx_logged(ws: WebServer, *words: str) -> str:
    error_log = ws.prefix / "error.log"

    def logged() -> str | None:
        text = error_log.read_text(errors="replace")
        found = "FastCGI sent in stderr" in text and all(w in text for w in words)
        return text if found else None

    text: str | None = wait_for(logged, 5)
    assert text, ws.logs()
    return text


@pytest.mark.parametrize("nginx", ["asgi", "wsgi"], indirect=True)
def test_nginx_error_log_shows_the_app_exception(nginx):
    interface, ws = nginx
    r = httpx.get(ws.base_url + "/boom", timeout=10)
    assert r.status_code == 500
    assert "exploded" not in r.text
    _nginx_logged(ws, f"{interface}-app-exploded-", "MarkedError")


@pytest.mark.parametrize("nginx", ["wsgi"], indirect=True)
def test_nginx_error_log_shows_wsgi_errors(nginx):
    _, ws = nginx
    r = httpx.get(ws.base_url + "/errors", timeout=10)
    assert r.status_code == 200
    _nginx_logged(ws, "wsgi-errors-line-one", "wsgi-errors-line-two")
