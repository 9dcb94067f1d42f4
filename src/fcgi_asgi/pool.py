"""Dynamic worker pools (``--workers-min``/``--workers-max``), as php-fpm's
``pm = dynamic`` and ``pm = ondemand``.

The policy is a pure function, :func:`decide`, of what the scoreboard says
each worker is doing; :class:`PoolWatch` turns the scoreboard's counters into
that view (a worker is *busy* while it runs a request, *idle* since the last
time it was seen busy or serving). The supervisor asks once a second:

- fewer than ``min_spare`` idle workers (every worker busy, by default) and
  the pool below its maximum: start enough to have ``min_spare`` idle, and
  when every worker is busy at least half as many as there are;
- more than ``max_spare`` idle: stop the surplus (longest idle first);
- a worker idle ``idle_timeout`` seconds or more is stopped too, as long as
  ``min_spare`` idle workers remain;
- never fewer than ``minimum`` workers nor more than ``maximum``;
- with ``minimum`` 0 (php-fpm's ``pm = ondemand``), a pool with no request
  running keeps no spare: its workers stop once idle ``idle_timeout``, and
  with none left the supervisor starts one when a connection waits.

A worker that is starting counts as idle: it is about to be a spare, and
counting it stops a burst from starting the whole maximum at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .scoreboard import WorkerStats

if TYPE_CHECKING:
    from .config import Config

__all__ = ["PoolDecision", "PoolSettings", "PoolWatch", "WorkerLoad", "decide", "pool_status"]


@dataclass(frozen=True)
class PoolSettings:
    """The bounds and targets of a dynamic pool."""

    minimum: int
    maximum: int
    min_spare: int
    max_spare: int
    idle_timeout: float

    @classmethod
    def from_config(cls, config: Config) -> PoolSettings | None:
        """The pool of ``config``; None for a fixed number of workers."""
        if not config.workers_max:
            return None
        return cls(
            config.workers_min if config.workers_min is not None else 1,
            config.workers_max,
            config.min_spare_workers,
            config.max_spare_workers or config.workers_max,
            config.worker_idle_timeout,
        )


@dataclass(frozen=True)
class WorkerLoad:
    """What the pool policy knows of one worker."""

    pid: int
    #: Running at least one request.
    busy: bool
    #: Seconds since it was last seen busy or serving (0 when busy).
    idle_for: float
    #: Accepting connections (a starting worker is neither busy nor stoppable).
    ready: bool = True


@dataclass(frozen=True)
class PoolDecision:
    """Start ``start`` more workers; stop the workers in ``stop``."""

    start: int = 0
    stop: tuple[int, ...] = ()


def decide(settings: PoolSettings, workers: Sequence[WorkerLoad]) -> PoolDecision:
    """What the pool should do now, given every current (not retiring) worker."""
    count = len(workers)
    idle = [w for w in workers if not w.busy]
    if count < settings.minimum:
        return PoolDecision(start=settings.minimum - count)
    if not count:
        # minimum 0 (on demand): the supervisor starts one when a connection waits.
        return PoolDecision()
    if len(idle) < settings.min_spare:
        wanted = settings.min_spare - len(idle)
        if not idle:
            # Every worker busy: a burst. Grow by half the pool at a time (as
            # php-fpm doubles its spawn rate) rather than one a second.
            wanted = max(wanted, count // 2)
        return PoolDecision(start=max(0, min(wanted, settings.maximum - count)))
    stoppable = sorted((w for w in idle if w.ready), key=lambda w: -w.idle_for)
    surplus = len(idle) - settings.max_spare
    timed_out = sum(w.idle_for >= settings.idle_timeout for w in stoppable)
    # Spares are for a load that grows; with none at all, an on-demand pool
    # (minimum 0) lets every worker go once idle long enough.
    spares = settings.min_spare if settings.minimum or len(idle) < count else 0
    stop = min(
        max(surplus, min(timed_out, len(idle) - spares)),
        count - settings.minimum,
        len(stoppable),
    )
    return PoolDecision(stop=tuple(w.pid for w in stoppable[: max(stop, 0)]))


class PoolWatch:
    """Turns scoreboard counters into :class:`WorkerLoad` over time."""

    def __init__(self) -> None:
        # pid -> (requests served when last seen, when last seen busy or serving)
        self._seen: dict[int, tuple[int, float]] = {}

    def observe(
        self, now: float, workers: Iterable[tuple[int, bool]], stats: Iterable[WorkerStats]
    ) -> list[WorkerLoad]:
        """The load of each ``(pid, ready)`` worker at monotonic time ``now``."""
        by_pid = {s.pid: s for s in stats}
        seen: dict[int, tuple[int, float]] = {}
        loads = []
        for pid, ready in workers:
            s = by_pid.get(pid)
            served, last_active = self._seen.get(pid, (0, now))
            busy = s is not None and s.active_requests > 0
            if busy or (s is not None and s.requests_served != served):
                last_active = now
            seen[pid] = (s.requests_served if s is not None else served, last_active)
            loads.append(WorkerLoad(pid, busy, now - last_active, ready))
        self._seen = seen
        return loads


def pool_status(config: Config, workers: Sequence[WorkerStats]) -> dict[str, Any]:
    """The status page's view of the pool (php-fpm's field names)."""
    active = sum(w.active_requests > 0 for w in workers)
    info: dict[str, Any] = {
        "process manager": "dynamic" if config.workers_max else "static",
        "idle processes": len(workers) - active,
        "active processes": active,
        "total processes": len(workers),
    }
    if config.workers_max:
        info["min processes"] = config.workers_min
        info["max processes"] = config.workers_max
    return info
