"""The WSGI ``environ`` of a request, straight from its CGI params, and the
``wsgi.input`` and ``wsgi.errors`` streams.

The params are CGI variables already: they go in as native strings
(latin-1, PEP 3333). Where the request goes comes from the gateway's one
set of path rules (:mod:`fcgi_asgi.protocol.paths`, through the scope the
gateway keeps for every request): SCRIPT_NAME is ``root_path`` (from
``--root-path`` or a real split), PATH_INFO the rest of the decoded path;
REQUEST_URI stays as the web server sent it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.util import FileWrapper

__all__ = ["ErrorStream", "InputStream", "build_environ"]

error_logger = logging.getLogger("fcgi_asgi.error")

# Params the environ takes from the scope's content headers, or not at all:
# validators (wsgiref.validate) reject HTTP_CONTENT_TYPE/LENGTH, which nginx,
# lighttpd and Caddy send besides the CGI variables. (SCRIPT_NAME, PATH_INFO,
# QUERY_STRING and REQUEST_METHOD are always set from the path rules.)
_CONTENT_PARAMS = ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "CONTENT_TYPE", "CONTENT_LENGTH")


def _wsgi_str(text: str) -> str:
    """A decoded path that is not ASCII as PEP 3333 wants it: its UTF-8
    bytes as latin-1 (an ASCII path is that already)."""
    return text.encode("utf-8").decode("latin-1")


# The keys every environ has with the same values.
_CONSTANT = {
    "wsgi.version": (1, 0),
    "wsgi.multithread": True,
    "wsgi.run_once": False,
    "wsgi.file_wrapper": FileWrapper,
    "wsgi.input_terminated": True,
}


def build_environ(
    params: dict[str, str],
    scope: dict[str, Any],
    wsgi_input: Any,
    errors: Any,
    multiprocess: bool,
) -> dict[str, Any]:
    """The environ for CGI ``params`` (``decode_params_latin1``, taken over
    as the environ) and the ``scope`` built from them."""
    environ: dict[str, Any] = params
    for key in _CONTENT_PARAMS:
        environ.pop(key, None)
    root_path: str = scope["root_path"]
    path: str = scope["path"][len(root_path) :]
    environ["REQUEST_METHOD"] = scope["method"]
    environ["SCRIPT_NAME"] = root_path if root_path.isascii() else _wsgi_str(root_path)
    environ["PATH_INFO"] = path if path.isascii() else _wsgi_str(path)
    environ["QUERY_STRING"] = scope["query_string"].decode("latin-1")
    # The content headers the scope kept: CONTENT_TYPE when not empty,
    # CONTENT_LENGTH when a number (Caddy sends -1, nginx "" on a GET); the
    # last of each, as the scope's list has them. One dict of the list costs
    # less than comparing each header's name in Python.
    headers = dict(scope["headers"])
    if (value := headers.get(b"content-type")) is not None:
        environ["CONTENT_TYPE"] = value.decode("latin-1")
    if (value := headers.get(b"content-length")) is not None:
        environ["CONTENT_LENGTH"] = value.decode("latin-1")
    if "SERVER_NAME" not in environ or "SERVER_PORT" not in environ:
        server = scope["server"]
        if "SERVER_NAME" not in environ:
            environ["SERVER_NAME"] = server[0] if server else "localhost"
        if "SERVER_PORT" not in environ:
            port = server[1] if server and server[1] else None
            environ["SERVER_PORT"] = str(port or (443 if scope["scheme"] == "https" else 80))
    if "SERVER_PROTOCOL" not in environ:
        environ["SERVER_PROTOCOL"] = "HTTP/" + scope["http_version"]
    environ.update(_CONSTANT)
    environ["wsgi.url_scheme"] = scope["scheme"]
    environ["wsgi.input"] = wsgi_input
    environ["wsgi.errors"] = errors
    environ["wsgi.multiprocess"] = multiprocess
    return environ


class InputStream(io.RawIOBase):
    """``wsgi.input``: the request body as it arrives, read in the app's thread.

    ``fetch()`` blocks the calling thread (never the loop) until the
    connection has more of the body, and returns b"" at its end; the
    connection pauses reading while the app does not read.
    """

    def __init__(self, fetch: Callable[[], bytes]) -> None:
        self._fetch = fetch
        self._buffer = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._fetch()
        if not data:
            self._eof = True
            return False
        self._buffer += data
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all the rest when -1 or None); fewer only at
        the end of the body. The pieces are joined once (a 64 KiB POST comes
        in several STDIN records), and a piece that is the answer whole is
        not copied at all."""
        buffer = self._buffer
        if size is None or size < 0:
            parts = [buffer]
            while not self._eof:
                data = self._fetch()
                if not data:
                    self._eof = True
                else:
                    parts.append(data)
            self._buffer = b""
            return b"".join(parts)
        if len(buffer) < size and not self._eof:
            parts = [buffer]
            have = len(buffer)
            while have < size:
                data = self._fetch()
                if not data:
                    self._eof = True
                    break
                parts.append(data)
                have += len(data)
            if have <= size:
                self._buffer = b""
                return parts[1] if len(parts) == 2 and not buffer else b"".join(parts)
            buffer = b"".join(parts)
        self._buffer = buffer[size:]
        return buffer[:size]

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        """One line, newline included; at most ``size`` bytes when given."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                n = end + 1 if size is None or size < 0 else min(end + 1, size)
                break
            if size is not None and 0 <= size <= len(self._buffer):
                n = size
                break
            if not self._fill():
                n = len(self._buffer)
                break
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The remaining lines."""
        lines = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Any:
        return iter(self.readline, b"")


class ErrorStream:
    """``wsgi.errors``: lines written by the app go to the gateway's error log."""

    def __init__(self, forward: Callable[[str], None] | None = None) -> None:
        self._pending = ""
        # --stderr-to-web-server: each line also goes to the web server.
        self._forward = forward

    def _line(self, line: str) -> None:
        error_logger.error("%s", line)
        if self._forward is not None:
            self._forward(line + "\n")

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._line(line)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""
