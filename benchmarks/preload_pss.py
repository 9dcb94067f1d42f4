"""Memory shared by ``--preload``: the PSS of 4 workers with and without it.

Starts ``fcgi-asgi big_fastapi_app:app --workers 4`` (a FastAPI app with a
large import set) with and without ``--preload``, sends every worker some
requests over FastCGI, then sums the workers' proportional set size (PSS,
from ``/proc/PID/smaps_rollup``: a page shared by N processes counts 1/N in
each). Runs alternate between the two modes; the figures are medians.

    .venv/bin/python benchmarks/preload_pss.py [--rounds 2] [--workers 4]

Goal (issue 17): the workers' PSS with --preload at most 50% of without.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fcgi_asgi.client import FastCGIClient

HERE = Path(__file__).resolve().parent


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss line for {pid}")


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def exercise(sock: str, requests: int) -> None:
    """Send ``requests`` requests, 16 at a time, one connection each (as nginx does)."""

    async def one(i: int) -> None:
        async with await FastCGIClient.connect(path=sock) as client:
            r = await client.request("GET", f"/r{i % 300}/{i}", query="q=x", keep_conn=False)
            assert r.status == 200, r

    for start in range(0, requests, 16):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 16, requests))))


def measure(preload: bool, workers: int, requests: int) -> tuple[int, int]:
    """``(sum of the workers' PSS, the supervisor's PSS)`` in KiB."""
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "s.sock")
        log = open(os.path.join(tmp, "log"), "w+")  # noqa: SIM115
        argv = [sys.executable, "-m", "fcgi_asgi", "big_fastapi_app:app", "--app-dir", str(HERE)]
        argv += ["--socket", sock, "--workers", str(workers), "--no-access-log"]
        argv += ["--preload"] if preload else []
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while Path(log.name).read_text().count(" ready") < workers:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(Path(log.name).read_text())
                time.sleep(0.1)
            asyncio.run(exercise(sock, requests))
            time.sleep(0.5)
            kids = children(proc.pid)
            assert len(kids) == workers, kids
            return sum(pss_kib(pid) for pid in kids), pss_kib(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    results: dict[bool, list[tuple[int, int]]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for preload in (False, True):
            workers, supervisor = measure(preload, args.workers, args.requests)
            results[preload].append((workers, supervisor))
            mode = "--preload" if preload else "no preload"
            print(
                f"round {round_ + 1} {mode:>10}: workers {workers / 1024:7.1f} MiB PSS, "
                f"supervisor {supervisor / 1024:6.1f} MiB",
                flush=True,
            )
    lazy = statistics.median(w for w, _ in results[False])
    pre = statistics.median(w for w, _ in results[True])
    pre_total = statistics.median(w + s for w, s in results[True])
    lazy_total = statistics.median(w + s for w, s in results[False])
    print(
        f"\nmedian PSS of {args.workers} workers: {lazy / 1024:.1f} MiB without --preload, "
        f"{pre / 1024:.1f} MiB with: ratio {pre / lazy:.2f} (goal <= 0.50)"
    )
    print(
        f"with the supervisor: {lazy_total / 1024:.1f} MiB and {pre_total / 1024:.1f} MiB: "
        f"ratio {pre_total / lazy_total:.2f}"
    )


if __name__ == "__main__":
    main()
