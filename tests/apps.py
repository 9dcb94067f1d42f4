"""ASGI apps the tests serve. Each route exercises one behaviour of the gateway."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from typing import Any

# Filled in by the apps so tests can see what the app saw.
EVENTS: dict[str, Any] = {}


def stream_chunk(i: int, size: int) -> bytes:
    """Chunk ``i`` of /stream: distinct per index so reordering or loss shows."""
    return bytes((i % 251,)) * size


async def _respond(send: Any, status: int, body: bytes, ctype: bytes = b"text/plain") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Routes by path; see each branch."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["started"] = "yes"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                EVENTS["shutdown"] = True
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/scope":
        info = {k: v for k, v in scope.items() if k not in ("headers", "state", "extensions")}
        info["raw_path"] = scope["raw_path"].decode("latin-1")
        info["query_string"] = scope["query_string"].decode("latin-1")
        info["headers"] = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        info["state"] = dict(scope.get("state", {}))
        info["extensions"] = sorted(scope.get("extensions", {}))
        await _respond(send, 200, json.dumps(info).encode(), b"application/json")
    elif path == "/echo":
        body = await _read_body(receive)
        await _respond(send, 200, body, b"application/octet-stream")
    elif path == "/hash":
        # Streams the body through sha256 without keeping it: proves streaming.
        h = hashlib.sha256()
        n = 0
        largest = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            h.update(chunk)
            n += len(chunk)
            largest = max(largest, len(chunk))
            if not message.get("more_body", False):
                break
        EVENTS["hash_largest_chunk"] = largest
        await _respond(send, 200, f"{n} {h.hexdigest()}".encode())
    elif path == "/read-then-listen":
        # Reads the whole body, then answers with what one more receive() gives
        # within 0.3 s ("nothing" if it still waits).
        body = await _read_body(receive)
        try:
            async with asyncio.timeout(0.3):
                message = await receive()
            after = f"{message['type']} {message.get('body', b'')!r}"
        except TimeoutError:
            after = "nothing"
        await _respond(send, 200, body + b" | " + after.encode())
    elif path == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or b"0.2"))
        await _respond(send, 200, b"slept")
    elif path == "/stream":
        # ?N,SIZE[,PAUSE]: N chunks of SIZE bytes, with a PAUSE (s) after every 8;
        # records whether a disconnect was seen.
        query = (scope["query_string"] or b"10,1024").split(b",")
        count, size = int(query[0]), int(query[1])
        pause = float(query[2]) if len(query) > 2 else 0.0
        EVENTS["stream_sent"] = 0
        EVENTS["stream_disconnected"] = False
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            for i in range(count):
                chunk = stream_chunk(i, size)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                EVENTS["stream_sent"] += size
                if pause and i % 8 == 7:
                    await asyncio.sleep(pause)
            await send({"type": "http.response.body", "body": b""})
        except OSError:
            EVENTS["stream_disconnected"] = True
            # In this very step (wait_for would run receive() as a new task on
            # Python 3.11, later, hiding what receive() says right away).
            async with asyncio.timeout(5):
                message = await receive()
            EVENTS["stream_receive_after"] = message["type"]
            raise
    elif path == "/wait-disconnect":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        message = await receive()
        while message["type"] != "http.disconnect":
            message = await receive()
        EVENTS["disconnect_seen"] = True
    elif path == "/pause-then-send":
        # A first chunk, a pause (the web server may abort meanwhile), more:
        # records what the second send() raised.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(0.3)
        try:
            await send({"type": "http.response.body", "body": b"second"})
        except Exception as exc:
            EVENTS["second_send"] = type(exc).__name__
            raise
        EVENTS["second_send"] = "sent"
    elif path == "/two-receivers":
        # Two tasks call receive() at once (a body reader and a disconnect
        # watcher); each records what it got until http.disconnect. ?fail
        # raises instead of answering.
        EVENTS["receivers"] = {}

        async def receiver(name: str) -> None:
            got = []
            while True:
                message = await receive()
                got.append((message["type"], message.get("body"), message.get("more_body")))
                if message["type"] == "http.disconnect":
                    break
            EVENTS["receivers"][name] = got

        tasks = [asyncio.ensure_future(receiver(name)) for name in ("a", "b")]
        EVENTS["receiver_tasks"] = tasks
        await asyncio.sleep(0.3)  # both wait (for the body, or for the end)
        if scope["query_string"] == b"fail":
            raise RuntimeError("failed while two receivers wait")
        await _respond(send, 200, b"answered")
    elif path == "/head-then-wait":
        await send({"type": "http.response.start", "status": 202, "headers": [(b"x-a", b"1")]})
        await asyncio.sleep(0.5)
        await send({"type": "http.response.body", "body": b"later"})
    elif path == "/big-head":
        # ?SIZE[,yield]: a header value of SIZE bytes, the head sent alone
        # (the app yields) or with the body.
        query = scope["query_string"].split(b",")
        value = b"v" * int(query[0])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-big", value)]})
        if query[1:] == [b"yield"]:
            await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"after the head"})
    elif path == "/raise-before":
        raise ValueError("boom before start")
    elif path == "/sys-exit":
        sys.exit(3)
    elif path == "/raise-after":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom after start")
    elif path == "/raise-after-complete":
        # A whole response without reading the body, then a failure (cleanup code).
        await _respond(send, 200, b"complete")
        raise ValueError("boom after the response")
    elif path == "/no-response":
        return
    elif path == "/status":
        code = int(scope["query_string"])
        await send({"type": "http.response.start", "status": code, "headers": []})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/cookies":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/bad-header":
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"a\r\nb")]}
        )
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/body-before-start":
        await send({"type": "http.response.body", "body": b"oops"})
    elif path == "/pathsend":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": scope["query_string"].decode()})
    elif path == "/trailers":
        await send({"type": "http.response.start", "status": 200, "headers": [], "trailers": True})
        await send({"type": "http.response.body", "body": b"body"})
        if scope["query_string"] == b"missing":
            return  # trailers announced, never sent
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})
    else:
        await _respond(send, 404, b"not found")
