"""Apps for the command-line tests (imported by the gateway subprocess)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

raise_on_import = os.environ.get("FCGI_TEST_IMPORT_ERROR")
if raise_on_import:
    raise RuntimeError(raise_on_import)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if os.environ.get("FCGI_TEST_STARTUP_HANG"):
                    import asyncio

                    await asyncio.sleep(3600)
                if os.environ.get("FCGI_TEST_STARTUP_FAIL"):
                    await send({"type": "lifespan.startup.failed", "message": "db is down"})
                    return
                await send({"type": "lifespan.startup.complete"})
            else:
                if os.environ.get("FCGI_TEST_SHUTDOWN_HANG"):
                    import asyncio

                    await asyncio.sleep(3600)
                marker = os.environ.get("FCGI_TEST_SHUTDOWN_MARKER")
                if marker:
                    Path(marker).write_text("shutdown ran")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/endless":
        # Streams as fast as the peer takes it, until send() raises.
        marker = Path(os.environ["FCGI_TEST_MARKER"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"e" * 65536
        sent = 0
        try:
            while True:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                sent += len(chunk)
        except OSError as exc:
            marker.write_text(f"{type(exc).__name__} after {sent}")
        return
    if scope["path"] == "/stubborn":
        # Ignores cancellation (an app bug): it must not keep the gateway alive.
        import asyncio
        import contextlib

        Path(os.environ["FCGI_TEST_MARKER"]).write_text("running")
        for _ in range(3600):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)
        return
    if scope["path"] == "/loop":
        import asyncio

        loop = asyncio.get_running_loop()
        body = type(loop).__module__.encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] == "/sleep":
        import asyncio

        if "FCGI_TEST_SLEEP_MARKER" in os.environ:
            Path(os.environ["FCGI_TEST_SLEEP_MARKER"]).write_text("sleeping")
        await asyncio.sleep(float(scope["query_string"] or b"1"))
    body = f"pid {os.getpid()} uid {os.getuid()}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def factory() -> Any:
    return app


not_callable = 42
