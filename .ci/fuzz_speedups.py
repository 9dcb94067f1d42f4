"""Coverage-guided differential fuzzing of the C speedups (run by .ci/sanitize).

Every input drives one exported function of fcgi_asgi._speedups and its
Python version, and fails on any difference in result or error; the
extension is built with ASan and UBSan, so a memory error aborts the run.

Guidance: atheris instruments the Python versions and this harness (edge
coverage of the same rules the C code implements), and the extension is
built with gcc's -fsanitize-coverage=trace-cmp, whose compare callbacks feed
libFuzzer's value profile (-use_value_profile=1). gcc has no libFuzzer edge
counters (clang's -fsanitize=fuzzer-no-link), which is why the C side is
guided through its compares only.

    python .ci/fuzz_speedups.py -max_total_time=60 -use_value_profile=1
"""

from __future__ import annotations

import sys
from typing import Any

import atheris

atheris.Setup(sys.argv, lambda data: one_input(data))

with atheris.instrument_imports(include=["fcgi_asgi"]):
    from fcgi_asgi import _speedups
    from fcgi_asgi.accesslog import render_default_py
    from fcgi_asgi.asgi.scope import ASGI_VERSION, build_scope, request_headers_py
    from fcgi_asgi.errors import AppProtocolError
    from fcgi_asgi.protocol.conn_core import ConnectionCorePy
    from fcgi_asgi.protocol.head import _STATUS_LINES, encode_head_py
    from fcgi_asgi.protocol.records import (
        MalformedPairs,
        ProtocolError,
        Record,
        RecordReader,
        UnsupportedVersion,
        decode_params_latin1_py,
        decode_params_py,
        request_packets_py,
        whole_response_py,
    )

STATUSES = sorted(_STATUS_LINES)
# Names the C code looks for, so short inputs reach its branches.
_NAMES = """
    REQUEST_URI QUERY_STRING SCRIPT_NAME PATH_INFO SERVER_SOFTWARE REQUEST_METHOD
    SERVER_PROTOCOL HTTPS REQUEST_SCHEME REMOTE_ADDR REMOTE_PORT SERVER_ADDR SERVER_NAME
    SERVER_PORT CONTENT_TYPE CONTENT_LENGTH HTTP_CONTENT_TYPE HTTP_CONTENT_LENGTH HTTP_HOST
    HTTP_ Status"""
NAMES = [name.encode() for name in _NAMES.split()]
# Values the C code looks for (methods, versions, ports, flags, paths).
_VALUES = """
    GET POST get BREW HTTP/1.0 HTTP/2.0 HTTP/2 HTTP/3 HTTP/0.9 on ON yes 1 https HTTPS 8080 -1 0
    127.0.0.1 lighttpd/1.4.69 LIGHTTPD nginx/1.22.1 text/plain / /a/b?x=1 /%41%zz%4 /caf%C3%A9?q"""
VALUES = [value.encode() for value in _VALUES.split()] + [b"", b"1" * 19]


def as_source(fdp: atheris.FuzzedDataProvider, data: bytes) -> Any:
    """The bytes as the gateway passes them (bytes, bytearray) or as a caller might."""
    kind = fdp.ConsumeIntInRange(0, 3)
    if kind == 1:
        return bytearray(data)
    if kind == 2:
        return memoryview(data)
    if kind == 3:  # non-contiguous: copied first
        return memoryview(bytes(x for b in data for x in (b, 0)))[::2]
    return data


def pairs_blob(fdp: atheris.FuzzedDataProvider) -> bytes:
    """PARAMS-like data: well-formed pairs of known and random names, or raw bytes."""
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    out = bytearray()
    if fdp.ConsumeBool():  # most requests have one: the case the C scope covers
        out += b"\x0b" + bytes([len(uri := b"/" + fdp.ConsumeBytes(8))]) + b"REQUEST_URI" + uri
    for _ in range(fdp.ConsumeIntInRange(0, 12)):
        name = NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)]
        if fdp.ConsumeBool():
            name = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 20))
        if fdp.ConsumeBool():
            value = VALUES[fdp.ConsumeIntInRange(0, len(VALUES) - 1)]
        else:
            value = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200))
        for n in (len(name), len(value)):
            out += bytes([n]) if n < 0x80 and fdp.ConsumeBool() else (n | 1 << 31).to_bytes(4)
        out += name + value
    if fdp.ConsumeBool() and out:  # cut short
        del out[fdp.ConsumeIntInRange(0, len(out) - 1) :]
    return bytes(out)


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except (ValueError, MalformedPairs, UnsupportedVersion, AppProtocolError) as exc:
        return ("error", str(exc))


