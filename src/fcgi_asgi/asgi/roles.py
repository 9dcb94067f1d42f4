"""The AUTHORIZER and FILTER roles for ASGI apps.

The app tells the roles apart by ``scope["extensions"]["fastcgi"]["role"]``:
``"responder"``, ``"authorizer"`` or ``"filter"``. An authorizer's response
goes to the web server as is: a 200 authorizes (its ``Variable-NAME``
headers become params of the authorized request), anything else is the
client's answer. A filter reads its body with ``receive()`` as usual and
the DATA stream (the file the web server read) with
``scope["extensions"]["fastcgi"]["receive_data"]()``, which returns
``{"type": "fastcgi.data", "body": bytes, "more_body": bool}`` messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocol.records import decode_params
from ..protocol.roles import AuthorizerRequest, FilterRequest
from .bridge import ASGIRequest

if TYPE_CHECKING:
    from ..protocol.request import Request

__all__ = ["ASGIAuthorizerRequest", "ASGIFilterRequest", "asgi_role_classes"]


class ASGIAuthorizerRequest(AuthorizerRequest, ASGIRequest):
    """An AUTHORIZER request for an ASGI app: no body, the role in the scope."""

    __slots__ = ()
    extensions: dict[str, Any] = {"http.response.pathsend": {}, "fastcgi": {"role": "authorizer"}}


class ASGIFilterRequest(FilterRequest, ASGIRequest):
    """A FILTER request for an ASGI app: the DATA stream through the scope."""

    def start(self, params: bytes | bytearray) -> None:
        """Put the DATA stream and its params in the scope, then run the app."""
        decoded = decode_params(params)
        self.extensions = {
            "http.response.pathsend": {},
            "fastcgi": {
                "role": "filter",
                "receive_data": self.receive_data,
                "data_length": _int_param(decoded.get(b"FCGI_DATA_LENGTH")),
                "data_last_mod": _int_param(decoded.get(b"FCGI_DATA_LAST_MOD")),
            },
        }
        super().start(params)

    async def receive_data(self) -> dict[str, Any]:
        """The next piece of the DATA stream, as a ``fastcgi.data`` message."""
        body, more = await self.next_data()
        return {"type": "fastcgi.data", "body": body, "more_body": more}


def _int_param(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def asgi_role_classes() -> dict[str, type[Request]]:
    """The ASGI request class of each role but RESPONDER, by role name."""
    return {"authorizer": ASGIAuthorizerRequest, "filter": ASGIFilterRequest}
