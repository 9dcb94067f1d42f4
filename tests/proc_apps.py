"""The ASGI app the process-model tests run in real gateway processes.

Its routes report which process answered (``/pid``, ``/ids``); lifespan and
disconnects are appended as lines to the file named by ``FCGI_TEST_EVENTS``
(when set), so that a test can see what happened inside a worker.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any


def _event(text: str) -> None:
    path = os.environ.get("FCGI_TEST_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{text} {os.getpid()}\n")


async def _respond(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Routes: ``/pid``, ``/env?NAME``, ``/ids``, ``/child-fds``, ``/child-status``,
    ``/sleep?SECONDS``, ``/wait-disconnect``; anything else answers ``hello``."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _event("startup")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _event("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/pid":
        await _respond(send, str(os.getpid()).encode())
    elif path == "/env":
        name = scope["query_string"].decode()
        await _respond(send, os.environ.get(name, "-").encode())
    elif path == "/ids":
        await _respond(send, f"{os.getuid()} {os.getgid()}".encode())
    elif path == "/child-fds":
        # What a program the app starts inherits (fds as os.system() would).
        proc = await asyncio.create_subprocess_exec(
            "ls", "-l", "/proc/self/fd", stdout=asyncio.subprocess.PIPE, close_fds=False
        )
        out, _ = await proc.communicate()
        await _respond(send, out)
    elif path == "/child-status":
        # Started with subprocess, as most apps do (uvloop's spawn resets signals).
        done = await asyncio.to_thread(
            subprocess.run, ["cat", "/proc/self/status"], capture_output=True
        )
        await _respond(send, done.stdout)
    elif path == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or b"1"))
        await _respond(send, b"slept %d" % os.getpid())
    elif path == "/wait-disconnect":
        _event("waiting")
        while (await receive())["type"] != "http.disconnect":
            pass
        _event("disconnect")
    else:
        await _respond(send, b"hello")


async def eager_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """:func:`app`, but its lifespan startup installs Python 3.12's eager task
    factory on the loop (as an app tuning its performance may): request tasks
    then run their first steps inside ``create_task``."""
    if scope["type"] == "lifespan":
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
    await app(scope, receive, send)


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """``/pid`` as a WSGI app, for the process-model tests with WSGI."""
    body = str(os.getpid()).encode() if environ["PATH_INFO"] == "/pid" else b"hello"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
