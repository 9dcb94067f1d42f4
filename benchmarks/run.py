#!/usr/bin/env python3
"""Benchmark fcgi-asgi against uvicorn and fcgisgi behind the same nginx.

    python3 benchmarks/run.py            # every scenario, 3 interleaved rounds (6-10 min)
    python3 benchmarks/run.py --quick    # 1 round, short runs (about 3 min)
    python3 benchmarks/run.py --scenarios hello,big --rounds 5
    python3 benchmarks/run.py --replot /tmp/fcgi-asgi-bench/results/DATE/results.json

Besides the tables it draws benchmarks/results.png: every scenario as ratios
to the peers, with the spread of rounds (--plot to put it elsewhere).

It installs what it needs (nginx-light and wrk with apt-get when missing;
uvicorn[standard], fcgisgi, starlette, matplotlib and this checkout into the
venv BENCH_VENV, default /tmp/fcgi-asgi-bench-venv), then re-runs itself from
that venv. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h

# uwsgi builds from source with gcc (a minute or two on the first install).
PEER_PACKAGES = ["uvicorn[standard]", "fcgisgi", "starlette", "matplotlib", "flup", "uwsgi"]
IN_VENV = "FCGI_ASGI_BENCH_IN_VENV"

# (label, scenario, backend, reference backend, minimum ratio of medians)
TARGETS = [
    ("hello raw", "hello", "fcgi-asgi-raw", "uvicorn-raw", 1.35),
    ("hello raw vs fcgisgi", "hello", "fcgi-asgi-raw", "fcgisgi-raw", 1.5),
    ("hello Starlette", "hello", "fcgi-asgi-starlette", "uvicorn-starlette", 1.20),
    ("1 MiB response", "big", "fcgi-asgi-raw", "uvicorn-raw", 1.0),
    ("POST 64 KiB", "post", "fcgi-asgi-raw", "uvicorn-raw", 1.10),
    ("one request per connection", "noka", "fcgi-asgi-raw", "uvicorn-raw", 1.10),
    ("hello through HAProxy, multiplexed", "haproxy", "fcgi-asgi-raw", "uvicorn-raw", 1.0),
    ("HAProxy, a connection per request", "haproxy-noka", "fcgi-asgi-raw", "uvicorn-raw", 1.0),
    ("defaults, access log on both", "defaults", "fcgi-asgi-raw-log", "uvicorn-raw-log", 1.10),
    ("access log cost", "defaults", "fcgi-asgi-raw-log", "fcgi-asgi-raw", 0.95),
    *(
        (f"WSGI {what} vs {peer}", f"wsgi-{scen}", "fcgi-asgi-wsgi", f"{peer}-wsgi", goal)
        for scen, what in (("hello", "hello"), ("big", "1 MiB response"), ("post", "POST 64 KiB"))
        for peer, goal in (("flup", 3.0), ("uwsgi", 1.0))
    ),
    *(
        (
            f"WSGI {what}, --threads 0, vs uwsgi",
            f"wsgi-{scen}",
            "fcgi-asgi-wsgi-loop",
            "uwsgi-wsgi",
            1.0,
        )
        for scen, what in (("hello", "hello"), ("big", "1 MiB response"), ("post", "POST 64 KiB"))
    ),
]
#: The hello raw backend CPU per request, at most this share of uvicorn-raw's.
CPU_SHARE_TARGET = 0.6
STREAM_BACKENDS = ("fcgi-asgi-raw", "uvicorn-raw", "fcgisgi-raw")
STREAM_GROWTH_LIMIT_MIB = 2.0


# -- setup ---------------------------------------------------------------------------


def bootstrap(args: argparse.Namespace) -> None:
    """Install nginx, wrk and the venv when missing, then re-run from the venv."""
    python = os.path.join(h.VENV, "bin", "python")
    if args.no_install:
        if not os.path.exists(python):
            sys.exit(f"--no-install: no venv at {h.VENV}")
        os.environ[IN_VENV] = "1"
        os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])
    tools = (("nginx", h.NGINX), ("wrk", h.WRK), ("haproxy", h.HAPROXY))
    missing = [c for c, path in tools if not os.path.exists(path)]
    if missing:
        print(f"installing Debian packages for: {', '.join(missing)}", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "nginx-light", "wrk", "haproxy"],
            check=True,
            env=env,
            timeout=600,
        )
        h.NGINX, h.WRK, h.HAPROXY = "/usr/sbin/nginx", "/usr/bin/wrk", "/usr/sbin/haproxy"
    if not os.path.exists(python):
        print(f"creating {h.VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", h.VENV], check=True, timeout=300)
    probe = (
        "import fcgi_asgi, uvicorn, fcgisgi, starlette, matplotlib, uvloop, httptools, flup;"
        "import os, sys; assert os.path.exists(os.path.join(sys.prefix, 'bin', 'uwsgi'));"
        "print(fcgi_asgi.__file__)"
    )
    found = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60)
    src = os.path.join(h.REPO, "src")
    if found.returncode != 0 or not found.stdout.strip().startswith(src):
        print(f"installing {', '.join(PEER_PACKAGES)} and {h.REPO} into {h.VENV}", flush=True)
        pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, *PEER_PACKAGES], check=True, timeout=900)
        subprocess.run([*pip, "-e", h.REPO], check=True, timeout=900)
    os.environ[IN_VENV] = "1"
    os.execv(python, [python, os.path.abspath(__file__), *sys.argv[1:]])


def has_workers_option() -> bool:
    fa = os.path.join(h.VENV, "bin", "fcgi-asgi")
    out = subprocess.run([fa, "--help"], capture_output=True, text=True, timeout=30)
    return "--workers" in out.stdout


def versions() -> str:
    code = (
        "import importlib.metadata as m, sys;"
        "print('python', sys.version.split()[0], *(p + '=' + m.version(p) for p in "
        "('fcgi-asgi', 'uvicorn', 'uvloop', 'httptools', 'starlette', 'fcgisgi', 'flup', "
        "'uWSGI')))"
    )
    py = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    ngx = subprocess.run([h.NGINX, "-v"], capture_output=True, text=True)
    commit = subprocess.run(
        ["git", "-C", h.REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return (
        f"{py.stdout.strip()}; {ngx.stderr.strip()}; {os.cpu_count()} CPUs; "
        f"load {os.getloadavg()[0]:.2f}; commit {commit.stdout.strip() or '?'}"
    )


# -- one measured run ------------------------------------------------------------------


def measure(
    args: argparse.Namespace, scenario: h.Scenario, backend: h.Backend, rnd: int
) -> dict[str, Any]:
    """Start backend + nginx, check, warm up, measure with wrk, check again, stop."""
    res: dict[str, Any] = {
        "scenario": scenario.name,
        "backend": backend.name,
        "round": rnd,
        "valid": False,
        "note": "",
    }
    sock = os.path.join(h.WORK, "run", f"{backend.name}.sock")
    log = os.path.join(h.WORK, "logs", f"{backend.name}.log")
    with open(log, "a") as f:
        f.write(f"\n=== {scenario.name} round {rnd} {time.strftime('%H:%M:%S')} ===\n")
    be = ngx = None
    try:
        if os.path.exists(sock):
            os.unlink(sock)
        be = h.start(backend.command(sock), log, cwd=h.BENCH_DIR)
        if err := h.wait_unix(sock, be, 20):
            res["note"] = f"backend did not start: {err}: {h.tail(log)}"
            return res
        if scenario.front == "haproxy":
            ngx, errlog = h.start_haproxy(backend, sock, args.port, scenario.keepalive)
            front_errors = h.haproxy_errors
        else:
            keepalive = scenario.keepalive and backend.keepalive
            ngx, errlog = h.start_nginx(backend, sock, args.port, keepalive)
            front_errors = h.nginx_errors
        if err := h.check_response(args.port, scenario):
            res["note"] = f"check before the run failed: {err}"
            return res
        script = os.path.join(h.WORK, "post.lua")
        if args.warmup:
            warm = h.wrk_command(args.port, scenario, args.warmup, args.connections, script)
            subprocess.run(warm, capture_output=True, timeout=args.warmup + 30)
        be_pids, ngx_pids = be.tree(), ngx.tree()
        be0, ngx0 = h.cpu_seconds(be_pids), h.cpu_seconds(ngx_pids)
        busy0 = h.machine_busy_seconds()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        cmd = h.wrk_command(args.port, scenario, args.duration, args.connections, script)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 30)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        be_cpu = h.cpu_seconds(be_pids | be.tree()) - be0
        ngx_cpu = h.cpu_seconds(ngx_pids) - ngx0
        wrk_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
        busy = h.machine_busy_seconds() - busy0
        res.update(h.parse_wrk(out.stdout))
        res["be_pct"] = 100 * be_cpu / wall
        res["ngx_pct"] = 100 * ngx_cpu / wall
        res["wrk_pct"] = 100 * wrk_cpu / wall
        res["other_pct"] = 100 * (busy - be_cpu - ngx_cpu - wrk_cpu) / wall
        if res["requests"]:
            res["cpu_us"] = 1e6 * be_cpu / res["requests"]
        problems = []
        if out.returncode != 0:
            problems.append(f"wrk exit status {out.returncode}: {out.stderr.strip()[:200]}")
        if res["non2xx"] or res["errors"]:
            problems.append(f"{res['non2xx']} non-2xx responses, {res['errors']} socket errors")
        if res["requests"]:
            # wrk counts every byte it read: each response must have carried the
            # whole body plus a head of a few hundred bytes (wrk rounds the total
            # to 3 significant digits, hence the 1% margin), plus the parts of
            # the responses still in flight when wrk stopped (one a connection:
            # much for a slow backend's 1 MiB responses).
            per = res["bytes"] / res["requests"]
            want = len(scenario.expect)
            in_flight = args.connections * (want + 1024) / res["requests"]
            if not want * 0.99 <= per <= want * 1.01 + 1024 + in_flight:
                problems.append(f"{per:.0f} bytes per response, expected about {want} + head")
        if not be.running():
            problems.append("backend died")
        if err := h.check_response(args.port, scenario):
            problems.append(f"check after the run failed: {err}")
        if errors := front_errors(errlog):
            problems.append(f"{len(errors)} {scenario.front} error lines: {errors[0][-160:]}")
        res["valid"] = res["rps"] > 0 and not problems
        res["note"] = "; ".join(problems)
        return res
    except Exception as exc:
        res["note"] = f"{type(exc).__name__}: {exc}"
        return res
    finally:
        h.stop(ngx)
        h.stop(be)
        if os.path.exists(sock):
            os.unlink(sock)


# -- the streaming probe -----------------------------------------------------------------


def stream_probe(args: argparse.Namespace, backend: h.Backend) -> dict[str, Any]:
    """GET /stream through nginx (buffering off), read at --stream-rate for
    --stream-seconds, sampling the backend's RSS; then disconnect."""
    res: dict[str, Any] = {"backend": backend.name, "valid": False, "note": ""}
    sock = os.path.join(h.WORK, "run", f"{backend.name}.sock")
    log = os.path.join(h.WORK, "logs", f"{backend.name}-stream.log")
    open(log, "w").close()
    be = ngx = None
    try:
        if os.path.exists(sock):
            os.unlink(sock)
        be = h.start(backend.command(sock), log, cwd=h.BENCH_DIR)
        if err := h.wait_unix(sock, be, 20):
            res["note"] = f"backend did not start: {err}: {h.tail(log)}"
            return res
        ngx, _ = h.start_nginx(backend, sock, args.port, True, buffering=False)
        if err := h.check_response(args.port, h.SCENARIOS["hello"]):
            res["note"] = f"check failed: {err}"
            return res
        time.sleep(0.5)
        baseline = h.rss_bytes(be.tree())
        rate = args.stream_rate * (1 << 20)
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 10)
        client.settimeout(10)
        client.connect(("127.0.0.1", args.port))
        client.sendall(b"GET /stream HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                break
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        got, bad = len(body), body.count(b"x") != len(body)
        peak, samples = baseline, []
        start = next_sample = time.monotonic()
        while not bad and (now := time.monotonic()) - start < args.stream_seconds:
            if now >= next_sample:
                rss = h.rss_bytes(be.tree())
                peak = max(peak, rss)
                samples.append(round((rss - baseline) / (1 << 20), 1))
                next_sample = now + 0.25
            allowed = int(rate * (now - start)) - got
            if allowed <= 0:
                time.sleep(0.005)
                continue
            chunk = client.recv(min(allowed, 65536))
            if not chunk:
                break
            got += len(chunk)
            bad = chunk.count(b"x") != len(chunk)
        seconds = time.monotonic() - start
        client.close()
        time.sleep(2)
        res.update(
            status=status,
            read_mib=got / (1 << 20),
            seconds=seconds,
            baseline_mib=baseline / (1 << 20),
            peak_mib=peak / (1 << 20),
            growth_mib=(peak - baseline) / (1 << 20),
            after_mib=h.rss_bytes(be.tree()) / (1 << 20),
            samples=samples,
        )
        with open(log, errors="replace") as f:
            done = [line.strip() for line in f if line.startswith("stream-done")]
        res["app"] = done[-1] if done else "no stream-done line yet"
        problems = []
        if " 200" not in status:
            problems.append(f"status line {status!r}")
        if bad:
            problems.append("body bytes were not all b'x'")
        if got < 0.8 * rate * args.stream_seconds:
            problems.append(f"read only {got / (1 << 20):.1f} MiB")
        if not be.running():
            problems.append("backend died")
        res["valid"] = not problems
        res["note"] = "; ".join(problems)
        return res
    except Exception as exc:
        res["note"] = f"{type(exc).__name__}: {exc}"
        return res
    finally:
        h.stop(ngx)
        h.stop(be)
        if os.path.exists(sock):
            os.unlink(sock)


# -- reporting ---------------------------------------------------------------------------


def medians(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key in dict.fromkeys((r["scenario"], r["backend"]) for r in results):
        runs = [r for r in results if (r["scenario"], r["backend"]) == key]
        ok = [r for r in runs if r["valid"]]
        row: dict[str, Any] = {"ok": len(ok), "runs": len(runs)}
        if ok:
            for field in ("rps", "cpu_us", "be_pct", "ngx_pct", "wrk_pct", "other_pct", "p99_ms"):
                values = [r[field] for r in ok if r.get(field) is not None]
                if values:
                    row[field] = statistics.median(values)
            row["min"] = min(r["rps"] for r in ok)
            row["max"] = max(r["rps"] for r in ok)
        out[key] = row
    return out


def paired(results: list[dict[str, Any]], scenario: str, name: str, ref: str) -> float | None:
    """Median over rounds of the same-round ratio name / ref."""
    ratios = round_ratios(results, scenario, name, ref)
    return statistics.median(ratios) if ratios else None


def reference(scenario: str, name: str) -> str:
    """The backend that ``name``'s ratios in ``scenario`` are taken against."""
    if scenario == "workers":
        return "fcgi-asgi-raw"
    if scenario.startswith("wsgi-"):
        return "uwsgi-wsgi"
    if name.endswith("-log"):
        return "uvicorn-raw-log"
    return "uvicorn-starlette" if name.endswith("starlette") else "uvicorn-raw"


def round_ratios(
    results: list[dict[str, Any]], scenario: str, name: str, ref: str, field: str = "rps"
) -> list[float]:
    """The same-round ratios of ``field`` name / ref, one per round where both runs are valid."""
    by_round: dict[int, dict[str, float]] = {}
    for r in results:
        if r["scenario"] == scenario and r["valid"] and r.get(field):
            by_round.setdefault(r["round"], {})[r["backend"]] = r[field]
    return [v[name] / v[ref] for v in by_round.values() if name in v and ref in v]


def report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    streams: list[dict[str, Any]],
    skipped: dict[str, str],
    log: Any,
) -> list[str]:
    med = medians(results)
    log("")
    log(
        f"== medians of valid runs: wrk -t1 -c{args.connections} -d{args.duration}s, "
        f"nginx keepalive {args.upstream_keepalive}, {args.rounds} round(s), interleaved =="
    )
    log(
        f"{'scenario':12s} {'backend':20s} {'req/s':>8s} {'min-max':>13s} {'ok':>5s} "
        f"{'x uvicorn':>9s} {'paired':>7s} {'CPU us/req':>10s} {'be%':>4s} {'ngx%':>4s} "
        f"{'wrk%':>4s} {'other%':>6s} {'p99 ms':>6s}"
    )
    for (scen, name), row in med.items():
        ref = reference(scen, name)
        ref_row = med.get((scen, ref), {})
        ratio = None
        if ref_row.get("rps") and row.get("rps"):
            ratio = row["rps"] / ref_row["rps"]
        pair = paired(results, scen, name, ref)

        def fmt(v: Any, spec: str) -> str:
            return format(v, spec) if v is not None else "-"

        log(
            f"{scen:12s} {name:20s} {fmt(row.get('rps'), '8.0f')} "
            f"{(fmt(row.get('min'), '.0f') + '-' + fmt(row.get('max'), '.0f')):>13s} "
            f"{row['ok']:>2d}/{row['runs']:<2d} {fmt(ratio, '9.3f')} {fmt(pair, '7.3f')} "
            f"{fmt(row.get('cpu_us'), '10.1f')} {fmt(row.get('be_pct'), '4.0f')} "
            f"{fmt(row.get('ngx_pct'), '4.0f')} {fmt(row.get('wrk_pct'), '4.0f')} "
            f"{fmt(row.get('other_pct'), '6.0f')} {fmt(row.get('p99_ms'), '6.2f')}"
        )
    log("(x uvicorn: ratio of medians to uvicorn-raw, or to uvicorn-starlette for Starlette rows,")
    log(" to uvicorn-raw-log for -log rows (access log on), to 1 worker in 'workers',")
    log(" or to uwsgi-wsgi in wsgi-* scenarios;")
    log(" paired: median of same-round ratios)")

    if streams:
        log("")
        log(
            f"== streaming 200 MiB, client reading {args.stream_rate} MiB/s for "
            f"{args.stream_seconds} s through nginx (buffering off) =="
        )
        log(f"{'backend':20s} {'base MiB':>8s} {'peak MiB':>8s} {'growth':>7s} {'read MiB':>8s}")
        for s in streams:
            if s["valid"]:
                log(
                    f"{s['backend']:20s} {s['baseline_mib']:8.1f} {s['peak_mib']:8.1f} "
                    f"{s['growth_mib']:7.1f} {s['read_mib']:8.1f}  app: {s['app']}"
                )
            else:
                log(f"{s['backend']:20s} INVALID: {s['note']}")

    lines = []
    for label, scen, name, ref, minimum in TARGETS:
        a, b = med.get((scen, name), {}).get("rps"), med.get((scen, ref), {}).get("rps")
        if scen in skipped:
            lines.append(f"{label}: not run ({skipped[scen]})")
        elif not any((s, n) in med for s, n in ((scen, name), (scen, ref))):
            lines.append(f"{label}: not run (scenario or backends not selected)")
        elif a and b:
            verdict = "met" if a / b >= minimum else "NOT met"
            lines.append(f"{label}: {a / b:.3f}x {ref} (target >= {minimum:.2f}): {verdict}")
        else:
            lines.append(f"{label}: no valid runs")
    a = med.get(("defaults", "fcgi-asgi-raw-log"), {}).get("cpu_us")
    b = med.get(("defaults", "fcgi-asgi-raw"), {}).get("cpu_us")
    if a and b:
        verdict = "met" if a - b <= 2.0 else "NOT met"
        lines.append(f"access log CPU per request: {a - b:+.1f} us (target <= 2 us): {verdict}")
    a = med.get(("hello", "fcgi-asgi-raw"), {}).get("cpu_us")
    b = med.get(("hello", "uvicorn-raw"), {}).get("cpu_us")
    if a and b:
        verdict = "met" if a <= CPU_SHARE_TARGET * b else "NOT met"
        lines.append(
            f"hello raw backend CPU per request: {a:.1f} us vs uvicorn-raw {b:.1f} us, "
            f"{a / b:.2f}x (target <= {CPU_SHARE_TARGET}x): {verdict}"
        )
    for s in streams:
        if s["backend"] == "fcgi-asgi-raw" and s["valid"]:
            verdict = "met" if s["growth_mib"] <= STREAM_GROWTH_LIMIT_MIB else "NOT met"
            lines.append(
                f"streaming RSS growth: {s['growth_mib']:.1f} MiB "
                f"(target <= {STREAM_GROWTH_LIMIT_MIB:.0f} MiB): {verdict}"
            )
    if "workers" in skipped:
        lines.append(f"--workers 2 scaling: not run ({skipped['workers']})")
    else:
        a = med.get(("workers", "fcgi-asgi-raw-w2"), {}).get("rps")
        b = med.get(("workers", "fcgi-asgi-raw"), {}).get("rps")
        if a and b:
            lines.append(f"--workers 2 scaling: {a / b:.3f}x 1 worker (no target on 2 cores)")
    log("")
    log("== targets ==")
    for line in lines:
        log("  " + line)
    bad = [r for r in results if not r["valid"]] + [s for s in streams if not s["valid"]]
    if bad:
        log("")
        log("invalid runs (left out of the medians):")
        for r in bad:
            where = f"{r.get('scenario', 'stream')} {r['backend']} round {r.get('round', '-')}"
            log(f"  {where}: {r['note']}")
    return lines


_RATIO_AXIS = (0.25, 4.0)


def _ratio_rows(
    ax: Any, rows: list[tuple[str, list[float], float | None]], higher_is_better: bool
) -> None:
    """Bars of median ratios, a dot per round and the target, on a log scale."""
    ys = list(range(len(rows)))[::-1]
    for y, (_label, ratios, target) in zip(ys, rows, strict=True):
        if not ratios:
            continue
        mid = statistics.median(ratios)
        if target is None:
            color = "tab:grey"
        else:
            good = mid >= target if higher_is_better else mid <= target
            color = "tab:green" if good else "tab:red"
        ax.barh(y, mid, color=color, alpha=0.5, height=0.6)
        # Rounds beyond the axis (a peer starved by other jobs) sit at its edge as arrows.
        shown = [min(max(r, _RATIO_AXIS[0]), _RATIO_AXIS[1]) for r in ratios]
        ax.hlines(y, min(shown), max(shown), color="black", linewidth=1)
        for r, x in zip(ratios, shown, strict=True):
            marker = "." if r == x else (">" if r > x else "<")
            ax.plot([x], [y], "k" + marker, markersize=5)
        if target is not None:
            ax.plot([target, target], [y - 0.35, y + 0.35], color="tab:purple", linewidth=2)
        ax.annotate(f"{mid:.2f}", (mid, y + 0.3), fontsize=7, ha="center")
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(*_RATIO_AXIS)
    ticks = [0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=7)
    ax.set_xticks([], minor=True)
    ax.set_yticks(ys)


def plot(results: list[dict[str, Any]], streams: list[dict[str, Any]], path: str) -> None:
    """One picture of every scenario: each backend's req/s, and its backend CPU per
    request, as ratios to its peer (uvicorn, or one worker): the median of same-round
    ratios as a bar, every round as a dot, the target as a tick; and streaming RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    med = medians(results)
    targets = {(scen, name, ref): minimum for _, scen, name, ref, minimum in TARGETS}
    rps_rows: list[tuple[str, list[float], float | None]] = []
    cpu_rows: list[tuple[str, list[float], float | None]] = []
    for scen, name in med:
        ref = reference(scen, name)
        ratios = round_ratios(results, scen, name, ref)
        if name == ref or not ratios:
            continue
        label = f"{scen}: {name} / {ref}"
        rps_rows.append((label, ratios, targets.get((scen, name, ref))))
        cpu_target = CPU_SHARE_TARGET if (scen, name) == ("hello", "fcgi-asgi-raw") else None
        cpu_rows.append((label, round_ratios(results, scen, name, ref, "cpu_us"), cpu_target))
    ok = [s for s in streams if s["valid"]]
    fig, axes = plt.subplots(
        1,
        3 if ok else 2,
        figsize=(13 if ok else 11, max(3.0, 1.4 + 0.34 * len(rps_rows))),
        squeeze=False,
        gridspec_kw={"width_ratios": [3, 2, 1] if ok else [3, 2]},
    )
    ax = axes[0][0]
    _ratio_rows(ax, rps_rows, higher_is_better=True)
    ax.set_yticklabels([r[0] for r in rps_rows], fontsize=8)
    ax.set_title("req/s, ratio to the peer (higher is better)", fontsize=9)
    ax = axes[0][1]
    _ratio_rows(ax, cpu_rows, higher_is_better=False)
    ax.set_yticklabels([])
    ax.set_title("backend CPU per request, ratio (lower is better)", fontsize=9)
    if ok:
        ax = axes[0][2]
        bars = ax.bar(range(len(ok)), [s["growth_mib"] for s in ok], color="tab:blue")
        ax.bar_label(bars, fmt="%.1f")
        ax.set_xticks(range(len(ok)))
        ax.set_xticklabels([s["backend"] for s in ok], rotation=40, ha="right", fontsize=8)
        ax.set_title("stream: RSS growth (MiB)", fontsize=9)
    rounds = len({r["round"] for r in results})
    other = statistics.median([r["other_pct"] for r in results if r.get("other_pct") is not None])
    fig.suptitle(
        f"fcgi-asgi against its peers behind nginx, one run of {rounds} interleaved round(s), "
        f"other jobs using {other:.0f}% CPU (median)\n"
        "bar: median of same-round ratios, dots: rounds, purple: target",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenarios",
        default="hello,big,post,noka,defaults,workers,stream,wsgi-hello,wsgi-big,wsgi-post",
        help="comma list of hello,big,post,noka,defaults,workers,stream,haproxy,haproxy-noka,"
        "wsgi-hello,wsgi-big,wsgi-post (default: all but haproxy*)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--duration", type=int, default=5, help="seconds of wrk per run (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each run")
    h.add_load_options(ap)
    ap.add_argument("--port", type=int, default=28950, help="nginx port on 127.0.0.1")
    ap.add_argument(
        "--max-other",
        type=float,
        default=25.0,
        help="CPU%% used by other processes above which a run is redone once (default 25)",
    )
    ap.add_argument("--stream-seconds", type=float, default=10.0)
    ap.add_argument("--stream-rate", type=float, default=5.0, help="MiB/s the client reads")
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s runs, 5 s streaming")
    ap.add_argument("--no-install", action="store_true", help="use the venv as it is")
    ap.add_argument(
        "--backends", default="", help="comma list: run only these backends (default: all)"
    )
    ap.add_argument("--out", default="", help="results directory (default under BENCH_WORKDIR)")
    ap.add_argument(
        "--fcgi-asgi-args", default="", help="extra options for every fcgi-asgi backend"
    )
    ap.add_argument(
        "--plot",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.png"),
        help="where the picture goes too (default benchmarks/results.png; '' for only "
        "the results directory)",
    )
    ap.add_argument(
        "--replot",
        metavar="RESULTS_JSON",
        help="draw the picture again from a run's results.json to --plot, and stop",
    )
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup, args.stream_seconds = 1, 3, 1, 5.0
    if not 1 <= args.duration <= 120 or not 1 <= args.rounds <= 20:
        ap.error("--duration must be 1..120 and --rounds 1..20")
    h.apply_load_options(ap, args)
    return args


def _exit_on_signal(signum: int, frame: Any) -> None:
    # SIGTERM/SIGHUP end the run like Ctrl-C does: through the finally blocks
    # that stop every backend, nginx and wrk this run started.
    raise SystemExit(128 + signum)


def main() -> int:
    args = parse_args()
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        plot(saved["runs"], saved["streams"], args.plot)
        print(f"plot: {args.plot}")
        return 0
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    if not os.environ.get(IN_VENV):
        bootstrap(args)  # re-runs this script from the venv: does not return
    wanted = [s for s in args.scenarios.split(",") if s]
    for s in wanted:
        if s not in h.SCENARIOS and s != "stream":
            print(f"unknown scenario {s!r}", file=sys.stderr)
            return 2
    for sub in ("run", "logs", "nginx"):
        os.makedirs(os.path.join(h.WORK, sub), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or os.path.join(h.WORK, "results", stamp)
    os.makedirs(out_dir, exist_ok=True)
    h.write_post_script(os.path.join(h.WORK, "post.lua"))
    with open(os.path.join(out_dir, "summary.txt"), "w") as summary:
        return run_all(args, wanted, out_dir, summary)


def run_all(args: argparse.Namespace, wanted: list[str], out_dir: str, summary: Any) -> int:
    """Run every round and the streaming probe, then report; ``summary`` gets the log."""

    def log(line: str) -> None:
        print(line, flush=True)
        summary.write(line + "\n")

    log(f"# benchmarks/run.py {' '.join(sys.argv[1:])}")
    log(f"# {time.strftime('%Y-%m-%d %H:%M:%S %z')}; {versions()}")
    if not h.port_free(args.port):
        log(f"port {args.port} is in use; choose another with --port")
        return 2

    all_backends = h.backends(args.fcgi_asgi_args.split())
    skipped: dict[str, str] = {}
    if "workers" in wanted and not has_workers_option():
        skipped["workers"] = "fcgi-asgi has no --workers option in this checkout"
        log(f"SKIP workers: {skipped['workers']}")
    scenarios = [h.SCENARIOS[s] for s in wanted if s in h.SCENARIOS and s not in skipped]

    only = {b for b in args.backends.split(",") if b}
    results: list[dict[str, Any]] = []
    try:
        for rnd in range(1, args.rounds + 1):
            log(f"-- round {rnd}/{args.rounds}")
            for scenario in scenarios:
                order = [b for b in scenario.backends if not only or b in only]
                if not order:
                    continue
                k = (rnd - 1) % len(order)  # rotate so no backend always goes first
                for name in order[k:] + order[:k]:
                    for attempt in range(2):
                        r = measure(args, scenario, all_backends[name], rnd)
                        noisy = r.get("other_pct", 0) > args.max_other
                        if r["valid"] and noisy and attempt == 0:
                            log(
                                f"   {scenario.name:8s} {name:20s} other processes used "
                                f"{r['other_pct']:.0f}% CPU: redoing in 3 s"
                            )
                            time.sleep(3)
                            continue
                        break
                    r["noisy"] = noisy
                    results.append(r)
                    log(
                        f"   {scenario.name:8s} {name:20s} {r.get('rps', 0):8.0f} req/s  "
                        f"CPU {r.get('cpu_us', 0):5.1f} us/req  be {r.get('be_pct', 0):3.0f}% "
                        f"ngx {r.get('ngx_pct', 0):3.0f}% other {r.get('other_pct', 0):3.0f}%  "
                        f"{'ok' if r['valid'] else 'INVALID: ' + r['note']}"
                    )
                    time.sleep(0.5)
        streams = []
        if "stream" in wanted:
            log("-- streaming")
            for name in [b for b in STREAM_BACKENDS if not only or b in only]:
                s = stream_probe(args, all_backends[name])
                streams.append(s)
                if s["valid"]:
                    log(
                        f"   stream   {name:20s} RSS +{s['growth_mib']:.1f} MiB "
                        f"(samples {s['samples']}); {s['app']}"
                    )
                else:
                    log(f"   stream   {name:20s} INVALID: {s['note']}")
    finally:
        h.stop_all()

    report(args, results, streams, skipped, log)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"argv": sys.argv[1:], "runs": results, "streams": streams}, f, indent=1)
    png = os.path.join(out_dir, "plot.png")
    try:
        plot(results, streams, png)
        if args.plot:
            shutil.copyfile(png, args.plot)
        log(f"\nplot: {png}" + (f", copied to {args.plot}" if args.plot else ""))
    except Exception as exc:  # the numbers above stand without the picture
        log(f"\nno plot: {type(exc).__name__}: {exc}")
    log(f"results: {out_dir}/summary.txt, results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
