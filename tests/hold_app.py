"""An app that holds a request open until the test releases it.

``/hold?FILE`` answers once FILE exists (the test creates it); any other path
answers ``ok`` at once. The gateway runs in its own process, so a file is the
simplest signal that needs no request through the (possibly full) gateway.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

# Every wait is bounded: a failed test never leaves the gateway hanging.
_MAX_WAIT = 30.0
_POLL = 0.02


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b"ok"
    if scope["path"] == "/hold":
        release = scope["query_string"].decode()
        for _ in range(int(_MAX_WAIT / _POLL)):
            if os.path.exists(release):
                body = b"released"
                break
            await asyncio.sleep(_POLL)
        else:
            body = b"timed out"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
