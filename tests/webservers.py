"""Real web servers and real gateway processes for the tests.

Every process here is an ordinary child of the test run: its own config in a
temporary directory, listening on 127.0.0.1 (free port) or a unix socket in
/tmp, waited for with a bounded poll and stopped by its PID. The web-server
configs are the files in ``examples/``, rendered with ``examples/render.py``.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from examples.render import render_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

SERVERS = ("nginx", "lighttpd", "apache2", "caddy", "h2o", "haproxy")

STARTUP_TIMEOUT = 20.0  # seconds a process gets to start answering
STOP_TIMEOUT = 10.0  # seconds it gets to exit on SIGTERM before SIGKILL


@contextlib.contextmanager
def web_workdir(prefix: str) -> Iterator[Path]:
    """A temporary directory in /tmp that web-server workers can enter.

    Not pytest's tmp_path: workers that dropped root must be able to reach
    their files, and pytest's base directory is private to root.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def socket_path(name: str) -> str:
    """A fresh unix socket path in /tmp (AF_UNIX paths are limited to 107 bytes)."""
    return f"/tmp/fcgi-asgi-{os.getpid()}-{name}-{secrets.token_hex(3)}.sock"


def config_name(server: str, variant: str) -> str:
    """The example file for ``variant`` (site, stock, tcp, ...) of ``server``."""
    return f"{variant}.Caddyfile" if server == "caddy" else f"{variant}.conf"


def unprivileged_user() -> tuple[str, str]:
    """The user and group web-server children run as when started as root."""
    for name in ("www-data", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, grp.getgrgid(pw.pw_gid).gr_name
    raise RuntimeError("no www-data or nobody user to run Apache's children as")


class Process:
    """A child process with its output in a log file, stopped by its PID."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                # Its own session: a Ctrl-C meant for pytest does not reach it,
                # and pytest stays the one that stops it.
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        if not self.alive():
            assert self.popen is not None
            raise RuntimeError(
                f"{self.name} exited with status {self.popen.returncode}:\n{self.log_tail()}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Signal the process by its PID and wait for it; SIGKILL if it lingers."""
        popen = self.popen
        if popen is None:
            return None
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, sig)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(popen.pid, signal.SIGKILL)
                popen.wait(5)
        return popen.returncode


class Gateway(Process):
    """``python -m fcgi_asgi APP`` on a unix socket or a TCP port."""

    def __init__(
        self,
        app: str,
        workdir: Path,
        *,
        name: str = "gateway",
        tcp: bool = False,
        root_path: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.socket: str | None = None if tcp else socket_path(name)
        self.port: int | None = free_port() if tcp else None
        argv = [sys.executable, "-m", "fcgi_asgi", *gateway_args(app)]
        if self.socket is not None:
            # Web-server workers run unprivileged: let them connect.
            argv += ["--socket", self.socket, "--socket-mode", "0666"]
        else:
            argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        if root_path is not None:
            argv += ["--root-path", root_path]
        argv += extra
        super().__init__(name, argv, workdir / f"{name}-{secrets.token_hex(3)}.log")

    def wait_ready(self) -> None:
        """Wait until the listener accepts connections (bounded)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            self.check_alive()
            try:
                if self.socket is not None:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(self.socket)
                else:
                    socket.create_connection(("127.0.0.1", self.port or 0), 1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not listen:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        code = super().stop(sig, timeout)
        if self.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)
        return code


def gateway_args(app: str) -> list[str]:
    """Arguments for the gateway serving ``app`` from this checkout."""
    # A short graceful shutdown: a test that failed while a request was held
    # open must not make the teardown wait 30 s.
    return [
        *(app, "--app-dir", str(ROOT), "--no-access-log", "--log-level", "warning"),
        *("--timeout-graceful-shutdown", "5"),
    ]


def start_gateways(*gateways: Gateway) -> None:
    """Start several gateways at once (Python start-up dominates), then wait for each."""
    for gw in gateways:
        gw.start()
    for gw in gateways:
        gw.wait_ready()


class WebServer(Process):
    """One web server on a rendered example config, on a free port."""

    def __init__(self, server: str, variant: str, workdir: Path, **values: Any) -> None:
        self.server = server
        self.variant = variant
        self.port = free_port()
        self.prefix = workdir / f"{server}-{variant}-{secrets.token_hex(3)}"
        self.prefix.mkdir()
        # Workers that dropped root still have to reach their files here.
        self.prefix.chmod(0o755)
        self.base_url = f"http://127.0.0.1:{self.port}"
        user, group = unprivileged_user()
        values = {
            "port": self.port,
            "prefix": self.prefix,
            "user": user,
            "group": group,
            "modules": "/usr/lib/apache2/modules",
            **values,
        }
        name = config_name(server, variant)
        self.config = self.prefix / name
        self.config.write_text(render_file(EXAMPLES / server / name, values))
        env = None
        if server == "nginx":
            argv = ["nginx", "-p", f"{self.prefix}/", "-c", str(self.config)]
            argv += ["-e", str(self.prefix / "error.log")]
            shutil.copy("/etc/nginx/fastcgi_params", self.prefix / "fastcgi_params")
        elif server == "lighttpd":
            argv = ["lighttpd", "-D", "-f", str(self.config)]
        elif server == "apache2":
            argv = ["apache2", "-f", str(self.config), "-DFOREGROUND"]
        elif server == "caddy":
            argv = ["caddy", "run", "--config", str(self.config), "--adapter", "caddyfile"]
            # Caddy keeps state (autosave.json, certificates) under these.
            env = {
                **os.environ,
                "HOME": str(self.prefix),
                "XDG_DATA_HOME": str(self.prefix / "data"),
                "XDG_CONFIG_HOME": str(self.prefix / "config"),
            }
        elif server == "h2o":
            argv = ["h2o", "-c", str(self.config)]
        elif server == "haproxy":
            # -db: foreground, no daemon; its log lines go to stdout (server.log).
            argv = ["haproxy", "-db", "-f", str(self.config)]
        else:
            raise ValueError(f"unknown web server {server!r}")
        super().__init__(
            f"{server} ({variant})", argv, self.prefix / "server.log", env=env, cwd=self.prefix
        )

    def logs(self) -> str:
        """The server's own output and error log, for failure messages."""
        parts = [self.log_tail()]
        error_log = self.prefix / "error.log"
        if error_log.exists():
            parts.append(error_log.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def wait_ready(self, path: str = "/ping") -> None:
        """Wait until ``path`` answers 200 through the server (bounded)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last = ""
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while True:
                self.check_alive()
                try:
                    r = client.get(path)
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready ({last}):\n{self.logs()}")
                time.sleep(0.05)


def start_webserver(
    server: str, variant: str, workdir: Path, ready_path: str = "/ping", **values: Any
) -> WebServer:
    """Render ``examples/<server>/<variant>``, start the server, wait until it answers."""
    ws = WebServer(server, variant, workdir, **values)
    ws.start()
    try:
        ws.wait_ready(ready_path)
    except BaseException:
        ws.stop()
        raise
    return ws


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate()`` until it returns something truthy or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
