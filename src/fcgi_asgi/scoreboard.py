"""Per-worker counters in shared memory, so any worker can report on all.

The supervisor creates a :class:`Scoreboard` before forking: an anonymous
shared mapping that every child inherits. Each worker owns one slot and
publishes its counters there about once a second (never per request, to keep
the hot path free of it); the status page reads every slot.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

__all__ = ["Scoreboard", "WorkerStats"]

# pid, started (epoch s), accepted conns, requests served, active, max active, slow, updated
_SLOT = struct.Struct("<qdqqqqqd")


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

    def pack_into(self, buf: mmap.mmap, offset: int) -> None:
        """Write these counters at ``offset`` of the shared mapping."""
        _SLOT.pack_into(
            buf,
            offset,
            self.pid,
            self.started,
            self.accepted_connections,
            self.requests_served,
            self.active_requests,
            self.max_active_requests,
            self.slow_requests,
            self.updated,
        )


class Scoreboard:
    """``slots`` worker slots in one anonymous shared mapping."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a scoreboard needs at least one slot")
        self.slots = slots
        self._map = mmap.mmap(-1, _SLOT.size * slots)

    def publish(self, slot: int, stats: WorkerStats) -> None:
        """Write one worker's counters to its slot."""
        stats.pack_into(self._map, _SLOT.size * slot)

    def clear(self, slot: int) -> None:
        """Empty a slot (its worker exited)."""
        WorkerStats().pack_into(self._map, _SLOT.size * slot)

    def read(self) -> list[WorkerStats]:
        """The counters of every slot in use (pid != 0)."""
        out = []
        for i in range(self.slots):
            values = _SLOT.unpack_from(self._map, _SLOT.size * i)
            if values[0]:
                out.append(WorkerStats(*values))
        return out
