"""The CGI response head: ``Status:`` line, checked headers, blank line.

Shared by every interface: the ASGI bridge hands its ``(bytes, bytes)``
headers over as they are, the WSGI bridge encodes its ``str`` pairs to
latin-1 first. The rules hold for both: a header that would corrupt the
stream is an app error, a ``Status`` header is dropped (CGI would read it
as the status line), and so are hop-by-hop headers.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from ..errors import AppProtocolError

try:
    from .._speedups import encode_head as _c_encode_head
    from .._speedups import set_status_lines as _c_set_status_lines
except ImportError:  # not built: the Python path alone
    _c_encode_head = None  # type: ignore[assignment]
    _c_set_status_lines = None  # type: ignore[assignment]

__all__ = ["HOP_BY_HOP", "encode_head", "encode_head_py"]

logger = logging.getLogger("fcgi_asgi.error")

#: Headers about one HTTP connection (RFC 9110 7.6.1). CGI leaves transfer
#: coding and connection management to the web server: an app's own
#: ``Transfer-Encoding: chunked`` makes lighttpd, Caddy and HAProxy answer
#: with an empty body, so these never reach the web server.
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade")
)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_STATUS_LINES: dict[int, bytes] = {
    s.value: b"Status: %d %s\r\n" % (s.value, s.phrase.encode("latin-1")) for s in HTTPStatus
}
if _c_set_status_lines is not None:  # for RequestCore.send_fast (protocol/core.py)
    _c_set_status_lines(_STATUS_LINES)

# Response header name -> True if it is a valid token to pass on, False for
# one dropped ("Status", hop-by-hop). Apps send the same few names over and
# over: a lookup instead of a regex match and a lower() per header
# (encode_head for 2 headers: 1.2 us -> 0.9 us).
_valid_names: dict[bytes, bool] = {}
# Names in a Connection header already logged as dropped: once each.
_logged_listed: set[bytes] = set()


def _check_name(name: bytes) -> bool:
    if not _TOKEN.fullmatch(name):
        raise AppProtocolError(f"response header name {name!r} is not a valid token")
    lower = name.lower()
    keep = lower != b"status" and lower not in HOP_BY_HOP
    if lower in HOP_BY_HOP:
        # Logged when first classified: once per name and process.
        logger.debug("dropping hop-by-hop response header %r set by the app", name)
    if len(_valid_names) < 1024:
        _valid_names[name] = keep
    return keep


def encode_head(status: Any, headers: Any) -> bytes:
    """Encode a CGI response head (``Status:`` line, headers, blank line).

    Raises :class:`AppProtocolError` for a status that is not a 3-digit
    integer, or a header name or value that is not bytes, not a token, or
    holds CR, LF or NUL: any of them would corrupt the stream. Drops
    ``Status`` and hop-by-hop headers (:data:`HOP_BY_HOP` and the names a
    ``Connection`` header lists).
    """
    if _c_encode_head is not None and type(status) is int:
        line = _STATUS_LINES.get(status)
        if line is not None:
            # None for anything unusual, hop-by-hop names included.
            head = _c_encode_head(line, headers)
            if head is not None:
                return head
    # Anything unusual (and everything without the C speedups): the checks below.
    return encode_head_py(status, headers)


def encode_head_py(status: Any, headers: Any) -> bytes:
    """:func:`encode_head` in Python alone: the checks and their precise errors."""
    if type(status) is not int or not 100 <= status <= 999:
        raise AppProtocolError(f"response status must be an int from 100 to 999, not {status!r}")
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"Status: %d Unknown\r\n" % status
    kept: list[tuple[bytes, bytes]] = []
    listed: set[bytes] = set()
    valid_name = _valid_names.get
    for header in headers:
        try:
            name, value = header
        except (TypeError, ValueError):
            raise AppProtocolError(
                f"response header {header!r} is not a (name, value) pair"
            ) from None
        if type(name) is not bytes or type(value) is not bytes:
            if not isinstance(name, bytes) or not isinstance(value, bytes):
                raise AppProtocolError(f"response header {header!r} must be a pair of bytes")
            name, value = bytes(name), bytes(value)
        known = valid_name(name)
        if known is None:
            known = _check_name(name)
        if _BAD_VALUE.search(value):
            raise AppProtocolError(f"response header {name!r} has CR, LF or NUL in its value")
        if known:
            kept.append((name, value))
        elif name.lower() == b"connection":
            listed.update(t.strip().lower() for t in value.split(b",") if t.strip())
    parts = [line]
    for name, value in kept:
        if listed and name.lower() in listed:
            if name.lower() not in _logged_listed and len(_logged_listed) < 1024:
                _logged_listed.add(name.lower())
                logger.debug("dropping response header %r named in the app's Connection", name)
            continue
        parts.append(name + b": " + value + b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
