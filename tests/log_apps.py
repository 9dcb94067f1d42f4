"""An app that sets up logging the way real frameworks do, at import time.

``FCGI_TEST_LOGGING`` picks the setup:

- ``django``: what Django's ``DEFAULT_LOGGING`` does: a dictConfig that gives
  the app's own logger (here ``myapp``) a handler and lets it propagate to the
  root logger, which it leaves alone;
- ``root``: a handler added to the root logger itself (Sanic, many scripts).

Every request logs ``app line PATH`` on ``myapp``. ``/sleep?SECONDS`` sleeps first.
"""

from __future__ import annotations

import asyncio
import logging
import logging.config
import os
import sys
from typing import Any

mode = os.environ.get("FCGI_TEST_LOGGING", "django")
if mode == "django":
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"app": {"format": "APP %(name)s %(message)s"}},
            "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "app"}},
            "loggers": {"myapp": {"handlers": ["console"], "level": "INFO"}},
        }
    )
elif mode == "root":
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ROOT %(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)

log = logging.getLogger("myapp")


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or b"1"))
    log.info("app line %s", scope["path"])
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})
