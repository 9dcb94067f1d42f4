"""Micro-benchmarks of the per-request hot paths (pytest-benchmark).

pyproject's ``--benchmark-disable`` makes each one run once, as a plain test,
in CI: they catch breakage, and every one asserts its result. Time them with

    .venv/bin/pytest tests/test_bench_micro.py --benchmark-enable

Performance is judged by ``benchmarks/run.py`` (ratios against peers in one
run), never by timed assertions here.
"""

from __future__ import annotations

from typing import Any

from fcgi_asgi.asgi.scope import build_scope
from fcgi_asgi.protocol.records import (
    BEGIN_REQUEST,
    KEEP_CONN,
    MAX_CONTENT,
    PARAMS,
    STDIN,
    STDOUT,
    RecordReader,
    decode_params,
    encode_begin_request,
    encode_pairs,
    encode_stream,
    parse_begin_request,
)

# What nginx 1.22 sends for `GET /items/42?page=2` from a browser, with the
# fastcgi_param list of benchmarks/ (Debian's fastcgi_params, PATH_INFO $uri):
# 25 params, in nginx's order.
NGINX_PARAMS = [
    (b"QUERY_STRING", b"page=2"),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b""),
    (b"PATH_INFO", b"/items/42"),
    (b"REQUEST_URI", b"/items/42?page=2"),
    (b"DOCUMENT_URI", b"/items/42"),
    (b"DOCUMENT_ROOT", b"/srv/www"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REQUEST_SCHEME", b"http"),
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"52814"),
    (b"SERVER_ADDR", b"127.0.0.1"),
    (b"SERVER_PORT", b"8080"),
    (b"SERVER_NAME", b"localhost"),
    (b"HTTP_HOST", b"localhost"),
    (b"HTTP_USER_AGENT", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"HTTP_ACCEPT", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"HTTP_ACCEPT_LANGUAGE", b"en-US,en;q=0.5"),
    (b"HTTP_ACCEPT_ENCODING", b"gzip, deflate, br"),
    (b"HTTP_COOKIE", b"session=6f1c0d2e9a7b4c3d8e5f; theme=dark; lang=en"),
    (b"HTTP_CONNECTION", b"keep-alive"),
]


def _nginx_record(rtype: int, content: bytes) -> bytes:
    # nginx pads every record's content to a multiple of 8 bytes.
    pad = -len(content) % 8
    header = bytes((1, rtype, 0, 1, len(content) >> 8, len(content) & 0xFF, pad, 0))
    return header + content + bytes(pad)


NGINX_REQUEST = (
    encode_begin_request(1, flags=KEEP_CONN)
    + _nginx_record(PARAMS, encode_pairs(NGINX_PARAMS))
    + _nginx_record(PARAMS, b"")
    + _nginx_record(STDIN, b"")
)


def parse_request(data: bytes) -> tuple[dict[str, Any], bool, bytes]:
    """The connection's path for one request: records, params, scope, body."""
    params = b""
    body = b""
    keep_conn = False
    scope: dict[str, Any] = {}
    for rtype, _rid, content in RecordReader().feed(data):
        if rtype == BEGIN_REQUEST:
            keep_conn = bool(parse_begin_request(content)[1] & KEEP_CONN)
        elif rtype == PARAMS:
            if content:
                params += content
            else:
                scope = build_scope(decode_params(params), None, {}, {})
        elif rtype == STDIN:
            body += content
    return scope, keep_conn, body


def test_parse_nginx_request_into_scope(benchmark: Any) -> None:
    assert len(NGINX_PARAMS) == 25
    scope, keep_conn, body = benchmark(parse_request, NGINX_REQUEST)
    assert keep_conn
    assert body == b""
    assert scope["method"] == "GET"
    assert scope["path"] == "/items/42"
    assert scope["raw_path"] == b"/items/42"
    assert scope["query_string"] == b"page=2"
    assert scope["root_path"] == ""
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "http"
    assert scope["client"] == ("127.0.0.1", 52814)
    assert scope["server"] == ("127.0.0.1", 8080)
    assert scope["headers"] == [
        (b"host", b"localhost"),
        (b"user-agent", NGINX_PARAMS[19][1]),
        (b"accept", NGINX_PARAMS[20][1]),
        (b"accept-language", b"en-US,en;q=0.5"),
        (b"accept-encoding", b"gzip, deflate, br"),
        (b"cookie", NGINX_PARAMS[23][1]),
        (b"connection", b"keep-alive"),
    ]


def test_frame_1mib_body_into_stdout_records(benchmark: Any) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value
    pieces = benchmark(encode_stream, STDOUT, 1, body)
    # Header + payload pairs; payloads are views of the body, not copies.
    assert len(pieces) == 2 * -(-len(body) // MAX_CONTENT)
    assert all(isinstance(p, memoryview) for p in pieces[1::2])
    records = RecordReader().feed(b"".join(pieces))
    assert all(r.type == STDOUT and r.request_id == 1 for r in records)
    assert all(0 < len(r.content) <= MAX_CONTENT for r in records)
    assert b"".join(r.content for r in records) == body
