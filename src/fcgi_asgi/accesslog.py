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

The default gives uvicorn's shape: ``127.0.0.1:50000 - "GET /x HTTP/1.1" 200``.
"""

from __future__ import annotations

import os
import string
from typing import Any

from .config import ConfigError

__all__ = ["DEFAULT_FORMAT", "FIELDS", "AccessLogFormat"]

DEFAULT_FORMAT = '{client} - "{method} {target} HTTP/{http_version}" {status}'
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


class AccessLogFormat:
    """A checked access-log format; :meth:`render` makes one line."""

    def __init__(self, fmt: str | None = None) -> None:
        self.fmt = DEFAULT_FORMAT if fmt is None else fmt
        try:
            parsed = list(string.Formatter().parse(self.fmt))
        except ValueError as exc:
            raise ConfigError(f"--access-log-format: {exc}") from None
        names = {name for _, name, _, _ in parsed if name is not None}
        unknown = sorted(n for n in names if n not in FIELDS)
        if "" in names or unknown:
            raise ConfigError(
                f"--access-log-format: unknown field(s) {', '.join(unknown) or '{}'}; "
                f"known: {', '.join(sorted(FIELDS))}"
            )
        try:
            self.fmt.format_map(_SAMPLE)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--access-log-format: {exc}") from None
        self._needs_headers = bool(names & set(_HEADER_FIELDS.values()))

    def render(
        self,
        scope: dict[str, Any],
        status: int,
        sent: int,
        duration: float,
        request_id: int,
    ) -> str:
        """One access-log line for a finished request."""
        client = scope["client"]
        qs = scope["query_string"].decode("latin-1")
        raw = scope["raw_path"].decode("latin-1")
        fields: dict[str, Any] = {
            "client": f"{client[0]}:{client[1]}" if client else "-",
            "method": scope["method"],
            "target": f"{raw}?{qs}" if qs else raw,
            "path": scope["path"],
            "query": qs,
            "http_version": scope["http_version"],
            "status": status,
            "bytes": sent,
            "duration_ms": round(duration * 1000, 3),
            "request_id": request_id,
            "host": "-",
            "user_agent": "-",
            "referer": "-",
            "pid": os.getpid(),
        }
        if self._needs_headers:
            for name, value in scope["headers"]:
                field = _HEADER_FIELDS.get(name)
                if field is not None:
                    fields[field] = value.decode("latin-1")
        return self.fmt.format_map(fields)
