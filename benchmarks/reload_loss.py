"""Requests lost while a loaded gateway reloads or recycles its workers.

nginx in front of ``fcgi-asgi apps:raw --workers 2``, wrk driving 50% ``GET /``
and 50% ``POST /echo`` with 1-16 KiB bodies (``-t2 -c32``), while the
gateway gets ``kill -HUP`` every few seconds (``reload``) or recycles its
workers with ``--max-requests`` (``recycle``); through nginx with
``fastcgi_keep_conn on`` + ``upstream { keepalive 16; }`` (``keepconn``) and
with nginx's default of a connection per request (``perconn``). A request is
lost when nginx answers it non-2xx (502: the gateway closed the connection
it was written on), wrk sees a socket error, or a 200 has a wrong body::

    python3 benchmarks/reload_loss.py                       # this checkout, 4 runs of 30 s
    python3 benchmarks/reload_loss.py --src /path/to/other/checkout/src --duration 15

Needs nginx and wrk on PATH (``apt-get install nginx-light wrk``); runs from
the repository's venv or any Python that can import the ``--src`` checkout's
dependencies. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

LUA = r"""
-- 50% GET /, 50% POST /echo with 1-16 KiB bodies; 200s with a wrong body are counted.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  bad = 0
  posts = {}
  for k = 1, 64 do
    local n = math.random(1024, 16384)
    posts[k] = wrk.format("POST", "/echo", {["Content-Type"] = "application/octet-stream"},
                          string.rep("x", n))
  end
  get = wrk.format("GET", "/")
  i = 0
end
function request()
  i = i + 1
  if i % 2 == 0 then return get end
  return posts[math.floor(i / 2) % 64 + 1]
end
function response(status, headers, body)
  if status == 200 and body ~= "Hello, world!" then
    local n = tonumber(body)
    if n == nil or n < 1024 or n > 16384 then bad = bad + 1 end
  end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("bad") end
  io.write(string.format("bad bodies: %d\n", total))
end
"""

NGINX = """
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log error;
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    fastcgi_temp_path {prefix}/fastcgi;
    proxy_temp_path {prefix}/proxy;
    scgi_temp_path {prefix}/scgi;
    uwsgi_temp_path {prefix}/uwsgi;
    upstream gw {{
        server {upstream};
        {keepalive}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_pass gw;
            {keep_conn}
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)


def wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.1)
    raise RuntimeError("nginx/gateway did not answer 200")


def run_one(args: argparse.Namespace, setup: str, mode: str, work: Path) -> dict[str, float]:
    prefix = Path(tempfile.mkdtemp(prefix=f"{setup}-{mode}-", dir=work))
    prefix.chmod(0o755)  # nginx's worker (nobody, when started as root) spools bodies here
    if args.tcp:
        gw_port = free_port()
        where = ["--host", "127.0.0.1", "--port", str(gw_port)]
        upstream = f"127.0.0.1:{gw_port}"
    else:
        sock = f"/tmp/fcgi-asgi-loss-{os.getpid()}-{setup}-{mode}.sock"
        where = ["--socket", sock, "--socket-mode", "0666"]
        upstream = f"unix:{sock}"
    argv = [sys.executable, "-m", "fcgi_asgi", "apps:raw", "--app-dir", str(HERE), *where]
    argv += ["--workers", "2", "--no-access-log", "--log-level", "info"]
    if mode == "recycle":
        argv += ["--max-requests", str(args.max_requests), "--max-requests-jitter", "500"]
    env = {**os.environ, "PYTHONPATH": str(args.src)}
    log = prefix / "gateway.log"
    port = free_port()
    (prefix / "nginx.conf").write_text(
        NGINX.format(
            prefix=prefix,
            port=port,
            upstream=upstream,
            keepalive="keepalive 16;" if setup == "keepconn" else "",
            keep_conn="fastcgi_keep_conn on;" if setup == "keepconn" else "",
        )
    )
    (prefix / "load.lua").write_text(LUA)
    with open(log, "wb") as out:
        gw = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    nginx = subprocess.Popen(
        ["nginx", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", "stderr"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    reloads = 0
    try:
        wait_http(port)
        time.sleep(1.0)  # both workers up
        script = str(prefix / "load.lua")
        wrk = subprocess.Popen(
            [
                "wrk",
                "-t2",
                "-c32",
                f"-d{args.duration}s",
                "-s",
                script,
                f"http://127.0.0.1:{port}/",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        end = time.monotonic() + args.duration
        while mode == "reload" and time.monotonic() + args.interval < end:
            time.sleep(args.interval)
            os.kill(gw.pid, signal.SIGHUP)
            reloads += 1
        out, _ = wrk.communicate(timeout=args.duration + 60)
    finally:
        stop(nginx)
        stop(gw)
    text = log.read_text(errors="replace")
    recycles = text.count("reached its max requests")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = re.search(r"bad bodies: (\d+)", out)
    lost = int(non2xx.group(1)) if non2xx else 0
    lost += sum(map(int, errors.groups())) if errors else 0
    lost += int(bad.group(1)) if bad else 0
    events = reloads if mode == "reload" else recycles
    if args.verbose:
        print(out, text[-3000:], sep="\n")
    return {"requests": requests, "lost": lost, "events": events}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=REPO / "src", help="checkout's src to run")
    parser.add_argument("--duration", type=int, default=30, help="seconds per run")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between SIGHUPs")
    parser.add_argument("--max-requests", type=int, default=5000)
    parser.add_argument("--setups", default="keepconn,perconn")
    parser.add_argument("--modes", default="reload,recycle")
    parser.add_argument("--tcp", action="store_true", help="TCP between nginx and the gateway")
    parser.add_argument("--verbose", action="store_true", help="print wrk's output and the log")
    args = parser.parse_args()
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: apt-get install nginx-light wrk", file=sys.stderr)
            return 1
    work = Path(tempfile.mkdtemp(prefix="fcgi-asgi-loss-"))
    os.chmod(work, 0o755)  # nginx's worker runs as nobody when started as root
    print(f"src {args.src}, {'tcp' if args.tcp else 'unix'}, {args.duration} s per run")
    print(f"{'setup':9} {'mode':8} {'requests':>9} {'events':>7} {'lost':>5} {'lost/event':>10}")
    for setup in args.setups.split(","):
        for mode in args.modes.split(","):
            r = run_one(args, setup, mode, work)
            per = r["lost"] / r["events"] if r["events"] else float("nan")
            print(
                f"{setup:9} {mode:8} {r['requests']:9d} {r['events']:7d} "
                f"{r['lost']:5d} {per:10.2f}",
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
