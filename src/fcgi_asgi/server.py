"""Serving: the listener, the lifespan, accepting connections, shutting down.

:func:`start_server` is the embedding API (like :func:`asyncio.start_server`);
:func:`run` is the blocking entry point the CLI uses.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import socket
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any

from .asgi.lifespan import Lifespan
from .config import AppType, ASGIApp, Config
from .context import ServerContext
from .draining import cut_remaining, drain, stop_accepting
from .interface import detect_interface, request_class, role_request_classes
from .listeners import Listener, effective_backlog, open_listener
from .memory import raise_malloc_thresholds
from .protocol.connection import FastCGIConnection
from .scoreboard import Scoreboard
from .sdnotify import Notifier

__all__ = ["FastCGIServer", "run", "start_server"]

logger = logging.getLogger("fcgi_asgi.error")

_SWEEP_INTERVAL = 1.0
#: Seconds tasks still running when the loop ends get to honour their cancellation.
EXIT_GRACE = 5.0


class FastCGIServer:
    """A running gateway: one listener, one app, its lifespan and connections.

    Use it as an async context manager (``async with await start_server(...)``)
    and call :meth:`serve_forever`, or call :meth:`close` then
    :meth:`wait_closed` yourself. A ``listener`` bound elsewhere (a worker
    process gets its parent's) is served instead of one made from ``config``.
    """

    def __init__(
        self, config: Config, app: ASGIApp | None = None, *, listener: Listener | None = None
    ) -> None:
        self.config = config
        self.app: ASGIApp | None = app
        self.listener: Listener | None = listener
        self.ctx: ServerContext | None = None
        self._server: asyncio.Server | None = None
        self._lifespan: Lifespan | None = None
        self._closed: asyncio.Event | None = None
        self._abort: asyncio.Event | None = None
        self._closing: asyncio.Task[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        #: Set by a supervisor before start(): shared counters and this worker's slot.
        self.scoreboard: Scoreboard | None = None
        self.slot = 0
        #: Set by a worker that hands its idle connections over when it
        #: drains (see handoff.py) instead of closing them.
        self.on_idle: Callable[[FastCGIConnection], None] | None = None

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (empty before :meth:`start` and after close)."""
        if self._server is None:
            return ()
        return tuple(self._server.sockets)

    @property
    def address(self) -> str:
        """Where the server listens, as ``unix:PATH`` or ``HOST:PORT``."""
        return self.listener.describe() if self.listener else "-"

    async def start(self) -> None:
        """Load the app, run lifespan startup, bind and begin accepting.

        Raises :class:`~fcgi_asgi.config.AppLoadError`,
        :class:`~fcgi_asgi.asgi.lifespan.LifespanFailure` or
        :class:`~fcgi_asgi.listeners.ListenError` with a printable message.
        """
        config = self.config
        loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._abort = asyncio.Event()
        app = self.app if self.app is not None else config.load()
        self.app = app
        name = repr(config.app) if isinstance(config.app, str) else "the app"
        interface = detect_interface(app, config.interface, name, config.factory)
        # Bind before lifespan startup so that a busy socket fails fast,
        # but accept only once the app is ready.
        listener = self.listener = self.listener or self._bind()
        try:
            # WSGI has no lifespan protocol.
            self._lifespan = Lifespan(app, config.lifespan if interface == "asgi" else "off")
            await self._lifespan.startup()
            self.ctx = ServerContext(
                app=app,
                config=config,
                state=self._lifespan.state,
                listen=listener.describe(),
                unix=listener.sock.family == socket.AF_UNIX,
                scoreboard=self.scoreboard,
                slot=self.slot,
                request_class=request_class(interface),
                role_classes=role_request_classes(interface, config.roles),
            )
            ctx = self.ctx

            def factory() -> FastCGIConnection:
                # Positional: a keyword argument to a class call costs 0.2 us.
                return FastCGIConnection(ctx, None, loop)

            backlog = effective_backlog(config.backlog)
            if listener.sock.family == socket.AF_UNIX:
                self._server = await loop.create_unix_server(
                    factory, sock=listener.sock, backlog=backlog, **_no_socket_cleanup(loop)
                )
            else:
                self._server = await loop.create_server(
                    factory, sock=listener.sock, backlog=backlog
                )
        except BaseException:
            listener.sock.close()
            listener.remove_file()
            if self._lifespan is not None:
                await self._lifespan.cancel()
            raise
        self._sweeper = loop.call_later(_SWEEP_INTERVAL, self._sweep)
        logger.info("fcgi-asgi serving on %s (backlog %d)", listener.describe(), backlog)

    def _sweep(self) -> None:
        # Once a second rather than a timer per connection or request: timeouts
        # are coarse (seconds), and the hot path stays free of timer handles.
        ctx = self.ctx
        if ctx is None:
            return
        now = asyncio.get_running_loop().time()
        for conn in list(ctx.connections):
            conn.check_timeouts(now)
        ctx.publish()
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_INTERVAL, self._sweep)

    def _bind(self) -> Listener:
        return open_listener(self.config)

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called (or the task is cancelled).

        Raises :class:`RuntimeError` once the server is closed: a closed
        server does not start again (start a new one).
        """
        if self._closing is not None or (self._closed is not None and self._closed.is_set()):
            raise RuntimeError("the server is closed; start a new one to serve again")
        if self._server is None:
            await self.start()
        assert self._closed is not None
        try:
            await self._closed.wait()
        finally:
            await self.aclose()

    def close(self) -> None:
        """Ask the server to stop; :meth:`serve_forever` then returns."""
        if self._closed is not None:
            self._closed.set()

    def abort(self) -> None:
        """Stop gracefully but without waiting for running requests.

        They see ``http.disconnect`` at once and are cancelled shortly after
        (what a second SIGTERM does). Called while the app's lifespan
        shutdown runs, it cancels that instead: one that hangs would
        otherwise keep the process alive whatever signal came next.
        """
        self.close()
        if self._abort is not None:
            self._abort.set()
        if self._lifespan is not None and self._lifespan.cancel_shutdown():
            logger.warning("lifespan shutdown cancelled before it completed")

    async def wait_closed(self) -> None:
        """Wait for a full shutdown started by :meth:`close` or :meth:`aclose`."""
        # Like asyncio.Server.wait_closed(): a task watching for the end must
        # not bring it about; once asked to close, it does the shutdown.
        if self._closed is not None:
            await self._closed.wait()
        await self.aclose()

    async def aclose(self, timeout: float | None = None) -> None:
        """Stop accepting, let running requests finish, then shut down.

        Requests still running after ``timeout`` seconds (default: the
        config's ``timeout_graceful_shutdown``) are cancelled. Runs lifespan
        shutdown and removes the unix socket file this server created.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._closing)

    async def _shutdown(self, timeout: float | None) -> None:
        if timeout is None:
            timeout = self.config.timeout_graceful_shutdown
        if self._closed is not None:
            self._closed.set()
        if self._server is not None:
            await stop_accepting(self._server)
        if self.listener is not None:
            self.listener.remove_file()
        if self._sweeper is not None:
            self._sweeper.cancel()
        ctx = self.ctx
        if ctx is not None:
            abort = self._abort or asyncio.Event()
            if not await drain(ctx, timeout, abort, self.on_idle) and not abort.is_set():
                logger.warning("graceful shutdown timed out after %.1f s", timeout)
            await cut_remaining(ctx)
            ctx.end_turn()  # writes still held for the end of this loop turn
            ctx.publish()  # the last counts, which the supervisor keeps once this worker exits
            if ctx.access_log is not None:
                ctx.access_log.flush()  # the last requests' lines, before the loop ends
        if self._lifespan is not None:
            try:
                await self._lifespan.shutdown()
            except Exception as exc:
                logger.error("%s", exc)
        if self._server is not None:
            self._server = None

    async def __aenter__(self) -> FastCGIServer:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


