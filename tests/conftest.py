"""Shared fixtures: a real gateway on a real socket, and a FastCGI client.

``serve(app, **options)`` starts :class:`fcgi_asgi.FastCGIServer` in the test's
event loop on a unix socket (or TCP with ``tcp=True``) and shuts it down after
the test; ``connect(server)`` opens a :class:`FastCGIClient` to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fcgi_asgi import FastCGIServer
from fcgi_asgi.client import FastCGIClient
from fcgi_asgi.config import Config, use_option_names
from tests.webservers import web_workdir

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `examples.*` and `tests.apps` import


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: Any) -> str:
    """Tests marked ``anyio`` (the httpx transport's) run on both of anyio's backends."""
    return str(request.param)


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = f"/tmp/fcgi-asgi-test-{os.getpid()}-{id(tmp_path)}.sock"
    yield path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@pytest.fixture(autouse=True)
def api_option_names() -> Iterator[None]:
    """Errors name options as keywords (``port=``) unless a test's in-process
    ``cli.main()`` switched this process to ``--port``: no test sees another's choice."""
    use_option_names({})
    yield
    use_option_names({})


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """A directory for web-server and gateway processes (configs, logs)."""
    with web_workdir("fcgi-asgi-web-") as path:
        yield path


Serve = Callable[..., Awaitable[FastCGIServer]]


@pytest.fixture
async def serve(sock_path: str) -> AsyncIterator[Serve]:
    servers: list[FastCGIServer] = []

    async def start(app: Any, *, tcp: bool = False, **options: Any) -> FastCGIServer:
        options.setdefault("access_log", False)
        options.setdefault("timeout_graceful_shutdown", 2.0)
        if tcp:
            config = Config(app=app, host="127.0.0.1", port=free_port(), **options)
        else:
            config = Config(app=app, socket=sock_path, **options)
        server = FastCGIServer(config)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await asyncio.wait_for(server.aclose(), 15)


async def connect(server: FastCGIServer) -> FastCGIClient:
    """A client connected to ``server``'s listener."""
    config = server.config
    if config.socket is not None:
        return await FastCGIClient.connect(path=config.socket)
    host, port = server.sockets[0].getsockname()[:2]
    return await FastCGIClient.connect(host=host, port=port)


def read_available(peer: socket.socket, rounds: int = 100) -> bytes:
    """What a non-blocking ``peer`` has to read now, up to its EOF."""
    data = b""
    for _ in range(rounds):
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data
