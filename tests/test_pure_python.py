"""Without the C speedups (no compiler at install, FCGI_ASGI_NO_EXTENSIONS=1)
the gateway serves the same responses: every module's Python fallback,
RequestCorePy and ConnectionCorePy included, driven end to end over a real
unix socket in a process where importing ``fcgi_asgi._speedups`` fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)

_SCRIPT = """
import asyncio, gc, json, logging, sys
sys.modules["fcgi_asgi._speedups"] = None  # as if it were not built
from fcgi_asgi import FastCGIServer
from fcgi_asgi.client import FastCGIClient
from fcgi_asgi.config import Config
from fcgi_asgi.protocol import conn_core, core, head, records
from fcgi_asgi.protocol.request import Request
from tests import apps

class Seen(logging.Handler):
    def emit(self, record):
        problems.append(record.getMessage())

problems = []
logging.getLogger().addHandler(Seen(logging.WARNING))

async def main(sock):
    assert core.RequestCore is core.RequestCorePy and issubclass(Request, core.RequestCorePy)
    assert conn_core.ConnectionCore is conn_core.ConnectionCorePy
    assert head._c_encode_head is None and records.request_packets is None
    server = FastCGIServer(Config(app=apps.app, socket=sock, access_log=False))
    await server.start()
    try:
        client = await FastCGIClient.connect(path=sock)
        out = {}
        r = await client.request("GET", "/scope", query="a=1", headers={"X-A": "b"})
        scope = json.loads(r.body)
        out["scope"] = [r.status, scope["method"], scope["query_string"], scope["headers"][-1]]
        body = bytes(range(256)) * 400
        r = await client.request("POST", "/echo", body=body)
        out["echo"] = [r.status, r.body == body]
        r = await client.request("GET", "/stream", query="20,5000")
        out["stream"] = [r.status, len(r.body)]
        r = await client.request("HEAD", "/scope")
        out["head"] = [r.status, r.body.decode(), dict(r.headers).get("content-length", "0") != "0"]
    finally:
        await server.aclose()
    gc.collect()  # a task's unretrieved error is logged when it is collected
    out["problems"] = problems
    print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"""


def test_the_gateway_serves_without_its_c_speedups(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_SCRIPT), str(tmp_path / "s.sock")],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["scope"] == [200, "GET", "a=1", ["x-a", "b"]]
    assert out["echo"] == [200, True]
    assert out["stream"] == [200, 20 * 5000]
    assert out["head"] == [200, "", True]
    assert out["problems"] == []  # nothing logged at WARNING or above
