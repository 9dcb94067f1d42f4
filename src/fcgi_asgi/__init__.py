"""fcgi-asgi: an asyncio FastCGI-to-ASGI gateway.

Serve any ASGI 3 application (Starlette, FastAPI, raw ASGI) behind a FastCGI
web server::

    fcgi-asgi myapp:app --socket /run/app.sock

or from your own event loop::

    server = await fcgi_asgi.start_server(app, socket="/run/app.sock")
    async with server:
        await server.serve_forever()
"""

from __future__ import annotations

__version__ = "0.1.0"

from .asgi.lifespan import LifespanFailure
from .config import AppLoadError, AppType, Config, ConfigError
from .errors import AppProtocolError, ClientDisconnected
from .listeners import ListenError
from .server import FastCGIServer, run, start_server

__all__ = [
    "AppLoadError",
    "AppProtocolError",
    "AppType",
    "ClientDisconnected",
    "Config",
    "ConfigError",
    "FastCGIServer",
    "LifespanFailure",
    "ListenError",
    "__version__",
    "run",
    "start_server",
]
