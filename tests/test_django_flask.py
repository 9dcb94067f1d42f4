"""Django (ASGI) and Flask (WSGI, through a2wsgi) behind real web servers.

Each framework runs in two gateway processes: one at ``/`` and one under
``/app`` with ``--root-path /app``, behind each server's tuned config. The
apps report the URL they reverse and the SCRIPT_NAME/PATH_INFO their own
request objects derived from the ASGI scope.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.webservers import (
    SERVERS,
    Gateway,
    WebServer,
    start_gateways,
    start_webserver,
    web_workdir,
)

pytestmark = pytest.mark.timeout(120)

APPS = {"django": "tests.django_site:application", "flask": "tests.flask_site:asgi_app"}


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with web_workdir("fcgi-asgi-frameworks-") as path:
        yield path


@pytest.fixture(scope="module", params=sorted(APPS))
def gateways(request: Any, workdir: Path) -> Iterator[tuple[Gateway, Gateway]]:
    app = APPS[request.param]
    root = Gateway(app, workdir, name=f"{request.param}-root")
    prefixed = Gateway(app, workdir, name=f"{request.param}-app", root_path="/app")
    try:
        start_gateways(root, prefixed)
        yield root, prefixed
    finally:
        root.stop()
        prefixed.stop()
    for gw in (root, prefixed):
        assert gw.popen is not None and gw.popen.returncode == 0, gw.log_tail()


@pytest.fixture(params=SERVERS)
def site(request: Any, workdir: Path, gateways: tuple[Gateway, Gateway]) -> Iterator[WebServer]:
    root, prefixed = gateways
    ws = start_webserver(
        request.param,
        "site",
        workdir,
        ready_path="/items/1",
        socket=root.socket,
        app_socket=prefixed.socket,
    )
    try:
        yield ws
    finally:
        ws.stop()


def test_routes_post_and_root_path(site: WebServer) -> None:
    with httpx.Client(base_url=site.base_url, timeout=30) as c:
        at_root = c.get("/items/42")
        under_prefix = c.get("/app/items/42?x=1")
        created = c.post("/app/items", json={"name": "tea", "price": 2.5})
        missing = c.get("/app/nowhere")
    assert at_root.status_code == 200, f"{at_root.text[:300]}\n{site.logs()}"
    assert at_root.json()["item_id"] == 42
    assert at_root.json()["url"] == "/items/42"
    assert at_root.json()["script_name"] == ""
    assert under_prefix.status_code == 200, under_prefix.text[:300]
    # The framework reverses URLs with the prefix and routes without it.
    assert under_prefix.json()["url"] == "/app/items/42"
    assert under_prefix.json()["script_name"] == "/app"
    assert under_prefix.json()["path_info"] == "/items/42"
    assert created.status_code == 201, created.text[:300]
    body = b'{"name":"tea","price":2.5}'
    assert created.json() == {"created": {"name": "tea", "price": 2.5}, "length": len(body)}
    assert missing.status_code == 404
