"""Serve an app from ``apps.py`` with fcgisgi (it has no command line).

python fcgisgi_serve.py raw|starlette_app SOCKET_PATH
"""

from __future__ import annotations

import asyncio
import sys

import apps
from fcgisgi import run_asgi_server

if __name__ == "__main__":
    asyncio.run(run_asgi_server(getattr(apps, sys.argv[1]), sys.argv[2]))
