"""The ``fcgi-asgi`` command line: maps options onto :class:`Config` and runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

from . import __version__
from .allowlist import parse_web_server_addrs
from .asgi.lifespan import LifespanFailure
from .config import DEFAULT_THREADS, Config, ConfigError, opt, use_option_names
from .listeners import ListenError
from .logconfig import LOG_LEVELS, configure_logging
from .server import run
from .supervisor import needs_supervisor, supervise

__all__ = ["build_parser", "main"]

#: Every option can be set as FCGI_ASGI_<OPTION> (its first name, upper case, "_" for "-").
ENV_PREFIX = "FCGI_ASGI_"
#: Variables other servers read, used when the FCGI_ASGI_ one is not set (uvicorn, gunicorn).
ENV_FALLBACKS = {f"{ENV_PREFIX}WORKERS": "WEB_CONCURRENCY"}


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
        "reloads the app and SIGTTIN/SIGTTOU add or remove a worker. Every option can also "
        f"be set as {ENV_PREFIX}<OPTION> in the environment (e.g. {ENV_PREFIX}PORT=9000, "
        f"{ENV_PREFIX}ACCESS_LOG=false); the command line wins, and WEB_CONCURRENCY sets "
        "--workers when nothing else does.",
    )
    p.add_argument("app", metavar="APP", help='the ASGI or WSGI app as "module:attribute"')
    where = p.add_argument_group("where to listen")
    where.add_argument("--socket", "--uds", metavar="PATH", help="unix socket path to bind")
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
    app.add_argument(
        "--interface",
        choices=("auto", "asgi", "wsgi"),
        default="auto",
        help="the app's interface; auto tells ASGI 3 from WSGI (default: %(default)s)",
    )
    app.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        metavar="N",
        help="threads a WSGI app runs in, per process (default: %(default)s)",
    )
    app.add_argument(
        "--roles",
        metavar="LIST",
        default="responder",
        help="FastCGI roles the app serves, comma-separated: responder, authorizer, filter "
        "(default: %(default)s; AUTHORIZER requests are refused with 403 unless listed)",
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
        "--stderr-to-web-server",
        action="store_true",
        help="also send each request's error log lines (an app's exception, wsgi.errors) "
        "to the web server as FCGI_STDERR, for its error log",
    )
    run_.add_argument(
        "--sendfile-header",
        metavar="NAME",
        help="answer a whole-file response (http.response.pathsend, wsgi.file_wrapper) with "
        "this header for the web server to send the file: X-Accel-Redirect (nginx), "
        "X-Sendfile (Apache mod_xsendfile, lighttpd), X-LIGHTTPD-send-file",
    )
    run_.add_argument(
        "--sendfile-map",
        action="append",
        default=[],
        metavar="FROM=TO",
        help="rewrite the file path prefix FROM to TO in --sendfile-header (repeatable; "
        "nginx needs an internal location's URI); files under no FROM are streamed",
    )
    run_.add_argument(
        "--timeout-graceful-shutdown",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM, how long running requests may take to finish "
        "before they are cancelled (default: %(default)s)",
    )
    dev = p.add_argument_group("development")
    dev.add_argument(
        "--reload",
        action="store_true",
        help="restart the app when a .py file under --reload-dir changes (needs watchfiles: "
        "pip install 'fcgi-asgi[reload]'); for development",
    )
    dev.add_argument(
        "--reload-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="directory --reload watches (repeatable; default: --app-dir)",
    )
    dev.add_argument(
        "--env-file",
        metavar="FILE",
        help="read KEY=VALUE lines into the environment first (existing variables win), "
        f"for the app and for {ENV_PREFIX}* options",
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
        "--workers-min",
        type=int,
        default=None,
        metavar="N",
        help="with --workers-max: the fewest workers of a dynamic pool (default: 1); 0 "
        "starts a worker only when a connection comes and stops the last one once idle, "
        "as php-fpm's pm = ondemand",
    )
    procs.add_argument(
        "--workers-max",
        type=int,
        default=0,
        metavar="N",
        help="a dynamic pool: start more workers, up to N, when every worker is busy, "
        "and stop idle ones (default: 0, a fixed --workers)",
    )
    procs.add_argument(
        "--min-spare-workers",
        type=int,
        default=1,
        metavar="N",
        help="a dynamic pool grows while fewer than N workers are idle (default: %(default)s)",
    )
    procs.add_argument(
        "--max-spare-workers",
        type=int,
        default=0,
        metavar="N",
        help="a dynamic pool stops idle workers beyond N at once (default: 0, --workers-max)",
    )
    procs.add_argument(
        "--worker-idle-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a dynamic pool stops a worker idle this long, down to --workers-min "
        "(default: %(default)s)",
    )
    procs.add_argument(
        "--max-requests",
        "--limit-max-requests",
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
    procs.add_argument(
        "--preload",
        action="store_true",
        help="import the app once in the supervisor, so that workers share its memory; "
        "SIGHUP then re-executes the supervisor to load new code",
    )
    procs.add_argument(
        "--max-worker-memory",
        type=int,
        default=0,
        metavar="MIB",
        help="replace a worker, gracefully, once its resident memory (RSS) passes MIB "
        "mebibytes; 0 never (default: %(default)s)",
    )
    procs.add_argument("--user", help="run the app as this user after binding (needs root)")
    procs.add_argument(
        "--group", help="run the app as this group (default: the --user's group; needs root)"
    )
    procs.add_argument(
        "--chroot",
        metavar="DIR",
        help="workers chroot into DIR after binding and importing the app, then drop "
        "privileges; the socket file stays outside (needs root)",
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
        "--limit-concurrency",
        type=int,
        default=0,
        metavar="N",
        help="requests running at once in this process; more are answered 503 with "
        "Retry-After at once instead of queueing (default: 0, no limit)",
    )
    limits.add_argument(
        "--timeout-params",
        "--params-timeout",
        dest="params_timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a peer that opens a connection or request and does not finish sending its "
        "PARAMS within this time is dropped (default: %(default)s)",
    )
    limits.add_argument(
        "--timeout-keep-alive",
        "--keepalive-timeout",
        dest="keepalive_timeout",
        type=float,
        default=75.0,
        metavar="SECONDS",
        help="close keep-conn connections idle this long (default: %(default)s)",
    )
    limits.add_argument(
        "--timeout-request",
        "--request-timeout",
        dest="request_timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="cancel an app still running a request after this long; the client gets 504 "
        "if nothing was sent yet (default: no limit)",
    )
    limits.add_argument(
        "--timeout-send",
        "--send-timeout",
        dest="send_timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="cut a request whose response the web server has read none of for this long "
        "(a client that stopped reading); 0: no limit (default: %(default)s)",
    )
    limits.add_argument(
        "--multiplex",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve several requests at once on one connection; with --no-multiplex, "
        "GET_VALUES answers FCGI_MPXS_CONNS=0 and a second concurrent request gets "
        "CANT_MPX_CONN (default: on)",
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
        "--metrics-path",
        metavar="PATH",
        help="path the gateway answers itself with Prometheus metrics of every worker, "
        "e.g. /metrics",
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


def env_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> list[str]:
    """Command-line words for the options set as ``FCGI_ASGI_<OPTION>`` in ``environ``.

    They go before the real command line, so that it wins; a repeatable
    option (``--allow``) takes a comma- or space-separated list, an on/off
    option ``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``.
    Bad values are errors that name the variable.
    """
    words: list[str] = []
    for action in parser._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag is None or action.dest in ("help", "version"):
            continue
        name = ENV_PREFIX + flag[2:].upper().replace("-", "_")
        value = environ.get(name) or environ.get(ENV_FALLBACKS.get(name, ""))
        if not value:
            continue
        if action.nargs == 0:  # a switch: store_true or --x/--no-x
            if value.lower() not in _TRUE + _FALSE:
                parser.error(f"{name}={value!r}: give one of {', '.join(_TRUE + _FALSE)}")
            on = value.lower() in _TRUE
            if isinstance(action, argparse.BooleanOptionalAction):
                words.append(flag if on else f"--no-{flag[2:]}")
            elif on:
                words.append(flag)
            continue
        values = value.replace(",", " ").split() if action.default == [] else [value]
        for item in values:
            try:
                converted = action.type(item) if callable(action.type) else item
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{name}={item!r}: {exc}")
            if action.choices is not None and converted not in action.choices:
                parser.error(f"{name}={item!r}: choose from {', '.join(map(str, action.choices))}")
            words.append(f"{flag}={item}")
    return words


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's :class:`Config` field (its dest) -> its name on the command line."""
    return {
        action.dest: action.option_strings[0] for action in parser._actions if action.option_strings
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway; returns the process exit code (0, or 1 on error).

    ``fcgi-asgi request ...`` runs the FastCGI client sub-command instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["request"]:
        from .request_cmd import request_main

        return request_main(argv[1:])
    parser = build_parser()
    use_option_names(option_names(parser))
    try:
        env_file = _env_file_option(argv)
        if env_file:
            load_env_file(env_file)
    except ConfigError as exc:
        parser.error(str(exc))
    args = parser.parse_args([*env_arguments(parser, os.environ), *argv])
    try:
        configure_logging(args.log_level, args.log_config, args.access_log_format == "json")
        if args.reload:
            from .reloader import run_with_reload

            return run_with_reload(argv, args)
        config = config_from_args(args)
        if config.loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise ConfigError(f"{opt('loop')} uvloop: uvloop is not installed") from None
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


def config_from_args(args: argparse.Namespace) -> Config:
    """The :class:`Config` the parsed command line asks for."""
    # FCGI_WEB_SERVER_ADDRS (php-fpm's) applies to TCP; a unix socket ignores it.
    env_allow = (
        () if args.socket else parse_web_server_addrs(os.environ.get("FCGI_WEB_SERVER_ADDRS", ""))
    )
    return Config(
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
        interface=args.interface,
        threads=args.threads,
        roles=args.roles,
        loop=args.loop,
        log_level=args.log_level or "info",
        access_log=args.access_log,
        stderr_to_web_server=args.stderr_to_web_server,
        sendfile_header=args.sendfile_header,
        sendfile_map=tuple(args.sendfile_map),
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
        max_params_size=args.max_params_size,
        max_requests_per_connection=args.max_requests_per_connection,
        max_concurrent_requests=args.max_concurrent_requests,
        max_connections=args.max_connections,
        params_timeout=args.params_timeout,
        keepalive_timeout=args.keepalive_timeout,
        request_timeout=args.request_timeout,
        send_timeout=args.send_timeout or None,
        multiplex=args.multiplex,
        allow=(*env_allow, *args.allow),
        access_log_format=args.access_log_format,
        status_path=args.status_path,
        ping_path=args.ping_path,
        metrics_path=args.metrics_path,
        slow_request_threshold=args.slow_request_threshold,
        workers=args.workers
        if args.workers is not None
        else (args.workers_min if args.workers_min is not None else 1),
        workers_min=args.workers_min,
        workers_max=args.workers_max,
        min_spare_workers=args.min_spare_workers,
        max_spare_workers=args.max_spare_workers,
        worker_idle_timeout=args.worker_idle_timeout,
        supervise=args.workers is not None,
        max_requests=args.max_requests,
        max_requests_jitter=args.max_requests_jitter,
        max_worker_memory=args.max_worker_memory,
        preload=args.preload,
        chroot=args.chroot,
        socket_mode=args.socket_mode,
        socket_owner=args.socket_owner,
        user=args.user,
        group=args.group,
    )


def _env_file_option(argv: Sequence[str]) -> str | None:
    # Read before the real parse: the file may set FCGI_ASGI_* options.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env-file")
    known, _ = pre.parse_known_args(argv)
    value: str | None = known.env_file or os.environ.get(f"{ENV_PREFIX}ENV_FILE")
    return value


def load_env_file(path: str) -> None:
    """Put ``KEY=VALUE`` lines of ``path`` into ``os.environ``; variables already set win.

    The common dotenv subset: ``#`` comments, blank lines, an optional
    ``export``, values in single or double quotes (no escapes, no ``${VAR}``).
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"{opt('env_file')} {path}: {exc.strerror}") from None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"{opt('env_file')} {path}, line {number}: not KEY=VALUE: {raw!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        os.environ.setdefault(key, value)


if __name__ == "__main__":
    sys.exit(main())
