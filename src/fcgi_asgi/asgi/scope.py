"""CGI/1.1 params (as sent by a FastCGI web server) to an ASGI HTTP scope.

A pure function, table-tested against what nginx, lighttpd, Apache httpd,
Caddy and h2o send with their stock configurations. The path rules:

* ``raw_path`` is the path part of ``REQUEST_URI`` (the request target as the
  client sent it, without scheme and host when it was in absolute form) and
  ``path`` its percent-decoded UTF-8 form. Without
  ``REQUEST_URI`` both come from ``SCRIPT_NAME + PATH_INFO``.
* ``path`` always includes ``root_path`` (ASGI 2.4 / Starlette >= 0.35).
* ``root_path`` is the operator's ``--root-path`` when given; otherwise
  ``SCRIPT_NAME``, but only when the server really split the path into
  ``SCRIPT_NAME`` + a non-empty ``PATH_INFO`` and that split is a prefix of
  the request path. nginx and Apache put the whole path in SCRIPT_NAME by
  default; trusting it there would 404 every route. lighttpd splits at the
  next path segment whatever the mount point, so its split is never trusted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from ..protocol.records import decode_params

__all__ = ["ASGI_VERSION", "build_scope", "scope_from_params", "split_request_uri"]

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


def _port(value: bytes | None) -> int | None:
    if value and value.isdigit():
        return int(value)
    return None


def split_request_uri(uri: bytes) -> tuple[bytes, bytes]:
    """Split a request target into ``(path, query)`` bytes."""
    path, _, query = uri.partition(b"?")
    return path, query


def _splits_at_next_segment(server_software: bytes | None) -> bool:
    """True for a server whose SCRIPT_NAME/PATH_INFO split is not a mount point.

    lighttpd's ``fastcgi.server`` (``check-local`` disabled) cuts the path at
    the first ``/`` after the mapping key: with key ``"/"``, ``/items/42``
    arrives as SCRIPT_NAME ``/items`` + PATH_INFO ``/42``; with key
    ``"/app/"``, ``/app/items/42`` as ``/app/items`` + ``/42``. The params do
    not say which key matched, so such a split cannot be told from a real
    mount; ``--root-path`` says where the app is mounted instead.
    """
    return server_software is not None and server_software[:8].lower() == b"lighttpd"


def _strip_scheme_and_authority(target: bytes) -> bytes:
    """The path of an absolute-form target (``http://host/a`` -> ``/a``).

    A client may send one (RFC 9112 3.2.2) and Apache passes it on in
    REQUEST_URI; ASGI's path has no scheme or host. Anything else (``*``)
    stays as it is.
    """
    sep = target.find(b"://")
    if sep <= 0:
        return target
    slash = target.find(b"/", sep + 3)
    return target[slash:] if slash >= 0 else b""


def _decode_path(raw: bytes) -> str:
    """Percent-decode a raw path as UTF-8, as is: a client may also have sent
    UTF-8 bytes unescaped, which web servers pass on in REQUEST_URI."""
    if raw.isascii() and b"%" not in raw:
        return raw.decode("ascii")
    return unquote_to_bytes(raw).decode("utf-8", "replace")


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

    script_name = get(b"SCRIPT_NAME", b"")
    path_info = get(b"PATH_INFO", b"")
    request_uri = get(b"REQUEST_URI")
    query = get(b"QUERY_STRING")
    if request_uri:
        raw_path, _, uri_query = request_uri.partition(b"?")
        if query is None:
            query = uri_query
        if raw_path[:1] != b"/":
            raw_path = _strip_scheme_and_authority(raw_path)
    else:
        # quote() the bytes as they are: they are UTF-8 already, and a str
        # from latin-1 would be encoded to UTF-8 a second time.
        raw_path = quote(script_name + path_info, safe="/:@!$&'()*+,;=-._~").encode("ascii")
    if not raw_path:
        raw_path = b"/"
    path = _decode_path(raw_path)

    if root_path is None:
        root_path = ""
        if path_info and script_name and not _splits_at_next_segment(get(b"SERVER_SOFTWARE")):
            # Servers send SCRIPT_NAME/PATH_INFO decoded (UTF-8 bytes). Only a
            # true split counts: the request path must be SCRIPT_NAME then
            # PATH_INFO, else SCRIPT_NAME is not a mount point.
            sn = script_name.decode("utf-8", "replace")
            if path == sn + path_info.decode("utf-8", "replace"):
                root_path = sn.rstrip("/")
    else:
        root_path = root_path.rstrip("/")
        # A server that strips the mount prefix before forwarding gets it
        # put back, so that ``path`` always includes ``root_path``.
        if root_path and path != root_path and not path.startswith(root_path + "/"):
            path = root_path + path
            raw_path = quote(root_path).encode("ascii") + raw_path

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
        "query_string": query or b"",
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
try:
    from .._speedups import scope_from_params as _c_scope_from_params
except ImportError:
    scope_from_params = scope_from_params_py
else:
    scope_from_params = _scope_from_params_with_c