#: Config fields that need the ``fcgi-asgi`` command's own processes (a
#: supervisor, privilege dropping): an embedding program serves in its own.
_PROCESS_OPTIONS = frozenset(
    {"workers", "supervise", "max_requests", "max_requests_jitter", "user", "group"}
)


def _check_embedding_options(function: str, options: dict[str, Any], also: frozenset[str]) -> None:
    misplaced = sorted((_PROCESS_OPTIONS | also) & options.keys())
    if misplaced:
        raise TypeError(
            f"{function}() does not take {', '.join(f'{k}=' for k in misplaced)}: it serves in "
            "this process"
            + (" on the running event loop" if "loop" in also else "")
            + "; worker processes, --user and --group need the fcgi-asgi command"
        )


async def start_server(
    app: AppType,
    *,
    socket: str | None = None,
    host: str | None = None,
    port: int | None = None,
    fd: int | None = None,
    path: str | None = None,
    **options: Any,
) -> FastCGIServer:
    """Start serving ``app`` over FastCGI on the running event loop.

    Give ``socket`` (a unix socket path), ``host`` and ``port`` (TCP; port 0
    picks a free one) or ``fd`` (an inherited listening socket); ``path`` is
    the older name of ``socket``. ``options`` are any other
    :class:`~fcgi_asgi.config.Config` fields (``root_path``, ``lifespan``,
    ``access_log``, ...) except those that need processes of their own
    (``workers``, ``user``, ...) or another loop (``loop``): those raise
    :class:`TypeError`, a bad value :class:`~fcgi_asgi.config.ConfigError`.
    Lifespan startup has run when this returns; leaving ``async with`` on the
    returned server shuts it down::

        server = await fcgi_asgi.start_server(app, socket="/run/app.sock")
        async with server:
            await server.serve_forever()
    """
    _check_embedding_options("start_server", options, frozenset({"loop"}))
    if path is not None:
        if socket is not None:
            raise TypeError("start_server() takes socket= or its older name path=, not both")
        socket = path
    config = Config(app=app, socket=socket, host=host, port=port, fd=fd, **options)
    server = FastCGIServer(config)
    await server.start()
    return server


