"""The ``fcgi-asgi`` command line: maps options onto :class:`Config` and runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .allowlist import parse_web_server_addrs
from .config import Config, ConfigError
from .lifespan import LifespanFailure
from .listeners import ListenError
from .logconfig import LOG_LEVELS, configure_logging
from .server import run
from .supervisor import needs_supervisor, supervise

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``fcgi-asgi APP [options]``."""
    p = argparse.ArgumentParser(
        prog="fcgi-asgi",
        description="Serve an ASGI 3 application over FastCGI, behind nginx, lighttpd, "
        "Apache httpd, Caddy or h2o.",
        epilog="Run 'fcgi-asgi request --help' for the FastCGI client sub-command. "
        "With no --socket, --host/--port or --fd, a socket passed by systemd socket "
        "activation (LISTEN_FDS) or a listening socket on fd 0 (FCGI_LISTENSOCK_FILENO, "
        "as lighttpd's bin-path and spawn-fcgi provide) is used. With --workers N, SIGHUP "
        "reloads the app and SIGTTIN/SIGTTOU add or remove a worker.",
    )
    p.add_argument("app", metavar="APP", help='the ASGI app as "module:attribute"')
    where = p.add_argument_group("where to listen")
    where.add_argument("--socket", metavar="PATH", help="unix socket path to bind")
    where.add_argument("--host", help="TCP host to bind (default 127.0.0.1 with --port)")
    where.add_argument("--port", type=int, help="TCP port to bind")
    where.add_argument("--fd", type=int, help="inherited listening socket file descriptor")
    where.add_argument(
        "--backlog",
        type=int,
        default=2048,
        help="listen backlog, capped by the kernel's somaxconn (default: %(default)s)",
    )
    where.add_argument(
        "--socket-mode",
        type=_octal,
        metavar="MODE",
        help="permissions of the --socket file, in octal, e.g. 0660",
    )
    where.add_argument(
        "--socket-owner",
        metavar="USER[:GROUP]",
        help="owner of the --socket file (default: --user/--group when given)",
    )
    app = p.add_argument_group("the application")
    app.add_argument(
        "--factory", action="store_true", help="APP is a callable that returns the ASGI app"
    )
    app.add_argument(
        "--app-dir",
        metavar="DIR",
        default=".",
        help="directory put first on sys.path before importing APP (default: the current one)",
    )
    app.add_argument(
        "--root-path",
        metavar="PATH",
        help="the prefix the app is mounted at (ASGI root_path), e.g. /app",
    )
    app.add_argument(
        "--lifespan",
        choices=("auto", "on", "off"),
        default="auto",
        help="run the ASGI lifespan protocol (default: %(default)s)",
    )
    run_ = p.add_argument_group("running")
    run_.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop; auto uses uvloop when installed (default: %(default)s)",
    )
    run_.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="level of the gateway's loggers fcgi_asgi and fcgi_asgi.error; trace is below "
        "debug (default: info, or what --log-config says)",
    )
    run_.add_argument(
        "--log-config",
        metavar="FILE",
        help="logging configuration replacing the default one: dictConfig as .json (or "
        ".yaml/.yml with PyYAML installed), else a fileConfig .ini file",
    )
    run_.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per request (default: on)",
    )
    run_.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running requests may take to finish "
        "before they are cancelled (default: %(default)s)",
    )
    procs = p.add_argument_group("processes")
    procs.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes sharing the socket, under a supervisor that "
        "respawns them and reloads on SIGHUP (default: none, the gateway serves in "
        "one process that ignores SIGHUP)",
    )
    procs.add_argument(
        "--max-requests",
        type=int,
        default=0,
        metavar="N",
        help="replace a worker after about N requests; 0 never (default: %(default)s)",
    )
    procs.add_argument(
        "--max-requests-jitter",
        type=int,
        default=0,
        metavar="J",
        help="add a random 0..J to --max-requests per worker (default: %(default)s)",
    )
    procs.add_argument("--user", help="run the app as this user after binding (needs root)")
    procs.add_argument(
        "--group", help="run the app as this group (default: the --user's group; needs root)"
    )
    limits = p.add_argument_group("limits")
    limits.add_argument(
        "--max-params-size",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="largest PARAMS (CGI headers) per request (default: %(default)s)",
    )
    limits.add_argument(
        "--max-requests-per-connection",
        type=int,
        default=100,
        metavar="N",
        help="requests multiplexed on one connection at once; more get "
        "OVERLOADED (default: %(default)s)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=0,
        metavar="N",
        help="connections served at once by one process; more are closed at once and "
        "logged, so a web server with other backends tries another (default: 0, no limit)",
    )
    limits.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=0,
        metavar="N",
        help="requests running at once in this process; more get OVERLOADED at once "
        "instead of queueing (default: 0, no limit)",
    )
    limits.add_argument(
        "--params-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a peer that opens a connection or request and does not finish sending its "
        "PARAMS within this time is dropped (default: %(default)s)",
    )
    limits.add_argument(
        "--keepalive-timeout",
        type=float,
        default=75.0,
        metavar="SECONDS",
        help="close keep-conn connections idle this long (default: %(default)s)",
    )
    limits.add_argument(
        "--request-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cancel an app still running a request after this long; the client gets 504 "
        "if nothing was sent yet (default: no limit)",
    )
    access = p.add_argument_group("access and observability")
    access.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="ADDR[/PREFIX]",
        help="only these peers may connect over TCP (repeatable; adds to "
        "FCGI_WEB_SERVER_ADDRS); others are closed at once and logged",
    )
    access.add_argument(
        "--access-log-format",
        metavar="FORMAT",
        help="access log line, a Python format over fields such as {client} {method} "
        "{target} {status} {bytes} {duration_ms}, or 'json' for JSON lines (see README)",
    )
    access.add_argument(
        "--status-path",
        metavar="PATH",
        help="path the gateway answers itself with its status, e.g. /fcgi-status",
    )
    access.add_argument(
        "--ping-path",
        metavar="PATH",
        help="path the gateway answers itself with 200 'pong', e.g. /fcgi-ping",
    )
    access.add_argument(
        "--slow-request-threshold",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="requests slower than this count as slow on the status page (default: %(default)s)",
    )
    p.add_argument("--version", action="version", version=f"fcgi-asgi {__version__}")
    return p


