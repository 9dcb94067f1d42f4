"""Logging through real gateway processes: only the gateway's own loggers are
configured, ``--log-config`` in each format, ``trace``, and an access log
that loses no line on SIGTERM, alone or with workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fcgi_asgi.client import FastCGIClient, Response
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(60)

APP = "tests.log_apps:app"
ACCESS_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[(\d+)\] "
    r'127\.0\.0\.1:\d+ - "GET ([^ ?]+)\S* HTTP/1\.1" 200$'
)


class Gateway:
    """A ``python -m fcgi_asgi`` process with its stdout and stderr in files."""

    def __init__(self, tmp: Path, sock: str, args: list[str], env: dict[str, str]) -> None:
        self.sock = sock
        self.out_path, self.err_path = tmp / "stdout.txt", tmp / "stderr.txt"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fcgi_asgi", APP, "--socket", sock, *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=err,
            )

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    async def get(self, path: str, query: str = "", **kw: Any) -> Response:
        """One request on its own connection, as nginx sends it."""
        async with await FastCGIClient.connect(path=self.sock) as client:
            return await asyncio.wait_for(
                client.request("GET", path, query=query, keep_conn=False, **kw), 30
            )

    async def wait_serving(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"gateway exited:\n{self.err}"
            assert time.monotonic() < deadline, f"gateway not serving:\n{self.err}"
            with contextlib.suppress(OSError):
                if (await self.get("/ready")).status == 200:
                    return
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "the gateway did not exit after SIGTERM"
            await asyncio.sleep(0.05)
        return self.proc.returncode


@pytest.fixture
async def gateway(tmp_path: Path, sock_path: str):
    started: list[Gateway] = []

    async def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> Gateway:
        tmp = tmp_path / f"gw{len(started)}"
        tmp.mkdir()
        gw = Gateway(tmp, sock_path, list(args), env or {})
        started.append(gw)
        if wait:
            await gw.wait_serving()
        return gw

    yield start
    for gw in started:
        if gw.proc.poll() is None:
            gw.proc.kill()
        gw.proc.wait(10)


# -- only the gateway's own loggers ---------------------------------------------------


@pytest.mark.parametrize("mode", ["django", "root"])
async def test_each_line_appears_once_with_an_app_that_configures_logging(gateway, mode):
    gw = await gateway(env={"FCGI_TEST_LOGGING": mode})
    for i in range(3):
        assert (await gw.get(f"/a{i}")).body == b"ok"
    assert await gw.stop() == 0
    both = gw.out + gw.err
    for i in range(3):
        assert both.count(f"app line /a{i}\n") == 1, both
        assert both.count(f'"GET /a{i} HTTP/1.1" 200') == 1, both
    assert both.count("serving on unix:") == 1, both
    assert both.count("received SIGTERM") == 1, both
    # The app's own handlers and formats still apply to its lines.
    prefix = "APP myapp" if mode == "django" else "ROOT myapp"
    assert f"{prefix} app line /a0" in gw.err
    # The access log goes to stdout, the rest to stderr, as with uvicorn.
    assert '"GET /a0 HTTP/1.1" 200' in gw.out
    assert "serving on" in gw.err and "serving on" not in gw.out


async def test_log_level_trace_shows_connections(gateway):
    gw = await gateway("--log-level", "trace")
    await gw.get("/t")
    assert await gw.stop() == 0
    assert re.search(r"\] TRACE fcgi_asgi\.error: connection from unix opened", gw.err), gw.err
    assert re.search(r"\] TRACE fcgi_asgi\.error: connection from unix closed", gw.err), gw.err


async def test_log_level_warning_hides_info(gateway):
    gw = await gateway("--log-level", "warning")
    await gw.get("/w")
    assert await gw.stop() == 0
    assert "serving on" not in gw.err
    assert '"GET /w HTTP/1.1" 200' in gw.out  # the access log has its own switch


# -- --log-config --------------------------------------------------------------------


def _dict_config(tmp: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {
            "access": {"format": "ACCESS %(message)s"},
            "error": {"format": "ERR %(levelname)s %(message)s"},
        },
        "handlers": {
            "access": {
                "class": "logging.FileHandler",
                "filename": str(tmp / "access.log"),
                "formatter": "access",
            },
            "error": {
                "class": "logging.FileHandler",
                "filename": str(tmp / "error.log"),
                "formatter": "error",
            },
        },
        "loggers": {
            "fcgi_asgi.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
            "fcgi_asgi": {"handlers": ["error"], "level": "INFO", "propagate": False},
        },
    }


def _ini_config(tmp: Path) -> str:
    return f"""\
[loggers]
keys=root,access,gateway

[handlers]
keys=access,error

[formatters]
keys=access,error

[logger_root]
handlers=

[logger_access]
qualname=fcgi_asgi.access
handlers=access
level=INFO
propagate=0

[logger_gateway]
qualname=fcgi_asgi
handlers=error
level=INFO
propagate=0

[handler_access]
class=FileHandler
args=({str(tmp / "access.log")!r},)
formatter=access

[handler_error]
class=FileHandler
args=({str(tmp / "error.log")!r},)
formatter=error

[formatter_access]
format=ACCESS %(message)s

