"""``fcgi-asgi request``: a curl-like FastCGI client for checks and health probes.

Exit status: 0 for a 1xx-3xx answer, 1 for 4xx/5xx or a request the
application refused (OVERLOADED, UNKNOWN_ROLE), 2 when the gateway could not
be reached or closed the connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from .client import FastCGIClient, Response, build_params
from .protocol.records import AUTHORIZER, FILTER, RESPONDER

_ROLES = {"responder": RESPONDER, "authorizer": AUTHORIZER, "filter": FILTER}

__all__ = ["build_request_parser", "request_main"]


def build_request_parser() -> argparse.ArgumentParser:
    """The parser for ``fcgi-asgi request``."""
    p = argparse.ArgumentParser(
        prog="fcgi-asgi request",
        description="Send one HTTP request over FastCGI and print the response body.",
    )
    p.add_argument("path", metavar="PATH", help="request path with optional ?query, e.g. /health")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", metavar="SOCK", help="unix socket of the gateway")
    where.add_argument("--port", type=_port, help="TCP port of the gateway")
    p.add_argument("--host", default="127.0.0.1", help="TCP host (default: %(default)s)")
    p.add_argument("-X", "--method", default="GET", help="HTTP method (default: GET)")
    p.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="request header (repeatable)",
    )
    p.add_argument("-d", "--data", help="request body")
    p.add_argument(
        "--role",
        choices=("responder", "authorizer", "filter"),
        default="responder",
        help="the FastCGI role (default: %(default)s): an authorizer request carries no body, "
        "as Apache's mod_authnz_fcgi sends it; a filter request sends --filter-file as its "
        "DATA stream",
    )
    p.add_argument(
        "--filter-file",
        metavar="FILE",
        help="with --role filter: the file to filter, sent as DATA with FCGI_DATA_LENGTH and "
        "FCGI_DATA_LAST_MOD as a web server sends them",
    )
    p.add_argument("-i", "--include", action="store_true", help="print status and headers too")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds (default: %(default)s)")
    return p


def _port(value: str) -> int:
    # Checked here: connect() raises OverflowError, not OSError, for 65536 up.
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535, not {value!r}")
    return port


def _filter_data(path: str) -> tuple[bytes, dict[str, str]]:
    """A FILTER request's DATA stream and the params that describe it."""
    with open(path, "rb") as f:
        data = f.read()
        mtime = os.fstat(f.fileno()).st_mtime
    return data, {"FCGI_DATA_LENGTH": str(len(data)), "FCGI_DATA_LAST_MOD": str(int(mtime))}


async def _send(args: argparse.Namespace) -> Response:
    path, _, query = args.path.partition("?")
    headers = []
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            raise ValueError(f"header {h!r} is not 'Name: value'")
        headers.append((name.strip(), value.strip()))
    body = args.data.encode() if args.data is not None else b""
    role = _ROLES[args.role]
    extra: dict[str, str] = {}
    data = b""
    if (args.filter_file is not None) != (role == FILTER):
        raise ValueError("--role filter and --filter-file go together")
    if args.filter_file is not None:
        data, extra = _filter_data(args.filter_file)
    if role == AUTHORIZER and args.data is not None:
        raise ValueError("an authorizer request carries no body (--data)")
    params = build_params(
        args.method.upper(),
        path or "/",
        query=query,
        headers=headers,
        content_length=len(body) if args.data is not None else None,
        extra=extra,
    )
    if args.socket:
        client = await FastCGIClient.connect(path=args.socket)
    else:
        client = await FastCGIClient.connect(host=args.host, port=args.port)
    async with client:
        req = await client.begin(params, keep_conn=False, role=role)
        if role != AUTHORIZER:  # Apache sends an authorizer no STDIN at all
            await req.send_body(body)
            await req.end_body()
        if role == FILTER:
            await req.send_data(data)
        return await req.response()


def request_main(argv: Sequence[str]) -> int:
    """Run ``fcgi-asgi request``; returns the exit status."""
    args = build_request_parser().parse_args(argv)
    try:
        response = asyncio.run(asyncio.wait_for(_send(args), args.timeout))
    except ValueError as exc:
        print(f"fcgi-asgi request: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError) as exc:
        print(f"fcgi-asgi request: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if response.protocol_status:
        print(
            f"fcgi-asgi request: refused, protocolStatus {response.protocol_status}",
            file=sys.stderr,
        )
        return 1
    out = sys.stdout.buffer
    if args.include:
        out.write(f"{response.status} {response.reason}\n".encode())
        for name, value in response.headers:
            out.write(f"{name}: {value}\n".encode("latin-1"))
        out.write(b"\n")
    out.write(response.body)
    out.flush()
    return 0 if response.status < 400 else 1
