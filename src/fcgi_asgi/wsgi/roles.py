"""The AUTHORIZER and FILTER roles for WSGI apps.

``environ["FCGI_ROLE"]`` is ``"RESPONDER"``, ``"AUTHORIZER"`` or
``"FILTER"``. An authorizer's response goes to the web server as is: a 200
authorizes (its ``Variable-NAME`` headers become params of the authorized
request), anything else is the client's answer. A filter reads its body
from ``wsgi.input`` and the DATA stream (the file the web server read,
``FCGI_DATA_LENGTH`` bytes) from ``environ["fcgi.data"]``, a file-like
object of the same kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocol.roles import AuthorizerRequest, FilterRequest
from .bridge import WSGIRequest
from .environ import InputStream

if TYPE_CHECKING:
    from ..protocol.request import Request

__all__ = ["WSGIAuthorizerRequest", "WSGIFilterRequest", "wsgi_role_classes"]


class WSGIAuthorizerRequest(AuthorizerRequest, WSGIRequest):
    """An AUTHORIZER request for a WSGI app: no body, FCGI_ROLE=AUTHORIZER."""

    __slots__ = ()
    role_param = "AUTHORIZER"


class WSGIFilterRequest(FilterRequest, WSGIRequest):
    """A FILTER request for a WSGI app: the DATA stream as ``fcgi.data``."""

    role_param = "FILTER"
    inline_ok = False  # its DATA reads wait for records: always in a thread

    def add_role_environ(self, environ: dict[str, Any]) -> None:
        """Add the DATA stream as ``environ["fcgi.data"]``."""
        environ["fcgi.data"] = InputStream(self._fetch_data)

    def _fetch_data(self) -> bytes:
        """The next piece of the DATA stream, b"" at its end (app's thread)."""
        data: bytes = self._on_loop(self._next_data())
        return data

    async def _next_data(self) -> bytes:
        return (await self.next_data())[0]


def wsgi_role_classes() -> dict[str, type[Request]]:
    """The WSGI request class of each role but RESPONDER, by role name."""
    return {"authorizer": WSGIAuthorizerRequest, "filter": WSGIFilterRequest}
