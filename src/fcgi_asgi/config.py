"""One validated options object for the gateway, and loading the ASGI app.

The command line, the embedding API and the tests all build a :class:`Config`;
nothing else reads options from anywhere.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from .protocol.offload import SENDFILE_HEADERS

__all__ = [
    "ASGIApp",
    "AppLoadError",
    "AppType",
    "Config",
    "ConfigError",
    "load_app",
    "opt",
    "use_option_names",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: What the API accepts as an app, as uvicorn does: any callable (its own
#: types for scope and messages are the framework's business, checked at
#: start by signature) or ``"module:attribute"``.
AppType = Callable[..., Any] | str

LifespanMode = Literal["auto", "on", "off"]
LoopName = Literal["auto", "asyncio", "uvloop"]

DEFAULT_BACKLOG = 2048
#: WSGI threads per process: WSGI apps mostly wait on databases and other
#: services, so a handful of threads keep the process busy while the GIL and
#: memory per thread stay cheap (mod_wsgi's default is 15).
DEFAULT_THREADS = 16


# Marks an option's name inside a ConfigError message, so that the message
# names it as the embedding API does (``port=``) or as the CLI does (``--port``).
_MARK = "\x1f"


def opt(name: str) -> str:
    """The option ``name`` (a :class:`Config` field) inside a ConfigError message."""
    return f"{_MARK}{name}{_MARK}"


_option_names: dict[str, str] = {}


def use_option_names(names: Mapping[str, str]) -> None:
    """Name options as ``names`` maps them (field -> ``--option``) in this process's errors.

    The command line calls it once at start; its worker processes inherit it.
    """
    _option_names.clear()
    _option_names.update(names)


class ConfigError(ValueError):
    """An option has a value the gateway cannot run with.

    ``str()`` names options as keywords (``port=``), or by their command-line
    names in the ``fcgi-asgi`` command (see :func:`use_option_names`).
    """

    def __str__(self) -> str:
        return self.render(_option_names)

    def render(self, names: Mapping[str, str]) -> str:
        """The message, with each option named by ``names`` (default ``field=``)."""
        parts = str(self.args[0] if self.args else "").split(_MARK)
        return "".join(
            part if i % 2 == 0 else names.get(part, f"{part}=") for i, part in enumerate(parts)
        )


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

    app: AppType
    socket: str | None = None
    host: str | None = None
    port: int | None = None
    fd: int | None = None
    factory: bool = False
    app_dir: str | None = None
    root_path: str | None = None
    lifespan: LifespanMode = "auto"
    #: ``auto`` tells an ASGI 3 app from a WSGI app at start; or ``asgi``, ``wsgi``.
    interface: Literal["auto", "asgi", "wsgi"] = "auto"
    #: Threads a WSGI app runs in (per worker process); requests beyond them wait.
    threads: int = DEFAULT_THREADS
    #: FastCGI roles the app serves: ``responder``, ``authorizer``, ``filter``.
    #: An AUTHORIZER request for an app without that role is refused (403).
    roles: tuple[str, ...] = ("responder",)
    loop: LoopName = "auto"
    log_level: str = "info"
    access_log: bool = True
    #: Also send a request's error log lines to the web server as FCGI_STDERR.
    stderr_to_web_server: bool = False
    #: A whole-file response becomes this header (X-Accel-Redirect, X-Sendfile,
    #: X-LIGHTTPD-send-file); None streams files.
    sendfile_header: str | None = None
    #: ``FROM=TO`` path-prefix rewrites for the sendfile header's value.
    sendfile_map: tuple[str, ...] = ()
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
    #: Requests running at once in this process; more get a 503. 0 means no limit.
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
    #: Path answered by the gateway itself with Prometheus metrics, summed over workers.
    metrics_path: str | None = None
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
    #: A dynamic pool between workers_min and workers_max workers (workers_max
    #: 0: a fixed pool of ``workers``); ``workers`` is then the number started
    #: with. workers_min defaults to 1; 0 starts a worker only once a
    #: connection waits (php-fpm's ``pm = ondemand``).
    workers_min: int | None = None
    workers_max: int = 0
    #: A dynamic pool keeps at least this many idle workers (up to workers_max)...
    min_spare_workers: int = 1
    #: ... and at most this many (0: workers_max).
    max_spare_workers: int = 0
    #: Seconds after which an idle worker of a dynamic pool is stopped.
    worker_idle_timeout: float = 10.0
    #: Import the app in the supervisor, before forking workers (shared copy-on-write).
    preload: bool = False
    #: Directory workers chroot into after binding and importing the app (needs root).
    chroot: str | None = None
    #: Resident memory in MiB above which a worker is replaced (0: no ceiling).
    max_worker_memory: int = 0
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
        _check_types(self)
        if self.lifespan not in ("auto", "on", "off"):
            raise ConfigError(f"{opt('lifespan')} must be auto, on or off, not {self.lifespan!r}")
        if self.interface not in ("auto", "asgi", "wsgi"):
            raise ConfigError(
                f"{opt('interface')} must be auto, asgi or wsgi, not {self.interface!r}"
            )
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(
                f"{opt('threads')} must be a positive integer, or 0 to run a WSGI app "
                "on the event loop"
            )
        self.roles = _check_roles(self.roles)
        self._check_sendfile()
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError(f"{opt('loop')} must be auto, asyncio or uvloop, not {self.loop!r}")
        listeners = sum(x is not None for x in (self.socket, self.fd, self.port))
        if self.host is not None and self.port is None:
            raise ConfigError(f"{opt('host')} needs {opt('port')}")
        if listeners > 1:
            raise ConfigError(
                f"give only one of {opt('socket')}, {opt('host')}/{opt('port')} and {opt('fd')}"
            )
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ConfigError(f"{opt('port')} must be 0-65535, not {self.port}")
        if self.socket == "":
            raise ConfigError(f"{opt('socket')} needs a path")
        if self.fd is not None and self.fd < 0:
            raise ConfigError(
                f"{opt('fd')} must be a file descriptor number (0 or more), not {self.fd}"
            )
        if self.app_dir is not None and not os.path.isdir(self.app_dir):
            raise ConfigError(f"{opt('app_dir')} {self.app_dir!r}: no such directory")
        for name in (
            "backlog",
            "max_params_size",
            "max_requests_per_connection",
            "read_buffer_size",
            "write_buffer_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{opt(name)} must be a positive integer")
        for name in ("max_concurrent_requests", "max_connections"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{opt(name)} must be 0 (no limit) or more")
        # "not x > 0" rather than "x <= 0": NaN compares false both ways.
        for name in ("params_timeout", "keepalive_timeout", "slow_request_threshold"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{opt(name)} must be more than 0 seconds")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ConfigError(f"{opt('request_timeout')} must be more than 0 seconds")
        if self.send_timeout is not None and not self.send_timeout > 0:
            raise ConfigError(
                f"{opt('send_timeout')} must be more than 0 seconds (0 on the command line: none)"
            )
        if not self.timeout_graceful_shutdown >= 0:
            raise ConfigError(f"{opt('timeout_graceful_shutdown')} must be 0 seconds or more")
        internal = ("status_path", "ping_path", "metrics_path")
        for name in internal:
            value = getattr(self, name)
            if value is not None and not value.startswith("/"):
                raise ConfigError(f"{opt(name)} must start with '/', not {value!r}")
        for i, name in enumerate(internal):
            for other in internal[i + 1 :]:
                value = getattr(self, name)
                if value is not None and value == getattr(self, other):
                    # Only one page can answer a path: one would hide the other.
                    raise ConfigError(
                        f"{opt(name)} and {opt(other)} must differ, not both {value!r}"
                    )
        if self.access_log_format is not None:
            from .accesslog import AccessLogFormat

            AccessLogFormat(self.access_log_format)  # raises ConfigError when malformed
        self.allow = tuple(self.allow)
        if self.allow and self.socket is not None:
            raise ConfigError(
                f"{opt('allow')} applies to TCP only; who may connect to a {opt('socket')} "
                f"is decided by its file permissions ({opt('socket_mode')}, {opt('socket_owner')})"
            )
        from .allowlist import AllowList

        # Here, not only in each worker: a bad entry is one error before binding.
        AllowList(self.allow)  # raises ConfigError for an entry that is no network
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"{opt('workers')} must be a positive integer")
        for name in ("max_requests", "max_requests_jitter", "max_worker_memory"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"{opt(name)} must be 0 or a positive integer")
        self._check_pool()
        if self.socket_mode is not None and not 0 <= self.socket_mode <= 0o777:
            raise ConfigError(f"{opt('socket_mode')} must be octal 0-777, not {self.socket_mode:o}")
        if (self.socket_mode is not None or self.socket_owner) and self.socket is None:
            raise ConfigError(
                f"{opt('socket_mode')} and {opt('socket_owner')} apply to {opt('socket')} only"
            )
        if self.chroot is not None and not os.path.isabs(self.chroot):
            raise ConfigError(f"{opt('chroot')} must be an absolute path, not {self.chroot!r}")
        if self.root_path is not None:
            if self.root_path and not self.root_path.startswith("/"):
                raise ConfigError(f"{opt('root_path')} must start with '/', not {self.root_path!r}")
            if any(c in self.root_path for c in "?#"):
                raise ConfigError(
                    f"{opt('root_path')} is a path prefix and cannot hold '?' or '#', "
                    f"not {self.root_path!r}"
                )
            self.root_path = self.root_path.rstrip("/")

    def _check_pool(self) -> None:
        if not self.workers_max:
            if self.workers_min is not None:
                raise ConfigError(f"{opt('workers_min')} needs {opt('workers_max')}")
            if self.workers < 1:
                raise ConfigError(f"{opt('workers')} must be a positive integer")
            return
        if self.workers_min is None:
            self.workers_min = 1
        if not 0 <= self.workers_min <= self.workers_max or self.workers_max < 1:
            raise ConfigError(
                f"{opt('workers_max')} must be at least {opt('workers_min')} and at least 1 "
                f"({opt('workers_min')} 0 starts workers on demand)"
            )
        if self.min_spare_workers < 1:
            raise ConfigError(f"{opt('min_spare_workers')} must be a positive integer")
        if self.max_spare_workers and self.max_spare_workers < self.min_spare_workers:
            raise ConfigError(
                f"{opt('max_spare_workers')} must be at least {opt('min_spare_workers')}"
            )
        if not self.worker_idle_timeout > 0:
            raise ConfigError(f"{opt('worker_idle_timeout')} must be more than 0 seconds")
        # --workers is where the pool starts, within its bounds.
        self.workers = min(max(self.workers, self.workers_min), self.workers_max)

    @property
    def max_connections_hint(self) -> int:
        """FCGI_MAX_CONNS as answered to GET_VALUES."""
        return self.max_connections or 65535

    def _check_sendfile(self) -> None:
        if self.sendfile_header is not None:
            known = SENDFILE_HEADERS.get(self.sendfile_header.lower())
            if known is None:
                raise ConfigError(
                    f"{opt('sendfile_header')} must be one of "
                    f"{', '.join(SENDFILE_HEADERS.values())}, not {self.sendfile_header!r}"
                )
            self.sendfile_header = known
        self.sendfile_map = tuple(self.sendfile_map)
        for entry in self.sendfile_map:
            src, eq, _ = entry.partition("=")
            if not eq or not src.startswith("/"):
                raise ConfigError(
                    f"{opt('sendfile_map')} takes FROM=TO with FROM an absolute path "
                    f"prefix, not {entry!r}"
                )
        if self.sendfile_map and self.sendfile_header is None:
            raise ConfigError(f"{opt('sendfile_map')} needs {opt('sendfile_header')}")

    @property
    def listen_host(self) -> str:
        """TCP host to bind; ``127.0.0.1`` when only a port was given."""
        return self.host if self.host is not None else "127.0.0.1"

    def load(self) -> ASGIApp:
        """Import (or return) the app, honouring ``app_dir`` and ``factory``."""
        return load_app(self.app, factory=self.factory, app_dir=self.app_dir)


ROLES = ("responder", "authorizer", "filter")


def _check_roles(roles: Any) -> tuple[str, ...]:
    if isinstance(roles, str):
        roles = [r.strip() for r in roles.split(",")]
    if not isinstance(roles, list | tuple | frozenset | set):
        raise ConfigError(f"{opt('roles')} must be a list of roles, not {roles!r}")
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        wrong = ", ".join(map(str, unknown)) or "none"
        raise ConfigError(f"{opt('roles')} takes roles among {', '.join(ROLES)}, not {wrong}")
    return tuple(r for r in ROLES if r in roles)


_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,)}


def _check_types(config: Config) -> None:
    """Wrong types (``port="9000"``) are errors that name the keyword."""
    for f in fields(config):
        annotation = str(f.type)
        optional = annotation.endswith(" | None")
        base = annotation.removesuffix(" | None")
        value = getattr(config, f.name)
        if value is None and optional:
            continue
        if base == "bool":
            ok = isinstance(value, bool)
        elif base in _TYPES:
            ok = isinstance(value, _TYPES[base]) and not isinstance(value, bool)
        else:
            continue
        if not ok:
            wanted = {"float": "a number", "int": "an int", "str": "a str", "bool": "a bool"}[base]
            raise ConfigError(
                f"{opt(f.name)} must be {wanted}{' or None' if optional else ''}, "
                f"not {type(value).__name__} {value!r}"
            )


def load_app(app: AppType, *, factory: bool = False, app_dir: str | None = None) -> ASGIApp:
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
            where = f" from {opt('app_dir')} {os.path.abspath(app_dir)}" if app_dir else ""
            raise AppLoadError(f"could not import module {module_name!r}{where}") from exc
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
        raise AppLoadError(f"{app!r} is not callable, so it is not an app")
    return loaded  # type: ignore[no-any-return]
