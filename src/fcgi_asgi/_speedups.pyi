# Each function also takes what the Python version takes (anything bytes() copies);
# these are the types the gateway passes.
from collections.abc import Callable, Coroutine
from typing import Any

def decode_params(data: bytes | bytearray | memoryview, /) -> dict[bytes, bytes]: ...
def decode_params_latin1(data: bytes | bytearray | memoryview, /) -> dict[str, str]: ...
def request_headers(params: dict[bytes, bytes], /) -> list[tuple[bytes, bytes]]: ...
def parse_records(
    src: bytes | bytearray | memoryview, record_type: type[tuple[int, int, bytes]], /
) -> tuple[list[tuple[int, int, bytes]], int]: ...
def request_packets(
    data: bytes | bytearray | memoryview, /
) -> list[tuple[int, int, bytes, bytes]] | None: ...
def whole_response(request_id: int, head: bytes, body: bytes, /) -> bytes: ...
def encode_head(status_line: bytes, headers: object, /) -> bytes | None: ...
def scope_from_params(
    data: bytes | bytearray | memoryview,
    asgi: dict[str, str],
    state: dict[str, object] | None,
    extensions: dict[str, object] | None,
    /,
) -> dict[str, object] | None: ...
def access_line(scope: dict[str, object], status: int, /) -> str | None: ...
def access_logger(
    pending: list[str],
    grew: Callable[[int], None],
    fallback: Callable[[dict[str, Any], int, int, float, int], None],
    max_pending: int,
    /,
) -> Callable[[dict[str, Any], int, int, float, int], None]: ...
def set_status_lines(lines: dict[int, bytes], /) -> None: ...

WHOLE_BODY_LIMIT: int
#: RequestCore.send()'s result for a message done at once: an awaitable already
#: finished (and a collections.abc.Coroutine).
SENT: Coroutine[Any, Any, None]

# RequestCore, the C base type of protocol/request.py's Request, is typed as
# protocol/core.py's RequestCorePy (the same fields, __init__, send_fast and send).
# ConnectionCore, the C base type of protocol/connection.py's FastCGIConnection,
# is typed as protocol/conn_core.py's ConnectionCorePy (the same fields and steps).
