"""CGI params to ASGI scope, table-tested with what each web server sends by default."""

from __future__ import annotations

import pytest

from fcgi_asgi.asgi.scope import build_scope


def params(**kw: str) -> dict[bytes, bytes]:
    return {k.encode(): v.encode("latin-1") for k, v in kw.items()}


# (server, params for GET /caf%C3%A9/x?q=1, expected path, raw_path, root_path)
CASES = [
    (
        "nginx fastcgi_params",
        params(
            REQUEST_METHOD="GET",
            SCRIPT_NAME="/caf\xc3\xa9/x",
            REQUEST_URI="/caf%C3%A9/x?q=1",
            DOCUMENT_URI="/caf\xc3\xa9/x",
            QUERY_STRING="q=1",
            CONTENT_LENGTH="",
            SERVER_PROTOCOL="HTTP/1.1",
        ),
        "/café/x",
        b"/caf%C3%A9/x",
        "",
    ),
    (
        "lighttpd",
        params(
            REQUEST_METHOD="GET",
            SCRIPT_NAME="/caf\xc3\xa9/x",
            REQUEST_URI="/caf%C3%A9/x?q=1",
            QUERY_STRING="q=1",
            SERVER_PROTOCOL="HTTP/1.1",
        ),
        "/café/x",
        b"/caf%C3%A9/x",
        "",
    ),
    (
        "caddy",
        params(
            REQUEST_METHOD="GET",
            SCRIPT_NAME="",
            PATH_INFO="/caf\xc3\xa9/x",
            REQUEST_URI="/caf%C3%A9/x?q=1",
            QUERY_STRING="q=1",
            SERVER_PROTOCOL="HTTP/2.0",
        ),
        "/café/x",
        b"/caf%C3%A9/x",
        "",
    ),
    (
        "fastcgi_split_path_info mount at /app",
        params(
            REQUEST_METHOD="GET",
            SCRIPT_NAME="/app",
            PATH_INFO="/caf\xc3\xa9/x",
            REQUEST_URI="/app/caf%C3%A9/x?q=1",
            QUERY_STRING="q=1",
        ),
        "/app/café/x",
        b"/app/caf%C3%A9/x",
        "/app",
    ),
    (
        "no REQUEST_URI (CGI only)",
        params(REQUEST_METHOD="GET", SCRIPT_NAME="/app", PATH_INFO="/a b", QUERY_STRING="q=1"),
        "/app/a b",
        b"/app/a%20b",
        "/app",
    ),
]


@pytest.mark.parametrize("server,p,path,raw_path,root_path", CASES, ids=[c[0] for c in CASES])
def test_paths(server, p, path, raw_path, root_path):
    scope = build_scope(p)
    assert scope["path"] == path
    assert scope["raw_path"] == raw_path
    assert scope["root_path"] == root_path
    assert scope["query_string"] == b"q=1"
    assert scope["path"].startswith(scope["root_path"])


def test_explicit_root_path_wins_and_is_kept_in_path():
    p = params(SCRIPT_NAME="/app/items", REQUEST_URI="/app/items?x")
    scope = build_scope(p, root_path="/app")
    assert (scope["path"], scope["root_path"]) == ("/app/items", "/app")
    assert scope["query_string"] == b"x"  # no QUERY_STRING param: REQUEST_URI's query
    p = params(SCRIPT_NAME="/app/items", REQUEST_URI="/app/items?x=1", QUERY_STRING="x=1")
    assert build_scope(p, root_path="/app")["query_string"] == b"x=1"


def test_root_path_prepended_when_server_strips_prefix():
    scope = build_scope(params(REQUEST_URI="/items"), root_path="/app")
    assert scope["path"] == "/app/items"
    assert scope["raw_path"] == b"/app/items"


def test_percent_encoded_slash_stays_in_raw_path():
    scope = build_scope(params(REQUEST_URI="/a%2Fb"))
    assert scope["raw_path"] == b"/a%2Fb"
    assert scope["path"] == "/a/b"


