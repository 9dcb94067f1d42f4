"""``--reload``: serve under a supervisor and reload it when source files change.

For development. The gateway runs as a child process with ``--workers 1``
(or the given number), so the socket is bound once and a change reloads the
app the way SIGHUP does in production: new workers import the code afresh
and the old ones finish their requests, so no request is lost. A change that
breaks the import leaves the old worker serving until the next fix.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, opt

__all__ = ["run_with_reload"]

logger = logging.getLogger("fcgi_asgi.error")

_RELOAD_OPTIONS = ("--reload",)
_RELOAD_VALUE_OPTIONS = ("--reload-dir",)


def child_argv(argv: Sequence[str], workers_given: bool) -> list[str]:
    """The command line without the reload options, under a supervisor."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _RELOAD_OPTIONS:
            pass
        elif word in _RELOAD_VALUE_OPTIONS:
            skip = True
        elif not word.startswith(tuple(f"{o}=" for o in _RELOAD_VALUE_OPTIONS)):
            out.append(word)
    if not workers_given:
        out += ["--workers", "1"]
    return [sys.executable, "-m", "fcgi_asgi", *out]


def run_with_reload(argv: Sequence[str], args: argparse.Namespace) -> int:
    """Run the gateway in a child process; SIGHUP it when a ``.py`` file changes."""
    try:
        import watchfiles
    except ImportError:
        raise ConfigError(
            f"{opt('reload')} needs the watchfiles package: pip install 'fcgi-asgi[reload]'"
        ) from None
    dirs = [Path(d).resolve() for d in (args.reload_dir or [args.app_dir or "."])]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"{opt('reload_dir')} {d}: no such directory")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCGI_ASGI_RELOAD")}
    # Its own session: a terminal's Ctrl-C reaches this process only, which
    # passes it on once (twice would stop the supervisor without draining).
    child = subprocess.Popen(
        child_argv(argv, args.workers is not None), env=env, start_new_session=True
    )
    stop = threading.Event()

    def forward(signum: int, frame: object) -> None:
        stop.set()
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)

    def wait_child() -> None:
        child.wait()
        stop.set()

    threading.Thread(target=wait_child, daemon=True).start()
    logger.info("--reload: watching %s for .py changes", ", ".join(map(str, dirs)))
    for changes in watchfiles.watch(
        *dirs, watch_filter=watchfiles.PythonFilter(), stop_event=stop, raise_interrupt=False
    ):
        if child.poll() is not None:
            break
        changed = sorted({Path(path).name for _, path in changes})
        logger.info("--reload: %s changed, reloading", ", ".join(changed))
        child.send_signal(signal.SIGHUP)
    code = child.wait()
    return code if code >= 0 else 1
