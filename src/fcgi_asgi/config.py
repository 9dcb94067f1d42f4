"""One validated options object for the gateway, and loading the ASGI app.

The command line, the embedding API and the tests all build a :class:`Config`;
nothing else reads options from anywhere.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ASGIApp", "AppLoadError", "Config", "ConfigError", "load_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LifespanMode = Literal["auto", "on", "off"]
LoopName = Literal["auto", "asyncio", "uvloop"]

DEFAULT_BACKLOG = 2048


class ConfigError(ValueError):
    """An option has a value the gateway cannot run with."""


class AppLoadError(ConfigError):
    """The ASGI application could not be imported or built."""


@dataclass
class Config:
    """Every option of the gateway, validated on construction.

    Give exactly one listener: ``socket`` (a unix socket path), ``host`` and
    ``port`` (TCP), or ``fd`` (an inherited listening socket). With none, the
    CLI looks for a listening socket on fd 0 (FCGI_LISTENSOCK_FILENO) as
    lighttpd's ``bin-path`` and spawn-fcgi provide.
    """

    app: ASGIApp | str
    socket: str | None = None
    host: str | None = None
    port: int | None = None
    fd: int | None = None
    factory: bool = False
    app_dir: str | None = None
    root_path: str | None = None
    lifespan: LifespanMode = "auto"
    loop: LoopName = "auto"
    log_level: str = "info"
    access_log: bool = True
    backlog: int = DEFAULT_BACKLOG
    #: Largest PARAMS stream accepted for one request, in bytes.
    max_params_size: int = 1 << 20
    #: Connections served at once; 0 means no limit.
    max_connections: int = 0
    #: Requests one connection may run at once (FCGI_MAX_REQS); more get OVERLOADED.
    max_requests_per_connection: int = 100
    #: Unread request body a connection may hold before reading pauses.
    read_buffer_size: int = 512 << 10
    #: Transport write buffer above which ``send()`` waits for the peer.
    write_buffer_size: int = 256 << 10
    #: Seconds a finished non-keep-conn request waits for the rest of its STDIN before closing.
    stdin_linger: float = 5.0
    #: Seconds running requests get to finish on shutdown before they are cancelled.
    timeout_graceful_shutdown: float = 30.0
    #: Peers (IP addresses or networks) allowed to connect over TCP; empty allows all.
    allow: tuple[str, ...] = ()
    #: Requests running at once in this process; more get OVERLOADED. 0 means no limit.
    max_concurrent_requests: int = 0
    #: Seconds a peer has to send a complete BEGIN_REQUEST + PARAMS (slowloris guard).
    params_timeout: float = 10.0
    #: Seconds an idle keep-conn connection stays open.
    keepalive_timeout: float = 75.0
    #: Seconds an app may take for one request before it is cancelled (504). None: no limit.
    request_timeout: float | None = None
    #: Requests taking longer than this many seconds count as slow on the status page.
    slow_request_threshold: float = 5.0
    #: Seconds a response may wait for the web server to read more of it before
    #: the request is cut (nginx's send_timeout). None: no limit.
    send_timeout: float | None = 60.0
    #: Serve several requests at once on one connection (FCGI_MPXS_CONNS=1).
    multiplex: bool = True
    #: Path answered by the gateway itself with its status (like php-fpm's pm.status_path).
    status_path: str | None = None
    #: Path answered by the gateway itself with 200 "pong" (like php-fpm's ping.path).
    ping_path: str | None = None
    #: Access log line format (see README); None is the default format.
    access_log_format: str | None = None
    #: Worker processes; more than 1 (or max_requests, user, group) runs a supervisor.
    workers: int = 1
    #: Run under the supervisor even with one worker (``--workers`` given), so
    #: that SIGHUP reloads and a crashed worker is respawned.
    supervise: bool = False
    #: Requests a worker serves before it is replaced (0: never).
    max_requests: int = 0
    #: A random 0..J added to max_requests per worker, so workers do not recycle together.
    max_requests_jitter: int = 0
    #: Permission bits for the unix socket file (e.g. 0o660); None keeps the umask's.
    socket_mode: int | None = None
    #: ``USER[:GROUP]`` (or ``:GROUP``) to own the unix socket file.
    socket_owner: str | None = None
    #: User and group the app runs as, after binding (needs root).
    user: str | None = None
    group: str | None = None
    #: Extra keys for tests and embedders; not read by the gateway.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError(f"--lifespan must be auto, on or off, not {self.lifespan!r}")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError(f"--loop must be auto, asyncio or uvloop, not {self.loop!r}")
        listeners = sum(x is not None for x in (self.socket, self.fd, self.port))
        if self.host is not None and self.port is None:
            raise ConfigError("--host needs --port")
        if listeners > 1:
            raise ConfigError("give only one of --socket, --host/--port and --fd")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0-65535, not {self.port}")
        if self.socket == "":
            raise ConfigError("--socket needs a path")
        if self.fd is not None and self.fd < 0:
            raise ConfigError(f"--fd must be a file descriptor number (0 or more), not {self.fd}")
        for name in (
            "backlog",
            "max_params_size",
            "max_requests_per_connection",
            "read_buffer_size",
            "write_buffer_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer")
        for name in ("max_concurrent_requests", "max_connections"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 (no limit) or more")
        # "not x > 0" rather than "x <= 0": NaN compares false both ways.
        for name in ("params_timeout", "keepalive_timeout", "slow_request_threshold"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be more than 0 seconds")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ConfigError("--request-timeout must be more than 0 seconds")
        if self.send_timeout is not None and not self.send_timeout > 0:
            raise ConfigError(
                "--send-timeout must be more than 0 seconds (0 on the command line: none)"
            )
        if not self.timeout_graceful_shutdown >= 0:
            raise ConfigError("--timeout-graceful-shutdown must be 0 seconds or more")
        for name in ("status_path", "ping_path"):
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise ConfigError(f"--{name.replace('_', '-')} must start with '/', not {value!r}")
        if self.status_path is not None and self.status_path == self.ping_path:
            # Only one page can answer a path: the ping would hide the status.
            raise ConfigError(
                f"--status-path and --ping-path must differ, not both {self.ping_path!r}"
            )
        if self.access_log_format is not None:
            from .accesslog import AccessLogFormat

            AccessLogFormat(self.access_log_format)  # raises ConfigError when malformed
        self.allow = tuple(self.allow)
        from .allowlist import AllowList

        # Here, not only in each worker: a bad entry is one error before binding.
        AllowList(self.allow)  # raises ConfigError for an entry that is no network
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError("--workers must be a positive integer")
        for name in ("max_requests", "max_requests_jitter"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or a positive integer")
        if self.socket_mode is not None and not 0 <= self.socket_mode <= 0o777:
            raise ConfigError(f"--socket-mode must be octal 0-777, not {self.socket_mode:o}")
        if (self.socket_mode is not None or self.socket_owner) and self.socket is None:
            raise ConfigError("--socket-mode and --socket-owner apply to --socket only")
        if self.root_path is not None:
            if self.root_path and not self.root_path.startswith("/"):
                raise ConfigError(f"--root-path must start with '/', not {self.root_path!r}")
            self.root_path = self.root_path.rstrip("/")

    @property
    def max_connections_hint(self) -> int:
        """FCGI_MAX_CONNS as answered to GET_VALUES."""
        return self.max_connections or 65535

    @property
    def listen_host(self) -> str:
        """TCP host to bind; ``127.0.0.1`` when only a port was given."""
        return self.host if self.host is not None else "127.0.0.1"

    def load(self) -> ASGIApp:
        """Import (or return) the app, honouring ``app_dir`` and ``factory``."""
        return load_app(self.app, factory=self.factory, app_dir=self.app_dir)


def load_app(app: ASGIApp | str, *, factory: bool = False, app_dir: str | None = None) -> ASGIApp:
    """Resolve ``"module:attribute"`` to an ASGI app.

    Raises :class:`AppLoadError` with a one-line message that names the
    module or attribute that failed, for the CLI to print as it is.
    """
    if not isinstance(app, str):
        loaded: Any = app
    else:
        module_name, sep, attrs = app.partition(":")
        if not sep or not module_name or not attrs:
            raise AppLoadError(f'app must be given as "module:attribute", not {app!r}')
        if app_dir is not None:
            sys.path.insert(0, os.path.abspath(app_dir))
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
                raise AppLoadError(
                    f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
                ) from exc
            raise AppLoadError(f"could not import module {module_name!r}") from exc
        except Exception as exc:
            raise AppLoadError(
                f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        loaded = module
        try:
            for attr in attrs.split("."):
                loaded = getattr(loaded, attr)
        except AttributeError as exc:
            raise AppLoadError(f"module {module_name!r} has no attribute {attrs!r}") from exc
    if factory:
        try:
            loaded = loaded()
        except Exception as exc:
            raise AppLoadError(f"app factory {app!r} raised {type(exc).__name__}: {exc}") from exc
    if not callable(loaded):
        raise AppLoadError(f"{app!r} is not callable, so it is not an ASGI app")
    if _is_asgi2(loaded):
        raise AppLoadError(f"{app!r} looks like an ASGI 2 app; only ASGI 3 is supported")
    return loaded  # type: ignore[no-any-return]


def _is_asgi2(app: Any) -> bool:
    if inspect.isclass(app):
        return True
    try:
        sig = inspect.signature(app)
    except (TypeError, ValueError):
        return False
    positional = [
        p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    has_varargs = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    return len(positional) == 1 and not has_varargs
