"""The gateway's ``--metrics-path`` page: Prometheus text exposition format 0.0.4.

Every worker's counters are summed through the scoreboard, together with
those of workers that have exited (so counters never go down when a worker
is replaced) and the supervisor's own (reloads, worker restarts). Names
follow Prometheus conventions (``_total`` counters, a ``_seconds`` histogram,
``_bytes_total``), in the spirit of php-fpm_exporter's ``phpfpm_*`` metrics.
"""

from __future__ import annotations

from .scoreboard import DURATION_BUCKETS, REFUSALS, STATUS_CLASSES, SupervisorStats, WorkerStats

__all__ = ["METRICS_CONTENT_TYPE", "render_metrics"]

METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _labelled(label: str, names: tuple[str, ...], values: list[int]) -> list[tuple[str, float]]:
    return [(f'{{{label}="{name}"}}', n) for name, n in zip(names, values, strict=True)]


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Page:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, kind: str, help_text: str, samples: list[tuple[str, float]]
    ) -> None:
        """One metric family: ``samples`` are (label text with braces or "", value)."""
        # In the 0.0.4 text format a counter's HELP and TYPE name the sample, _total included.
        full = f"fcgi_asgi_{name}_total" if kind == "counter" else f"fcgi_asgi_{name}"
        self.lines.append(f"# HELP {full} {help_text}")
        self.lines.append(f"# TYPE {full} {kind}")
        self.lines.extend(f"{full}{labels} {_number(value)}" for labels, value in samples)


def render_metrics(workers: list[WorkerStats], supervisor: SupervisorStats | None) -> bytes:
    """The metrics page: live workers' counters plus those of exited ones."""
    total = WorkerStats()
    for worker in workers:
        total.add(worker)
    if supervisor is not None:
        total.add(supervisor.retired)
    page = _Page()
    page.metric(
        "start_time_seconds",
        "gauge",
        "Start time of the oldest running worker, in seconds since the epoch.",
        [("", min((w.started for w in workers), default=0.0))],
    )
    page.metric("workers", "gauge", "Worker processes running.", [("", len(workers))])
    page.metric(
        "requests",
        "counter",
        'Requests finished, by status class ("none": ended without a response).',
        [
            (f'{{status="{label}"}}', n)
            for label, n in zip(STATUS_CLASSES, total.status_classes, strict=True)
        ],
    )
    page.metric(
        "requests_in_flight",
        "gauge",
        "Requests being served now.",
        [("", sum(w.active_requests for w in workers))],
    )
    page.metric(
        "wsgi_threads",
        "gauge",
        "Threads started for a WSGI app (--threads).",
        [("", sum(w.wsgi_threads for w in workers))],
    )
    page.metric(
        "wsgi_threads_busy",
        "gauge",
        "WSGI app threads running a request now.",
        [("", sum(w.wsgi_threads_busy for w in workers))],
    )
    page.metric(
        "wsgi_threads_busy_max",
        "gauge",
        "The most WSGI app threads running requests at once, per worker since it started, summed.",
        [("", sum(w.wsgi_threads_max_busy for w in workers))],
    )
    page.metric(
        "wsgi_requests_waiting",
        "gauge",
        "Requests waiting for a free WSGI app thread now.",
        [("", sum(w.wsgi_waiting for w in workers))],
    )
    page.metric(
        "slow_requests",
        "counter",
        "Requests that took longer than --slow-request-threshold.",
        [("", total.slow_requests)],
    )
    page.lines.append(
        "# HELP fcgi_asgi_request_duration_seconds Time from BEGIN_REQUEST to the end of the "
        "request."
    )
    page.lines.append("# TYPE fcgi_asgi_request_duration_seconds histogram")
    cumulative = 0
    bounds = [_number(b) for b in DURATION_BUCKETS] + ["+Inf"]
    for le, n in zip(bounds, total.duration_buckets, strict=True):
        cumulative += n
        page.lines.append(f'fcgi_asgi_request_duration_seconds_bucket{{le="{le}"}} {cumulative}')
    page.lines.append(f"fcgi_asgi_request_duration_seconds_sum {_number(total.duration_sum)}")
    page.lines.append(f"fcgi_asgi_request_duration_seconds_count {cumulative}")
    page.metric(
        "request_body_bytes",
        "counter",
        "Request body bytes received from the web server (FCGI_STDIN).",
        [("", total.request_bytes)],
    )
    page.metric(
        "response_body_bytes",
        "counter",
        "Response body bytes the app sent.",
        [("", total.response_bytes)],
    )
    page.metric(
        "connections_accepted",
        "counter",
        "Connections accepted from web servers.",
        [("", total.accepted_connections)],
    )
    page.metric(
        "connections_refused",
        "counter",
        "Connections closed at once, by reason (--max-connections, --allow).",
        _labelled("reason", REFUSALS[:2], total.refused[:2]),
    )
    page.metric(
        "requests_refused",
        "counter",
        "Requests answered OVERLOADED, by the limit that refused them.",
        _labelled("reason", REFUSALS[2:], total.refused[2:]),
    )
    reloads = supervisor.reloads if supervisor is not None else 0
    restarts = supervisor.worker_restarts if supervisor is not None else 0
    page.metric(
        "worker_restarts",
        "counter",
        "Workers started to replace one that died or served its --max-requests.",
        [("", restarts)],
    )
    page.metric("reloads", "counter", "Reloads (SIGHUP) of the supervisor.", [("", reloads)])
    return ("\n".join(page.lines) + "\n").encode()
