"""The hot-path shortcuts give the same results as the plain code they replace."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fcgi_asgi.asgi import scope
from fcgi_asgi.asgi.scope import ASGI_VERSION, build_scope
from fcgi_asgi.errors import AppProtocolError
from fcgi_asgi.protocol import records
from fcgi_asgi.protocol.head import encode_head
from fcgi_asgi.protocol.records import (
    MalformedPairs,
    ProtocolError,
    RecordReader,
    decode_pairs,
    decode_params_latin1_py,
    decode_params_py,
    encode_pairs,
    encode_record,
)
from tests import recorded_params as rec

try:
    from fcgi_asgi._speedups import scope_from_params as _c_scope_from_params
except ImportError:  # FCGI_ASGI_NO_EXTENSIONS: compare the Python path with itself
    _HAVE_C = False

    def _c_scope_from_params(*args: Any) -> None:
        return None
else:
    _HAVE_C = True


# Lengths around the 1-byte/4-byte boundary (127/128) and larger.
_blob = st.binary(max_size=300) | st.sampled_from([b"x" * 127, b"y" * 128, b"z" * 70000])
_pairs = st.lists(st.tuples(_blob, _blob), max_size=12)


# Both implementations: the C one (when built) and the pure-Python fallback.
IMPLEMENTATIONS = [decode_params_py, records.decode_params]


def test_c_speedups_are_built() -> None:
    """CI has a compiler: make sure it tests the C decoder, not the fallback twice."""
    if os.environ.get("FCGI_ASGI_NO_EXTENSIONS"):
        pytest.skip("FCGI_ASGI_NO_EXTENSIONS is set: the pure-Python codec is in use")
    assert records._c_decoder is not None
    assert records.decode_params is not decode_params_py
    assert records.whole_response is not records.whole_response_py


@pytest.mark.parametrize("decode_params", IMPLEMENTATIONS, ids=["python", "default"])
@given(pairs=_pairs)
def test_decode_params_is_dict_of_decode_pairs(decode_params, pairs) -> None:  # type: ignore[no-untyped-def]
    data = encode_pairs(pairs)
    assert decode_params(data) == dict(decode_pairs(data)) == dict(pairs)
    assert decode_params(bytearray(data)) == dict(pairs)
    assert all(type(k) is bytes and type(v) is bytes for k, v in decode_params(data).items())


@pytest.mark.parametrize("decode_params", IMPLEMENTATIONS, ids=["python", "default"])
@given(pairs=_pairs, data=st.data())
def test_decode_params_rejects_what_decode_pairs_rejects(decode_params, pairs, data) -> None:  # type: ignore[no-untyped-def]
    blob = encode_pairs(pairs)
    cut = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        expected = dict(decode_pairs(cut))
    except MalformedPairs:
        with pytest.raises(MalformedPairs) as err:
            decode_params(cut)
        assert "cut short" in str(err.value) or "overruns" in str(err.value)
    else:
        assert decode_params(cut) == expected


@pytest.mark.parametrize(
    "decode", [decode_params_latin1_py, records.decode_params_latin1], ids=["python", "default"]
)
@given(pairs=_pairs, data=st.data())
def test_decode_params_latin1_is_decode_params_as_str(decode, pairs, data) -> None:  # type: ignore[no-untyped-def]
    """The WSGI environ's decoder: decode_params with latin-1 str names and
    values, the same errors for data cut anywhere."""
    blob = encode_pairs(pairs)
    cut = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        expected = {
            k.decode("latin-1"): v.decode("latin-1") for k, v in dict(decode_pairs(cut)).items()
        }
    except MalformedPairs as exc:
        with pytest.raises(MalformedPairs) as err:
            decode(cut)
        assert (
            str(err.value) == str(exc)
            or "cut short" in str(err.value)
            or "overruns" in str(err.value)
        )
    else:
        got = decode(memoryview(cut))
        assert got == expected and list(got) == list(expected)
        assert all(type(k) is str and type(v) is str for k, v in got.items())


def test_decode_params_latin1_kept_names_and_values_never_go_stale() -> None:
    """The C decoder keeps recent names and values as str (a small cache by
    name): a name sent again with another value, 300 names sharing 128
    slots, names and values too long to keep, bytes above 0x7f, all decode
    as the Python version does, call after call."""
    for i in range(900):
        pairs = [
            (b"REQUEST_URI", b"/p%d" % (i % 7)),
            (b"HTTP_X_%d" % (i % 300), b"v" * (i % 5)),
            (b"N" * 300, b"x%d" % i),
            (b"SERVER_SOFTWARE", b"nginx" if i % 2 else b"nginx\xe9"),
            (b"HTTP_\xff", b"y" * (250 + i % 10)),  # values either side of the kept size
        ]
        data = encode_pairs(pairs)
        got = records.decode_params_latin1(data)
        assert got == decode_params_latin1_py(data), i
        assert list(got) == [k.decode("latin-1") for k, _ in pairs]


@given(st.lists(st.tuples(st.integers(1, 11), st.integers(0, 65535), st.binary(max_size=200))))
def test_reader_in_any_chunking(records: list[tuple[int, int, bytes]]) -> None:
    blob = b"".join(encode_record(*r) for r in records)
    for size in (1, 7, 8, 9, 100, len(blob) or 1):
        reader = RecordReader()
        got = []
        for i in range(0, len(blob), size):
            got += reader.feed(blob[i : i + size])
        assert [tuple(r) for r in got] == records
        assert all(type(r.content) is bytes for r in got)
        assert reader.buffered == 0


def test_scope_headers_match_the_plain_rule() -> None:
    params = {
        b"CONTENT_TYPE": b"",
        b"CONTENT_LENGTH": b"5",
        b"HTTP_X_EMPTY": b"",
        b"HTTP_X_FORWARDED_FOR": b"10.0.0.1",
        b"REMOTE_ADDR": b"127.0.0.1",
        b"REMOTE_PORT": b"not-a-port",
        b"SERVER_NAME": b"example.org",
        b"REQUEST_METHOD": b"propfind",
        b"REQUEST_SCHEME": b"HTTPS",
        b"REQUEST_URI": b"/a%20b?q=1",
    }
    for _ in range(2):  # a second time with every name already classified
        scope = build_scope(params)
        assert scope["headers"] == [
            (b"content-length", b"5"),
            (b"x-empty", b""),
            (b"x-forwarded-for", b"10.0.0.1"),
        ]
        assert scope["client"] == ("127.0.0.1", 0)
        assert scope["server"] == ("example.org", None)
        assert scope["method"] == "PROPFIND"
        assert scope["scheme"] == "https"
        assert scope["path"] == "/a b"
        assert scope["raw_path"] == b"/a%20b"
        assert scope["query_string"] == b"q=1"


def test_head_names_checked_once_still_reject_and_drop() -> None:
    for _ in range(2):  # the second time from the table of checked names
        head = encode_head(200, [(b"X-A", b"1"), (b"Status", b"500"), (b"x-b", b"2")])
        assert head == b"Status: 200 OK\r\nX-A: 1\r\nx-b: 2\r\n\r\n"
        with pytest.raises(AppProtocolError):
            encode_head(200, [(b"bad name", b"1")])
        with pytest.raises(AppProtocolError):
            encode_head(200, [(b"X-A", b"a\r\nb")])


def test_hop_by_hop_headers_are_dropped() -> None:
    headers = [
        (b"Transfer-Encoding", b"chunked"),
        (b"X-Private", b"1"),
        (b"connection", b"keep-alive, X-Private"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Connection", b"close"),
        (b"x-kept", b"1"),
    ]
    for _ in range(2):  # the second time from the table of checked names
        assert encode_head(200, headers) == b"Status: 200 OK\r\nx-kept: 1\r\n\r\n"
    # X-Private is dropped only where a Connection header names it.
    assert encode_head(200, [(b"X-Private", b"1")]) == b"Status: 200 OK\r\nX-Private: 1\r\n\r\n"


_param_names = st.sampled_from(
    [
        b"CONTENT_TYPE",
        b"CONTENT_LENGTH",
        b"HTTP_CONTENT_TYPE",
        b"HTTP_CONTENT_LENGTH",
        b"HTTP_HOST",
        b"HTTP_X_FORWARDED_FOR",
        b"HTTP_",
        b"HTTP",
        b"REQUEST_METHOD",
        b"http_lower",
    ]
) | st.binary(max_size=20)
_param_values = st.sampled_from([b"", b"0", b"12", b"-1", b"1 2", b"text/plain"]) | st.binary(
    max_size=10
)


@given(st.dictionaries(_param_names, _param_values, max_size=12))
def test_request_headers_c_matches_python(params: dict[bytes, bytes]) -> None:
    expected = scope.request_headers_py(params)
    assert scope.request_headers(params) == expected
    assert scope.request_headers(params) == expected  # the name cache changes nothing
    for name, value in expected:
        assert type(name) is bytes and type(value) is bytes


def test_c_request_headers_is_built() -> None:
    if os.environ.get("FCGI_ASGI_NO_EXTENSIONS"):
        pytest.skip("FCGI_ASGI_NO_EXTENSIONS is set: the pure-Python scope is in use")
    assert scope.request_headers is not scope.request_headers_py


@given(
    st.lists(st.tuples(st.integers(1, 11), st.integers(0, 65535), st.binary(max_size=300))),
    st.lists(st.integers(0, 255), max_size=8),
    st.binary(max_size=12),
    st.lists(st.integers(1, 400), min_size=1, max_size=6),
)
def test_reader_c_and_python_agree(  # type: ignore[no-untyped-def]
    records, paddings, tail, sizes
) -> None:
    """The C record splitter and the Python one: same records, same held bytes,
    same error, whatever the chunking (padding and a ragged tail included)."""
    blob = (
        b"".join(
            bytes((1, t, r >> 8, r & 255, len(c) >> 8, len(c) & 255, p, 0)) + c + bytes(p)
            for (t, r, c), p in zip(records, paddings + [0] * len(records), strict=False)
        )
        + tail
    )
    outcomes = []
    for feed_name in ("feed", "_feed_py"):
        reader = RecordReader()
        feed = getattr(reader, feed_name)
        got: list[tuple[int, int, bytes]] = []
        pos, i = 0, 0
        try:
            while pos < len(blob):
                size = sizes[i % len(sizes)]
                got += [tuple(r) for r in feed(blob[pos : pos + size])]
                pos += size
                i += 1
            outcomes.append((got, reader.buffered, None))
        except ProtocolError as exc:
            outcomes.append((None, None, str(exc)))
        assert all(type(r) is tuple for r in got)
    assert outcomes[0] == outcomes[1]
    if outcomes[0][2] is None:
        assert outcomes[0][0][: len(records)] == [tuple(r) for r in records]


def _packet(records: list[tuple[int, int, int, bytes, int]]) -> bytes:
    """Records from (version, type, request id, content, padding)."""
    return b"".join(
        bytes((v, t, r >> 8, r & 255, len(c) >> 8, len(c) & 255, p, 0)) + c + bytes(p)
        for v, t, r, c, p in records
    )


_BEGIN = b"\x00\x01\x01\x00\x00\x00\x00\x00"  # RESPONDER, KEEP_CONN


def _whole_get(
    rid: int = 1, params: bytes = b"\x01\x01ab", pad: int = 0, body: tuple[bytes, ...] = ()
) -> list[Any]:
    """A whole request's records; ``body`` gives its STDIN records' contents."""
    return [
        (1, 1, rid, _BEGIN, pad),
        (1, 4, rid, params, pad),
        (1, 4, rid, b"", pad),
        *[(1, 5, rid, piece, pad) for piece in body],
        (1, 5, rid, b"", pad),
    ]


def test_request_packets_take_only_whole_responder_requests() -> None:
    """Each way a read can differ from nginx's request in one write (or
    HAProxy's GETs back to back) goes the record-by-record way (None), in C
    and in Python; a body in any number of STDIN records comes back joined."""
    impls = [records.request_packets_py]
    if records.request_packets is not None:
        impls.append(records.request_packets)
    elif not os.environ.get("FCGI_ASGI_NO_EXTENSIONS"):
        pytest.fail("the C request_packets is not built")
    limit = records.MAX_PACKET_REQUESTS
    big = bytes(range(256)) * 256  # 64 KiB: more than one record holds
    for impl in impls:
        assert impl(_packet(_whole_get())) == [(1, 1, b"\x01\x01ab", b"")]
        assert impl(_packet(_whole_get(rid=65535, pad=7))) == [(65535, 1, b"\x01\x01ab", b"")]
        other = [(1, 1, 3, b"\x00\x01\x00\x00\x00\x00\x00\x00", 0), *_whole_get(3)[1:]]
        assert impl(bytearray(_packet(other))) == [(3, 0, b"\x01\x01ab", b"")]
        posted = _whole_get(4, body=(b"x=1",))
        assert impl(_packet(posted)) == [(4, 1, b"\x01\x01ab", b"x=1")]
        # nginx's 64 KiB POST: the body in two records, padded, joined in order.
        halves = (big[:32768], big[32768:-5], big[-5:])
        assert impl(_packet(_whole_get(2, pad=3, body=halves))) == [(2, 1, b"\x01\x01ab", big)]
        three = _whole_get(5) + other + _whole_get(9, b"\x01\x01cd", 3, (b"a", b"bc"))
        assert impl(_packet(three)) == [
            (5, 1, b"\x01\x01ab", b""),
            (3, 0, b"\x01\x01ab", b""),
            (9, 1, b"\x01\x01cd", b"abc"),
        ]
        many = [r for rid in range(1, limit + 1) for r in _whole_get(rid)]
        assert len(impl(_packet(many)) or []) == limit
        assert impl(_packet(many + _whole_get(limit + 1))) is None  # more than the limit
        whole = _whole_get()
        for variant in (
            whole[:3],  # STDIN not here yet
            posted[:4],  # the body, not its end
            [*whole, (1, 5, 1, b"", 0)],  # a record after it
            [*whole, (1, 5, 1, b"late", 0)],  # body after the end of STDIN
            [(1, 1, 0, _BEGIN, 0)] + [(1, t, 0, c, p) for _, t, _, c, p in whole[1:]],  # id 0
            [*whole[:1], (1, 4, 2, b"\x01\x01ab", 0), *whole[2:]],  # another id
            [*whole[:1], (1, 4, 1, b"", 0), *whole[2:]],  # no params
            whole[:2] + whole[1:],  # params in two records
            [*posted[:3], (1, 5, 7, b"x=1", 0), posted[4]],  # the body for another id
            [*posted[:3], (1, 8, 4, b"x=1", 0), posted[4]],  # DATA, not STDIN
            [*posted[:3], (1, 2, 4, b"", 0), *posted[3:]],  # ABORT_REQUEST amid it
            [(1, 1, 1, b"\x00\x02\x01\x00\x00\x00\x00\x00", 0), *whole[1:]],  # AUTHORIZER
            [(1, 1, 1, _BEGIN + b"\x00", 0), *whole[1:]],  # a 9-byte BEGIN_REQUEST body
            [*whole[:3], (2, 5, 1, b"", 0)],  # version 2
            [*posted[:3], (2, 5, 4, b"x=1", 0), posted[4]],  # version 2 in the body
            whole + _whole_get(2)[:3],  # the second request not whole
            whole + whole,  # one id twice
            _whole_get(2)[:2] + whole + _whole_get(2)[2:],  # interleaved
            [],  # nothing
        ):
            assert impl(_packet(variant)) is None, variant
        assert impl(_packet(whole)[:-1]) is None  # cut short
        assert impl(_packet(posted)[:-9]) is None  # cut inside the body
        assert impl(_packet(whole) + b"\x01") is None  # a partial record after it


_packet_record = st.tuples(
    st.sampled_from([1, 1, 1, 2]),
    st.sampled_from([1, 4, 5]) | st.integers(0, 255),
    st.sampled_from([1, 7]) | st.integers(0, 65535),
    st.sampled_from([_BEGIN, b"", b"\x01\x01ab"]) | st.binary(max_size=40),
    st.sampled_from([0, 0, 3]) | st.integers(0, 255),
)
_whole_packet = st.builds(
    _whole_get,
    st.sampled_from([1, 2, 3]) | st.integers(0, 65535),
    st.binary(max_size=300),
    st.integers(0, 255),
    st.lists(st.binary(min_size=1, max_size=40), max_size=3).map(tuple),
)
_whole_packets = st.lists(_whole_packet, min_size=1, max_size=5).map(
    lambda groups: [r for group in groups for r in group]
)
# Whole requests with one record swapped for another (type, id, version...).
_one_off = st.tuples(_whole_packets, st.integers(0, 29), _packet_record).map(
    lambda t: [*t[0][: t[1]], t[2], *t[0][t[1] + 1 :]]
)


@given(
    st.lists(_packet_record, max_size=6) | _whole_packets | _one_off,
    st.sampled_from([b""]) | st.binary(max_size=4),
)
def test_request_packets_c_matches_python(
    packet: list[tuple[int, int, int, bytes, int]], tail: bytes
) -> None:
    if records.request_packets is None:
        pytest.skip("the C speedups are not built (FCGI_ASGI_NO_EXTENSIONS)")
    data = _packet(packet) + tail
    assert records.request_packets(data) == records.request_packets_py(data)
    assert records.request_packets(memoryview(data)) == records.request_packets_py(data)


_header_name = st.sampled_from(
    [
        *(b"content-type", b"Status", b"x-a", b"bad name", b"", b"x\x00"),
        *(b"Transfer-Encoding", b"connection", b"TE", b"Upgrade", b"Keep-Alive", b"X-A"),
    ]
)
_header_value = st.sampled_from(
    [b"text/plain", b"", b"a\r\nb", b"\x00", b"caf\xe9", b"close, x-a", b"chunked"]
)
_header = st.tuples(_header_name | st.binary(max_size=6), _header_value | st.binary(max_size=6))
_headers = st.lists(
    _header | st.lists(_header_value, min_size=2, max_size=2).map(tuple), max_size=5
)


@given(
    st.sampled_from([200, 404, 418, 599, 999, 100, 99, 1000]),
    _headers | _headers.map(tuple) | _headers.map(lambda hs: [list(h) for h in hs]),
)
def test_encode_head_c_matches_python(status: int, headers) -> None:  # type: ignore[no-untyped-def]
    from fcgi_asgi.protocol.head import encode_head_py

    try:
        expected: bytes | str = encode_head_py(status, headers)
    except AppProtocolError as exc:
        expected = str(exc)
    try:
        got: bytes | str = encode_head(status, headers)
    except AppProtocolError as exc:
        got = str(exc)
    assert got == expected


# -- scope_from_params: the C scope straight from PARAMS bytes --------------------

_cgi_names = st.sampled_from(
    [
        b"REQUEST_URI",
        b"QUERY_STRING",
        b"SCRIPT_NAME",
        b"PATH_INFO",
        b"SERVER_SOFTWARE",
        b"REQUEST_METHOD",
        b"SERVER_PROTOCOL",
        b"HTTPS",
        b"REQUEST_SCHEME",
        b"REMOTE_ADDR",
        b"REMOTE_PORT",
        b"SERVER_ADDR",
        b"SERVER_NAME",
        b"SERVER_PORT",
        b"CONTENT_TYPE",
        b"CONTENT_LENGTH",
        b"HTTP_CONTENT_TYPE",
        b"HTTP_CONTENT_LENGTH",
        b"HTTP_HOST",
        b"HTTP_X_A",
        b"HTTP_",
        b"HTTPX",
        b"DOCUMENT_ROOT",
    ]
)
_cgi_values = st.sampled_from(
    [
        b"",
        b"/",
        b"/a/b",
        b"/a?x=1",
        b"?",
        b"/%41",
        b"/caf\xc3\xa9",
        b"/a/b?q=%20&r",
        b"GET",
        b"POST",
        b"get",
        b"BREW",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"HTTP/3",
        b"HTTP/0.9",
        b"on",
        b"ON",
        b"1",
        b"yes",
        b"off",
        b"https",
        b"HTTPS",
        b"http",
        b"127.0.0.1",
        b"::1",
        b"8080",
        b"0",
        b"-1",
        b"12345678901234567890",
        b"lighttpd/1.4.69",
        b"nginx/1.22.1",
        b"text/plain",
    ]
) | st.binary(max_size=12)


def _scope_variants() -> list[tuple[dict[str, Any] | None, dict[str, Any] | None]]:
    return [(None, None), ({"k": 1}, {"http.response.pathsend": {}})]


_uris = st.sampled_from(
    [
        b"/",
        b"/a?b",
        b"/%7e/%zz%4",
        b"/caf\xc3\xa9/%C3%A9?x",
        b"/%ff",
        # absolute-form targets (RFC 9112 3.2.2), as Apache passes them on
        b"http://h/a?b",
        b"https://h:8443",
        b"http://h?x",
        b"*",
    ]
) | st.binary(max_size=12)


@given(
    st.lists(st.tuples(_cgi_names | st.binary(max_size=8), _cgi_values), max_size=16),
    st.none() | st.tuples(st.integers(0, 16), _uris),
)
def test_scope_from_params_c_matches_python(
    pairs: list[tuple[bytes, bytes]], uri: tuple[int, bytes] | None
) -> None:
    """Whatever the C scope covers, it builds exactly what the Python rules build."""
    if uri is not None:  # most requests have one: the case the C path covers
        pairs.insert(uri[0], (b"REQUEST_URI", uri[1]))
    data = encode_pairs(pairs)
    for state, extensions in _scope_variants():
        c_scope = _c_scope_from_params(data, ASGI_VERSION, state, extensions)
        expected = scope.build_scope(decode_params_py(data), None, state, extensions)
        if c_scope is not None:
            assert c_scope == expected
            assert list(c_scope) == list(expected)
            assert all(type(n) is bytes and type(v) is bytes for n, v in c_scope["headers"])
            assert type(c_scope["raw_path"]) is bytes and type(c_scope["query_string"]) is bytes
            assert type(c_scope["path"]) is str
            if state is not None:
                assert c_scope["state"] is not state  # copied per request
        assert scope.scope_from_params(data, None, state, extensions) == expected
        assert scope.scope_from_params(bytearray(data), None, state, extensions) == expected


@given(st.lists(st.tuples(_cgi_names, _cgi_values), max_size=12), st.data())
def test_scope_from_params_leaves_malformed_data_to_python(
    pairs: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    blob = encode_pairs(pairs)
    cut = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        decode_pairs(cut)
    except MalformedPairs:
        assert _c_scope_from_params(cut, ASGI_VERSION, None, None) is None
        with pytest.raises(MalformedPairs):
            scope.scope_from_params(cut)


@pytest.mark.parametrize(
    ("params", "fast"),
    [
        (rec.NGINX, True),
        (rec.NGINX_POST, True),
        (rec.APACHE, True),
        # lighttpd's split is never a mount point; another server's is for the
        # Python root_path rule to judge.
        (rec.LIGHTTPD_ROOT_KEY, True),
        (rec.LIGHTTPD_APP_KEY, True),
        (rec.NGINX_SPLIT_PATH_INFO, False),
        (rec.CADDY, True),
        (rec.H2O, True),
        (rec.CADDY_CHUNKED_POST, True),
    ],
    ids=[
        "nginx",
        "nginx-post",
        "apache",
        "lighttpd",
        "lighttpd-app",
        "nginx-split",
        "caddy",
        "h2o",
        "caddy-chunked",
    ],
)
def test_scope_from_params_recorded(params: list[tuple[bytes, bytes]], fast: bool) -> None:
    """Every server's stock params take the C path, and it agrees."""
    data = encode_pairs(params)
    expected = scope.build_scope(dict(params), None, {}, None)
    c_scope = _c_scope_from_params(data, ASGI_VERSION, {}, None)
    assert (c_scope is not None) == (fast and _HAVE_C)
    if c_scope is not None:
        assert c_scope == expected
    assert scope.scope_from_params(data, None, {}, None) == expected
    # --root-path always takes the Python rules.
    assert scope.scope_from_params(data, "/app", {}, None) == scope.build_scope(
        dict(params), "/app", {}, None
    )


