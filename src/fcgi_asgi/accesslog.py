"""Access log lines: a small, validated format with named fields.

``--access-log-format`` takes a Python format string over these fields::

    client        peer as "ip:port" (from REMOTE_ADDR/REMOTE_PORT), or "-"
    method        request method
    target        path and query as sent ("/items?id=3")
    path          decoded path
    query         query string
    http_version  "1.1", "2", ...
    status        response status code
    bytes         response body bytes sent
    duration_ms   time from the request's PARAMS to its end, milliseconds
    request_id    FastCGI request id
    host          Host header
    user_agent    User-Agent header
    referer       Referer header
    pid           process id of the worker

The default gives uvicorn's shape: ``127.0.0.1:50000 - "GET /x HTTP/1.1" 200``,
rendered without the format machinery. ``json`` gives one JSON object per line
with every field, plus ``time`` (UTC, ISO 8601).

:class:`AccessLog` takes each finished request's line to the logger
``fcgi_asgi.access``: straight into its :class:`~fcgi_asgi.logbuffer.BufferedLineHandler`
when that is the logger's only handler (the default setup), else through
:mod:`logging` as a record for whatever handlers the user configured.
"""

from __future__ import annotations

import logging
import os
import string
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

from .config import ConfigError
from .logbuffer import MAX_PENDING_LINES, BufferedLineHandler

try:
    from ._speedups import access_line as _c_access_line
    from ._speedups import access_logger as _c_access_logger
except ImportError:  # not built: the Python renderers alone
    _c_access_line = None  # type: ignore[assignment]
    _c_access_logger = None  # type: ignore[assignment]

__all__ = ["DEFAULT_FORMAT", "FIELDS", "JSON_FORMAT", "AccessLog", "AccessLogFormat"]

DEFAULT_FORMAT = '{client} - "{method} {target} HTTP/{http_version}" {status}'
#: ``--access-log-format json``: JSON lines.
JSON_FORMAT = "json"
FIELDS = frozenset(
    {
        "client",
        "method",
        "target",
        "path",
        "query",
        "http_version",
        "status",
        "bytes",
        "duration_ms",
        "request_id",
        "host",
        "user_agent",
        "referer",
        "pid",
    }
)
_HEADER_FIELDS = {b"host": "host", b"user-agent": "user_agent", b"referer": "referer"}
# One value of each field's type, to try a format once at start: a spec or a
# conversion that does not fit its field ("{method:d}", "{status!z}") would
# otherwise raise in every request's cleanup.
_SAMPLE: dict[str, Any] = {
    **dict.fromkeys(FIELDS, "-"),
    "status": 200,
    "bytes": 0,
    "duration_ms": 0.0,
    "request_id": 1,
    "pid": 1,
}


Scope = dict[str, Any]
Render = Callable[[Scope, int, int, float, int], str]


class AccessLogFormat:
    """A checked access-log format; :attr:`render` makes one line.

    ``render(scope, status, bytes_sent, duration, request_id)`` gives the line
    of a finished request, without its newline.
    """

    render: Render

    def __init__(self, fmt: str | None = None) -> None:
        self.fmt = DEFAULT_FORMAT if fmt is None else fmt
        if self.fmt == DEFAULT_FORMAT:
            self.render = render_default
            return
        if self.fmt == JSON_FORMAT:
            self.render = render_json
            return
        try:
            parsed = list(string.Formatter().parse(self.fmt))
        except ValueError as exc:
            raise ConfigError(f"--access-log-format: {exc}") from None
        names = {name for _, name, _, _ in parsed if name is not None}
        unknown = sorted(n for n in names if n not in FIELDS)
        if "" in names or unknown:
            raise ConfigError(
                f"--access-log-format: unknown field(s) {', '.join(unknown) or '{}'}; "
                f"known: {', '.join(sorted(FIELDS))}, or 'json' alone"
            )
        try:
            self.fmt.format_map(_SAMPLE)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--access-log-format: {exc}") from None
        self._needs_headers = bool(names & set(_HEADER_FIELDS.values()))
        self.render = self._render_fields

    def _render_fields(self, scope: Scope, status: int, sent: int, dur: float, rid: int) -> str:
        fields = _fields(scope, status, sent, dur, rid, "-")
        if not self._needs_headers:
            return self.fmt.format_map(fields)
        for name, value in scope["headers"]:
            field = _HEADER_FIELDS.get(name)
            if field is not None:
                fields[field] = value.decode("latin-1")
        return self.fmt.format_map(fields)


def _target(scope: dict[str, Any]) -> str:
    qs: bytes = scope["query_string"]
    raw: bytes = scope["raw_path"]
    return (raw + b"?" + qs).decode("latin-1") if qs else raw.decode("latin-1")


# os.getpid() is a system call; workers are forked after this module is imported.
_pid = os.getpid()


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_new_pid)


def _fields(
    scope: dict[str, Any],
    status: int,
    sent: int,
    duration: float,
    request_id: int,
    missing: Any,
) -> dict[str, Any]:
    client = scope["client"]
    return {
        "client": f"{client[0]}:{client[1]}" if client else missing,
        "method": scope["method"],
        "target": _target(scope),
        "path": scope["path"],
        "query": scope["query_string"].decode("latin-1"),
        "http_version": scope["http_version"],
        "status": status,
        "bytes": sent,
        "duration_ms": round(duration * 1000, 3),
        "request_id": request_id,
        "host": missing,
        "user_agent": missing,
        "referer": missing,
        "pid": _pid,
    }


