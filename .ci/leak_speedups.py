"""Reference-leak loop for the C speedups (run by .ci/sanitize).

Calls every exported function N times (default one million) over a mix of
good inputs and inputs that raise, and fails when the interpreter's count of
allocated blocks or the process RSS grows between the end of a warm-up and
the end of the run: a reference leaked per call would leave N objects behind.
Run on the normal build without the sanitizers, whose quarantine of freed
memory would make RSS meaningless.

    python .ci/leak_speedups.py [N]
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from fcgi_asgi import _speedups
from fcgi_asgi.asgi.scope import ASGI_VERSION
from fcgi_asgi.protocol import head  # noqa: F401  (gives send_fast its status lines)
from fcgi_asgi.protocol.records import ProtocolError, Record, encode_pairs, encode_record

PAGE = os.sysconf("SC_PAGE_SIZE")
MAX_BLOCKS = 2_000  # caches (the name cache is bounded at 4096 names) settle in the warm-up
MAX_RSS = 8 << 20


class NoCopy(dict[str, Any]):
    def copy(self) -> dict[str, Any]:
        raise RuntimeError("no copy")


class BadDigits(bytes):
    def isdigit(self) -> bool:
        raise RuntimeError("no isdigit")


class Sub(bytes):
    pass


PARAMS = [
    (b"REQUEST_URI", b"/a%20b/c?x=1"),
    (b"REQUEST_METHOD", b"POST"),
    (b"CONTENT_TYPE", b"text/plain"),
    (b"CONTENT_LENGTH", b"12"),
    (b"HTTP_CONTENT_LENGTH", b"12"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"4242"),
    (b"SERVER_NAME", b"example.org"),
    (b"SERVER_PORT", b"80"),
    (b"HTTPS", b"on"),
] + [(b"HTTP_X_%d" % i, b"v" * i) for i in range(15)]
BLOB = encode_pairs(PARAMS)
PARAMS_DICT = dict(PARAMS)
RECORDS = b"".join(encode_record(6, i, b"r" * (i * 37)) for i in range(8)) + b"\x01\x06"


def whole_get(rid: int) -> bytes:
    """A whole bodiless request as nginx sends it, for request_packets."""
    return (
        encode_record(1, rid, b"\x00\x01\x01\x00\x00\x00\x00\x00")
        + encode_record(4, rid, BLOB)
        + encode_record(4, rid)
        + encode_record(5, rid)
    )


PACKET = whole_get(1)
# nginx's POST: the body in two STDIN records before the empty one.
POSTED = (
    PACKET[:-8] + encode_record(5, 1, b"b" * 40000) + encode_record(5, 1, b"c" * 9) + PACKET[-8:]
)
# Two requests from different clients, servers and header names, in turn:
# the scope's caches replace their entries on every call.
CHURN = [
    encode_pairs(
        [
            *PARAMS[:4],
            (b"REMOTE_ADDR", b"10.0.0.%d" % i),
            (b"SERVER_ADDR", b"10.1.0.%d" % i),
            (b"SERVER_PORT", b"%d" % (80 + i)),
            (b"HTTP_X_CHURN_%d" % i, b"v"),
        ]
    )
    for i in range(2)
]
ACCESS_SCOPE: dict[str, Any] = {
    "client": ("127.0.0.1", 50000),
    "method": "GET",
    "raw_path": b"/a",
    "query_string": b"b=1",
    "http_version": "1.1",
}


class StubContext:
    """What RequestCore.send_fast calls on the connection's context."""

    def __init__(self) -> None:
        self.pending_heads: list[Any] = []
        self.turn_end_due = False

    def at_turn_end(self, loop: Any) -> None:
        self.pending_heads.clear()


class StubLoop:
    def time(self) -> float:
        return 1.0


