"""The CGI path rules: SCRIPT_NAME, PATH_INFO and REQUEST_URI to the request
path and the prefix the app is mounted at.

One set of rules for every interface: the ASGI scope takes ``path`` (which
includes ``root_path``) and ``root_path``; the WSGI environ takes
``root_path`` as SCRIPT_NAME and the rest of ``path`` as PATH_INFO. Web
servers disagree on what they send, so:

* ``raw_path`` is the path part of ``REQUEST_URI`` (the request target as the
  client sent it, without scheme and host when it was in absolute form) and
  ``path`` its percent-decoded UTF-8 form. Without ``REQUEST_URI`` both come
  from ``SCRIPT_NAME + PATH_INFO``.
* ``path`` always includes ``root_path`` (ASGI 2.4 / Starlette >= 0.35).
* ``root_path`` is the operator's ``--root-path`` when given; otherwise
  ``SCRIPT_NAME``, but only when the server really split the path into
  ``SCRIPT_NAME`` + a non-empty ``PATH_INFO`` and that split is a prefix of
  the request path. nginx and Apache put the whole path in SCRIPT_NAME by
  default; trusting it there would 404 every route. lighttpd splits at the
  next path segment whatever the mount point, so its split is never trusted.

The C ``scope_from_params`` in ``_speedups.c`` follows the same rules for the
common case and leaves the rest to this module.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import quote, unquote_to_bytes

__all__ = ["RequestPath", "request_path", "split_request_uri"]


class RequestPath(NamedTuple):
    """Where a request goes, by the rules above."""

    #: The path as sent, still percent-encoded.
    raw_path: bytes
    #: The decoded path, ``root_path`` included.
    path: str
    #: The prefix the app is mounted at ("" for none), without a trailing slash.
    root_path: str
    #: The query string as sent.
    query: bytes


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


def request_path(params: dict[bytes, bytes], root_path: str | None = None) -> RequestPath:
    """Apply the path rules to decoded CGI ``params``.

    ``root_path`` is the configured mount prefix (``--root-path``), or
    ``None`` to derive it from SCRIPT_NAME/PATH_INFO.
    """
    get = params.get
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
    return RequestPath(raw_path, path, root_path, query or b"")
