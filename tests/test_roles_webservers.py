"""The AUTHORIZER role behind real lighttpd and Apache httpd.

lighttpd (``"mode" => "authorizer"``) and Apache (``mod_authnz_fcgi``) ask
the gateway whether a request for a static file under /private/ may pass;
Apache also guards the app itself under /app/, where the authorizer's
``Variable-NAME`` headers must arrive as params. The configs are
``examples/*/authorizer.conf``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.webservers import Gateway, WebServer, start_gateways, wait_for

pytestmark = pytest.mark.timeout(180)

SERVERS = ("lighttpd", "apache2")
APPS = {"asgi": "tests.role_apps:asgi_app", "wsgi": "tests.role_apps:wsgi_app"}
SECRET = "the protected file\n"


def _start(server: str, workdir: Path, gw: Gateway) -> WebServer:
    ws = WebServer(server, "authorizer", workdir, socket=gw.socket, gateway_port=gw.port)
    docroot = ws.prefix / "docroot"
    (docroot / "private").mkdir(parents=True)
    (docroot / "private" / "secret.txt").write_text(SECRET)
    (docroot / "public.txt").write_text("public\n")
    for d in (docroot, docroot / "private"):
        d.chmod(0o755)
    ws.start()
    try:
        ws.wait_ready("/public.txt")
    except BaseException:
        ws.stop()
        raise
    return ws


@pytest.fixture
def served(request: Any, workdir: Path) -> Iterator[tuple[WebServer, Gateway]]:
    server, app, roles = request.param
    # mod_authnz_fcgi reaches authorizers over TCP only.
    gw = Gateway(APPS[app], workdir, tcp=server == "apache2", extra=("--roles", roles))
    start_gateways(gw)
    try:
        ws = _start(server, workdir, gw)
        try:
            yield ws, gw
        finally:
            ws.stop()
    finally:
        gw.stop()


@pytest.mark.parametrize(
    "served", [(s, "asgi", "responder") for s in SERVERS], indirect=True, ids=SERVERS
)
def test_without_the_role_a_protected_file_is_refused(served):
    ws, gw = served
    with httpx.Client(base_url=ws.base_url, timeout=10) as client:
        r = client.get("/private/secret.txt", headers={"X-Token": "good"})
        public = client.get("/public.txt")
    assert public.status_code == 200
    # lighttpd served the file to anyone when the answer was UNKNOWN_ROLE.
    assert r.status_code == 403, ws.logs()
    assert SECRET not in r.text
    assert wait_for(lambda: "refused with 403" in gw.log.read_text(), 5), gw.log_tail()


CASES = [(s, app, "responder,authorizer") for s in SERVERS for app in APPS]


@pytest.mark.parametrize("served", CASES, indirect=True, ids=[f"{s}-{a}" for s, a, _ in CASES])
def test_the_app_authorizes_a_static_file(served):
    ws, _ = served
    with httpx.Client(base_url=ws.base_url, timeout=10) as client:
        ok = client.get("/private/secret.txt", headers={"X-Token": "good"})
        bad = client.get("/private/secret.txt", headers={"X-Token": "bad"})
        none = client.get("/private/secret.txt")
    assert (ok.status_code, ok.text) == (200, SECRET), ws.logs()
    for r in (bad, none):
        assert r.status_code == 403
        assert SECRET not in r.text
        # The app's own refusal reaches the client (Apache keeps the body, not
        # the headers; lighttpd both).
        assert "denied by the role app" in r.text
    if ws.server == "lighttpd":
        assert bad.headers.get("x-denied-by") == "role-app"


@pytest.mark.parametrize("served", CASES, indirect=True, ids=[f"{s}-{a}" for s, a, _ in CASES])
def test_a_burst_of_authorizer_requests(served):
    ws, _ = served
    tokens = ["slow", "bad", "good", None] * 10

    def fetch(token: str | None) -> tuple[str | None, int, str]:
        headers = {"X-Token": token} if token else {}
        with httpx.Client(base_url=ws.base_url, timeout=20) as client:
            r = client.get("/private/secret.txt", headers=headers)
        return token, r.status_code, r.text

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(fetch, tokens))
    for token, status, text in results:
        if token in ("good", "slow"):
            assert (status, text) == (200, SECRET), (token, status, text[:200])
        else:
            assert status == 403 and SECRET not in text, (token, status)


WSGI_APACHE = [("apache2", "wsgi", "responder,authorizer")]


@pytest.mark.parametrize("served", WSGI_APACHE, indirect=True, ids=["apache2-wsgi"])
def test_one_app_authorizes_itself_and_gets_the_variables(served):
    ws, _ = served
    with httpx.Client(base_url=ws.base_url, timeout=10) as client:
        ok = client.get("/app/whoami", headers={"X-Token": "good"})
        bad = client.get("/app/whoami", headers={"X-Token": "bad"})
    assert ok.status_code == 200, ws.logs()
    info = json.loads(ok.text)
    assert info["role"] == "RESPONDER"
    # Variable-AUTH_USER of the authorizer's 200 is a param of the real request.
    assert info["AUTH_USER"] == "alice"
    assert info["REMOTE_USER"] == "alice"
    assert bad.status_code == 403 and "denied by the role app" in bad.text
