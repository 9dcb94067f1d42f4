"""Memory of worker processes: the ``--max-worker-memory`` check, read from
/proc, and the C allocator's thresholds for request-sized buffers.

The supervisor reads each worker's resident set size (RSS) about once a
second; a worker past the ceiling is replaced gracefully, like one that has
served its ``--max-requests``. RSS counts pages shared with the supervisor
(``--preload``) in full, so the ceiling is a bound on what one worker holds,
not on what it adds.
"""

from __future__ import annotations

import os

__all__ = ["MIB", "raise_malloc_thresholds", "rss_bytes"]

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


def raise_malloc_thresholds() -> None:
    """Let glibc's malloc keep buffers of up to 1 MiB on the heap, and not
    give the heap's top back to the kernel below 2 MiB free.

    At its defaults (128 KiB each) a process that receives 64 KiB request
    bodies can grow and trim the top of its heap for every request, and pay
    with page faults: in 5 of 8 starts of the same gateway, POST 64 KiB
    behind nginx ran at 13.3-14.0k req/s with 2-6 minor faults and 20-28 us
    of system CPU a request, against 15.0-16.2k, no faults and 13-18 us once
    this ran (8 of 8 starts; RSS +1 MiB). glibc raises both thresholds by
    itself the first time a buffer too large for the heap is freed; freeing
    one 1 MiB buffer now does just that, and leaves its adaptive policy on
    (mallopt() would turn it off). Other allocators ignore it.
    """
    bytearray(MIB)
