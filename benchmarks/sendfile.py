"""A 100 MiB file through nginx, streamed by the gateway vs offloaded to nginx.

    .venv/bin/python benchmarks/sendfile.py [--size-mib 100] [--rounds 3]

Starts two gateways (Starlette-free raw ASGI app answering with
``http.response.pathsend``): one streaming the file, one with
``--sendfile-header X-Accel-Redirect``, each behind its own nginx
(``examples/nginx/sendfile.conf``), and fetches the file through each in
interleaved rounds. Prints the median wall time per download and the
gateway's CPU seconds per download (from /proc), and their ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.webservers import Gateway, start_gateways, start_webserver, web_workdir  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with web_workdir("fcgi-asgi-sendfile-") as work:
        files = work / "files"
        files.mkdir()
        files.chmod(0o755)
        big = files / "big.bin"
        with open(big, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1 << 20))
        big.chmod(0o644)
        (files / "ready.txt").write_text("ready")
        app = "tests.sendfile_apps:asgi_app"
        mapping = f"{files}/=/protected-files/"
        gateways = {
            "streamed": Gateway(app, work, name="streamed"),
            "offloaded": Gateway(
                app,
                work,
                name="offloaded",
                extra=("--sendfile-header", "X-Accel-Redirect", "--sendfile-map", mapping),
            ),
        }
        start_gateways(*gateways.values())
        servers = {}
        try:
            for name, gw in gateways.items():
                servers[name] = start_webserver(
                    "nginx",
                    "sendfile",
                    work,
                    f"/f?{files}/ready.txt",
                    socket=gw.socket,
                    files=files,
                )
            wall: dict[str, list[float]] = {n: [] for n in gateways}
            cpu: dict[str, list[float]] = {n: [] for n in gateways}
            with httpx.Client(timeout=120) as client:
                for _ in range(args.rounds):
                    for name, gw in gateways.items():
                        url = f"{servers[name].base_url}/f?{big}"
                        cpu0, t0 = cpu_seconds(gw.pid), time.perf_counter()
                        got = 0
                        with client.stream("GET", url) as r:
                            for chunk in r.iter_raw(1 << 20):
                                got += len(chunk)
                        wall[name].append(time.perf_counter() - t0)
                        cpu[name].append(cpu_seconds(gw.pid) - cpu0)
                        assert got == args.size_mib << 20, (name, got)
        finally:
            for ws in servers.values():
                ws.stop()
            for gw in gateways.values():
                gw.stop()
    w = {n: statistics.median(v) for n, v in wall.items()}
    c = {n: statistics.median(v) for n, v in cpu.items()}
    print(f"{args.size_mib} MiB through nginx, median of {args.rounds} interleaved rounds")
    for n in gateways:
        print(f"  {n:9}: {w[n]:.3f} s per download, gateway CPU {c[n]:.3f} s")
    print(
        f"  offloaded/streamed: wall {w['offloaded'] / w['streamed']:.3f}x, "
        f"gateway CPU {c['offloaded'] / max(c['streamed'], 1e-9):.3f}x"
    )


if __name__ == "__main__":
    main()