def check_decode_params(fdp: atheris.FuzzedDataProvider) -> None:
    blob = pairs_blob(fdp)
    c = outcome(_speedups.decode_params, as_source(fdp, blob))
    assert c == outcome(decode_params_py, blob), (blob, c)
    c = outcome(_speedups.decode_params_latin1, as_source(fdp, blob))
    assert c == outcome(decode_params_latin1_py, blob), (blob, c)


def check_parse_records(fdp: atheris.FuzzedDataProvider) -> None:
    blob = bytearray()
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        clen = fdp.ConsumeIntInRange(0, 300)
        plen = fdp.ConsumeIntInRange(0, 255)
        version = 1 if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(0, 255)
        rtype, rid = fdp.ConsumeIntInRange(0, 255), fdp.ConsumeIntInRange(0, 65535)
        blob += bytes((version, rtype, rid >> 8, rid & 255, clen >> 8, clen & 255, plen, 0))
        blob += fdp.ConsumeBytes(clen) + bytes(plen)
    blob += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 20))
    blob = bytes(blob)
    c = outcome(_speedups.parse_records, as_source(fdp, blob), Record)
    reader = RecordReader()
    py = outcome(reader._feed_py, blob)
    if py[0] == "ok":
        py = ("ok", (py[1], len(blob) - reader.buffered))
    assert c == py, (blob, c, py)


def request_blob(fdp: atheris.FuzzedDataProvider) -> bytes:
    """Mostly whole requests back to back (1-3; their ids often repeat; a
    body in 0-3 STDIN records), each field sometimes off (type, id, version,
    role, lengths, padding, a tail)."""
    blob = bytearray()
    for _ in range(fdp.ConsumeIntInRange(1, 3)):
        rid = fdp.ConsumeIntInRange(1, 3) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 65535)
        body = fdp.ConsumeIntInRange(0, 3) if fdp.ConsumeBool() else 0
        shape = (1, 4, 4) + (5,) * (body + 1)
        shape = shape[: len(shape) - fdp.ConsumeIntInRange(0, 7) // 4] + (5,) * (
            fdp.ConsumeIntInRange(0, 7) // 7
        )
        ends = (2, 3 + body)  # the empty PARAMS and the empty STDIN
        for i, rtype in enumerate(shape):
            if fdp.ConsumeIntInRange(0, 15) == 0:
                rtype = fdp.ConsumeIntInRange(0, 255)
            this_rid = rid if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(0, 65535)
            if rtype == 1 and fdp.ConsumeIntInRange(0, 7):
                role = 1 if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeIntInRange(0, 65535)
                content = bytes((role >> 8, role & 255)) + fdp.ConsumeBytes(6).ljust(6, b"\0")
            elif (i in ends or i > ends[1]) and fdp.ConsumeIntInRange(0, 7):
                content = b""
            else:
                content = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))
            plen = fdp.ConsumeIntInRange(0, 255) if fdp.ConsumeBool() else -len(content) % 8
            version = 1 if fdp.ConsumeIntInRange(0, 15) else fdp.ConsumeIntInRange(0, 255)
            clen = len(content)
            blob += bytes((version, rtype, this_rid >> 8, this_rid & 255, clen >> 8, clen & 255))
            blob += bytes((plen, 0)) + content + bytes(plen)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        blob += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))
    return bytes(blob)


def check_request_packets(fdp: atheris.FuzzedDataProvider) -> None:
    blob = request_blob(fdp)
    c = outcome(_speedups.request_packets, as_source(fdp, blob))
    assert c == outcome(request_packets_py, blob), (blob, c)


