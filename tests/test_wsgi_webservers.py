"""Flask and Django (WSGI) behind nginx, lighttpd, Apache httpd, Caddy and h2o.

Each framework runs in a real ``fcgi-asgi --interface wsgi --root-path /app``
process, mounted at ``/app/`` of each server's tuned (``site``) and stock
example config (Caddy and h2o: the tuned one only, to keep the suite short;
tests/test_webservers.py covers their stock configs). The apps are wrapped
in ``wsgiref.validate.validator`` (``tests/wsgi_apps.py``), so a PEP 3333
violation fails the request.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.webservers import Gateway, WebServer, start_gateways, start_webserver

pytestmark = pytest.mark.timeout(180)

SERVERS = ("nginx", "lighttpd", "apache2")
FRAMEWORKS = {
    # app, the form's CSRF field, --threads: Flask runs on the event loop
    # (--threads 0; its 5 MiB upload goes to a thread), Django in a pool.
    "flask": ("tests.wsgi_apps:flask_app", "csrf", "0"),
    "django": ("tests.wsgi_apps:django_app", "csrfmiddlewaretoken", "4"),
}


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def gateway(request: Any, workdir: Path) -> Iterator[tuple[str, Gateway]]:
    app, _, threads = FRAMEWORKS[request.param]
    gw = Gateway(
        app,
        workdir,
        name=request.param,
        root_path="/app",
        extra=("--interface", "wsgi", "--threads", threads),
    )
    try:
        start_gateways(gw)
        yield request.param, gw
    finally:
        gw.stop()
    assert gw.popen is not None and gw.popen.returncode == 0, gw.log_tail()


SITES = [(s, v) for s in SERVERS for v in ("site", "stock")] + [("caddy", "site"), ("h2o", "site")]


@pytest.fixture(scope="module", params=SITES, ids=[f"{s}-{v}" for s, v in SITES])
def site(request: Any, workdir: Path, gateway: tuple[str, Gateway]) -> Iterator[WebServer]:
    server, variant = request.param
    _, gw = gateway
    ws = start_webserver(
        server, variant, workdir, "/app/items/1", socket=gw.socket, app_socket=gw.socket
    )
    try:
        yield ws
    finally:
        ws.stop()


def client(ws: WebServer) -> httpx.Client:
    return httpx.Client(base_url=ws.base_url, timeout=30)


def test_route_and_reverse_under_root_path(site: WebServer, gateway: tuple[str, Gateway]) -> None:
    with client(site) as c:
        r = c.get("/app/items/42")
    assert r.status_code == 200, f"{r.text[:300]}\n{site.logs()}"
    info = r.json()
    assert info["item_id"] == 42
    # url_for / reverse put the mount point back: SCRIPT_NAME is /app.
    assert info["url"] == "/app/items/42"
    assert info.get("script_root", info.get("script_name")) == "/app"
    absolute = info.get("external") or info.get("absolute")
    # (Debian's nginx fastcgi_params sends HTTP_HOST $host, without the port.)
    assert absolute in (
        f"http://127.0.0.1:{site.port}/app/items/42",
        "http://127.0.0.1/app/items/42",
    )


def test_form_post_with_csrf(site: WebServer, gateway: tuple[str, Gateway]) -> None:
    field = FRAMEWORKS[gateway[0]][1]
    with client(site) as c:
        token = c.get("/app/form").json()["csrf"]
        ok = c.post("/app/form", data={field: token, "name": "café"})
        forged = c.post("/app/form", data={field: "0" * 64, "name": "x"})
    assert ok.status_code == 200, ok.text[:300]
    assert ok.json() == {"name": "café"}
    assert forged.status_code == 403


def test_5mib_upload(site: WebServer) -> None:
    # Stock nginx refuses bodies over 1 MiB (client_max_body_size) with a 413
    # of its own; the tuned config allows 100 MiB.
    stock_nginx = site.server == "nginx" and site.variant == "stock"
    data = os.urandom(900 << 10 if stock_nginx else 5 << 20)
    with client(site) as c:
        r = c.post("/app/upload", files={"file": ("blob.bin", data)})
    assert r.status_code == 200, r.text[:300]
    assert r.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_streamed_response(site: WebServer) -> None:
    with client(site) as c, c.stream("GET", "/app/stream") as r:
        body = b"".join(r.iter_bytes())
    assert r.status_code == 200
    assert body == b"".join(b"line %d\n" % i for i in range(5))


def test_cookies_both_ways(site: WebServer) -> None:
    with client(site) as c:
        r = c.get("/app/cookies")
        echoed = c.get("/app/cookies/echo")
    assert r.status_code == 200
    assert sorted(v.split(";")[0] for v in r.headers.get_list("set-cookie")) == ["a=1", "b=2"]
    assert echoed.json() == {"a": "1", "b": "2"}