class StubConnection:
    """What RequestCore calls on a connection; ``fail`` makes write_last() raise."""

    def __init__(self, fail: bool = False) -> None:
        self.ctx = StubContext()
        self.loop = StubLoop()
        self.fail = fail
        self.written = 0

    def write_last(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("write failed")
        self.written += len(data)

    def request_ended(self, request: Any) -> None:
        pass


class Core(_speedups.RequestCore):  # type: ignore[misc]
    __slots__ = ()

    def wake(self) -> None:
        del self._waiters[:]

    def asgi_send(self, message: Any) -> Any:
        """RequestCore.send()'s Python path, when it declines."""
        return message


class Declining(Core):
    __slots__ = ()

    def send_fast(self, message: Any) -> bool:
        return False


def send_cycle(conn: StubConnection, start: dict[str, Any], body: dict[str, Any]) -> None:
    """A fresh request's start and body through the C send(), then the
    finished awaitable driven as a coroutine, and a subclass that declines."""
    core = Core(conn, 1, True)
    core.stdin_done = True
    core._waiters = [None]
    for message in (start, body):
        sent = core.send(message)
        if sent is _speedups.SENT:
            for _ in sent.__await__():
                pass
            with contextlib.suppress(ValueError):
                sent.throw(ValueError("x"))
    Declining(conn, 2, True).send(start)
    conn.ctx.turn_end_due = False


_pending_lines: list[str] = []


def _grew(n: int) -> None:
    if n >= 4:
        _pending_lines.clear()


def _fallback(scope: Any, status: int, sent: int, duration: float, rid: int) -> None:
    _pending_lines.append(f"{status}")


_access_log = _speedups.access_logger(_pending_lines, _grew, _fallback, 4)


_failing_lines: list[str] = []


def _failing_grew(n: int) -> None:
    _failing_lines.clear()
    raise RuntimeError("flush failed")


_access_log_failing = _speedups.access_logger(_failing_lines, _failing_grew, _fallback, 4)


def send_fast_cycle(conn: StubConnection, start: dict[str, Any], body: dict[str, Any]) -> None:
    """A fresh request's start and body through send_fast (a watcher waiting)."""
    core = Core(conn, 1, True)
    core.stdin_done = True
    core._waiters = [None]
    core.send_fast(start)
    core.send_fast(body)
    conn.ctx.turn_end_due = False


class StubStats:
    requests_served = 0


class StubServerContext:
    """What ConnectionCore reads on its context."""

    def __init__(self, start: str) -> None:
        self.request_class = StepRequest
        self.stats = StubStats()
        self.retire_at = 2
        self.on_retire = self.retired
        self.start = start

    def retired(self) -> None:
        self.stats.requests_served = 0


class StepRequest(Core):
    """A request as ConnectionCore opens it: start() as the context says."""

    __slots__ = ()

    def feed_body(self, body: bytes) -> None:
        self.body.append(body)

    def start(self, params: bytes) -> None:
        how = self.conn.ctx.start
        if how == "protocol error":
            raise ProtocolError("bad params")
        if how == "error":
            raise RuntimeError("start failed")
        self.conn.request_ended(self)


class StubTransport:
    def write(self, data: bytes) -> None:
        pass


class StepConnection(_speedups.ConnectionCore):  # type: ignore[misc]
    """FastCGIConnection's fields and the methods ConnectionCore calls."""

    def __init__(self, start: str = "", multiplexed: bool = False, linger: bool = False) -> None:
        self.ctx = StubServerContext(start)
        self.loop = StubLoop()
        self.transport = StubTransport()
        self.requests = {}
        self.requests_begun = 0
        self.write_paused = True
        self.closing = False
        self._unparsed = bytearray()
        self._hold = True
        self._held = []
        self._multiplexed = multiplexed
        self._linger_id = 9 if linger else None
        self._params_buffered = 0
        self._max_params_size = 1 << 20
        self._idle_since = None
        self._served_any = False
        self._close_when_idle = True
        self._on_idle = None

    def _records_received(self, data: bytes) -> None:
        self._unparsed.clear()

    def _packets_received(self, packets: Any) -> None:
        self.requests_begun += len(packets)

    def _protocol_failed(self, exc: Exception) -> None:
        self.closing = True

    def _check_write_backlog(self) -> None:
        pass

    def _forget_params(self, cycle: Any) -> None:
        cycle.params = None

    def _close(self) -> None:
        self.closing = True

    def _linger(self, rid: int) -> None:
        self._linger_id = rid

    def write(self, pieces: list[Any]) -> None:
        self._held.extend(pieces)


def connection_cycle(data: bytes, start: str = "", **options: Any) -> None:
    """A fresh connection's read, its last write and, through the request's
    start(), its request's end."""
    conn = StepConnection(start, **options)
    if data[:1] == b"~":
        conn._unparsed += b"x"  # a partial record waits
    conn.data_received(data)
    conn.write_last(b"end")
    conn.write_last(b"end")


START = {"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]}
HEAD = [(b"content-type", b"text/plain"), (b"x-a", b"1"), [b"x-b", b"2"]]
LINE = b"Status: 200 OK\r\n"

# (function, arguments): each case is called in turn, errors caught.
CASES: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
    (_speedups.decode_params, (BLOB,)),
    (_speedups.decode_params, (bytearray(BLOB),)),
    (_speedups.decode_params, (memoryview(BLOB)[:-3],)),  # cut short: ValueError
    (_speedups.decode_params_latin1, (BLOB,)),
    (_speedups.decode_params_latin1, (memoryview(BLOB)[:-3],)),
    (_speedups.decode_params, (memoryview(BLOB + BLOB)[::2],)),  # copied
    (_speedups.decode_params, ("str",)),  # TypeError
    (_speedups.parse_records, (RECORDS, Record)),
    (_speedups.parse_records, (bytearray(RECORDS), Record)),
    (_speedups.parse_records, (b"\x02" + RECORDS, Record)),  # ValueError
    (_speedups.parse_records, (RECORDS, time.struct_time)),  # TypeError
    (_speedups.parse_records, (list(RECORDS[:40]), tuple)),  # copied
    (_speedups.request_packets, (PACKET,)),
    (_speedups.request_packets, (bytearray(PACKET),)),
    (_speedups.request_packets, (PACKET + whole_get(2),)),  # two requests
    (_speedups.request_packets, (POSTED + whole_get(2),)),  # a body, joined
    (_speedups.request_packets, (POSTED[:-1],)),  # None, after a body
    (_speedups.request_packets, (PACKET[:-1],)),  # None
    (_speedups.request_packets, (memoryview(PACKET + PACKET)[::2],)),  # copied: None
    (_speedups.request_packets, (0,)),  # TypeError
    (_speedups.scope_from_params, (BLOB, ASGI_VERSION, {"s": 1}, {"e": {}})),
    (_speedups.scope_from_params, (bytearray(BLOB), ASGI_VERSION, None, None)),
    (_speedups.scope_from_params, (BLOB[:-2], ASGI_VERSION, None, None)),  # None
    (_speedups.scope_from_params, (BLOB, ASGI_VERSION, types.MappingProxyType({"a": 1}), None)),
    (_speedups.scope_from_params, (BLOB, ASGI_VERSION, NoCopy(a=1), None)),  # RuntimeError
    (_speedups.scope_from_params, (BLOB, ASGI_VERSION)),  # TypeError
    (_speedups.scope_from_params, (CHURN[0], ASGI_VERSION, None, None)),
    (_speedups.scope_from_params, (CHURN[1], ASGI_VERSION, None, {"e": {}})),
    (_speedups.whole_response, (1, LINE, b"body")),
    (_speedups.whole_response, (65535, Sub(LINE), Sub(b""))),
    (_speedups.whole_response, (65536, LINE, b"")),  # ValueError
    (_speedups.whole_response, (1, LINE, bytes(65535))),  # ValueError
    (_speedups.whole_response, (1, "str", b"")),  # TypeError
    (_speedups.whole_response, (1 << 80, LINE, b"")),  # ValueError
    (_speedups.request_headers, (PARAMS_DICT,)),
    (_speedups.request_headers, ({Sub(b"HTTP_A"): "x", b"CONTENT_TYPE": 0},)),
    (_speedups.request_headers, ({b"CONTENT_LENGTH": BadDigits(b"1")},)),  # RuntimeError
    (_speedups.request_headers, ({b"HTTP_A": b"1", 1: b"x"},)),  # TypeError
    (_speedups.request_headers, (collections.OrderedDict(PARAMS_DICT),)),  # TypeError
    (_speedups.encode_head, (LINE, HEAD)),
    (_speedups.encode_head, (LINE, tuple(HEAD))),
    (_speedups.encode_head, (LINE, [(b"bad name", b"1")])),  # None
    (_speedups.encode_head, ("str", HEAD)),  # TypeError
    (_speedups.access_line, (ACCESS_SCOPE, 200)),
    (_speedups.access_line, ({**ACCESS_SCOPE, "client": None, "query_string": b""}, 404)),
    (_speedups.access_line, ({**ACCESS_SCOPE, "raw_path": b"/\xe9"}, 200)),  # None
    (_speedups.access_line, ({**ACCESS_SCOPE, "client": ("h", 1 << 80)}, 200)),  # None
    (_speedups.access_line, ({"method": "GET"}, 200)),  # None
    (_speedups.access_line, (ACCESS_SCOPE,)),  # TypeError
    (send_fast_cycle, (StubConnection(), START, {"type": "http.response.body", "body": b"hi"})),
    (send_fast_cycle, (StubConnection(), {**START, "headers": ()}, {"type": "http.response.body"})),
    (send_fast_cycle, (StubConnection(True), START, {"type": "http.response.body"})),  # raises
    (send_fast_cycle, (StubConnection(), {**START, "status": 299}, {"type": "x"})),  # declined
    (send_cycle, (StubConnection(), START, {"type": "http.response.body", "body": b"hi"})),
    (send_cycle, (StubConnection(True), START, {"type": "http.response.body"})),  # raises
    (send_cycle, (StubConnection(), {**START, "status": 299}, {"type": "x"})),  # declined
    (_access_log, (ACCESS_SCOPE, 200, 0, 0.0, 1)),
    (_access_log, ({**ACCESS_SCOPE, "raw_path": b"/\xe9"}, 200, 0, 0.0, 1)),  # fallback
    (_access_log, (ACCESS_SCOPE, 200)),  # TypeError
    (_access_log_failing, (ACCESS_SCOPE, 200, 0, 0.0, 1)),  # RuntimeError
    (connection_cycle, (PACKET,)),  # opened, started, ended, closed or kept
    (connection_cycle, (PACKET.replace(b"\x00\x01\x01\x00", b"\x00\x01\x00\x00", 1),)),
    (connection_cycle, (POSTED,)),  # a body fed
    (connection_cycle, (PACKET, "protocol error")),  # _protocol_failed
    (connection_cycle, (PACKET, "error")),  # RuntimeError
    (connection_cycle, (PACKET + whole_get(2),)),  # _packets_received
    (connection_cycle, (PACKET, "", True)),  # multiplexed: write()
    (connection_cycle, (PACKET, "", False, True)),  # lingering: _packets_received
    (connection_cycle, (b"~" + PACKET,)),  # a partial record: _records_received
    (connection_cycle, (PACKET[:-1],)),  # not whole: _records_received
    (connection_cycle, ("str",)),  # TypeError
    (_speedups.access_logger, ((), _grew, _fallback, 4)),  # TypeError
    (_speedups.access_logger, ([], _grew, _fallback, 0)),  # ValueError
]


_probe = StubConnection()
send_fast_cycle(_probe, START, {"type": "http.response.body", "body": b"hi"})
assert _probe.written == 8 + len(b"Status: 200 OK\r\na: b\r\n\r\nhi") + 24, "send_fast declined"
_probe = StubConnection()
send_cycle(_probe, START, {"type": "http.response.body", "body": b"hi"})
assert _probe.written == 8 + len(b"Status: 200 OK\r\na: b\r\n\r\nhi") + 24, "send declined"
_conn = StepConnection()
_conn.data_received(PACKET)
assert _conn.requests_begun == 1 and not _conn.requests and _conn._served_any, "not opened"
_access_log(ACCESS_SCOPE, 200, 0, 0.0, 1)
assert _pending_lines and _pending_lines[-1].endswith('" 200'), _pending_lines


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def run(rounds: int) -> None:
    for _ in range(rounds):
        for fn, args in CASES:
            with contextlib.suppress(ValueError, TypeError, RuntimeError):
                fn(*args)


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    per_function = collections.Counter(fn.__name__ for fn, _ in CASES)
    # every function is called at least `calls` times
    rounds = -(-calls // min(per_function.values()))
    run(max(rounds // 10, 1000))
    gc.collect()
    blocks0, rss0 = sys.getallocatedblocks(), rss()
    started = time.monotonic()
    run(rounds)
    gc.collect()
    blocks, grown = sys.getallocatedblocks() - blocks0, rss() - rss0
    total = rounds * len(CASES)
    print(
        f"{total} calls ({rounds} rounds of {len(CASES)} cases, each function at least "
        f"{rounds * min(per_function.values())} times) in {time.monotonic() - started:.1f} s: "
        f"allocated blocks {blocks:+d}, RSS {grown / 1024:+.0f} KiB"
    )
    if blocks > MAX_BLOCKS or grown > MAX_RSS:
        print(f"LEAK: more than {MAX_BLOCKS} blocks or {MAX_RSS >> 20} MiB of RSS")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