def test_c_scope_from_params_is_built() -> None:
    if os.environ.get("FCGI_ASGI_NO_EXTENSIONS"):
        pytest.skip("FCGI_ASGI_NO_EXTENSIONS is set: the pure-Python scope is in use")
    assert scope.scope_from_params is not scope.scope_from_params_py


def test_scope_caches_follow_each_request() -> None:
    """The C scope keeps the last server address, client host and header
    names: requests that differ in them, in turn, each get their own."""
    variants = []
    for i, name in enumerate([b"HTTP_X_ONE", b"HTTP_X_TWO", b"HTTP_X_ONE_", b"HTTP_X_ON"]):
        params = [
            (b"REQUEST_URI", b"/p"),
            (b"REMOTE_ADDR", b"10.0.0.%d" % (i % 2)),
            (b"REMOTE_PORT", b"%d" % (4000 + i)),
            (b"SERVER_ADDR", b"10.1.0.1"),
            (b"SERVER_PORT", b"8%d" % (i // 2)),  # same address, another port
            (b"HTTP_HOST", b"h%d" % i),
            (name, b"v%d" % i),
        ]
        variants.append((encode_pairs(params), scope.build_scope(dict(params), None, None, None)))
    variants.append(  # no port: the server is (host, None), and not cached
        (
            encode_pairs([(b"REQUEST_URI", b"/"), (b"SERVER_ADDR", b"10.1.0.1")]),
            scope.build_scope(
                {b"REQUEST_URI": b"/", b"SERVER_ADDR": b"10.1.0.1"}, None, None, None
            ),
        )
    )
    for _ in range(3):
        for data, expected in variants + variants[::-1]:
            got = scope.scope_from_params(data, None, None, None)
            assert got == expected
            assert list(got) == list(expected)
    if _HAVE_C:
        a = _c_scope_from_params(variants[0][0], ASGI_VERSION, None, None)
        b = _c_scope_from_params(variants[0][0], ASGI_VERSION, None, None)
        assert a is not b and a["headers"] is not b["headers"]  # fresh per request
        assert a["server"] is b["server"]  # the cached tuple (immutable)


@given(
    st.integers(-2, 0x10001),
    st.binary(max_size=40) | st.integers(0, 0x10001).map(bytes),
    st.binary(max_size=40) | st.integers(0, 0x10001).map(bytes),
)
def test_whole_response_c_matches_python(rid: int, head: bytes, body: bytes) -> None:
    """A whole small response as one bytes: C and Python give the same records
    (or both refuse what does not fit in one record)."""

    def outcome(fn: Any) -> Any:
        try:
            return fn(rid, head, body)
        except ValueError as exc:
            return str(exc)  # the same error, word for word

    expected = outcome(records.whole_response_py)
    assert outcome(records.whole_response) == expected  # C when built
    if isinstance(expected, bytes):
        parsed = RecordReader().feed(expected)
        assert [(r.type, r.request_id) for r in parsed] == [(6, rid), (6, rid), (3, rid)]
        assert parsed[0].content == head + body and parsed[1].content == b""
        assert records.parse_end_request(parsed[2].content) == (0, 0)
