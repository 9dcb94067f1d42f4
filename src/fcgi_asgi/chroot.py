"""``--chroot DIR``: workers serve from inside a directory, as php-fpm's ``chroot``.

A worker confines itself after the supervisor has bound the socket (whose
file stays outside, so the web server and the supervisor still reach it)
and after the app is imported (so Python, the app's packages and its
dependencies need not be copied inside), then gives up root. From then on
every path the app opens is looked up inside ``DIR``: a file it opens
lazily (a template on first render, a certificate, ``/etc/resolv.conf`` for
a DNS lookup, ``/usr/share/zoneinfo``) must be read at import time or exist
inside the directory. A module imported lazily fails the same way, so the
modules the gateway itself may need later are imported here first.
"""

from __future__ import annotations

import logging
import os

from .config import ASGIApp, Config, ConfigError, opt
from .privileges import Identity, acting_as, drop_privileges

__all__ = ["check_chroot", "confine"]

logger = logging.getLogger("fcgi_asgi.error")


def check_chroot(path: str | None, identity: Identity | None) -> None:
    """Refuse a ``--chroot`` that cannot work, before anything starts."""
    if path is None:
        return
    if not os.path.isdir(path):
        raise ConfigError(f"{opt('chroot')}: {path!r} is not a directory")
    if os.geteuid() != 0:
        raise ConfigError(
            f"{opt('chroot')} needs the gateway to start as root (uid {os.geteuid()})"
        )
    if identity is None:
        # Root can leave a chroot (a second chroot() and "cd .."), so it confines little.
        logger.warning("--chroot without --user: the workers run as root inside %s", path)


def _preimport() -> None:
    # Imported lazily by asyncio and the standard library on paths a worker
    # may take after the chroot (threads for to_thread, tracebacks, codecs).
    import concurrent.futures.thread  # noqa: F401
    import encodings.idna  # noqa: F401
    import traceback  # noqa: F401


def confine(config: Config, identity: Identity | None, app: ASGIApp | None) -> ASGIApp | None:
    """In a new worker: import the app, chroot, then drop privileges.

    Returns the app when it was imported here (None when nothing was to be
    done about it: no ``--chroot``, and the worker imports it later, as
    ``identity``, having dropped root first).
    """
    if config.chroot is not None:
        if app is None:
            with acting_as(identity):  # the app's import runs with the user's rights
                app = config.load()
        _preimport()
        os.chroot(config.chroot)
        os.chdir("/")
    if identity is not None:
        drop_privileges(identity)
    return app
