"""Memory of worker processes, read from /proc: the ``--max-worker-memory`` check.

The supervisor reads each worker's resident set size (RSS) about once a
second; a worker past the ceiling is replaced gracefully, like one that has
served its ``--max-requests``. RSS counts pages shared with the supervisor
(``--preload``) in full, so the ceiling is a bound on what one worker holds,
not on what it adds.
"""

from __future__ import annotations

import os

__all__ = ["MIB", "rss_bytes"]

MIB = 1 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int | None:
    """The resident set size of ``pid`` in bytes; None when it has exited.

    ``/proc/PID/statm`` rather than ``status``: one short line, no parsing of
    names, cheap enough to read for every worker each second.
    """
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
    except OSError:
        return None
    return int(fields[1]) * _PAGE
