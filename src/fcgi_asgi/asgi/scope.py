"""CGI/1.1 params (as sent by a FastCGI web server) to an ASGI HTTP scope.

A pure function, table-tested against what nginx, lighttpd, Apache httpd,
Caddy and h2o send with their stock configurations. The path rules
(``path``, ``raw_path``, ``root_path``) are those of
:mod:`fcgi_asgi.protocol.paths`, shared with the WSGI environ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..protocol.paths import request_path
from ..protocol.records import decode_params

__all__ = [
    "ASGI_VERSION",
    "build_scope",
    "c_scope_from_params",
    "scope_from_params",
    "scope_from_params_py",
]

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}

_HTTP_VERSIONS = {
    b"HTTP/1.1": "1.1",
    b"HTTP/1.0": "1.0",
    b"HTTP/2.0": "2",
    b"HTTP/2": "2",
    b"HTTP/3": "3",
    b"HTTP/3.0": "3",
    b"HTTP/0.9": "1.0",
}


class _HeaderNames(dict[bytes, bytes | None]):
    """Param name -> ASGI header name, or None for a param that is no header.

    A server sends the same few dozen names over and over, so each name is
    classified once per process (``__missing__``) and then found by a plain
    dict lookup instead of a slice, a compare, lower() and replace(). The
    table is bounded: past 4096 names, new ones are classified every time.
    """

    def __missing__(self, param: bytes) -> bytes | None:
        # "HTTP_" alone would be a header with an empty name: not a header.
        is_header = param[:5] == b"HTTP_" and len(param) > 5
        name = param[5:].lower().replace(b"_", b"-") if is_header else None
        if len(self) < 4096:
            self[param] = name
        return name


_header_names = _HeaderNames(
    {b"CONTENT_TYPE": b"content-type", b"CONTENT_LENGTH": b"content-length"}
)

# Params whose header needs a look at its value or at the other params.
_CHECKED_HEADERS = frozenset(
    (b"CONTENT_TYPE", b"CONTENT_LENGTH", b"HTTP_CONTENT_TYPE", b"HTTP_CONTENT_LENGTH")
)


def _keep_content_header(param: bytes, value: bytes, params: dict[bytes, bytes]) -> bool:
    if param == b"CONTENT_TYPE":
        return bool(value)
    # Only a length: nginx sends "" when there is none, Caddy "-1" for a
    # chunked upload.
    if param == b"CONTENT_LENGTH":
        return value.isdigit()
    # nginx, lighttpd and Caddy send Content-Type/Length twice, as CONTENT_*
    # and as HTTP_CONTENT_*: the CGI variable's is kept.
    if param[5:] in params:
        return False
    return param != b"HTTP_CONTENT_LENGTH" or value.isdigit()


def request_headers_py(params: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """The ASGI ``headers`` of a request: every ``HTTP_X_Y`` param as ``x-y``,
    ``CONTENT_TYPE`` when not empty, ``CONTENT_LENGTH`` when it is a number, in
    the params' order; values stay bytes."""
    names = _header_names
    checked = _CHECKED_HEADERS
    # One comprehension with one table lookup per param, and the content
    # rules only for those four names (about 1.5 us for nginx's 25 params).
    return [
        (name, value)
        for key, value in params.items()
        if (name := names[key]) is not None
        and (key not in checked or _keep_content_header(key, value, params))
    ]


#: The C version when built (same results; tests/test_hot_path.py), else Python.
request_headers: Callable[[dict[bytes, bytes]], list[tuple[bytes, bytes]]]
try:
    from .._speedups import request_headers
except ImportError:  # not built: see protocol/records.py
    request_headers = request_headers_py


# Request methods as str, so the common ones skip decode() and upper().
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


def build_scope(
    params: dict[bytes, bytes],
    root_path: str | None = None,
    state: dict[str, Any] | None = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build an ASGI ``http`` scope from decoded CGI params.

    ``params`` maps param names to values, last value winning when a name
    repeats (php-fpm does the same). ``root_path`` is the configured mount
    prefix, or ``None`` to derive it from SCRIPT_NAME/PATH_INFO. ``state`` is
    the lifespan state, copied shallowly per request as the ASGI spec asks.
    """
    get = params.get
    headers = request_headers(params)

    raw_path, path, root_path, query = request_path(params, root_path)

    scheme = "http"
    https = get(b"HTTPS")
    if https and https.lower() in (b"on", b"1", b"yes"):
        scheme = "https"
    else:
        req_scheme = get(b"REQUEST_SCHEME")
        if req_scheme and req_scheme != b"http" and req_scheme.lower() == b"https":
            scheme = "https"

    remote_addr = get(b"REMOTE_ADDR")
    client = None
    if remote_addr:
        port = get(b"REMOTE_PORT")
        client = (remote_addr.decode("latin-1"), int(port) if port and port.isdigit() else 0)
    server_host = get(b"SERVER_ADDR") or get(b"SERVER_NAME")
    server = None
    if server_host:
        port = get(b"SERVER_PORT")
        server = (server_host.decode("latin-1"), int(port) if port and port.isdigit() else None)
    method = get(b"REQUEST_METHOD", b"GET")

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": _HTTP_VERSIONS.get(get(b"SERVER_PROTOCOL", b""), "1.1"),
        "method": _METHODS.get(method) or method.decode("latin-1").upper(),
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "root_path": root_path,
        "headers": headers,
        "client": client,
        "server": server,
    }
    if state is not None:
        scope["state"] = state.copy()
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


def scope_from_params_py(
    data: bytes | bytearray,
    root_path: str | None = None,
    state: dict[str, Any] | None = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scope of a request from its raw PARAMS data (decoded, then built).

    Raises :class:`~fcgi_asgi.protocol.records.MalformedPairs` for malformed data.
    """
    return build_scope(decode_params(data), root_path, state, extensions)


def _scope_from_params_with_c(
    data: bytes | bytearray,
    root_path: str | None = None,
    state: dict[str, Any] | None = None,
    extensions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # The C function covers the common case in one pass over the bytes, with
    # no params dict (nginx's 25 params: 1.3 us against 4.0 us); it returns
    # None for anything that needs the rules above, --root-path included.
    if root_path is None:
        scope = _c_scope_from_params(data, ASGI_VERSION, state, extensions)
        if scope is not None:
            return scope
    return build_scope(decode_params(data), root_path, state, extensions)


#: The C version when built (same results; tests/test_hot_path.py), else Python.
scope_from_params: Callable[..., dict[str, Any]]
#: The C function alone (None when not built): ``(data, ASGI_VERSION, state,
#: extensions)`` -> a scope, or None when the Python rules are needed (and
#: always with a root path); for a caller that inlines scope_from_params().
c_scope_from_params: Callable[..., dict[str, Any] | None] | None
try:
    from .._speedups import scope_from_params as _c_scope_from_params
except ImportError:
    scope_from_params = scope_from_params_py
    c_scope_from_params = None
else:
    scope_from_params = _scope_from_params_with_c
    c_scope_from_params = _c_scope_from_params