def check_scope(fdp: atheris.FuzzedDataProvider) -> None:
    blob = pairs_blob(fdp)
    state = {"k": 1} if fdp.ConsumeBool() else None
    extensions = {"x": {}} if fdp.ConsumeBool() else None
    c = _speedups.scope_from_params(as_source(fdp, blob), ASGI_VERSION, state, extensions)
    try:
        params = decode_params_py(blob)
    except MalformedPairs:
        assert c is None, blob
        return
    if c is not None:
        expected = build_scope(params, None, state, extensions)
        assert c == expected and list(c) == list(expected), blob
        # Again, with the header names and addresses now in the caches.
        again = _speedups.scope_from_params(blob, ASGI_VERSION, state, extensions)
        assert again == expected and list(again) == list(expected), blob


def check_request_headers(fdp: atheris.FuzzedDataProvider) -> None:
    try:
        params = decode_params_py(pairs_blob(fdp))
    except MalformedPairs:
        return
    expected = request_headers_py(params)
    assert _speedups.request_headers(params) == expected, params
    assert _speedups.request_headers(params) == expected, params  # from the name cache


def check_encode_head(fdp: atheris.FuzzedDataProvider) -> None:
    status = STATUSES[fdp.ConsumeIntInRange(0, len(STATUSES) - 1)]
    headers: list[Any] = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        if fdp.ConsumeIntInRange(0, 7) == 0:
            name = NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)]
        else:
            name = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12))
        pair = (name, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24)))
        headers.append(list(pair) if fdp.ConsumeIntInRange(0, 7) == 0 else pair)
    if fdp.ConsumeBool():
        headers = tuple(headers)  # type: ignore[assignment]
    c = _speedups.encode_head(_STATUS_LINES[status], headers)
    if c is not None:
        assert c == encode_head_py(status, headers), (status, headers)


def check_whole_response(fdp: atheris.FuzzedDataProvider) -> None:
    rid = fdp.ConsumeIntInRange(-2, 0x10001)
    # Sizes near a record's 65535-byte limit, or small random bytes.
    if fdp.ConsumeIntInRange(0, 7) == 0:
        head = bytes(fdp.ConsumeIntInRange(0, 0x10001))
        body = bytes(fdp.ConsumeIntInRange(0, 0x10001 - len(head) + 1))
    else:
        head = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40))
    c = outcome(_speedups.whole_response, rid, head, body)
    assert c == outcome(whole_response_py, rid, head, body), (rid, len(head), len(body), c)


def check_access_line(fdp: atheris.FuzzedDataProvider) -> None:
    def text() -> Any:
        # Mostly ASCII, the values C writes; sometimes anything, or not text.
        kind = fdp.ConsumeIntInRange(0, 7)
        if kind == 0:
            return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4))
        if kind == 1:
            return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 8))
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 12)).decode("ascii", "replace")

    kind = fdp.ConsumeIntInRange(0, 5)
    client: Any = None
    if kind >= 2:
        client = (text(), fdp.ConsumeIntInRange(-(2**64), 2**64))
    elif kind == 1:
        client = [text(), text()]
    scope: dict[str, Any] = {
        "client": client,
        "method": text(),
        "raw_path": fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24)),
        "query_string": fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24)),
        "http_version": text(),
    }
    if fdp.ConsumeIntInRange(0, 15) == 0:
        del scope[list(scope)[fdp.ConsumeIntInRange(0, 4)]]
    status = fdp.ConsumeIntInRange(-(2**64), 2**64)

    def line_or_error(render: Any) -> Any:
        try:
            return render(scope, status, 0, 0.0, 1)
        except (KeyError, TypeError) as exc:
            return type(exc)

    c = _speedups.access_line(scope, status)
    if c is not None:
        assert c == line_or_error(render_default_py), (scope, status, c)


class _Context:
    def __init__(self) -> None:
        self.pending_heads: list[Any] = []
        self.turn_end_due = False

    def at_turn_end(self, loop: Any) -> None:
        self.turn_end_due = True


class _Loop:
    def time(self) -> float:
        return 1.0


class _Connection:
    """What send_fast calls on a connection, recorded."""

    def __init__(self) -> None:
        self.ctx = _Context()
        self.loop = _Loop()
        self.written: list[Any] = []
        self.ended = 0

    def write_last(self, data: Any) -> None:
        self.written.append(data)

    def request_ended(self, request: Any) -> None:
        self.ended += 1


