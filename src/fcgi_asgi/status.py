"""The gateway's own pages: ``--ping-path`` and ``--status-path``.

Like php-fpm's ``ping.path`` and ``pm.status_path``: answered by the gateway
without calling the app, as plain text, or JSON with ``?json`` or an
``Accept: application/json`` header.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .scoreboard import WorkerStats

__all__ = ["render_status"]


def wants_json(scope: dict[str, Any]) -> bool:
    """``?json`` in the query, or JSON in the Accept header."""
    query = scope["query_string"]
    if query == b"json" or query.startswith(b"json&") or b"&json" in query:
        return True
    return any(
        name == b"accept" and b"application/json" in value for name, value in scope["headers"]
    )


def _wsgi_threads(workers: list[WorkerStats]) -> dict[str, int]:
    """A WSGI app's thread pool, summed over ``workers``; nothing before one started."""
    if not any(w.wsgi_threads for w in workers):
        return {}
    return {
        "wsgi threads": sum(w.wsgi_threads for w in workers),
        "busy threads": sum(w.wsgi_threads_busy for w in workers),
        "max busy threads": sum(w.wsgi_threads_max_busy for w in workers),
        "waiting for a thread": sum(w.wsgi_waiting for w in workers),
    }


def render_status(
    workers: list[WorkerStats],
    listen: str,
    scope: dict[str, Any],
    pool: dict[str, Any] | None = None,
) -> tuple[bytes, bytes]:
    """The status page as ``(content_type, body)``; ``pool`` adds the pool's fields."""
    now = time.time()
    started = min((w.started for w in workers), default=now)
    info: dict[str, Any] = {
        "pool": "fcgi-asgi",
        "listen": listen,
        "start time": int(started),
        "start since": int(now - started),
        "workers": len(workers),
        "accepted conn": sum(w.accepted_connections for w in workers),
        "requests served": sum(w.requests_served for w in workers),
        "active requests": sum(w.active_requests for w in workers),
        "max active requests": sum(w.max_active_requests for w in workers),
        "slow requests": sum(w.slow_requests for w in workers),
        **(pool or {}),
        **_wsgi_threads(workers),
    }
    full = b"full" in scope["query_string"]
    if full:
        info["processes"] = [
            {
                "pid": w.pid,
                "start since": int(now - w.started),
                "accepted conn": w.accepted_connections,
                "requests served": w.requests_served,
                "active requests": w.active_requests,
                "max active requests": w.max_active_requests,
                "slow requests": w.slow_requests,
                **_wsgi_threads([w]),
            }
            for w in workers
        ]
    if wants_json(scope):
        return b"application/json", json.dumps(info).encode()
    lines = []
    for key, value in info.items():
        if key == "processes":
            continue
        lines.append(f"{key + ':':<22}{value}")
    for proc in info.get("processes", []):
        lines.append("")
        lines.extend(f"{key + ':':<22}{value}" for key, value in proc.items())
    return b"text/plain; charset=utf-8", ("\n".join(lines) + "\n").encode()
