"""The AUTHORIZER and FILTER roles through our own FastCGI client.

The web servers' side is in test_roles_webservers.py; here the wire
details: an authorizer request without STDIN (as Apache sends it), the
refusal when no app serves the role, the gateway's own paths never
answering an authorizer, and FILTER's DATA stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sys

import pytest

from fcgi_asgi.client import build_params
from fcgi_asgi.config import Config, ConfigError
from fcgi_asgi.protocol.records import AUTHORIZER, FILTER, UNKNOWN_ROLE
from tests import role_apps
from tests.conftest import connect

INTERFACES = {"asgi": role_apps.asgi_app, "wsgi": role_apps.wsgi_app}
BOTH = "responder,authorizer,filter"


def _params(path: str, **headers: str) -> dict[bytes, bytes]:
    return build_params("GET", path, headers=list(headers.items()))


async def test_authorizer_is_refused_403_when_no_app_serves_the_role(serve, caplog):
    server = await serve(role_apps.asgi_app)
    caplog.set_level(logging.ERROR, "fcgi_asgi.error")
    async with await connect(server) as client:
        r = await client.request(
            role=AUTHORIZER, params=_params("/private/x", x_token="good"), keep_conn=False
        )
    # END_REQUEST(UNKNOWN_ROLE) with no output lets lighttpd serve the file.
    assert r.protocol_status == 0
    assert r.status == 403
    assert b"alice" not in r.raw
    assert "refused with 403" in caplog.text and "/private/x" in caplog.text


@pytest.mark.parametrize("interface", INTERFACES)
async def test_authorizer_allows_and_refuses_without_stdin(serve, interface):
    server = await serve(INTERFACES[interface], roles=("responder", "authorizer"))
    async with await connect(server) as client:
        # No STDIN at all (Apache): the answer must not wait for one.
        ok = await client.request(role=AUTHORIZER, params=_params("/p", x_token="good"))
        bad = await client.request(role=AUTHORIZER, params=_params("/p", x_token="bad"))
        plain = await client.request("GET", "/p")
    assert ok.status == 200, ok.raw
    # Upper-cased on the wire: the web server keeps NAME's case.
    assert b"\r\nVariable-AUTH_USER: alice\r\n" in ok.raw
    assert ok.body == b""
    assert bad.status == 403
    assert bad.header("x-denied-by") == "role-app"
    assert bad.body == role_apps.DENIED_BODY
    assert json.loads(plain.body)["role"] == ("responder" if interface == "asgi" else "RESPONDER")


async def test_an_authorizer_never_gets_the_gateways_own_pages(serve):
    # A 200 "pong" to an AUTHORIZER would let the request through.
    server = await serve(role_apps.asgi_app, roles=("responder", "authorizer"), ping_path="/ping")
    async with await connect(server) as client:
        auth = await client.request(role=AUTHORIZER, params=_params("/ping", x_token="bad"))
        ping = await client.request("GET", "/ping")
    assert auth.status == 403 and auth.body == role_apps.DENIED_BODY
    assert ping.body == b"pong"


async def test_filter_is_unknown_role_unless_served(serve):
    server = await serve(role_apps.asgi_app)
    async with await connect(server) as client:
        r = await client.request(role=FILTER, params=_params("/f"), data=b"x")
    assert r.protocol_status == UNKNOWN_ROLE


@pytest.mark.parametrize("interface", INTERFACES)
@pytest.mark.parametrize("size", [0, 5, 300_000])
async def test_filter_reads_body_and_data_streams(serve, interface, size):
    server = await serve(INTERFACES[interface], roles=BOTH.split(","), read_buffer_size=64 << 10)
    body, data = os.urandom(1000), os.urandom(size)
    params = _params("/f")
    params[b"FCGI_DATA_LENGTH"] = str(size).encode()
    params[b"FCGI_DATA_LAST_MOD"] = b"1700000000"
    async with await connect(server) as client:
        r = await client.request(role=FILTER, params=params, body=body, data=data)
    assert r.status == 200, r.raw
    info = json.loads(r.body)
    assert info["body"] == hashlib.sha256(body).hexdigest()
    assert info["data"] == hashlib.sha256(data).hexdigest()
    assert info["data_read"] == size
    if interface == "asgi":
        assert (info["data_length"], info["data_last_mod"]) == (size, 1700000000)
    else:
        assert info["data_length"] == str(size)


async def test_filter_reading_data_first_drops_the_rest_of_the_body(serve):
    # Reading pauses above read_buffer_size of unread body: had the body
    # been kept, the DATA behind it would never arrive.
    server = await serve(role_apps.asgi_app, roles=("filter",), read_buffer_size=16 << 10)
    data = os.urandom(100_000)
    params = _params("/f", x_data_first="1")
    async with await connect(server) as client:
        r = await client.request(role=FILTER, params=params, body=os.urandom(500_000), data=data)
    assert r.status == 200, r.raw
    assert json.loads(r.body)["data"] == hashlib.sha256(data).hexdigest()


def test_roles_option_is_checked():
    assert Config(app="m:a", roles="authorizer, responder").roles == ("responder", "authorizer")
    with pytest.raises(
        ConfigError, match="takes roles among responder, authorizer, filter, not checker"
    ):
        Config(app="m:a", roles="responder,checker")


async def test_the_request_command_sends_every_role(serve, tmp_path):
    """``fcgi-asgi request --role``: an authorizer request without a body (its
    answer's Variable- headers shown with -i, a refusal exits 1), and a
    filter request with a file as its DATA stream and its length and mtime."""
    server = await serve(role_apps.asgi_app, roles=BOTH.split(","))

    async def cli(*args: str) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "fcgi_asgi",
            "request",
            "--socket",
            server.config.socket,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out, err

    code, out, _ = await cli("--role", "authorizer", "-H", "X-Token: good", "-i", "/private")
    assert code == 0
    assert out.startswith(b"200 ") and b"variable-auth_user: alice\n" in out.lower()
    code, out, _ = await cli("--role", "authorizer", "-H", "X-Token: bad", "/private")
    assert (code, out) == (1, role_apps.DENIED_BODY)
    page = tmp_path / "page.html"
    page.write_bytes(os.urandom(200_000))
    os.utime(page, (1_700_000_000, 1_700_000_000))
    code, out, _ = await cli("--role", "filter", "--filter-file", str(page), "/page.html")
    assert code == 0
    info = json.loads(out)
    assert info["role"] == "filter" and info["data_read"] == 200_000
    assert info["data"] == hashlib.sha256(page.read_bytes()).hexdigest()
    assert (info["data_length"], info["data_last_mod"]) == (200_000, 1_700_000_000)
    code, out, err = await cli("--role", "filter", "/page.html")
    assert code == 2 and b"--role filter and --filter-file go together" in err
    code, out, err = await cli("--role", "authorizer", "-d", "x", "/private")
    assert code == 2 and b"an authorizer request carries no body" in err
