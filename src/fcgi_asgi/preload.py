"""``--preload``: the supervisor imports the app once; workers share it copy-on-write.

Without it every worker imports the app afresh: N copies of every module,
class and constant. With it the supervisor imports the app (never its
lifespan, which each worker runs) before forking, so the pages holding it
are shared until a worker writes to them.

Two things keep those pages shared. CPython's cyclic garbage collector
writes to every object it scans, so the import runs with the collector off
and the result is then moved to the permanent generation with
``gc.freeze()``, which no later collection scans (the practice the ``gc``
docs describe for a parent that forks). Reference counts still change as
workers use objects, so sharing is never complete.

What breaks preloading is state that does not survive ``fork()``: threads
started at import (only the forking thread exists in a child), an event
loop created at import (its epoll instance and self-pipe are shared by all
workers), and sockets opened at import (a database connection the workers
would all talk over at once). :func:`fork_hazards` names the common ones so
the supervisor can warn; the fix is to open them in lifespan startup.

A supervisor that imported the app cannot forget it, so ``SIGHUP`` with
``--preload`` re-executes the supervisor (same PID, same command line),
handing over the listening socket and the running workers through the
environment (:class:`ReexecState`): the new image imports the new code, forks
new workers, and drains the old ones as a reload does.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn

from .config import AppLoadError
from .listeners import Listener
from .privileges import Identity, acting_as

if TYPE_CHECKING:
    from .config import ASGIApp, Config

__all__ = ["REEXEC_ENV", "ReexecState", "fork_hazards", "preload_app"]

logger = logging.getLogger("fcgi_asgi.error")

#: Environment variable carrying a :class:`ReexecState` across the re-exec.
REEXEC_ENV = "FCGI_ASGI_REEXEC"


def _open_fds() -> dict[int, str]:
    """This process's open fds and what each is (``socket:[123]``, a path...)."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
    return fds


def fork_hazards(before: dict[int, str]) -> list[str]:
    """What the import left behind that forked workers cannot share.

    ``before`` is :func:`_open_fds` from before the import: only fds opened
    since count.
    """
    hazards = [
        f"thread {t.name!r} is running; forked workers will not have it"
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive()
    ]
    for fd, what in sorted(_open_fds().items()):
        if before.get(fd) == what:
            continue
        if what == "anon_inode:[eventpoll]":
            hazards.append(f"fd {fd} is an event loop's epoll; every worker would share it")
        elif what.startswith("socket:"):
            hazards.append(f"fd {fd} is an open socket; every worker would share the connection")
    return hazards


def preload_app(config: Config, identity: Identity | None) -> ASGIApp:
    """Import the app in this (the supervisor) process, ready to fork.

    Runs as ``identity`` when given (no app code runs as root), warns about
    :func:`fork_hazards`, and freezes what the import allocated.
    """
    before = _open_fds()
    gc.disable()  # no collections during the import: they dirty the pages to share
    try:
        with acting_as(identity):
            app = config.load()
    except SystemExit as exc:
        # Here it would end the supervisor, and with it a running pool.
        raise AppLoadError(f"the app called sys.exit({exc.code!r}) while loading") from None
    finally:
        gc.freeze()
        gc.enable()
    for hazard in fork_hazards(before):
        logger.warning(
            "--preload: after importing the app, %s (open it in lifespan startup instead)",
            hazard,
        )
    return app


@dataclass
class ReexecState:
    """What a re-executed supervisor takes over from its previous image."""

    #: The listening socket's fd, and its unix socket file (to remove at exit).
    fd: int
    path: str | None = None
    file_id: tuple[int, int] | None = None
    #: ``(pid, channel fd or -1, stopping)`` of each worker still running.
    workers: list[tuple[int, int, bool]] = field(default_factory=list)

    @classmethod
    def from_environ(cls) -> ReexecState | None:
        """The state left by the previous image, removed from the environment."""
        raw = os.environ.pop(REEXEC_ENV, None)
        if raw is None:
            return None
        data = json.loads(raw)
        file_id = data["file_id"]
        return cls(
            data["fd"],
            data["path"],
            (file_id[0], file_id[1]) if file_id else None,
            [(pid, fd, stopping) for pid, fd, stopping in data["workers"]],
        )

    def listener(self) -> Listener:
        """The inherited listening socket."""
        return Listener(socket.socket(fileno=self.fd), self.path, self.file_id)

    def reexec(self, notify_socket: str | None) -> NoReturn:
        """Replace this process with a fresh run of the same command line."""
        for fd in (self.fd, *(fd for _, fd, _ in self.workers)):
            if fd >= 0:
                os.set_inheritable(fd, True)
        env = dict(os.environ)
        env[REEXEC_ENV] = json.dumps(
            {"fd": self.fd, "path": self.path, "file_id": self.file_id, "workers": self.workers}
        )
        if notify_socket is not None:
            env["NOTIFY_SOCKET"] = notify_socket
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)
