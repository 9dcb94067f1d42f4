"""File offload: a response that is a whole file becomes a header that tells
the web server to send the file itself (``--sendfile-header``).

nginx takes ``X-Accel-Redirect: /internal/uri`` (an ``internal`` location
that maps to the files); lighttpd and Apache mod_xsendfile take
``X-Sendfile`` (lighttpd also ``X-LIGHTTPD-send-file``) with the file's
path. ``--sendfile-map FROM=TO`` rewrites a path prefix into what the
header needs; with maps given, a file under none of them is streamed as
usual.
"""

from __future__ import annotations

import os

__all__ = ["SENDFILE_HEADERS", "offload_head", "offload_value"]

#: The headers web servers understand, by lower-case name.
SENDFILE_HEADERS = {
    "x-accel-redirect": "X-Accel-Redirect",
    "x-sendfile": "X-Sendfile",
    "x-lighttpd-send-file": "X-LIGHTTPD-send-file",
}


def offload_value(path: str, maps: tuple[str, ...]) -> bytes | None:
    """The header value for the file at ``path``, or None to stream it.

    The path is made absolute and resolved (symlinks, ``..``) first, so a
    map only matches files really under its prefix.
    """
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        return None
    if not maps:
        value = real
    else:
        for entry in maps:
            src, _, dst = entry.partition("=")
            if real.startswith(src):
                value = dst + real[len(src) :]
                break
        else:
            return None
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return None  # not expressible in a header: stream it


def offload_head(head: bytes, name: str, value: bytes) -> bytes:
    """``head`` (an encoded CGI head) with the offload header added and the
    app's Content-Length dropped: the web server sends the file and its length."""
    lines = head[:-2].split(b"\r\n")
    kept = [line for line in lines if line and not line.lower().startswith(b"content-length:")]
    return b"\r\n".join([*kept, name.encode() + b": " + value]) + b"\r\n\r\n"