class _Core(_speedups.RequestCore):  # type: ignore[misc]
    __slots__ = ("woken",)

    def wake(self) -> None:
        self.woken = True

    def asgi_send(self, message: Any) -> Any:
        """What RequestCore.send() hands a message it declines."""
        return _DECLINED


_DECLINED = object()


# Values a field may hold: what the gateway puts there, and what it never does.
_FIELD_VALUES: list[Any] = [True, False, None, 0, 1, 7, 65535, 65536, -1, 1 << 70, b"", "x", []]
_MESSAGE_KEYS = ["type", "status", "headers", "trailers", "body", "more_body"]


def check_send_fast(fdp: atheris.FuzzedDataProvider) -> None:
    """send_fast, or send, on any field values and any message: a bool or an error from
    the stubs, never a crash; a body it sends is framed as whole_response_py
    would. Each field and key takes the gateway's usual value when the input
    says so or runs out, so short inputs reach the paths that send."""
    conn = _Connection()
    core = _Core(conn, 1, True)
    started = fdp.ConsumeBool()
    usual: dict[str, Any] = {
        "conn": conn,
        "request_id": 1,
        "unsent_head": fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)) if started else None,
        "status": 200 if started else 0,
        "bytes_sent": 0,
        "response_started": started,
        "response_complete": False,
        "disconnected": False,
        "head_only": fdp.ConsumeIntInRange(0, 3) == 0,
        "stdin_done": True,
        "end_held": False,
        "_stdout_sent": False,
        "_waiters": [None] * fdp.ConsumeIntInRange(0, 1),
    }
    for name in usual:
        kind = fdp.ConsumeIntInRange(0, 15)
        if kind == 10:
            delattr(core, name)  # unset (NULL)
            continue
        value = usual[name]
        if kind > 10:
            value = _FIELD_VALUES[fdp.ConsumeIntInRange(0, len(_FIELD_VALUES) - 1)]
        setattr(core, name, value)
    usual_message: dict[str, Any] = {
        "type": "http.response.body" if started else "http.response.start",
        "status": STATUSES[fdp.ConsumeIntInRange(0, len(STATUSES) - 1)],
        "headers": [(fdp.ConsumeBytes(6), fdp.ConsumeBytes(6))] * fdp.ConsumeIntInRange(0, 2),
        "body": fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 0x4100)),
    }
    message: Any = {}
    for key in _MESSAGE_KEYS:
        kind = fdp.ConsumeIntInRange(0, 15)
        if kind > 10:
            message[key] = _FIELD_VALUES[fdp.ConsumeIntInRange(0, len(_FIELD_VALUES) - 1)]
        elif kind < 8 and key in usual_message:
            message[key] = usual_message[key]
    head = getattr(core, "unsent_head", None)
    via_send = fdp.ConsumeBool()  # the C send(), which takes the same path
    try:
        if via_send:
            result = core.send(message)
            assert result is _speedups.SENT or result is _DECLINED, result
            done = result is _speedups.SENT
        else:
            done = core.send_fast(message)
    except (AttributeError, TypeError) as exc:  # a field's type the stubs do not take
        assert "send_fast" not in str(exc) and "send(" not in str(exc), exc
        return
    assert done is True or done is False
    if done and message.get("type") == "http.response.body":
        body = b"" if getattr(core, "head_only", None) is True else message.get("body", b"")
        assert conn.written == [whole_response_py(core.request_id, head, body)]
        assert conn.ended == 1 and core.response_complete is True and core.unsent_head is None
    elif done:
        assert core.response_started is True and core.unsent_head is not None
        assert core.unsent_head.startswith(_STATUS_LINES[message["status"]])
        assert core in conn.ctx.pending_heads
    else:
        assert conn.written == [] and conn.ended == 0 and not conn.ctx.pending_heads


class _StepsContext:
    """What a connection's steps read on its context; the request class records."""

    def __init__(self, start: str, log: list[Any]) -> None:
        self.request_class = _StepRequest
        self.stats = _Stats()
        self.retire_at = 1
        self.on_retire = lambda: log.append("retire")
        self.start = start
        self.log = log


class _Stats:
    requests_served = 0


