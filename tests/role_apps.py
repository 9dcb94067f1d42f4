"""Apps that serve the RESPONDER, AUTHORIZER and FILTER roles at once.

Each tells the roles apart the documented way (ASGI: the scope's
``extensions["fastcgi"]["role"]``; WSGI: ``environ["FCGI_ROLE"]``). The
authorizer lets a request through when it carries ``X-Token: good``, with
``Variable-AUTH_USER`` and ``Variable-REMOTE_USER`` set to ``alice``;
``X-Token: slow`` waits a little first (concurrency); any other token gets a
403 whose header and body say the app wrote them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

DENIED_BODY = b"denied by the role app"


def _verdict(token: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    if token in ("good", "slow"):
        variables = [(b"variable-auth_user", b"alice"), (b"variable-remote_user", b"alice")]
        return 200, [(b"content-length", b"0"), *variables], b""
    return (
        403,
        [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(DENIED_BODY)).encode()),
            (b"x-denied-by", b"role-app"),
        ],
        DENIED_BODY,
    )


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: authorizer, filter (digests of body and DATA) and responder."""
    if scope["type"] != "http":
        return
    fastcgi = scope["extensions"]["fastcgi"]
    role = fastcgi["role"]
    headers = dict(scope["headers"])
    if role == "authorizer":
        message = await receive()  # no body: one empty message at once
        assert message == {"type": "http.request", "body": b"", "more_body": False}
        token = headers.get(b"x-token", b"").decode() or None
        if token == "slow":
            await asyncio.sleep(0.05)
        status, resp_headers, body = _verdict(token)
    elif role == "filter":
        body_hash, data_hash = hashlib.sha256(), hashlib.sha256()
        if headers.get(b"x-data-first") != b"1":
            while True:
                message = await receive()
                body_hash.update(message.get("body", b""))
                if not message.get("more_body"):
                    break
        data_len = 0
        while True:
            message = await fastcgi["receive_data"]()
            data_hash.update(message["body"])
            data_len += len(message["body"])
            if not message["more_body"]:
                break
        info = {
            "role": role,
            "body": body_hash.hexdigest(),
            "data": data_hash.hexdigest(),
            "data_read": data_len,
            "data_length": fastcgi["data_length"],
            "data_last_mod": fastcgi["data_last_mod"],
        }
        status, resp_headers, body = 200, [(b"content-type", b"application/json")], b""
        body = json.dumps(info).encode()
    else:
        info = {"role": role, "path": scope["path"]}
        status, resp_headers = 200, [(b"content-type", b"application/json")]
        body = json.dumps(info).encode()
    await send({"type": "http.response.start", "status": status, "headers": resp_headers})
    await send({"type": "http.response.body", "body": body})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """WSGI: authorizer, filter and a responder that shows the params it got."""
    role = environ["FCGI_ROLE"]
    if role == "AUTHORIZER":
        assert environ["wsgi.input"].read() == b""
        token = environ.get("HTTP_X_TOKEN")
        if token == "slow":
            time.sleep(0.05)
        status, headers, body = _verdict(token)
        start_response(
            f"{status} {'OK' if status == 200 else 'Forbidden'}",
            [(n.decode(), v.decode()) for n, v in headers],
        )
        return [body]
    info: dict[str, Any] = {"role": role}
    if role == "FILTER":
        info["body"] = hashlib.sha256(environ["wsgi.input"].read()).hexdigest()
        data = environ["fcgi.data"].read()
        info["data"] = hashlib.sha256(data).hexdigest()
        info["data_read"] = len(data)
        info["data_length"] = environ.get("FCGI_DATA_LENGTH")
    else:
        for name in ("AUTH_USER", "REMOTE_USER", "PATH_INFO"):
            info[name] = environ.get(name)
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(info).encode()]
