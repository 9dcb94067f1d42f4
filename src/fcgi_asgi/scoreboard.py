"""Per-worker counters in shared memory, so any worker can report on all.

The supervisor creates a :class:`Scoreboard` before forking: an anonymous
shared mapping that every child inherits. Each worker owns one slot and
publishes its counters there about once a second (never per request, to keep
the hot path free of it); the status and metrics pages read every slot.

Layout: a header with the supervisor's own counters (reloads, worker
restarts), then a *retired* slot that keeps the counters of workers that
have exited (so totals never go down when a worker is replaced), then one
slot per worker. Every slot has the same layout, :data:`_SLOT`.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field, fields

__all__ = ["DURATION_BUCKETS", "STATUS_CLASSES", "Scoreboard", "SupervisorStats", "WorkerStats"]

#: Upper bounds (seconds) of the request duration histogram's buckets; one
#: more counts the rest (+Inf). Prometheus's default buckets.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Labels of ``WorkerStats.status_classes``: index ``status // 100``; 0 is a
#: request that ended without a response (the web server went away first).
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
#: Labels of ``WorkerStats.refused``: what refused a connection or request.
REFUSALS = ("max_connections", "allow", "max_concurrent_requests", "max_requests_per_connection")
#: Indexes into ``WorkerStats.refused``.
REFUSED_MAX_CONNECTIONS, REFUSED_ALLOW, REFUSED_CONCURRENT, REFUSED_PER_CONNECTION = range(4)

# pid, started (epoch s), accepted conns, requests served, active, max active,
# slow, updated; then status classes, duration buckets (+Inf last), duration
# sum, request body bytes, response body bytes, refusals; WSGI threads:
# started, in use, most in use, requests waiting.
_SLOT = struct.Struct(
    "<qdqqqqqd"
    + "q" * len(STATUS_CLASSES)
    + "q" * (len(DURATION_BUCKETS) + 1)
    + "dqq"
    + "q" * len(REFUSALS)
    + "qqqq"
)
_HEADER = struct.Struct("<qq")  # reloads, worker restarts
_HEADER_SIZE = 64  # room to grow without moving the slots


@dataclass
class WorkerStats:
    """One worker's counters, as published."""

    pid: int = 0
    started: float = 0.0
    accepted_connections: int = 0
    requests_served: int = 0
    active_requests: int = 0
    max_active_requests: int = 0
    slow_requests: int = 0
    updated: float = 0.0
    #: Finished requests by status class (see :data:`STATUS_CLASSES`).
    status_classes: list[int] = field(default_factory=lambda: [0] * len(STATUS_CLASSES))
    #: Request durations per bucket of :data:`DURATION_BUCKETS`, not cumulative.
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    request_bytes: int = 0
    response_bytes: int = 0
    #: Refusals by reason (see :data:`REFUSALS`).
    refused: list[int] = field(default_factory=lambda: [0] * len(REFUSALS))
    #: A WSGI app's threads (``--threads``): started, running an app now,
    #: the most running at once, and requests waiting for one now.
    wsgi_threads: int = 0
    wsgi_threads_busy: int = 0
    wsgi_threads_max_busy: int = 0
    wsgi_waiting: int = 0

    def values(self) -> list[int | float]:
        """The flat field values in slot order."""
        out: list[int | float] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                out.extend(value)
            else:
                out.append(value)
        return out

    @classmethod
    def from_values(cls, values: tuple[int | float, ...]) -> WorkerStats:
        """The reverse of :meth:`values`."""
        stats = cls()
        pos = 0
        for f in fields(stats):
            current = getattr(stats, f.name)
            if isinstance(current, list):
                n = len(current)
                setattr(stats, f.name, list(values[pos : pos + n]))
                pos += n
            else:
                setattr(stats, f.name, values[pos])
                pos += 1
        return stats

    def pack_into(self, buf: mmap.mmap, offset: int) -> None:
        """Write these counters at ``offset`` of the shared mapping."""
        _SLOT.pack_into(buf, offset, *self.values())

    def add(self, other: WorkerStats) -> None:
        """Add ``other``'s counters (not its gauges) to these."""
        self.accepted_connections += other.accepted_connections
        self.requests_served += other.requests_served
        self.slow_requests += other.slow_requests
        self.duration_sum += other.duration_sum
        self.request_bytes += other.request_bytes
        self.response_bytes += other.response_bytes
        for name in ("status_classes", "duration_buckets", "refused"):
            mine, theirs = getattr(self, name), getattr(other, name)
            for i, n in enumerate(theirs):
                mine[i] += n


@dataclass
class SupervisorStats:
    """The supervisor's counters, and the totals of workers that have exited."""

    reloads: int = 0
    worker_restarts: int = 0
    retired: WorkerStats = field(default_factory=WorkerStats)


class Scoreboard:
    """``slots`` worker slots in one anonymous shared mapping."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a scoreboard needs at least one slot")
        self.slots = slots
        self._map = mmap.mmap(-1, _HEADER_SIZE + _SLOT.size * (slots + 1))

    def _offset(self, slot: int) -> int:
        # Slot -1 is the retired workers' totals.
        return _HEADER_SIZE + _SLOT.size * (slot + 1)

    def _read_slot(self, slot: int) -> WorkerStats:
        return WorkerStats.from_values(_SLOT.unpack_from(self._map, self._offset(slot)))

    def publish(self, slot: int, stats: WorkerStats) -> None:
        """Write one worker's counters to its slot."""
        stats.pack_into(self._map, self._offset(slot))

    def clear(self, slot: int) -> None:
        """Empty a slot (its worker exited), keeping its counters in the retired totals."""
        retired = self._read_slot(-1)
        retired.add(self._read_slot(slot))
        retired.pack_into(self._map, self._offset(-1))
        WorkerStats().pack_into(self._map, self._offset(slot))

    def count(self, *, reloads: int = 0, worker_restarts: int = 0) -> None:
        """Add to the supervisor's counters (only the supervisor writes them)."""
        old_reloads, old_restarts = _HEADER.unpack_from(self._map, 0)
        _HEADER.pack_into(self._map, 0, old_reloads + reloads, old_restarts + worker_restarts)

    def supervisor(self) -> SupervisorStats:
        """The supervisor's counters and the retired workers' totals."""
        reloads, restarts = _HEADER.unpack_from(self._map, 0)
        return SupervisorStats(reloads, restarts, self._read_slot(-1))

    def read(self) -> list[WorkerStats]:
        """The counters of every slot in use (pid != 0)."""
        out = []
        for i in range(self.slots):
            stats = self._read_slot(i)
            if stats.pid:
                out.append(stats)
        return out
