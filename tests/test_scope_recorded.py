"""CGI params to ASGI scope, table-tested on params real web servers sent (recorded)."""

from __future__ import annotations

from typing import Any

import pytest

from fcgi_asgi.asgi.scope import build_scope
from tests import recorded_params as rec

# (params, --root-path, expected path, raw_path, root_path, query_string)
CASES = [
    # lighttpd, key "/": the split /items + /42 is not a mount point.
    (rec.LIGHTTPD_ROOT_KEY, None, "/items/42", b"/items/42", "", b"x=1"),
    # lighttpd, key "/app/": the split /app/items + /42 is not one either.
    (rec.LIGHTTPD_APP_SLASH_KEY, None, "/app/items/42", b"/app/items/42", "", b"x=1"),
    (rec.LIGHTTPD_APP_SLASH_KEY, "/app", "/app/items/42", b"/app/items/42", "/app", b"x=1"),
    # lighttpd, key "/app": here the split happens to be right, but it looks
    # the same as the two above, so the prefix comes from --root-path.
    (rec.LIGHTTPD_APP_KEY, None, "/app/items/42", b"/app/items/42", "", b"x=1"),
    (rec.LIGHTTPD_APP_KEY, "/app", "/app/items/42", b"/app/items/42", "/app", b"x=1"),
    (rec.LIGHTTPD_FIX_ROOT_SCRIPTNAME, None, "/café/a/b", b"/caf%C3%A9/a%2Fb", "", b"x=1"),
    # The whole path in SCRIPT_NAME, no PATH_INFO.
    (rec.NGINX, None, "/café/a/b", b"/caf%C3%A9/a%2Fb", "", b"x=1"),
    (rec.APACHE, None, "/café/a/b", b"/caf%C3%A9/a%2Fb", "", b"x=1"),
    (rec.HAPROXY, None, "/café/a/b", b"/caf%C3%A9/a%2Fb", "", b"x=1"),
    # SCRIPT_NAME empty, the whole path in PATH_INFO.
    (rec.CADDY, None, "/café/a/b", b"/caf%C3%A9/a%2Fb", "", b"x=1"),
    (rec.H2O, None, "/café/a/b", b"/caf%C3%A9/a%2Fb", "", b"x=1"),
    # A split the operator configured in nginx is a mount point.
    (rec.NGINX_SPLIT_PATH_INFO, None, "/app/items/42", b"/app/items/42", "/app", b"x=1"),
]


@pytest.mark.parametrize(
    ("pairs", "root_path", "path", "raw_path", "expected_root", "query"),
    CASES,
    ids=[
        "lighttpd-root-key",
        "lighttpd-app-slash-key",
        "lighttpd-app-slash-key-root-path",
        "lighttpd-app-key",
        "lighttpd-app-key-root-path",
        "lighttpd-fix-root-scriptname",
        "nginx",
        "apache",
        "haproxy",
        "caddy",
        "h2o",
        "nginx-split-path-info",
    ],
)
def test_recorded_params(
    pairs: list[tuple[bytes, bytes]],
    root_path: str | None,
    path: str,
    raw_path: bytes,
    expected_root: str,
    query: bytes,
) -> None:
    scope = build_scope(dict(pairs), root_path=root_path)
    assert scope["path"] == path
    assert scope["raw_path"] == raw_path
    assert scope["root_path"] == expected_root
    assert scope["query_string"] == query
    assert scope["path"].startswith(scope["root_path"])


def test_starlette_routes_on_path_minus_root_path() -> None:
    """What a Starlette router matches: the route path left after root_path."""
    from starlette.routing import Route, Router

    router = Router(routes=[Route("/items/{item_id:int}", lambda r: None)])
    for pairs, root_path in ((rec.LIGHTTPD_ROOT_KEY, None), (rec.LIGHTTPD_APP_KEY, "/app")):
        scope = build_scope(dict(pairs), root_path=root_path)
        match, child = router.routes[0].matches(scope)
        assert child["path_params"] == {"item_id": 42}, (scope["path"], scope["root_path"])
        assert match.name == "FULL"


def _header_values(scope: dict[str, Any], name: bytes) -> list[bytes]:
    return [v for k, v in scope["headers"] if k == name]


@pytest.mark.parametrize(
    ("pairs", "content_type", "content_length"),
    [
        (rec.NGINX_POST, [b"application/json"], [b"15"]),
        (rec.CADDY_CHUNKED_POST, [b"application/octet-stream"], []),
        # GET: nginx sends CONTENT_TYPE and CONTENT_LENGTH empty.
        (rec.NGINX, [], []),
        # GET: lighttpd and Caddy send CONTENT_LENGTH 0.
        (rec.CADDY, [], [b"0"]),
    ],
    ids=["nginx-post", "caddy-chunked-post", "nginx-get", "caddy-get"],
)
def test_content_headers_once(
    pairs: list[tuple[bytes, bytes]], content_type: list[bytes], content_length: list[bytes]
) -> None:
    scope = build_scope(dict(pairs))
    assert _header_values(scope, b"content-type") == content_type
    assert _header_values(scope, b"content-length") == content_length
