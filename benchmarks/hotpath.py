"""CPU per request of the gateway's own code, without sockets or nginx.

    .venv/bin/python benchmarks/hotpath.py [raw|starlette_app|wsgi] [--requests N] [--profile]
        [--threads N] [--post]
        [--access-log off|on|json|handler] [--server fcgi-asgi|uvicorn] [--new-connections]

Feeds the bytes nginx sends for a GET (BEGIN_REQUEST with keep-conn, 25
params, empty STDIN) to 32 FastCGIConnection objects over a stub transport,
one request per connection per loop iteration as under wrk -c32, and prints
the process CPU time per request (median of 5 runs). ``wsgi`` serves
``apps.wsgi`` through the WSGI bridge and its thread pool: each round waits
until all 32 responses are written, and the CPU counted is the whole
process's, the app's threads included. ``--profile`` prints
cProfile's top functions instead. ``--access-log on`` adds the default access
log as the command line sets it up (its lines to a temporary file), ``json``
the JSON lines, ``handler`` the default format through a plain
``logging.FileHandler``, as a ``--log-config`` user would have it. Use it to
compare two versions of src/ on
the same machine (e.g. with PYTHONPATH=path/to/other/src); the end-to-end
figures come from run.py.

``--post`` sends run.py's POST instead: 64 KiB to ``/echo`` in two 32 KiB
STDIN records, in the same one read per request.

``--server uvicorn`` feeds the same request, as the HTTP/1.1 GET nginx's
``proxy_pass`` sends (the same six headers), to 32 of uvicorn's httptools
protocols over the same stub transport: the peer's own CPU per request,
without its system calls, like for like (run it from a venv with uvicorn,
e.g. run.py's BENCH_VENV).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import apps

from fcgi_asgi.config import Config
from fcgi_asgi.context import ServerContext

try:
    from fcgi_asgi.protocol.connection import FastCGIConnection
    from fcgi_asgi.protocol.records import (
        KEEP_CONN,
        PARAMS,
        STDIN,
        encode_begin_request,
        encode_end_request,
        encode_pairs,
    )
    from fcgi_asgi.wsgi.bridge import WSGIRequest
except ImportError:  # a checkout from before protocol/ (db2c336 and older), for before/after
    from fcgi_asgi.connection import FastCGIConnection  # type: ignore[no-redef]
    from fcgi_asgi.records import (  # type: ignore[no-redef]
        KEEP_CONN,
        PARAMS,
        STDIN,
        encode_begin_request,
        encode_pairs,
    )

PARAMS_SENT = [
    (b"QUERY_STRING", b""),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b""),
    (b"PATH_INFO", b"/"),
    (b"REQUEST_URI", b"/"),
    (b"DOCUMENT_URI", b"/"),
    (b"DOCUMENT_ROOT", b"/srv/www"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REQUEST_SCHEME", b"http"),
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"41236"),
    (b"SERVER_ADDR", b"127.0.0.1"),
    (b"SERVER_PORT", b"28950"),
    (b"SERVER_NAME", b"localhost"),
    (b"HTTP_HOST", b"127.0.0.1"),
    (b"HTTP_USER_AGENT", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101"),
    (b"HTTP_ACCEPT", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"HTTP_ACCEPT_LANGUAGE", b"en-US,en;q=0.5"),
    (b"HTTP_ACCEPT_ENCODING", b"gzip, deflate, br"),
    (b"HTTP_CONNECTION", b"keep-alive"),
    (b"HTTP_CACHE_CONTROL", b"no-cache"),
]


def _record(rtype: int, content: bytes) -> bytes:
    pad = -len(content) % 8  # nginx pads records to 8 bytes
    return (
        bytes((1, rtype, 0, 1, len(content) >> 8, len(content) & 0xFF, pad, 0))
        + content
        + bytes(pad)
    )


REQUEST = (
    encode_begin_request(1, flags=KEEP_CONN)
    + _record(PARAMS, encode_pairs(PARAMS_SENT))
    + _record(PARAMS, b"")
    + _record(STDIN, b"")
)


# --post: the POST of run.py's post scenario, 64 KiB to /echo, its body in
# 32 KiB STDIN records (nginx's largest).
POST_BODY = b"x" * 65536
POST_REQUEST = (
    encode_begin_request(1, flags=KEEP_CONN)
    + _record(
        PARAMS,
        encode_pairs(
            [
                (name, {b"REQUEST_METHOD": b"POST", b"CONTENT_LENGTH": b"65536"}.get(name, value))
                for name, value in PARAMS_SENT
                if name not in (b"PATH_INFO", b"REQUEST_URI", b"DOCUMENT_URI")
            ]
            + [(b"PATH_INFO", b"/echo"), (b"REQUEST_URI", b"/echo"), (b"DOCUMENT_URI", b"/echo")]
        ),
    )
    + _record(PARAMS, b"")
    + _record(STDIN, POST_BODY[:32768])
    + _record(STDIN, POST_BODY[32768:])
    + _record(STDIN, b"")
)


# The same request as nginx proxies it over HTTP/1.1 (proxy_http_version 1.1,
# Host set, Connection cleared for upstream keepalive), for --server uvicorn.
HTTP_REQUEST = (
    b"GET / HTTP/1.1\r\n"
    + b"".join(
        name[5:].replace(b"_", b"-").title() + b": " + value + b"\r\n"
        for name, value in PARAMS_SENT
        if name.startswith(b"HTTP_") and name != b"HTTP_CONNECTION"
    )
    + b"\r\n"
)


# The end of a successful END_REQUEST record for request id 1.
END_OK = encode_end_request(1)


class StubTransport:
    """Accepts writes and counts the bytes; never pauses."""

    def __init__(self) -> None:
        self.written = 0
        self.last = b""
        self.ends = 0
        #: Set once ``ends`` reaches ``want`` (WSGI responses come from threads).
        self.want = 0
        self.enough: asyncio.Event | None = None

    #: What get_extra_info answers: a unix socket's sockname for uvicorn.
    extra: dict[str, Any] = {}

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.last = data
        if self.enough is not None and data.endswith(END_OK):
            self.ends += 1
            if self.ends >= self.want:
                self.enough.set()

    def writelines(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.write(bytes(piece))

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def setup_access_log(mode: str, path: str) -> None:
    """Configure logging as the command line would, access lines to ``path``."""
    if mode == "off":
        return
    try:
        from fcgi_asgi.logconfig import configure_logging
    except ImportError:  # a checkout from before logconfig: the root logger, as its CLI did
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
            stream=open(path, "a"),  # noqa: SIM115 (lives as long as the process)
        )
        return
    configure_logging("warning", access_json=mode == "json")
    access = logging.getLogger("fcgi_asgi.access")
    if mode == "handler":
        handler: logging.Handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s [%(process)d] %(message)s"))
        access.handlers = [handler]
    else:
        access.handlers[0].setStream(open(path, "a"))  # type: ignore[attr-defined]  # noqa: SIM115


async def measure(
    app: Any,
    requests: int,
    access: str,
    threads: int = 16,
    request: bytes = REQUEST,
    new_connections: bool = False,
) -> float:
    config = Config(
        app=app,
        socket="/tmp/unused.sock",
        access_log=access != "off",
        threads=threads,
        access_log_format="json" if access == "json" else None,
    )
    # unix: as the server on a unix socket (no peer name to ask for).
    ctx = ServerContext(app=app, config=config, state={}, unix=new_connections)
    wsgi = app is apps.wsgi
    if wsgi:
        ctx.request_class = WSGIRequest
    transport = StubTransport()
    loop = asyncio.get_running_loop()  # as the server's listener passes it
    conns = [FastCGIConnection(ctx, None, loop) for _ in range(32)]
    for conn in conns:
        conn.connection_made(transport)  # type: ignore[arg-type]
    rounds = max(1, requests // len(conns))

    async def one_round() -> None:
        if new_connections:
            # nginx without keep-conn: a connection per request, closed by
            # the gateway after END_REQUEST (the stub's close() does nothing,
            # so connection_lost() is called here, as uvloop would).
            for conn in conns:
                conn.connection_lost(None)
            conns[:] = [FastCGIConnection(ctx, None, loop) for _ in conns]
            for conn in conns:
                conn.connection_made(transport)  # type: ignore[arg-type]
        if wsgi:
            transport.enough = asyncio.Event()
            transport.want = transport.ends + len(conns)
        for conn in conns:
            conn.data_received(request)
        if wsgi:
            await asyncio.wait_for(transport.enough.wait(), 10)
        else:
            await asyncio.sleep(0)

    for _ in range(50):  # warm up: imports, name tables
        await one_round()
    await asyncio.sleep(0)
    if b"Hello, world!" not in transport.last and b"65536" not in transport.last:
        raise SystemExit(f"unexpected response {transport.last[:80]!r}")
    started = time.process_time()
    for _ in range(rounds):
        await one_round()
    await asyncio.sleep(0)
    return (time.process_time() - started) / (rounds * len(conns))


async def measure_uvicorn(app: Any, requests: int) -> float:
    """measure() for uvicorn's httptools protocol, fed HTTP_REQUEST."""
    from uvicorn.config import Config as UvicornConfig
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    config = UvicornConfig(
        app=app, http="httptools", lifespan="off", access_log=False, log_level="warning"
    )
    config.load()
    state = ServerState()
    transport = StubTransport()
    transport.extra = {"sockname": "/tmp/uvicorn.sock", "peername": ""}  # as behind nginx
    conns = [HttpToolsProtocol(config, state, {}) for _ in range(32)]
    for conn in conns:
        conn.connection_made(transport)  # type: ignore[arg-type]
    rounds = max(1, requests // len(conns))

    async def one_round() -> None:
        for conn in conns:
            conn.data_received(HTTP_REQUEST)
        await asyncio.sleep(0)

    for _ in range(50):
        await one_round()
    await asyncio.sleep(0)
    if b"Hello, world!" not in transport.last:
        raise SystemExit(f"unexpected response {transport.last[:80]!r}")
    started = time.process_time()
    for _ in range(rounds):
        await one_round()
    await asyncio.sleep(0)
    elapsed = (time.process_time() - started) / (rounds * len(conns))
    for conn in conns:
        conn.connection_lost(None)  # its keep-alive timers
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("app", nargs="?", default="raw", choices=("raw", "starlette_app", "wsgi"))
    ap.add_argument("--requests", type=int, default=64000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--runs", type=int, default=5, help="runs to take the median of (5)")
    ap.add_argument("--threads", type=int, default=16, help="--threads, for wsgi (default 16)")
    ap.add_argument(
        "--access-log",
        choices=("off", "on", "json", "handler"),
        default="off",
        help="off (default); on: the default access log; json: JSON lines; handler: "
        "the default format through a logging.FileHandler",
    )
    ap.add_argument(
        "--post",
        action="store_true",
        help="POST 64 KiB to /echo (run.py's post scenario) instead of GET /",
    )
    ap.add_argument(
        "--new-connections",
        action="store_true",
        help="each request on a new connection without keep-conn (run.py's noka), "
        "the connection's own Python counted too",
    )
    ap.add_argument(
        "--server",
        choices=("fcgi-asgi", "uvicorn"),
        default="fcgi-asgi",
        help="fcgi-asgi (default), or uvicorn's httptools protocol fed the same request over HTTP",
    )
    args = ap.parse_args()
    import uvloop

    try:  # as the server does when it starts serving (memory.py)
        from fcgi_asgi.memory import raise_malloc_thresholds
    except ImportError:  # a checkout from before it
        pass
    else:
        raise_malloc_thresholds()

    app = getattr(apps, args.app)
    request = POST_REQUEST if args.post else REQUEST
    if args.new_connections:  # BEGIN_REQUEST's flags byte: no FCGI_KEEP_CONN
        request = request[:10] + b"\x00" + request[11:]

    def run_one(app: Any, requests: int, access: str, threads: int) -> Any:
        return measure(app, requests, access, threads, request, args.new_connections)

    if args.server == "uvicorn":
        if args.app == "wsgi" or args.access_log != "off" or args.post or args.new_connections:
            ap.error("--server uvicorn: an ASGI app's GET, access log off, kept connections")

        def run_one(app: Any, requests: int, access: str, threads: int) -> Any:
            return measure_uvicorn(app, requests)

    with tempfile.TemporaryDirectory() as tmp:
        log_path = os.path.join(tmp, "access.log")
        setup_access_log(args.access_log, log_path)
        if args.profile:
            import cProfile
            import pstats

            with cProfile.Profile() as prof:
                uvloop.run(run_one(app, args.requests, args.access_log, args.threads))
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return
        runs = [
            uvloop.run(run_one(app, args.requests, args.access_log, args.threads))
            for _ in range(args.runs)
        ]
        logging.shutdown()
        lines = 0
        if os.path.exists(log_path):
            with open(log_path, "rb") as f:
                lines = sum(1 for _ in f)
    print(
        f"{args.server} {args.app}, access log {args.access_log}: "
        f"{statistics.median(runs) * 1e6:.2f} us "
        f"per request (median of {args.runs} runs; {lines} access-log lines written)"
    )


if __name__ == "__main__":
    main()
