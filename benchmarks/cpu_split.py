"""A backend's CPU per request split into user and system time, behind nginx.

    python3 benchmarks/cpu_split.py [--rounds N] [--seconds S] [--scenario NAME]
        [--connections N] [--upstream-keepalive N] [BACKEND ...]

For each backend of ``run.py`` (default: fcgi-asgi-raw and uvicorn-raw,
alternating), starts it and nginx, warms up, runs wrk on a scenario of
``run.py`` (default hello; ``post`` and ``wsgi-post`` send 64 KiB bodies)
and reads the backend's /proc counters around the run: user and system CPU
per request, and how many requests it served per blocking wait of its loop
(voluntary context switches), which says how many requests a loop turn
serves under this load and so how much a per-turn cost weighs per request.
For fcgi-asgi backends (started with ``--metrics-path``) it also reads the
gateway's metrics page before and after: how many of the requests came on
connections nginx opened during the run (``--connections`` above
``--upstream-keepalive`` makes nginx open and close connections for the
surplus).
Run it from the benchmark venv's Python or any python3 (it uses only the
standard library and ``harness.py``; the backends come from ``BENCH_VENV``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as h


def counters(pids: set[int]) -> tuple[int, int, int]:
    """User ticks, system ticks and voluntary context switches of ``pids``."""
    user = system = waits = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue  # gone meanwhile
        user += int(fields[11])
        system += int(fields[12])
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                waits += int(line.split()[1])
    return user, system, waits


METRICS = "/cpu-split-metrics"


def accepted(port: int, name: str) -> int | None:
    """Connections the gateway has accepted (None for other servers)."""
    if not name.startswith("fcgi-asgi"):
        return None
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{METRICS}", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith("fcgi_asgi_connections_accepted_total "):
                return int(float(line.split()[1]))
    raise SystemExit(f"{name}: no connections_accepted on its metrics page")


def measure(
    name: str, seconds: int, port: int, scenario_name: str = "hello", connections: int = 32
) -> str:
    backend = h.backends(["--metrics-path", METRICS])[name]
    scenario = h.SCENARIOS[scenario_name]
    for sub in ("run", "logs"):
        os.makedirs(os.path.join(h.WORK, sub), exist_ok=True)
    sock = os.path.join(h.WORK, "run", f"{name}.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    log = os.path.join(h.WORK, "logs", f"{name}.log")
    be = h.start(backend.command(sock), log, cwd=h.BENCH_DIR)
    ngx = None
    try:
        if err := h.wait_unix(sock, be, 20):
            return f"{name}: did not start: {err}"
        # As run.py: the noka scenario opens a new upstream connection per request.
        ngx, _ = h.start_nginx(backend, sock, port, scenario.keepalive and backend.keepalive)
        if err := h.check_response(port, scenario):
            return f"{name}: check failed: {err}"
        script = os.path.join(h.WORK, "post.lua")  # wrk's body for a POST scenario
        h.write_post_script(script)
        warm = h.wrk_command(port, scenario, 2, connections, script)
        subprocess.run(warm, capture_output=True, timeout=40)
        pids = be.tree()
        a0 = accepted(port, name)
        u0, s0, w0 = counters(pids)
        cmd = h.wrk_command(port, scenario, seconds, connections, script)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
        u1, s1, w1 = counters(pids)
        a1 = accepted(port, name)
        res = h.parse_wrk(out.stdout)
        n = res["requests"]
        if not n:
            return f"{name}: no requests: {out.stderr.strip()[:200]}"
        if res["non2xx"] or res["errors"]:
            return f"{name}: {res['non2xx']} non-2xx responses, {res['errors']} socket errors"
        tick = 1e6 / h.CLK_TCK
        user, system = (u1 - u0) * tick / n, (s1 - s0) * tick / n
        turns = n / max(1, w1 - w0)
        fresh = "" if a0 is None or a1 is None else f"; {(a1 - a0) / n:6.1%} on new connections"
        return (
            f"{name:16} {res['rps']:8.0f} req/s  user {user:5.1f} us  sys {system:5.1f} us  "
            f"total {user + system:5.1f} us per request; {turns:5.1f} requests per blocking wait"
            f"{fresh}"
        )
    finally:
        h.stop(ngx)
        h.stop(be)
        if os.path.exists(sock):
            os.unlink(sock)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backends", nargs="*", default=["fcgi-asgi-raw", "uvicorn-raw"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--scenario", default="hello", choices=sorted(h.SCENARIOS))
    h.add_load_options(ap)
    args = ap.parse_args()
    h.apply_load_options(ap, args)
    for rnd in range(1, args.rounds + 1):
        print(f"-- round {rnd}/{args.rounds}", flush=True)
        for name in args.backends:
            print(
                measure(name, args.seconds, args.port, args.scenario, args.connections), flush=True
            )


if __name__ == "__main__":
    main()
