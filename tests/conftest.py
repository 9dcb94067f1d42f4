"""Shared fixtures: a real gateway on a real socket, and a FastCGI client.

``serve(app, **options)`` starts :class:`fcgi_asgi.FastCGIServer` in the test's
event loop on a unix socket (or TCP with ``tcp=True``) and shuts it down after
the test; ``connect(server)`` opens a :class:`FastCGIClient` to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fcgi_asgi import FastCGIServer
from fcgi_asgi.client import FastCGIClient
from fcgi_asgi.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `examples.*` and `tests.apps` import


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = f"/tmp/fcgi-asgi-test-{os.getpid()}-{id(tmp_path)}.sock"
    yield path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """A directory for web-server and gateway processes (configs, logs)."""
    # Not pytest's tmp_path: web-server workers that dropped root must be able
    # to enter it, and pytest's base directory is private to root.
    path = Path(tempfile.mkdtemp(prefix="fcgi-asgi-web-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
