"""Instructions per request of the gateway's hot path, counted by callgrind.

    .venv/bin/python benchmarks/instructions.py [raw|starlette_app|wsgi] [--src PATH]
        [--access-log off|on|json|handler] [--server fcgi-asgi|uvicorn] [--threads N]
        [--seeds N]

Runs ``hotpath.py`` under ``valgrind --tool=callgrind`` twice, with 1600 and
4800 requests (one run each), and divides the difference of the instruction
counts by the difference of the request counts, so start-up and warm-up cancel
out. Instruction counts barely move with other load on the machine, unlike CPU
time: use them to compare two versions of src/ (``--src``) after a small
change. Needs Debian's valgrind; each count takes 30-60 s.

The count moves with Python's string hashing (dict and method-cache collisions):
one request's count varied by about 600 instructions from run to run. Each
count here runs under fixed ``PYTHONHASHSEED`` values, 0 to N-1 for
``--seeds N`` (default 1), and prints their mean and range; the same seed
repeats within about 50 instructions. Compare two versions with ``--seeds 4``.
``--server uvicorn``
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
    app: str,
    requests: int,
    src: str | None,
    access: str,
    server: str,
    threads: int,
    seed: int,
    extra: list[str],
) -> int:
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = str(seed)
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
        *extra,
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
    ap.add_argument(
        "--seeds", type=int, default=1, help="count under PYTHONHASHSEED 0..N-1 (default 1)"
    )
    ap.add_argument(
        "--new-connections",
        action="store_true",
        help="each request on a new connection without keep-conn (hotpath.py's)",
    )
    args = ap.parse_args()
    extra = ["--new-connections"] if args.new_connections else []
    low, high = 1600, 4800
    results = []
    for seed in range(max(1, args.seeds)):
        counts = [
            instructions(
                args.app, n, args.src, args.access_log, args.server, args.threads, seed, extra
            )
            for n in (low, high)
        ]
        results.append((counts[1] - counts[0]) / (high - low))
    where = f"src {args.src or 'this checkout'}" if args.server == "fcgi-asgi" else "uvicorn"
    spread = f" (seeds 0-{len(results) - 1}: {min(results):,.0f}-{max(results):,.0f})"
    kind = ", a new connection each" if args.new_connections else ""
    print(
        f"{args.app}{kind}, access log {args.access_log}, {where}: "
        f"{sum(results) / len(results):,.0f} instructions per request"
        + (spread if len(results) > 1 else " (PYTHONHASHSEED=0)")
    )


if __name__ == "__main__":
    main()