def test_headers_bytes_and_order():
    p = {
        b"HTTP_HOST": b"example.com:8080",
        b"CONTENT_TYPE": b"application/json",
        b"CONTENT_LENGTH": b"12",
        b"HTTP_X_CUSTOM_THING": b"caf\xe9",
        b"HTTP_COOKIE": b"a=1; b=2",
        b"SERVER_SOFTWARE": b"nginx",
    }
    scope = build_scope(p)
    assert scope["headers"] == [
        (b"host", b"example.com:8080"),
        (b"content-type", b"application/json"),
        (b"content-length", b"12"),
        (b"x-custom-thing", b"caf\xe9"),
        (b"cookie", b"a=1; b=2"),
    ]


def test_empty_content_length_dropped():
    assert build_scope(params(CONTENT_LENGTH="", CONTENT_TYPE=""))["headers"] == []


@pytest.mark.parametrize(
    "proto,version", [("HTTP/1.0", "1.0"), ("HTTP/1.1", "1.1"), ("HTTP/2.0", "2"), ("", "1.1")]
)
def test_http_version(proto, version):
    assert build_scope(params(SERVER_PROTOCOL=proto))["http_version"] == version


@pytest.mark.parametrize(
    "p,scheme",
    [
        (params(HTTPS="on"), "https"),
        (params(HTTPS="1"), "https"),
        (params(HTTPS="off"), "http"),
        (params(REQUEST_SCHEME="https"), "https"),
        (params(), "http"),
    ],
)
def test_scheme(p, scheme):
    assert build_scope(p)["scheme"] == scheme


def test_client_server():
    scope = build_scope(
        params(REMOTE_ADDR="::1", REMOTE_PORT="5555", SERVER_NAME="ex.org", SERVER_PORT="443")
    )
    assert scope["client"] == ("::1", 5555)
    assert scope["server"] == ("ex.org", 443)
    scope = build_scope(params(SERVER_ADDR="127.0.0.1", SERVER_NAME="ex.org", SERVER_PORT="x"))
    assert scope["server"] == ("127.0.0.1", None)
    assert build_scope({})["client"] is None


def test_state_is_copied_per_request():
    state = {"db": 1}
    scope = build_scope({}, state=state)
    scope["state"]["db"] = 2
    assert state == {"db": 1}


def test_unescaped_utf8_in_request_uri():
    """Some clients send UTF-8 unescaped; nginx passes it on in REQUEST_URI."""
    scope = build_scope({b"REQUEST_URI": "/café?x".encode()})
    assert scope["path"] == "/café"
    assert scope["raw_path"] == "/café".encode()
    assert build_scope({b"REQUEST_URI": b"/bad\xff%C3%A9"})["path"] == "/bad\ufffdé"


def test_utf8_script_name_without_request_uri_is_not_encoded_twice():
    # Servers send SCRIPT_NAME/PATH_INFO decoded, as UTF-8 bytes. Before the
    # fix they were read as latin-1 and quoted as UTF-8: /café became
    # /caf%C3%83%C2%A9 and path "/cafÃ©".
    scope = build_scope({b"SCRIPT_NAME": "/café".encode(), b"PATH_INFO": b""})
    assert scope["raw_path"] == b"/caf%C3%A9"
    assert scope["path"] == "/café"
    scope = build_scope({b"SCRIPT_NAME": b"/app", b"PATH_INFO": "/ü x".encode()})
    assert scope["raw_path"] == b"/app/%C3%BC%20x"
    assert scope["path"] == "/app/ü x" and scope["root_path"] == "/app"


@pytest.mark.parametrize(
    "uri,raw_path,query",
    [
        (b"http://example.com/a/b?x=1", b"/a/b", b"x=1"),
        (b"https://example.com:8443/caf%C3%A9", b"/caf%C3%A9", b""),
        (b"http://example.com", b"/", b""),
        (b"http://example.com?x", b"/", b"x"),
    ],
)
def test_absolute_form_request_uri(uri, raw_path, query):
    # A client may send "GET http://host/path HTTP/1.1" (absolute-form) and
    # Apache passes it on in REQUEST_URI. Before the fix the scheme and host
    # ended up in path and raw_path, so no route matched.
    scope = build_scope({b"REQUEST_URI": uri})
    assert scope["raw_path"] == raw_path
    assert scope["path"] == raw_path.decode().replace("%C3%A9", "é")
    assert scope["query_string"] == query