def _octal(value: str) -> int:
    try:
        return int(value, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {value!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway; returns the process exit code (0, or 1 on error).

    ``fcgi-asgi request ...`` runs the FastCGI client sub-command instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["request"]:
        from .request_cmd import request_main

        return request_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_config, args.access_log_format == "json")
        config = Config(
            app=args.app,
            socket=args.socket,
            host=args.host,
            port=args.port,
            fd=args.fd,
            backlog=args.backlog,
            factory=args.factory,
            app_dir=args.app_dir,
            root_path=args.root_path,
            lifespan=args.lifespan,
            loop=args.loop,
            log_level=args.log_level or "info",
            access_log=args.access_log,
            timeout_graceful_shutdown=args.timeout_graceful_shutdown,
            max_params_size=args.max_params_size,
            max_requests_per_connection=args.max_requests_per_connection,
            max_concurrent_requests=args.max_concurrent_requests,
            max_connections=args.max_connections,
            params_timeout=args.params_timeout,
            keepalive_timeout=args.keepalive_timeout,
            request_timeout=args.request_timeout,
            allow=(
                *parse_web_server_addrs(os.environ.get("FCGI_WEB_SERVER_ADDRS", "")),
                *args.allow,
            ),
            access_log_format=args.access_log_format,
            status_path=args.status_path,
            ping_path=args.ping_path,
            slow_request_threshold=args.slow_request_threshold,
            workers=1 if args.workers is None else args.workers,
            supervise=args.workers is not None,
            max_requests=args.max_requests,
            max_requests_jitter=args.max_requests_jitter,
            socket_mode=args.socket_mode,
            socket_owner=args.socket_owner,
            user=args.user,
            group=args.group,
        )
        if config.loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise ConfigError("--loop uvloop: uvloop is not installed") from None
        if needs_supervisor(config):
            # The supervisor never imports the app: each worker does, so
            # that a reload (SIGHUP) runs the new code.
            return supervise(config)
        app = config.load()  # fail before binding anything
        run(app, config=config)
    except (ConfigError, ListenError, LifespanFailure) as exc:
        message = exc.strerror if isinstance(exc, ListenError) else str(exc)
        print(f"fcgi-asgi: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