def render_default(
    scope: dict[str, Any], status: int, sent: int, duration: float, request_id: int
) -> str:
    """:data:`DEFAULT_FORMAT`, without building every field: the common case."""
    if _c_access_line is not None:
        line = _c_access_line(scope, status)
        if line is not None:
            return line
    return render_default_py(scope, status, sent, duration, request_id)


def render_default_py(
    scope: dict[str, Any], status: int, sent: int, duration: float, request_id: int
) -> str:
    """:func:`render_default` in Python alone; it formats values of any type
    (an app may have replaced some), where the C version takes the usual ones."""
    client = scope["client"]
    peer = f"{client[0]}:{client[1]}" if client else "-"
    return f'{peer} - "{scope["method"]} {_target(scope)} HTTP/{scope["http_version"]}" {status}'


class _UTCClock:
    """ISO 8601 UTC time with milliseconds, the date part made once a second."""

    second = -1
    text = ""

    def now(self) -> str:
        ms = int(time.time() * 1000)
        second = ms // 1000
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{ms % 1000:03d}Z"


_clock = _UTCClock()
_json_str = encode_basestring_ascii


def render_json(
    scope: dict[str, Any], status: int, sent: int, duration: float, request_id: int
) -> str:
    """One JSON object: ``time`` and every field, null where a value is missing."""
    host = agent = referer = "null"
    for name, value in scope["headers"]:
        if name in _HEADER_FIELDS:
            text = _json_str(value.decode("latin-1"))
            if name == b"host":
                host = text
            elif name == b"user-agent":
                agent = text
            else:
                referer = text
    client = scope["client"]
    peer = _json_str(f"{client[0]}:{client[1]}") if client else "null"
    qs = scope["query_string"].decode("latin-1")
    return (
        f'{{"time":"{_clock.now()}","pid":{_pid},"client":{peer},'
        f'"method":{_json_str(scope["method"])},"target":{_json_str(_target(scope))},'
        f'"path":{_json_str(scope["path"])},"query":{_json_str(qs)},'
        f'"http_version":{_json_str(scope["http_version"])},"status":{status:d},'
        f'"bytes":{sent:d},"duration_ms":{round(duration * 1000, 3)!r},'
        f'"request_id":{request_id:d},"host":{host},"user_agent":{agent},"referer":{referer}}}'
    )


access_logger = logging.getLogger("fcgi_asgi.access")


class AccessLog:
    """Takes each finished request's line to the ``fcgi_asgi.access`` logger.

    When the logger's only handler is the gateway's own
    :class:`~fcgi_asgi.logbuffer.BufferedLineHandler` with the formatter the
    gateway gives it (the default setup), lines go straight into that
    handler's buffer: no :class:`logging.LogRecord`, no formatter. Otherwise
    each line is a record, handled by whatever handlers the user configured
    (``--log-config``). The choice is made once, when the server starts.
    """

    #: ``log(scope, status, bytes_sent, duration, request_id)`` logs the line
    #: of a finished request.
    log: Callable[[Scope, int, int, float, int], None]

    def __init__(self, fmt: AccessLogFormat, logger: logging.Logger = access_logger) -> None:
        self.format = fmt
        self.logger = logger
        handler = _direct_handler(logger)
        direct = handler.message_writer() if handler is not None else None
        self.direct = direct is not None
        render = fmt.render
        if direct is not None:

            def log(scope: Scope, status: int, sent: int, duration: float, rid: int) -> None:
                direct(render(scope, status, sent, duration, rid))

            self.log = log
            queue = handler.line_queue() if handler is not None else None
            if render is render_default and _c_access_logger is not None and queue is not None:
                # The default line rendered and queued in one C call; this
                # log() takes the lines C does not render (accesslog.render_default).
                pending, grew = queue
                self.log = _c_access_logger(pending, grew, log, MAX_PENDING_LINES)
        else:
            self.log = self._log_record

    def _log_record(self, scope: Scope, status: int, sent: int, duration: float, rid: int) -> None:
        logger = self.logger
        if logger.isEnabledFor(logging.INFO):
            line = self.format.render(scope, status, sent, duration, rid)
            # makeRecord + handle, not info(): an access line has no caller
            # worth finding, and findCaller walks the stack for every line.
            logger.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0, line, (), None))

    def flush(self) -> None:
        """Write the lines still waiting in the gateway's buffered handlers."""
        for handler in self.logger.handlers:
            if isinstance(handler, BufferedLineHandler):
                handler.flush_or_report()


def _direct_handler(logger: logging.Logger) -> BufferedLineHandler | None:
    """The logger's one handler if lines may skip the LogRecord and go
    straight to it: a BufferedLineHandler, nothing filtering or propagating."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.propagate or logger.filters or logger.disabled:
        return None
    handler = handlers[0]
    if not isinstance(handler, BufferedLineHandler) or handler.filters:
        return None
    if not logger.isEnabledFor(logging.INFO) or handler.level > logging.INFO:
        return None
    return handler
