"""The ASGI lifespan protocol: startup before serving, shutdown on exit."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .scope import ASGI_VERSION

if TYPE_CHECKING:
    from ..config import ASGIApp, LifespanMode

__all__ = ["Lifespan", "LifespanFailure"]

logger = logging.getLogger("fcgi_asgi.error")

#: Seconds a cancelled lifespan task gets to run its cleanup (``finally``).
CANCEL_GRACE = 5.0


class LifespanFailure(RuntimeError):
    """The app reported (or raised) a failure during lifespan startup or shutdown."""


class Lifespan:
    """Runs the app's lifespan task for one server.

    ``state`` is the dict handed to the app as ``scope["state"]``; each
    request then gets a shallow copy of it. In ``auto`` mode an app that
    raises before completing startup is taken not to support lifespan.
    """

    def __init__(self, app: ASGIApp, mode: LifespanMode) -> None:
        self.app = app
        self.mode = mode
        self.state: dict[str, Any] = {}
        self.supported = mode != "off"
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._startup_done = asyncio.Event()
        self._shutdown_done = asyncio.Event()
        self._failure: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._shutting_down = False

    async def startup(self) -> None:
        """Send ``lifespan.startup`` and wait; raise :class:`LifespanFailure` on failure."""
        if not self.supported:
            return
        self._task = asyncio.get_running_loop().create_task(self._main())
        await self._queue.put({"type": "lifespan.startup"})
        await self._startup_done.wait()
        if self._failure is not None:
            raise LifespanFailure(self._failure)

    async def cancel(self) -> None:
        """Cancel the app's lifespan task: startup failed or was given up on.

        An app may still wait in ``receive()`` after ``startup.failed``, or
        never answer; left alone, its task would outlive the server.
        """
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_GRACE)

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait; raise :class:`LifespanFailure` on failure."""
        if not self.supported or self._task is None:
            return
        if self._task.done():
            return
        self._shutting_down = True
        await self._queue.put({"type": "lifespan.shutdown"})
        await self._shutdown_done.wait()
        if self._failure is not None:
            raise LifespanFailure(self._failure)

    def cancel_shutdown(self) -> bool:
        """Cut a running shutdown short: cancel the app's task, stop waiting.

        Returns False when no shutdown is running. :meth:`shutdown` returns
        at once even if the app ignores the cancellation.
        """
        task = self._task
        if not self._shutting_down or task is None or task.done():
            return False
        task.cancel()
        self._shutdown_done.set()
        return True

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            if self.mode == "auto" and not self._startup_done.is_set():
                logger.info(
                    "ASGI 'lifespan' protocol appears unsupported (%s: %s)", type(exc).__name__, exc
                )
                self.supported = False
            else:
                self._failure = f"lifespan raised {type(exc).__name__}: {exc}"
                logger.error("Exception in ASGI lifespan", exc_info=exc)
        else:
            if not self._startup_done.is_set():
                if self.mode == "on":
                    self._failure = "the app returned from lifespan without completing startup"
                else:
                    self.supported = False
        finally:
            self._startup_done.set()
            self._shutdown_done.set()

    async def _receive(self) -> dict[str, Any]:
        return await self._queue.get()

    async def _send(self, message: Any) -> None:
        mtype = message["type"]
        if mtype == "lifespan.startup.complete":
            self._startup_done.set()
        elif mtype == "lifespan.startup.failed":
            self._failure = message.get("message") or "lifespan startup failed"
            self._startup_done.set()
        elif mtype == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif mtype == "lifespan.shutdown.failed":
            self._failure = message.get("message") or "lifespan shutdown failed"
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected ASGI lifespan message type {mtype!r}")