class _StepRequest(_speedups.RequestCore):  # type: ignore[misc]
    __slots__ = ()

    def feed_body(self, body: bytes) -> None:
        self.conn.ctx.log.append(("feed_body", body))

    def start(self, params: bytes) -> None:
        ctx = self.conn.ctx
        ctx.log.append(("start", self.request_id, self.keep_conn, params, self.stdin_done))
        if ctx.start == "protocol error":
            raise ProtocolError("bad params")
        if ctx.start == "error":
            raise RuntimeError("start failed")
        if ctx.start == "end":
            self.conn.write_last(b"last")
            self.conn.request_ended(self)


class _Hooks:
    """The connection's methods the steps call, recorded."""

    ctx: Any

    def _records_received(self, data: bytes) -> None:
        self.ctx.log.append(("records", data))

    def _packets_received(self, packets: Any) -> None:
        self.ctx.log.append(("packets", packets))

    def _protocol_failed(self, exc: Exception) -> None:
        self.ctx.log.append(("protocol failed", str(exc)))

    def _check_write_backlog(self) -> None:
        self.ctx.log.append("backlog")

    def _forget_params(self, cycle: Any) -> None:
        self.ctx.log.append("forget params")

    def _close(self) -> None:
        self.ctx.log.append("close")

    def _linger(self, rid: int) -> None:
        self.ctx.log.append(("linger", rid))

    def write(self, pieces: list[Any]) -> None:
        self.ctx.log.append(("write", pieces))


class _CSteps(_Hooks, _speedups.ConnectionCore):  # type: ignore[misc]
    pass


class _PySteps(_Hooks, ConnectionCorePy):
    __slots__ = ()


class _Transport:
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def write(self, data: bytes) -> None:
        self.log.append(("transport", data))


def check_connection_steps(fdp: atheris.FuzzedDataProvider) -> None:
    """A connection's three steps on any read and any state of its fields
    with the gateway's types: the C steps call the same methods with the
    same arguments and leave the same fields as the Python steps."""
    blob = request_blob(fdp)
    start = ["", "end", "end", "protocol error", "error"][fdp.ConsumeIntInRange(0, 4)]
    fields: dict[str, Any] = {
        "requests": {} if fdp.ConsumeIntInRange(0, 3) else {7: None},
        "requests_begun": fdp.ConsumeIntInRange(0, 3),
        "write_paused": fdp.ConsumeIntInRange(0, 3) == 0,
        "closing": fdp.ConsumeIntInRange(0, 7) == 0,
        "_unparsed": bytearray(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 1))),
        "_hold": True,
        "_held": [b"h"] * (fdp.ConsumeIntInRange(0, 3) == 0),
        "_multiplexed": fdp.ConsumeIntInRange(0, 3) == 0,
        "_linger_id": None if fdp.ConsumeIntInRange(0, 3) else 1,
        "_params_buffered": fdp.ConsumeIntInRange(0, 100),
        "_max_params_size": fdp.ConsumeIntInRange(0, 1 << 20),
        "_idle_since": 5.0,
        "_served_any": False,
        "_close_when_idle": fdp.ConsumeBool(),
        "_on_idle": None,
    }
    results = []
    for cls in (_CSteps, _PySteps):
        log: list[Any] = []
        conn = cls()
        conn.ctx = _StepsContext(start, log)
        conn.loop = _Loop()
        conn.transport = _Transport(log)
        for name, value in fields.items():
            setattr(
                conn, name, value.copy() if isinstance(value, dict | list | bytearray) else value
            )
        try:
            conn.data_received(blob)
            error = None
        except RuntimeError as exc:
            error = str(exc)
        log.append(error)
        state = {name: getattr(conn, name) for name in fields}
        state["requests"] = sorted(state["requests"])
        results.append((log, state, conn.ctx.stats.requests_served))
    assert results[0] == results[1], (blob, fields, results)


CHECKS = [check_decode_params, check_parse_records, check_scope, check_request_headers]
CHECKS += [check_encode_head, check_request_packets, check_whole_response, check_access_line]
CHECKS += [check_send_fast, check_connection_steps]


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    CHECKS[fdp.ConsumeIntInRange(0, len(CHECKS) - 1)](fdp)


atheris.Fuzz()
