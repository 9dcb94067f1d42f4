"""Instructions per request of the gateway's hot path, counted by callgrind.

    .venv/bin/python benchmarks/instructions.py [raw|starlette_app|wsgi] [--src PATH]
        [--access-log off|on|json|handler] [--server fcgi-asgi|uvicorn] [--threads N]

Runs ``hotpath.py`` under ``valgrind --tool=callgrind`` twice, with 1600 and
4800 requests (one run each), and divides the difference of the instruction
counts by the difference of the request counts, so start-up and warm-up cancel
out. Instruction counts barely move with other load on the machine, unlike CPU
time: use them to compare two versions of src/ (``--src``) after a small
change. Needs Debian's valgrind; each count takes 30-60 s. ``--server uvicorn``
counts uvicorn's httptools protocol on the same request (hotpath.py): the
peer's user-space work, like for like and free of the machine's noise (run it
with a Python that has uvicorn, e.g. run.py's BENCH_VENV).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def instructions(
    app: str, requests: int, src: str | None, access: str, server: str, threads: int
) -> int:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        os.path.join(HERE, "hotpath.py"),
        app,
        "--requests",
        str(requests),
        "--runs",
        "1",
        "--access-log",
        access,
        "--server",
        server,
        "--threads",
        str(threads),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if not found:
        raise SystemExit(f"no instruction count in valgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("app", nargs="?", default="raw", choices=("raw", "starlette_app", "wsgi"))
    ap.add_argument("--src", help="another checkout's src/ to count instead of this one")
    ap.add_argument("--access-log", choices=("off", "on", "json", "handler"), default="off")
    ap.add_argument("--server", choices=("fcgi-asgi", "uvicorn"), default="fcgi-asgi")
    ap.add_argument(
        "--threads", type=int, default=16, help="wsgi: --threads (0: the app on the loop)"
    )
    args = ap.parse_args()
    low, high = 1600, 4800
    counts = [
        instructions(args.app, n, args.src, args.access_log, args.server, args.threads)
        for n in (low, high)
    ]
    per_request = (counts[1] - counts[0]) / (high - low)
    where = f"src {args.src or 'this checkout'}" if args.server == "fcgi-asgi" else "uvicorn"
    print(
        f"{args.app}, access log {args.access_log}, {where}: "
        f"{per_request:,.0f} instructions per request"
    )


if __name__ == "__main__":
    main()