[formatter_error]
format=ERR %(levelname)s %(message)s
"""


def _write_config(tmp: Path, kind: str) -> Path:
    if kind == "json":
        path = tmp / "logging.json"
        path.write_text(json.dumps(_dict_config(tmp)))
    elif kind == "yaml":
        import yaml

        path = tmp / "logging.yaml"
        path.write_text(yaml.safe_dump(_dict_config(tmp)))
    else:
        path = tmp / "logging.ini"
        path.write_text(_ini_config(tmp))
    return path


@pytest.mark.parametrize("kind", ["json", "yaml", "ini"])
async def test_log_config_file(gateway, tmp_path, kind):
    config = _write_config(tmp_path, kind)
    gw = await gateway("--log-config", str(config))
    for i in range(5):
        await gw.get(f"/c{i}")
    assert await gw.stop() == 0
    access = (tmp_path / "access.log").read_text().splitlines()
    # The access lines of these requests, each once, in order, in the user's format.
    ours = [line for line in access if "/c" in line]
    assert ours == [f'ACCESS 127.0.0.1:50000 - "GET /c{i} HTTP/1.1" 200' for i in range(5)]
    errors = (tmp_path / "error.log").read_text()
    assert "ERR INFO fcgi-asgi serving on unix:" in errors
    assert "ERR INFO received SIGTERM, shutting down" in errors
    # Nothing of the gateway's went to the default handlers.
    assert "GET /c0" not in gw.out + gw.err
    assert "serving on" not in gw.err


async def test_log_level_overrides_the_log_config(gateway, tmp_path):
    config = _write_config(tmp_path, "json")
    gw = await gateway("--log-config", str(config), "--log-level", "warning")
    assert await gw.stop() == 0
    assert "serving on" not in (tmp_path / "error.log").read_text()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, "no such file"),
        ("broken.json", "{nope", "JSONDecodeError"),
        ("list.json", "[1, 2]", "not a dictConfig mapping"),
        ("bad.json", '{"version": 1, "handlers": {"h": {"class": "no.Such"}}}', "handler 'h'"),
        ("bad.ini", "[loggers]\nkeys=root\n", "formatters"),
    ],
)
def test_bad_log_config_is_a_one_line_error(tmp_path, sock_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    out = subprocess.run(
        [sys.executable, "-m", "fcgi_asgi", APP, "--socket", sock_path, "--log-config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert out.stderr.startswith(f"fcgi-asgi: error: --log-config {path}: ")
    assert message in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert not os.path.exists(sock_path)


def test_yaml_log_config_without_pyyaml_names_the_fix(tmp_path, sock_path):
    path = tmp_path / "logging.yaml"
    path.write_text("version: 1\n")
    code = (
        "import sys; sys.modules['yaml'] = None; from fcgi_asgi.cli import main; "
        f"sys.exit(main([{APP!r}, '--socket', {sock_path!r}, '--log-config', {str(path)!r}]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    assert "reading YAML needs PyYAML" in out.stderr and "Traceback" not in out.stderr


# -- the access log --------------------------------------------------------------------


async def test_json_access_log_every_line_parses(gateway):
    gw = await gateway("--access-log-format", "json")
    headers = {"User-Agent": 'odd "agent" \\ é', "Host": "example.test", "Referer": "/from"}
    for i in range(4):
        await gw.get(f"/j{i}", query=f"x={i}", headers=headers)
    assert await gw.stop() == 0
    lines = gw.out.splitlines()
    records = [json.loads(line) for line in lines]  # every line, not only ours
    ours = [r for r in records if r["path"].startswith("/j")]
    assert [r["target"] for r in ours] == [f"/j{i}?x={i}" for i in range(4)]
    first = ours[0]
    assert first["status"] == 200 and first["bytes"] == 2 and first["method"] == "GET"
    assert first["user_agent"] == 'odd "agent" \\ é'
    assert first["host"] == "example.test" and first["referer"] == "/from"
    assert first["query"] == "x=0" and first["http_version"] == "1.1"
    assert first["client"] == "127.0.0.1:50000" and first["pid"] == gw.proc.pid
    assert isinstance(first["duration_ms"], float) and isinstance(first["request_id"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])


@pytest.mark.parametrize("workers", [None, 2])
async def test_sigterm_loses_no_access_line(gateway, workers):
    args = ["--timeout-graceful-shutdown", "10"]
    if workers:
        args += ["--workers", str(workers)]
    gw = await gateway(*args)
    # Requests one after another, then some still running when SIGTERM comes:
    # their lines are written during the drain, the moment before exit.
    for i in range(30):
        await gw.get(f"/seq{i}")
    running = [asyncio.ensure_future(gw.get("/sleep", query="0.5")) for _ in range(6)]
    await asyncio.sleep(0.2)
    gw.proc.send_signal(signal.SIGTERM)
    responses = await asyncio.gather(*running)
    assert all(r.status == 200 for r in responses)
    deadline = time.monotonic() + 20
    while gw.proc.poll() is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert gw.proc.returncode == 0
    lines = gw.out.splitlines()
    matches = [ACCESS_LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m]
    paths = [m.group(2) for m in matches if m]
    assert paths.count("/sleep") == 6, lines
    seq = [p for p in paths if p.startswith("/seq")]
    if workers:
        # Each worker's lines in its own order; every request exactly once.
        assert sorted(seq) == sorted(f"/seq{i}" for i in range(30))
        pids = {int(m.group(1)) for m in matches if m}
        assert gw.proc.pid not in pids  # the workers answered, not the supervisor
    else:
        assert seq == [f"/seq{i}" for i in range(30)]
        assert paths[-6:] == ["/sleep"] * 6
