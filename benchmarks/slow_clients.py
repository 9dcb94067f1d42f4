"""Slow clients on a multiplexed HAProxy backend: do small requests still pass?

    .venv/bin/python benchmarks/slow_clients.py                 # this checkout
    .venv/bin/python benchmarks/slow_clients.py --src /other/checkout/src --label before
    .venv/bin/python benchmarks/slow_clients.py --config split  # streams not multiplexed

Starts one gateway (``benchmarks/apps.py:raw`` on a unix socket) behind HAProxy
on ``examples/haproxy/site.conf`` (or ``split.conf``), opens ``--streams``
downloads of ``/stream`` read by really slow clients (a 4 KiB receive buffer,
``--read`` bytes every ``--pace`` seconds), and once they are held, sends
``--small`` GET ``/`` one after another, each with a 10 s timeout. Prints the
small requests' p50/p95/max and failures, the slow streams' progress, and the
gateway's warnings. HAProxy's own log (its timers, termination flags) is kept
in the work directory.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.render import render_file  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_connectable(connect: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            connect()  # type: ignore[operator]
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def http_get(port: int, target: str, timeout: float) -> tuple[int, int]:
    """One GET with Connection: close; returns (status, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        deadline = time.monotonic() + timeout
        while chunk := s.recv(65536):
            data += chunk
            if time.monotonic() > deadline:
                raise TimeoutError
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), len(body)


class SlowReader(threading.Thread):
    """GET /stream, then read ``read`` bytes every ``pace`` s from a tiny buffer."""

    def __init__(self, port: int, read: int, pace: float, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.read, self.pace, self.stop = port, read, pace, stop
        self.received = 0

    def run(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(30)
        try:
            s.connect(("127.0.0.1", self.port))
            s.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            while not self.stop.is_set():
                data = s.recv(self.read)
                if not data:
                    return
                self.received += len(data)
                time.sleep(self.pace)
        except OSError:
            return
        finally:
            s.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default=str(ROOT / "src"), help="the fcgi_asgi to run")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--config", default="site", choices=("site", "split"))
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--small", type=int, default=40)
    p.add_argument("--read", type=int, default=4096, help="bytes per slow read")
    p.add_argument("--pace", type=float, default=0.02, help="seconds between slow reads")
    p.add_argument("--hold", type=float, default=3.0, help="seconds streams run first")
    p.add_argument(
        "--gateway-args",
        default="--max-requests-per-connection 16",
        help="gateway options (default: as in site.conf)",
    )
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fcgi-asgi-slow-"))
    sock = f"/tmp/fcgi-asgi-slow-{secrets.token_hex(3)}.sock"
    sock2 = f"/tmp/fcgi-asgi-slow-{secrets.token_hex(3)}.sock"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{args.src}:{ROOT / 'benchmarks'}", "STREAM_MIB": "200"}
    procs: list[subprocess.Popen[bytes]] = []
    gw_log = work / "gateway.log"
    with open(gw_log, "ab") as gw_out, open(work / "haproxy.log", "ab") as hap_log:
        return run(args, work, (sock, sock2), port, env, procs, gw_out, hap_log)


def run(
    args: argparse.Namespace,
    work: Path,
    socks: tuple[str, str],
    port: int,
    env: dict[str, str],
    procs: list[subprocess.Popen[bytes]],
    gw_out: Any,
    hap_log: Any,
) -> int:
    """Start the gateways and HAProxy, measure, stop them; 0 when measured."""
    sock, sock2 = socks
    gw_log = work / "gateway.log"
    try:
        for path in (sock, sock2):
            argv = [sys.executable, "-m", "fcgi_asgi", "apps:raw", "--socket", path]
            argv += ["--no-access-log", "--log-level", "warning", *args.gateway_args.split()]
            procs.append(subprocess.Popen(argv, env=env, stdout=gw_out, stderr=subprocess.STDOUT))
        for path in (sock, sock2):
            wait_connectable(lambda path=path: socket.socket(socket.AF_UNIX).connect(path))
        conf = work / "haproxy.conf"
        # split.conf: small requests on the multiplexed backend, /stream on
        # one without multiplexing; site.conf: everything multiplexed.
        template = ROOT / "examples" / "haproxy" / f"{args.config}.conf"
        values = {"port": port, "socket": sock, "app_socket": sock2, "stream_socket": sock2}
        conf.write_text(render_file(template, values))
        procs.append(
            subprocess.Popen(["haproxy", "-db", "-f", str(conf)], stdout=hap_log, stderr=hap_log)
        )
        wait_connectable(lambda: socket.create_connection(("127.0.0.1", port), 1).close())
        assert http_get(port, "/", 5)[0] == 200

        stop = threading.Event()
        readers = [SlowReader(port, args.read, args.pace, stop) for _ in range(args.streams)]
        for r in readers:
            r.start()
        time.sleep(args.hold)
        held = [r.received for r in readers]
        times: list[float] = []
        failures: list[str] = []
        for _ in range(args.small):
            t0 = time.monotonic()
            try:
                status, _ = http_get(port, "/", 10)
                if status != 200:
                    failures.append(str(status))
            except OSError as exc:
                failures.append(type(exc).__name__)
            times.append(time.monotonic() - t0)
        stop.set()
        streamed = [r.received for r in readers]
        times.sort()
        p95 = times[max(0, int(len(times) * 0.95) - 1)]
        print(
            f"{args.label} ({args.config}.conf, {args.streams} slow streams, "
            f"{args.read} B every {args.pace} s): small requests p50 "
            f"{statistics.median(times):.3f} s, p95 {p95:.3f} s, max {times[-1]:.3f} s, "
            f"{len(failures)} of {len(times)} failed {failures[:5]}"
        )
        print(f"  slow streams received (KiB) after {args.hold} s: {[x >> 10 for x in held]}")
        print(f"  ... and at the end: {[x >> 10 for x in streamed]}")
        warnings = [line for line in gw_log.read_text().splitlines() if "WARNING" in line]
        print(f"  gateway warnings: {len(warnings)}", *warnings[:3], sep="\n    ")
        print(f"  logs in {work}")
        return 0
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for path in (sock, sock2):
            if os.path.exists(path):
                os.unlink(path)
        if not os.environ.get("KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
