"""Apps for the process-manager tests (memory ceiling, pools, preload, chroot).

``app`` answers ``/pid``; ``/imported-by`` with the euid that imported the
module; ``/leak?MIB`` keeps MIB more mebibytes for good (a leaking app);
``/sleep?SECONDS`` holds its worker busy; ``/read?PATH`` answers what the
file holds, or 404 when the process cannot see it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from tests.proc_apps import _respond

_leaked: list[bytes] = []
#: Who imported this module (with --preload or --chroot, before root is given up).
IMPORTED_BY = os.geteuid()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The routes above; anything else answers ``hello``."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    path = scope["path"]
    query = scope["query_string"].decode()
    if path == "/pid":
        await _respond(send, str(os.getpid()).encode())
    elif path == "/imported-by":
        await _respond(send, str(IMPORTED_BY).encode())
    elif path == "/leak":
        # Bytes that differ page by page: really resident, never shared.
        _leaked.append(os.urandom(int(query or 1) << 20))
        await _respond(send, str(os.getpid()).encode())
    elif path == "/sleep":
        await asyncio.sleep(float(query or 1))
        await _respond(send, str(os.getpid()).encode())
    elif path == "/read":
        try:
            with open(query, "rb") as f:
                await _respond(send, f.read())
        except OSError as exc:
            await _respond(send, str(exc).encode(), 404)
    else:
        await _respond(send, b"hello")
