"""Plumbing for ``run.py``: processes, /proc accounting, nginx, wrk, checks.

Everything binds to 127.0.0.1 or to unix sockets under WORK, and every
process started here is remembered by PID and stopped by PID (SIGTERM, then
SIGKILL after a grace period). Only the standard library is used.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
WORK = os.environ.get("BENCH_WORKDIR", "/tmp/fcgi-asgi-bench")
VENV = os.environ.get("BENCH_VENV", "/tmp/fcgi-asgi-bench-venv")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# Browser-like request headers sent by wrk and by the checks, so that nginx
# forwards a typical request: 25 FastCGI params, or the same headers over HTTP.
CLIENT_HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language": "en-US,en;q=0.5",
    "Accept-Encoding": "gzip, deflate, br",
}

POST_SIZE = 64 << 10


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    method: str
    path: str
    expect: bytes
    backends: tuple[str, ...]
    keepalive: bool = True
    #: The web server in front: "nginx" or "haproxy".
    front: str = "nginx"


WSGI_BACKENDS = ("fcgi-asgi-wsgi", "fcgi-asgi-wsgi-loop", "flup-wsgi", "uwsgi-wsgi")
_BASE = (
    Scenario("hello", "GET / -> 13 bytes", "GET", "/", b"Hello, world!", ()),
    Scenario("big", "GET /big -> 1 MiB", "GET", "/big", b"x" * (1 << 20), ()),
    Scenario(
        "post", "POST /echo 64 KiB -> its length", "POST", "/echo", str(POST_SIZE).encode(), ()
    ),
)

SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "hello",
            "GET / -> 13 bytes",
            "GET",
            "/",
            b"Hello, world!",
            (
                "fcgi-asgi-raw",
                "uvicorn-raw",
                "fcgisgi-raw",
                "fcgi-asgi-starlette",
                "uvicorn-starlette",
            ),
        ),
        Scenario(
            "big",
            "GET /big -> 1 MiB",
            "GET",
            "/big",
            b"x" * (1 << 20),
            ("fcgi-asgi-raw", "uvicorn-raw", "fcgisgi-raw"),
        ),
        Scenario(
            "post",
            "POST /echo 64 KiB -> its length",
            "POST",
            "/echo",
            str(POST_SIZE).encode(),
            ("fcgi-asgi-raw", "uvicorn-raw", "fcgisgi-raw"),
        ),
        Scenario(
            "noka",
            "GET /, a new upstream connection per request (no keep-conn / keepalive)",
            "GET",
            "/",
            b"Hello, world!",
            ("fcgi-asgi-raw", "uvicorn-raw"),
            keepalive=False,
        ),
        Scenario(
            "haproxy",
            "GET / through HAProxy: FastCGI multiplexed (mpxs-conns, http-reuse aggressive), "
            "HTTP keep-alive to uvicorn",
            "GET",
            "/",
            b"Hello, world!",
            ("fcgi-asgi-raw", "uvicorn-raw"),
            front="haproxy",
        ),
        Scenario(
            "haproxy-noka",
            "GET / through HAProxy, a new backend connection per request",
            "GET",
            "/",
            b"Hello, world!",
            ("fcgi-asgi-raw", "uvicorn-raw"),
            keepalive=False,
            front="haproxy",
        ),
        Scenario(
            "defaults",
            "GET /, each server with its default access log on, and both without",
            "GET",
            "/",
            b"Hello, world!",
            ("fcgi-asgi-raw-log", "uvicorn-raw-log", "fcgi-asgi-raw", "uvicorn-raw"),
        ),
        Scenario(
            "workers",
            "GET /, fcgi-asgi --workers 2 against 1 worker",
            "GET",
            "/",
            b"Hello, world!",
            ("fcgi-asgi-raw", "fcgi-asgi-raw-w2"),
        ),
        *(
            Scenario(
                f"wsgi-{base.name}",
                f"{base.what}, a WSGI app: fcgi-asgi against flup and uWSGI",
                base.method,
                base.path,
                base.expect,
                WSGI_BACKENDS,
            )
            for base in _BASE
        ),
    )
}


@dataclass(frozen=True)
class Backend:
    name: str
    proto: str  # "fastcgi" (nginx fastcgi_pass) or "http" (nginx proxy_pass)
    argv: tuple[str, ...]  # "{sock}" is replaced by the socket path
    #: False for a server that closes its FastCGI connection after each
    #: request (uWSGI): nginx then opens one per request for it.
    keepalive: bool = True

    def command(self, sock: str) -> list[str]:
        return [a.replace("{sock}", sock) for a in self.argv]


def backends(extra_args: list[str]) -> dict[str, Backend]:
    """Every backend, run from the benchmark venv, serving ``apps.py``."""
    venv_bin = os.path.join(VENV, "bin")
    fa = os.path.join(venv_bin, "fcgi-asgi")
    # "-log" backends keep each server's default logging: its access log on,
    # log level info (the lines go to the backend's log file).
    fa_log = ["--socket", "{sock}", "--app-dir", BENCH_DIR, *extra_args]
    fa_common = [*fa_log, "--no-access-log", "--log-level", "warning"]
    uv = os.path.join(venv_bin, "uvicorn")
    uv_log = ["--uds", "{sock}", "--loop", "uvloop", "--http", "httptools", "--app-dir", BENCH_DIR]
    uv_common = [*uv_log, "--no-access-log", "--log-level", "warning"]
    fs = [os.path.join(venv_bin, "python"), os.path.join(BENCH_DIR, "fcgisgi_serve.py")]
    items = [
        Backend("fcgi-asgi-raw", "fastcgi", (fa, "apps:raw", *fa_common)),
        Backend("fcgi-asgi-starlette", "fastcgi", (fa, "apps:starlette_app", *fa_common)),
        Backend("fcgi-asgi-raw-w2", "fastcgi", (fa, "apps:raw", *fa_common, "--workers", "2")),
        Backend("uvicorn-raw", "http", (uv, "apps:raw", *uv_common)),
        Backend("fcgi-asgi-raw-log", "fastcgi", (fa, "apps:raw", *fa_log)),
        Backend("uvicorn-raw-log", "http", (uv, "apps:raw", *uv_log)),
        Backend("uvicorn-starlette", "http", (uv, "apps:starlette_app", *uv_common)),
        Backend("fcgisgi-raw", "fastcgi", (*fs, "raw", "{sock}")),
        Backend("fcgi-asgi-wsgi", "fastcgi", (fa, "apps:wsgi", "--interface", "wsgi", *fa_common)),
        # The app on the event loop, as uWSGI's one thread runs it.
        Backend(
            "fcgi-asgi-wsgi-loop",
            "fastcgi",
            (fa, "apps:wsgi", "--interface", "wsgi", "--threads", "0", *fa_common),
        ),
        Backend(
            "flup-wsgi",
            "fastcgi",
            (os.path.join(venv_bin, "python"), os.path.join(BENCH_DIR, "flup_serve.py"), "{sock}"),
        ),
        # One process, one thread, no request log: uWSGI's FastCGI closes the
        # connection after each response (no FCGI_KEEP_CONN).
        Backend(
            "uwsgi-wsgi",
            "fastcgi",
            (
                os.path.join(venv_bin, "uwsgi"),
                "--fastcgi-socket",
                "{sock}",
                "--chmod-socket=666",
                "--chdir",
                BENCH_DIR,
                "--module",
                "apps:wsgi",
                "--master",
                "--processes",
                "1",
                "--threads",
                "1",
                "--disable-logging",
                "--die-on-term",
            ),
            keepalive=False,
        ),
    ]
    return {b.name: b for b in items}


# -- processes -------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def process_tree(root: int) -> set[int]:
    """``root`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found = {root} if alive(root) else set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and alive(child):
                found.add(child)
                todo.append(child)
    return found


def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU seconds of ``pids``."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_bytes(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total


def machine_busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


@dataclass
class Proc:
    """One started process (and the children it forks), stopped by PID."""

    popen: subprocess.Popen[bytes]
    log: str
    pids_seen: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tree(self) -> set[int]:
        pids = process_tree(self.pid)
        self.pids_seen |= pids
        return pids

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the root (it stops its own workers), then SIGKILL what is left."""
        self.tree()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.popen.poll() is None:
            time.sleep(0.05)
        for pid in sorted(p for p in self.pids_seen if alive(p)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)


_running: list[Proc] = []


def start(argv: list[str], log: str, cwd: str | None = None) -> Proc:
    with open(log, "ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=cwd,
            start_new_session=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1"),
        )
    proc = Proc(popen, log)
    _running.append(proc)
    return proc


def stop(proc: Proc | None) -> None:
    if proc is not None:
        proc.stop()
        if proc in _running:
            _running.remove(proc)


def stop_all() -> None:
    """Stop every process still running (on Ctrl-C or an unexpected error)."""
    for proc in list(_running):
        stop(proc)


def wait_unix(path: str, proc: Proc, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            return f"exited with status {proc.popen.returncode}"
        if os.path.exists(path):
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(path)
                    return None
                except OSError:
                    pass
        time.sleep(0.05)
    return f"no socket at {path} after {timeout:.0f} s"


def wait_tcp(port: int, proc: Proc, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.running():
            return f"exited with status {proc.popen.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return None
        except OSError:
            time.sleep(0.05)
    return f"port {port} not open after {timeout:.0f} s"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.rstrip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


# -- HAProxy ---------------------------------------------------------------------


def haproxy_conf(port: int, backend: Backend, sock: str, keepalive: bool) -> str:
    """HAProxy in front of ``backend``: ``fcgi-app`` for FastCGI, plain HTTP for uvicorn.

    keepalive: FastCGI connections are kept and multiplexed (HTTP: kept and
    reused); otherwise each request gets a new backend connection.
    """
    if backend.proto == "fastcgi":
        if keepalive:
            # Not 100 (the gateway's default, which "option get-values" would
            # fetch): the PARAMS of the requests waiting on a connection must fit
            # in HAProxy's 16 KiB buffer, or it answers 500 (IH--), with any backend.
            app_opts = "option keep-conn\n    option mpxs-conns\n    option max-reqs 16"
        else:
            app_opts = "no option keep-conn"
        server = f"use-fcgi-app app\n    server s1 {sock} proto fcgi"
        app = f"fcgi-app app\n    docroot /\n    {app_opts}\n"
    else:
        server = f"server s1 {sock}"
        app = ""
    reuse = "http-reuse aggressive" if keepalive else "option http-server-close"
    return f"""\
global
    maxconn 4096
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    bind 127.0.0.1:{port}
    default_backend app
backend app
    {reuse}
    {server}
{app}"""


def start_haproxy(backend: Backend, sock: str, port: int, keepalive: bool) -> tuple[Proc, str]:
    """Start HAProxy (one thread, like nginx's one worker) on ``port``; returns it and its log."""
    prefix = os.path.join(WORK, "haproxy", backend.name)
    os.makedirs(prefix, exist_ok=True)
    conf = os.path.join(prefix, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(haproxy_conf(port, backend, sock, keepalive))
    log = os.path.join(prefix, "stderr.log")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(log)
    proc = start([HAPROXY, "-db", "-f", conf], log)
    if err := wait_tcp(port, proc, 10):
        stop(proc)
        raise RuntimeError(f"haproxy: {err}: {tail(log)}")
    return proc, log


def haproxy_errors(log: str) -> list[str]:
    """HAProxy's alerts (it logs nothing else here: no "log" line in its config)."""
    with contextlib.suppress(OSError), open(log, errors="replace") as f:
        return [line for line in f if "[ALERT]" in line]
    return []


# -- nginx -----------------------------------------------------------------------

# The same params for every FastCGI backend: Debian's fastcgi_params, except
# that the path goes in PATH_INFO with an empty SCRIPT_NAME (fcgisgi routes on
# SCRIPT_NAME + PATH_INFO; fcgi-asgi reads REQUEST_URI either way).
_FASTCGI_PARAMS = """\
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param CONTENT_TYPE $content_type;
            fastcgi_param CONTENT_LENGTH $content_length;
            fastcgi_param SCRIPT_NAME "";
            fastcgi_param PATH_INFO $uri;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_param DOCUMENT_URI $document_uri;
            fastcgi_param DOCUMENT_ROOT $document_root;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param REQUEST_SCHEME $scheme;
            fastcgi_param HTTPS $https if_not_empty;
            fastcgi_param GATEWAY_INTERFACE CGI/1.1;
            fastcgi_param SERVER_SOFTWARE nginx/$nginx_version;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_param REMOTE_PORT $remote_port;
            fastcgi_param SERVER_ADDR $server_addr;
            fastcgi_param SERVER_PORT $server_port;
            fastcgi_param SERVER_NAME $server_name;
            fastcgi_param HTTP_HOST $host;
"""


#: nginx's upstream ``keepalive``: the idle connections it keeps for reuse
#: (run.py --upstream-keepalive). Fewer than wrk's connections, and a fast
#: backend gets the surplus as a connection per request (RESULTS.md).
UPSTREAM_KEEPALIVE = 32


def add_load_options(ap: argparse.ArgumentParser) -> None:
    """wrk's connections and nginx's upstream keepalive, as run.py and cpu_split.py take them."""
    ap.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    ap.add_argument(
        "--upstream-keepalive",
        type=int,
        default=UPSTREAM_KEEPALIVE,
        metavar="N",
        help=f"nginx's upstream keepalive, idle connections kept (default {UPSTREAM_KEEPALIVE})",
    )


def apply_load_options(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the options of :func:`add_load_options` and set the keepalive for nginx_conf."""
    global UPSTREAM_KEEPALIVE
    if not 1 <= args.connections <= 10000 or not 1 <= args.upstream_keepalive <= 65535:
        ap.error("--connections must be 1..10000 and --upstream-keepalive 1..65535")
    UPSTREAM_KEEPALIVE = args.upstream_keepalive


def nginx_conf(
    prefix: str, port: int, backend: Backend, sock: str, keepalive: bool, buffering: bool
) -> str:
    """One config per run; only the upstream protocol differs between backends."""
    buf = "on" if buffering else "off"
    module = "fastcgi" if backend.proto == "fastcgi" else "proxy"
    pool = (
        f"        keepalive {UPSTREAM_KEEPALIVE};\n        keepalive_requests 1000000;\n"
        if keepalive
        else ""
    )
    if backend.proto == "fastcgi":
        location = "            fastcgi_pass backend;\n"
        if keepalive:
            location += "            fastcgi_keep_conn on;\n"
        location += _FASTCGI_PARAMS
    else:
        location = (
            "            proxy_pass http://backend;\n"
            "            proxy_http_version 1.1;\n"
            "            proxy_set_header Host $host;\n"
            f'            proxy_set_header Connection "{"" if keepalive else "close"}";\n'
        )
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {m}_temp_path {prefix}/{m};\n" for m in ("client_body", "proxy", "fastcgi")
    )
    return f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_max_body_size 2m;
    client_body_buffer_size 128k;
{temp}    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    {module}_buffering {buf};
    {module}_buffer_size 16k;
    {module}_buffers 16 16k;
    {module}_busy_buffers_size 32k;
    {module}_max_temp_file_size 0;
    upstream backend {{
        server unix:{sock};
{pool}    }}
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        root {BENCH_DIR};
        location / {{
{location}        }}
    }}
}}
"""


def start_nginx(
    backend: Backend, sock: str, port: int, keepalive: bool, buffering: bool = True
) -> tuple[Proc, str]:
    prefix = os.path.join(WORK, "nginx", backend.name)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(prefix, sub), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(nginx_conf(prefix, port, backend, sock, keepalive, buffering))
    errlog = os.path.join(prefix, "error.log")
    open(errlog, "w").close()
    proc = start([NGINX, "-p", prefix, "-c", conf], os.path.join(prefix, "stderr.log"))
    err = wait_tcp(port, proc, 10)
    if err:
        stop(proc)
        raise RuntimeError(f"nginx: {err}: {tail(errlog)}")
    return proc, errlog


def nginx_errors(errlog: str) -> list[str]:
    try:
        with open(errlog, errors="replace") as f:
            return [line.strip() for line in f if re.search(r"\[(error|crit|alert|emerg)\]", line)]
    except OSError:
        return []


# -- load and checks ---------------------------------------------------------------


def check_response(port: int, scenario: Scenario) -> str | None:
    """One request through nginx: None if status and body bytes are exact."""
    body = b"x" * POST_SIZE if scenario.method == "POST" else None
    headers = dict(CLIENT_HEADERS)
    if body is not None:
        headers["Content-Type"] = "application/octet-stream"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(scenario.method, scenario.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    if resp.status != 200 or data != scenario.expect:
        return f"HTTP {resp.status} with {len(data)} bytes {data[:24]!r}"
    return None


def write_post_script(path: str) -> None:
    with open(path, "w") as f:
        f.write(
            'wrk.method = "POST"\n'
            f'wrk.body = string.rep("x", {POST_SIZE})\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )


def wrk_command(
    port: int, scenario: Scenario, seconds: int, connections: int, script: str
) -> list[str]:
    argv = [WRK, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    for name, value in CLIENT_HEADERS.items():
        argv += ["-H", f"{name}: {value}"]
    if scenario.method == "POST":
        argv += ["-s", script]
    return [*argv, f"http://127.0.0.1:{port}{scenario.path}"]


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def parse_wrk(out: str) -> dict[str, Any]:
    """Requests/s, request count, bytes read, errors and latency percentiles."""
    result: dict[str, Any] = {"rps": 0.0, "requests": 0, "bytes": 0, "non2xx": 0, "errors": 0}
    if m := re.search(r"Requests/sec:\s*([\d.]+)", out):
        result["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in [\d.]+\w+, ([\d.]+)([KMGT]?B) read", out):
        result["requests"] = int(m.group(1))
        result["bytes"] = int(float(m.group(2)) * _UNITS[m.group(3)])
    if m := re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out):
        result["non2xx"] = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        result["errors"] = sum(int(x) for x in m.groups())
    for pct in ("50", "99"):
        if m := re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
            result[f"p{pct}_ms"] = float(m.group(1)) * scale
    return result