def _no_socket_cleanup(loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """Keyword that stops asyncio (3.13+) removing the socket file on close.

    The file is shared by every worker and by the supervisor, which removes it
    itself (only if it is still the one it bound): a worker that closes its
    server on reload must leave it, or new connections fail with ENOENT.
    uvloop has no such parameter and never removes the file.
    """
    try:
        params = inspect.signature(loop.create_unix_server).parameters
    except (TypeError, ValueError):
        return {}
    return {"cleanup_socket": False} if "cleanup_socket" in params else {}


def _new_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if name == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(app: AppType, **options: Any) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, blocking the caller.

    Takes the same keyword options as :class:`~fcgi_asgi.config.Config`
    (``socket``, ``host``, ``port``, ``fd``, ``loop``, ...), except those that
    need the ``fcgi-asgi`` command's processes (``workers``, ``user``, ...),
    which raise :class:`TypeError`. A second signal cancels running requests
    at once.
    """
    config = options.pop("config", None)
    if config is None:
        _check_embedding_options("run", options, frozenset())
        config = Config(app=app, **options)
    loaded = None if isinstance(app, str) else app
    raise_malloc_thresholds()  # this process serves: see memory.py
    _run_bounded(_serve_until_signalled(FastCGIServer(config, loaded)), config.loop)


def _run_bounded(main: Coroutine[Any, Any, None], loop_name: str) -> None:
    # asyncio.Runner, except for its exit: Runner waits without limit for the
    # tasks it cancels, so one request that swallows its cancellation (an app
    # bug) would keep the process alive for good after the shutdown; here the
    # leftovers get EXIT_GRACE seconds, then are named in the log and dropped.
    loop = _new_loop_factory(loop_name)()
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    done, pending = loop.run_until_complete(asyncio.wait(tasks, timeout=EXIT_GRACE))
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception in a task cancelled at exit",
                    "exception": task.exception(),
                    "task": task,
                }
            )
    if pending:
        logger.error(
            "%d task(s) ignored cancellation at exit and are left behind: %s",
            len(pending),
            ", ".join(repr(task.get_coro()) for task in pending),
        )


async def _serve_until_signalled(server: FastCGIServer) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    notifier = Notifier.from_environ()
    signals = 0
    starting = True

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if starting:
            # Handled from the start: SIGTERM's default action would kill the
            # process with its socket file bound and the app half started.
            if signals == 1 and main is not None:
                logger.info("received %s during startup, stopping", signal.Signals(signum).name)
                main.cancel()
        elif signals == 1:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
            notifier.stopping()
            server.close()
        else:
            logger.warning(
                "received %s again, cancelling running requests", signal.Signals(signum).name
            )
            server.abort()

    def on_hangup() -> None:
        # Reloading needs fresh processes; dying on a reload signal would be worse.
        logger.warning("received SIGHUP: ignored; run with --workers N to reload on SIGHUP")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        try:
            await server.start()
        except asyncio.CancelledError:
            if not signals or main is None:
                raise
            main.uncancel()
            return  # start() has closed the listener and cancelled the lifespan
        starting = False
        if notifier.enabled and server.listener is not None:
            notifier.ready(f"serving on {server.listener.describe()}")
        await server.serve_forever()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
