"""--metrics-path: Prometheus metrics answered by the gateway, parsed with
prometheus_client's own text parser, in one process and summed over workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fcgi_asgi.client import FastCGIClient
from fcgi_asgi.httpx import SyncFastCGITransport
from fcgi_asgi.scoreboard import Scoreboard, WorkerStats
from tests import wsgi_apps
from tests.apps import app
from tests.conftest import Serve, connect
from tests.test_gateway import until
from tests.webservers import Gateway, WebServer, start_gateways, start_webserver, wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample by (name, sorted labels); the parser rejects a malformed page."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(f"fcgi_asgi_{name}", tuple(sorted(labels.items())))]


async def scrape(client: FastCGIClient) -> Samples:
    r = await client.request("GET", "/metrics")
    assert r.status == 200
    assert r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    return parse(r.body.decode())


async def test_counts_in_one_process(serve: Serve) -> None:
    server = await serve(app, metrics_path="/metrics")
    sent = 0
    async with await connect(server) as c:
        r = await c.request("POST", "/echo", body=b"x" * 1000)
        sent += len(r.body)
        r = await c.request("GET", "/scope")
        sent += len(r.body)
        assert (await c.request("GET", "/status", query="404")).status == 404
        assert (await c.request("GET", "/raise-before")).status == 500
        samples = await scrape(c)
    assert value(samples, "requests_total", status="2xx") == 2
    assert value(samples, "requests_total", status="4xx") == 1
    assert value(samples, "requests_total", status="5xx") == 1
    assert value(samples, "requests_total", status="none") == 0
    # The histogram holds the same four requests; the scrape itself is not counted.
    assert value(samples, "request_duration_seconds_count") == 4
    assert value(samples, "request_duration_seconds_bucket", le="+Inf") == 4
    assert 0 < value(samples, "request_duration_seconds_sum") < 60
    assert value(samples, "request_body_bytes_total") == 1000
    assert value(samples, "response_body_bytes_total") == sent  # the 500 page is the gateway's
    assert value(samples, "connections_accepted_total") == 1
    assert value(samples, "requests_in_flight") == 0
    assert value(samples, "workers") == 1
    assert value(samples, "reloads_total") == 0


async def test_limits_refusals_and_in_flight(serve: Serve) -> None:
    server = await serve(app, metrics_path="/metrics", max_concurrent_requests=2, max_connections=3)
    held = [await connect(server) for _ in range(2)]
    for c in held:
        req = await c.begin(
            {b"REQUEST_METHOD": b"GET", b"REQUEST_URI": b"/wait-disconnect", b"QUERY_STRING": b""}
        )
        await req.end_body()
        assert await req.read_stdout()  # the app runs: it has sent its first chunk
    third = await connect(server)
    refused = await connect(server)  # the fourth connection: over --max-connections
    async with asyncio.timeout(10):
        await refused.closed.wait()  # closed at once by the gateway
    r = await third.request("GET", "/scope")
    # Two requests already run: a 503 from the gateway itself (not OVERLOADED).
    assert r.status == 503 and r.protocol_status == 0
    for c in held:
        await c.close()
    await until(lambda: server.ctx is not None and not server.ctx.tasks, 500, 0.02)
    samples = await scrape(third)
    await third.close()
    await refused.close()
    assert value(samples, "requests_refused_total", reason="max_concurrent_requests") == 1
    assert value(samples, "requests_refused_total", reason="max_requests_per_connection") == 0
    assert value(samples, "connections_refused_total", reason="max_connections") == 1
    assert value(samples, "connections_accepted_total") == 4
    # The two held requests ended when their connections closed: no response status.
    assert value(samples, "requests_total", status="2xx") == 2


async def test_wsgi_threads_busy_and_waiting(serve: Serve) -> None:
    """Four slow WSGI requests on two threads: the metrics and the status page
    show both threads busy and two requests waiting, then none."""
    server = await serve(
        wsgi_apps.plain_app,
        interface="wsgi",
        threads=2,
        metrics_path="/metrics",
        status_path="/fcgi-status",
    )
    token = "metrics-threads"
    clients = [await connect(server) for _ in range(5)]
    try:
        slow = [asyncio.ensure_future(c.request("GET", "/sleep", query=token)) for c in clients[:4]]
        await until(lambda: wsgi_apps.EVENTS.get(token, {}).get("running") == 2, 200, 0.005)
        samples = await scrape(clients[4])
        status = await clients[4].request("GET", "/fcgi-status", query="json")
        text = (await clients[4].request("GET", "/fcgi-status")).body.decode()
        assert [r.status for r in await asyncio.gather(*slow)] == [200] * 4
        after = await scrape(clients[4])
    finally:
        for c in clients:
            await c.close()
    assert value(samples, "wsgi_threads") == 2
    assert value(samples, "wsgi_threads_busy") == 2
    assert value(samples, "wsgi_requests_waiting") == 2
    info = json.loads(status.body)
    assert (info["wsgi threads"], info["busy threads"]) == (2, 2)
    assert info["waiting for a thread"] == 2 and info["max busy threads"] == 2
    assert "busy threads:         2\n" in text and "waiting for a thread: 2\n" in text
    assert value(after, "wsgi_threads_busy") == value(after, "wsgi_requests_waiting") == 0
    assert value(after, "wsgi_threads_busy_max") == 2


async def test_an_asgi_app_has_no_wsgi_threads(serve: Serve) -> None:
    server = await serve(app, metrics_path="/metrics", status_path="/fcgi-status")
    async with await connect(server) as c:
        samples = await scrape(c)
        info = json.loads((await c.request("GET", "/fcgi-status", query="json")).body)
    assert value(samples, "wsgi_threads") == value(samples, "wsgi_requests_waiting") == 0
    assert "wsgi threads" not in info


def test_the_scoreboard_carries_every_field_between_processes() -> None:
    """A worker's slot read back by another process equals what it published,
    the WSGI thread gauges included."""
    stats = WorkerStats(pid=4242, started=1.5, requests_served=7, active_requests=2)
    stats.status_classes[2] = 5
    stats.duration_buckets[-1] = 3
    stats.refused[1] = 1
    stats.wsgi_threads, stats.wsgi_threads_busy = 16, 3
    stats.wsgi_threads_max_busy, stats.wsgi_waiting = 9, 4
    board = Scoreboard(2)
    with warnings.catch_warnings():  # 3.12+ warns of fork with threads; the child only writes
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # the worker: publish and leave at once
        board.publish(1, stats)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert status == 0
    assert board.read() == [stats]


# -- several workers, through nginx -------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("metrics")
    path.chmod(0o755)  # nginx's workers (nobody) reach their files here
    return path


@pytest.fixture(scope="module")
def supervised(workdir: Path) -> Iterator[tuple[Gateway, WebServer]]:
    gw = Gateway(
        "tests.apps:app",
        workdir,
        name="metrics",
        extra=("--workers", "2", "--metrics-path", "/metrics", "--status-path", "/fcgi-status"),
    )
    start_gateways(gw)
    try:
        ws = start_webserver(
            "nginx", "site", workdir, "/metrics", socket=gw.socket, app_socket=gw.socket
        )
        try:
            yield gw, ws
        finally:
            ws.stop()
    finally:
        gw.stop()


def direct(gw: Gateway) -> httpx.Client:
    assert gw.socket is not None
    return httpx.Client(transport=SyncFastCGITransport(gw.socket), base_url="http://gw")


def worker_pids(gw: Gateway) -> dict[int, int]:
    """Requests served by each worker, from the status page."""
    with direct(gw) as c:
        info = c.get("/fcgi-status?json&full").json()
    return {p["pid"]: p["requests served"] for p in info["processes"]}


def test_summed_over_workers_through_nginx(supervised: tuple[Gateway, WebServer]) -> None:
    gw, ws = supervised
    before = parse(httpx.get(f"{ws.base_url}/metrics", timeout=10).text)
    sent = 0

    def batch() -> None:
        with httpx.Client(base_url=ws.base_url, timeout=30) as c:
            for _ in range(10):
                assert c.get("/scope").status_code == 200

    # Concurrent batches until both workers have served some (bounded).
    for _ in range(20):
        threads = [threading.Thread(target=batch) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        sent += 40
        served = wait_for(lambda: len(worker_pids(gw)) == 2 and worker_pids(gw), 5)
        if served and all(n > 0 for n in served.values()):
            break
    served = worker_pids(gw)
    assert len(served) == 2 and all(n > 0 for n in served.values()), served

    def scrape_nginx() -> Samples:
        r = httpx.get(f"{ws.base_url}/metrics", timeout=10)
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse(r.text)

    # Workers publish about once a second: wait until both have.
    def caught_up() -> Samples | None:
        samples = scrape_nginx()
        done = value(samples, "requests_total", status="2xx")
        return samples if done - value(before, "requests_total", status="2xx") >= sent else None

    samples = wait_for(caught_up, 10)
    assert samples, "the metrics never counted every request"
    assert (
        value(samples, "requests_total", status="2xx")
        - value(before, "requests_total", status="2xx")
        == sent
    )
    assert value(samples, "workers") == 2
    assert value(samples, "request_duration_seconds_count") >= sent


def test_reload_and_restart_keep_counters(supervised: tuple[Gateway, WebServer]) -> None:
    gw, _ = supervised
    with direct(gw) as c:

        def metrics() -> Samples:
            return parse(c.get("/metrics").text)

        def ok_requests(samples: Samples) -> float:
            return value(samples, "requests_total", status="2xx")

        before = ok_requests(metrics())
        old = set(worker_pids(gw))
        for _ in range(5):
            assert c.get("/scope").status_code == 200
        # At once, before the workers' once-a-second publication: the old
        # workers publish their last counts as they exit.
        os.kill(gw.pid, signal.SIGHUP)
        assert wait_for(lambda: not old & set(worker_pids(gw)) and len(worker_pids(gw)) == 2, 30)
        after_reload = metrics()
        assert value(after_reload, "reloads_total") == 1
        # The old workers' counts live on in the totals: counters never go down.
        assert ok_requests(after_reload) == before + 5
        victim = next(iter(worker_pids(gw)))
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: victim not in worker_pids(gw) and len(worker_pids(gw)) == 2, 30)
        samples = metrics()
        assert value(samples, "worker_restarts_total") == 1
        assert value(samples, "workers") == 2
        assert ok_requests(samples) == before + 5
