"""The dynamic pool's policy, a pure function of what each worker is doing."""

from __future__ import annotations

import pytest

from fcgi_asgi.config import Config, ConfigError
from fcgi_asgi.pool import PoolDecision, PoolSettings, PoolWatch, WorkerLoad, decide
from fcgi_asgi.scoreboard import WorkerStats

POOL = PoolSettings(minimum=2, maximum=6, min_spare=1, max_spare=6, idle_timeout=10)
ONDEMAND = PoolSettings(minimum=0, maximum=4, min_spare=1, max_spare=4, idle_timeout=10)


def busy(pid: int) -> WorkerLoad:
    return WorkerLoad(pid, busy=True, idle_for=0)


def idle(pid: int, seconds: float = 0, ready: bool = True) -> WorkerLoad:
    return WorkerLoad(pid, busy=False, idle_for=seconds, ready=ready)


@pytest.mark.parametrize(
    ("settings", "workers", "expected"),
    [
        # Below the minimum (at start, or after a crash): back to it.
        (POOL, [busy(1)], PoolDecision(start=1)),
        # Every worker busy: one more, to have one spare.
        (POOL, [busy(1), busy(2)], PoolDecision(start=1)),
        # A starting worker counts as the spare: no second one yet.
        (POOL, [busy(1), busy(2), idle(3, ready=False)], PoolDecision()),
        # A burst (all busy): half the pool more at a time, within the maximum.
        (PoolSettings(1, 16, 1, 16, 10), [busy(i) for i in range(8)], PoolDecision(start=4)),
        (PoolSettings(1, 10, 1, 10, 10), [busy(i) for i in range(8)], PoolDecision(start=2)),
        # Never beyond the maximum.
        (POOL, [busy(i) for i in range(6)], PoolDecision()),
        # More spares wanted: as many as are missing, within the maximum.
        (
            PoolSettings(2, 6, 3, 6, 10),
            [busy(1), busy(2), busy(3), busy(4)],
            PoolDecision(start=2),
        ),
        # Idle, but not for long: kept.
        (POOL, [busy(1), idle(2, 3), idle(3, 9)], PoolDecision()),
        # Idle past the timeout: stopped, longest idle first, keeping one spare...
        (POOL, [busy(1), idle(2, 11), idle(3, 30), idle(4, 1)], PoolDecision(stop=(3, 2))),
        # ... and never below the minimum.
        (POOL, [idle(1, 60), idle(2, 50), idle(3, 40)], PoolDecision(stop=(1,))),
        (POOL, [idle(1, 60), idle(2, 50)], PoolDecision()),
        # On demand (minimum 0): no worker, nothing to start until a connection
        # waits (the supervisor sees it); with no request running, no spare is
        # kept and every worker idle past the timeout goes...
        (ONDEMAND, [], PoolDecision()),
        (ONDEMAND, [idle(1, 11)], PoolDecision(stop=(1,))),
        (ONDEMAND, [idle(1, 30), idle(2, 11), idle(3, 2)], PoolDecision(stop=(1, 2))),
        # ... but under load spares are kept as usual, and all busy still grows.
        (ONDEMAND, [busy(1), idle(2, 30)], PoolDecision()),
        (ONDEMAND, [busy(1)], PoolDecision(start=1)),
        # More idle than max_spare: the surplus goes at once, timed out or not.
        (
            PoolSettings(1, 6, 1, 2, 10),
            [busy(1), idle(2, 1), idle(3, 2), idle(4, 3), idle(5, 0)],
            PoolDecision(stop=(4, 3)),
        ),
    ],
)
def test_decide(settings, workers, expected):
    assert decide(settings, workers) == expected


def test_watch_counts_idle_time_from_the_last_request_seen():
    watch = PoolWatch()
    stats = WorkerStats(pid=7, requests_served=3)
    assert watch.observe(100.0, [(7, True)], [stats]) == [WorkerLoad(7, False, 0.0)]
    # No request since: idle for the time that passed.
    assert watch.observe(105.0, [(7, True)], [stats]) == [WorkerLoad(7, False, 5.0)]
    # It served requests in between (none running now): idle from now.
    stats.requests_served = 4
    assert watch.observe(106.0, [(7, True)], [stats]) == [WorkerLoad(7, False, 0.0)]
    stats.active_requests = 1
    assert watch.observe(120.0, [(7, True)], [stats]) == [WorkerLoad(7, True, 0.0)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers_min": 2}, "workers_min= needs workers_max="),
        ({"workers_min": 0}, "workers_min= needs workers_max="),
        ({"workers": 0}, "workers= must be a positive integer"),
        ({"workers_min": -1, "workers_max": 2}, "workers_max= must be at least workers_min="),
        ({"workers_min": 3, "workers_max": 2}, "workers_max= must be at least workers_min="),
        ({"workers_max": 2, "min_spare_workers": 0}, "min_spare_workers= must be a positive"),
        (
            {"workers_max": 4, "min_spare_workers": 2, "max_spare_workers": 1},
            "max_spare_workers= must be at least min_spare_workers=",
        ),
        ({"workers_max": 2, "worker_idle_timeout": 0}, "worker_idle_timeout= must be more"),
    ],
)
def test_pool_option_errors(options, message):
    # The API names options as keywords; the command line names them --like-this.
    with pytest.raises(ConfigError, match=message):
        Config(app="x:y", **options)


def test_workers_start_within_the_pool():
    assert Config(app="x:y", workers=1, workers_min=2, workers_max=4).workers == 2
    assert Config(app="x:y", workers=9, workers_min=2, workers_max=4).workers == 4
    assert Config(app="x:y", workers_max=4).workers_min == 1
    # On demand: none at first when asked (the command line's default with
    # --workers-min 0), or one that goes once idle.
    assert Config(app="x:y", workers=0, workers_min=0, workers_max=4).workers == 0
    assert Config(app="x:y", workers_min=0, workers_max=4).workers == 1
