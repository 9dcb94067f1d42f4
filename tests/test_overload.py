"""``--max-concurrent-requests`` through every web server: the client gets a 503.

FastCGI's own answer, END_REQUEST(OVERLOADED), reaches no client as a 503
(nginx and Caddy answer 502, lighttpd 500, see the README); the gateway answers
a CGI ``503`` with ``Retry-After`` instead, which every server passes on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.webservers import SERVERS, Gateway, start_webserver, wait_for, web_workdir

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with web_workdir("fcgi-asgi-overload-") as path:
        yield path


@pytest.fixture(scope="module")
def gateway(workdir: Path) -> Iterator[Gateway]:
    gw = Gateway(
        "tests.hold_app:app",
        workdir,
        name="limited",
        extra=("--max-concurrent-requests", "1", "--status-path", "/fcgi-status"),
    )
    gw.start()
    try:
        gw.wait_ready()
        yield gw
    finally:
        gw.stop()
    assert gw.popen is not None and gw.popen.returncode == 0, gw.log_tail()


def _active(c: httpx.Client) -> int:
    r = c.get("/fcgi-status?json")
    assert r.status_code == 200, r.text
    return int(json.loads(r.text)["active requests"])


@pytest.mark.parametrize("server", SERVERS)
def test_a_request_over_the_limit_gets_503_with_retry_after(
    server: str, workdir: Path, gateway: Gateway
) -> None:
    ws = start_webserver(server, "stock", workdir, socket=gateway.socket, app_socket=gateway.socket)
    release = workdir / f"release-{server}"
    held: dict[str, Any] = {}

    def hold() -> None:
        with httpx.Client(base_url=ws.base_url, timeout=40) as c:
            r = c.get(f"/hold?{release}")
            held["status"], held["body"] = r.status_code, r.text

    holder = threading.Thread(target=hold)
    try:
        with httpx.Client(base_url=ws.base_url, timeout=30) as c:
            holder.start()
            # The status page is answered by the gateway itself, even when full.
            assert wait_for(lambda: _active(c) == 1, 20), "the held request never started"
            r = c.get("/other")
            assert r.status_code == 503, f"{r.status_code} {r.text[:200]}\n{ws.logs()}"
            assert r.headers["retry-after"] == "1"
            assert r.text == "Service Unavailable"
            release.touch()
            holder.join(40)
            assert held == {"status": 200, "body": "released"}
            # A slot is free again.
            r = c.get("/other")
            assert (r.status_code, r.text) == (200, "ok")
    finally:
        release.touch()
        holder.join(40)
        ws.stop()
