"""The ASGI HTTP bridge: ``receive()`` and ``send()`` on a FastCGI request.

:class:`ASGIRequest` adds the ASGI message protocol to the shared
:class:`~fcgi_asgi.protocol.request.Request`: the scope from the params,
body chunks as ``http.request`` messages, the response messages checked
and turned into the request's head and body, and the app's task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import APP_ERRORS, AppProtocolError, ClientDisconnected
from ..protocol.request import GONE, Request
from .scope import ASGI_VERSION, c_scope_from_params, scope_from_params_py

__all__ = ["ASGIRequest"]

logger = logging.getLogger("fcgi_asgi.error")

_READ_CHUNK = 256 << 10
_DISCONNECT: dict[str, Any] = {"type": "http.disconnect"}
_EXTENSIONS: dict[str, Any] = {"http.response.pathsend": {}, "fastcgi": {"role": "responder"}}


class ASGIRequest(Request):
    """One FastCGI request bridged to one ASGI HTTP call."""

    __slots__ = ()

    #: The scope's ``extensions`` (shared by every request of the class).
    extensions: dict[str, Any] = _EXTENSIONS

    def start(self, params: bytes | bytearray) -> None:
        """Build the scope and run the app as its own task."""
        conn = self.conn
        ctx = conn.ctx
        root_path = conn.config.root_path
        # scope_from_params(), inline: one call fewer a request.
        scope = None
        if root_path is None and c_scope_from_params is not None:
            scope = c_scope_from_params(params, ASGI_VERSION, ctx.state, self.extensions)
        if scope is None:  # the rules only Python has (or no C at all)
            scope = scope_from_params_py(params, root_path, ctx.state, self.extensions)
        self.scope = scope
        self.head_only = scope["method"] == "HEAD"
        if ctx.internal_paths and scope["path"] in ctx.internal_paths and self.answers_internal:
            self.answer_internal()
            return
        self.spawn(self.run(ctx.app, scope))

    async def run(self, app: Any, scope: dict[str, Any]) -> None:
        """Run the app for this request and make sure the request ends."""
        try:
            await app(scope, self.receive, self.send)
        except APP_ERRORS as exc:
            self.app_raised(exc, "ASGI")
        except asyncio.CancelledError:
            if not self.app_cancelled("ASGI"):
                raise
        else:
            if self.app_error is not None:
                self.fail(self.app_error, None)
            elif not self.response_started:
                if not self.disconnected:
                    self.fail("ASGI application returned without starting a response", None)
            elif not self.response_complete:
                self.fail("ASGI application returned without completing the response", None)
            elif self.end_held and not self.ended:
                # Trailers announced but never sent: the body is whole and
                # trailers are dropped anyway, so the request ends as usual.
                logger.debug("request id %d: the app sent no trailers", self.request_id)
                self.end_held = False
                self.finish([])
        finally:
            self.done()

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: body chunks as they arrive, then ``http.disconnect``."""
        while True:
            if self.disconnected or self.response_complete:
                return _DISCONNECT
            if self.body:
                data = self.take_body()
                more = not self.stdin_done
                if not more:
                    self._final_sent = True
                return {"type": "http.request", "body": data, "more_body": more}
            if self.stdin_done and not self._final_sent:
                self._final_sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.wait()

    async def asgi_send(self, message: Any) -> None:
        """ASGI ``send`` in Python: response start, body, pathsend and trailers.

        The app's ``send`` is :meth:`RequestCore.send`, which does a plain
        start and a small response's whole body itself (protocol/core.py)
        and hands every other message here.
        """
        mtype = message["type"]
        if mtype == "http.response.body":
            # _send_body() inline: one coroutine fewer per body message.
            body = message.get("body", b"")
            if (
                type(body) is not bytes
                or self.disconnected
                or not self.response_started
                or self.response_complete
            ):
                body = self._checked_body(body, "http.response.body")
            more_body = message.get("more_body", False)
            if not more_body and self.send_whole(body):
                return  # a small response, whole: no send_body() coroutine
            await self.send_body(body, more_body)
        elif mtype == "http.response.start":
            if self.response_started:
                self._fail_app("http.response.start sent twice")
            self.end_held = bool(message.get("trailers", False))
            self.set_head(message["status"], message.get("headers", ()))
        elif mtype == "http.response.pathsend":
            await self._send_path(message["path"])
        elif mtype == "http.response.trailers":
            # Trailers have no place in a CGI response; they are dropped, and
            # the last trailers message ends a response that waited for it.
            if self.end_held and not message.get("more_trailers", False):
                self.end_held = False
                if self.response_complete and not self.ended:
                    self.finish([])
        else:
            self._fail_app(f"unexpected ASGI message type {mtype!r}")

    def _fail_app(self, message: str) -> None:
        self.app_error = message
        raise AppProtocolError(message)

    def _checked_body(self, body: Any, mtype: str) -> bytes:
        """``body`` as bytes, if the app may send it now; else raise."""
        if self.disconnected:
            # First: an aborted request is also complete, and the app must see
            # the client gone (an OSError), not an error of its own.
            raise ClientDisconnected(GONE)
        if not self.response_started:
            self._fail_app(f"{mtype} sent before http.response.start")
        if self.response_complete:
            self._fail_app(f"{mtype} sent after the response was complete")
        if type(body) is bytes:
            return body
        if not isinstance(body, bytes | bytearray | memoryview):
            self._fail_app(f"{mtype} body must be bytes, not {type(body).__name__}")
        return bytes(body)

    async def _send_path(self, path: str) -> None:
        self._checked_body(b"", "http.response.pathsend")
        if self.offload(path):
            await self.send_body(b"", False)
            return
        # File reads run in the default executor: a slow disk must not stall
        # every other request on the loop.
        loop = self.conn.loop
        f = await loop.run_in_executor(None, open, path, "rb")
        try:
            while chunk := await loop.run_in_executor(None, f.read, _READ_CHUNK):
                await self.send_body(self._checked_body(chunk, "http.response.body"), True)
        finally:
            await loop.run_in_executor(None, f.close)
        await self.send_body(self._checked_body(b"", "http.response.body"), False)
