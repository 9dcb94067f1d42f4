"""The gateway's logging setup: its own loggers only, never the root logger.

By default ``fcgi_asgi`` (and its child ``fcgi_asgi.error``) logs to stderr and
``fcgi_asgi.access`` to stdout, through handlers of their own that do not
propagate: an app that configures the root logger (Django, Sanic) sees each of
its lines once. ``--log-config FILE`` replaces that with the user's dictConfig
(JSON, or YAML when PyYAML is installed) or :func:`logging.config.fileConfig`
INI file.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
from typing import Any

from .config import ConfigError

__all__ = [
    "ACCESS_LINE_FORMAT",
    "DEFAULT_LINE_FORMAT",
    "LOG_LEVELS",
    "TRACE",
    "configure_logging",
    "logging_config",
]

#: Below DEBUG: every connection opened and closed (uvicorn's ``trace``).
TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

DEFAULT_LINE_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
#: Access lines carry their own fields; the prefix says when and which process.
ACCESS_LINE_FORMAT = "%(asctime)s [%(process)d] %(message)s"
#: JSON lines must be nothing but the object.
BARE_LINE_FORMAT = "%(message)s"


def level_number(name: str) -> int:
    """The :mod:`logging` level for a ``--log-level`` name (``trace`` is 5)."""
    return TRACE if name.lower() == "trace" else int(getattr(logging, name.upper()))


def logging_config(level: str = "info", access_json: bool = False) -> dict[str, Any]:
    """The default configuration, in :func:`logging.config.dictConfig` form.

    The shape of uvicorn's ``LOGGING_CONFIG``: a ``default`` handler on stderr
    for ``fcgi_asgi`` and ``fcgi_asgi.error``, an ``access`` handler on stdout
    for ``fcgi_asgi.access`` (a :class:`~fcgi_asgi.logbuffer.BufferedLineHandler`,
    which writes its lines once per event-loop iteration). The root logger and
    every other library's loggers are left alone.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {"format": DEFAULT_LINE_FORMAT},
            "access": {"format": BARE_LINE_FORMAT if access_json else ACCESS_LINE_FORMAT},
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "fcgi_asgi.logbuffer.BufferedLineHandler",
                "formatter": "access",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "fcgi_asgi": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "fcgi_asgi.error": {"level": level.upper()},
            "fcgi_asgi.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }


def configure_logging(
    level: str | None = None, log_config: str | None = None, access_json: bool = False
) -> None:
    """Set up the gateway's loggers, from ``log_config`` when given.

    ``level`` (default ``info``) applies to ``fcgi_asgi`` and
    ``fcgi_asgi.error``; with ``log_config`` it overrides the file's levels
    only when given. Raises :class:`ConfigError` for a file that cannot be
    read or applied.
    """
    if log_config is None:
        logging.config.dictConfig(logging_config(level or "info", access_json))
        return
    try:
        _apply_file(log_config)
    except ConfigError:
        raise
    except Exception as exc:
        # Whatever the file holds (a JSON or YAML syntax error, an unknown
        # handler class, a bad level) is one line for the user, not a traceback.
        raise ConfigError(f"--log-config {log_config}: {type(exc).__name__}: {exc}") from None
    if level is not None:
        for name in ("fcgi_asgi", "fcgi_asgi.error"):
            logging.getLogger(name).setLevel(level_number(level))


def _apply_file(path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"--log-config {path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".json", ".yaml", ".yml"):
        with open(path, encoding="utf-8") as f:
            if ext == ".json":
                loaded = json.load(f)
            else:
                try:
                    import yaml
                except ImportError:
                    raise ConfigError(
                        f"--log-config {path}: reading YAML needs PyYAML "
                        "(pip install 'fcgi-asgi[yaml]'), or give the same as JSON"
                    ) from None
                loaded = yaml.safe_load(f)
        if not isinstance(loaded, dict):
            raise ConfigError(f"--log-config {path}: not a dictConfig mapping")
        loaded.setdefault("disable_existing_loggers", False)
        logging.config.dictConfig(loaded)
    else:
        logging.config.fileConfig(path, disable_existing_loggers=False)
