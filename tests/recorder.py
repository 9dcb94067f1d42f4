"""A FastCGI responder that answers every request with the params it received.

Not the gateway: a few lines on top of :mod:`fcgi_asgi.protocol.records` that show
exactly what a web server sends (SCRIPT_NAME, PATH_INFO, REQUEST_URI, ...),
so the tests can record it and feed it to :func:`fcgi_asgi.asgi.scope.build_scope`.

    python -m tests.recorder --socket /tmp/rec.sock     # or --port N

The reply body is JSON: ``{"params": [[name, value], ...], "begin_flags": N,
"request_id": N, "stdin_bytes": N, "connection": N, "request_on_connection": N,
"in_flight_on_connection": N}``, names and values decoded as latin-1; the last
three say whether the server reuses (keep-conn) or multiplexes connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os

from fcgi_asgi.protocol.records import (
    BEGIN_REQUEST,
    GET_VALUES,
    GET_VALUES_RESULT,
    KEEP_CONN,
    PARAMS,
    STDIN,
    STDOUT,
    RecordReader,
    decode_pairs,
    encode_end_request,
    encode_pairs,
    encode_record,
    encode_stream,
    parse_begin_request,
)

_connections = 0


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global _connections
    _connections += 1
    connection = _connections
    served = 0
    records = RecordReader()
    state: dict[int, dict[str, object]] = {}
    try:
        while data := await reader.read(65536):
            for rec in records.feed(data):
                if rec.request_id == 0:
                    if rec.type == GET_VALUES:
                        # HAProxy's "option get-values" waits for the answer.
                        answer = [(b"FCGI_MPXS_CONNS", b"1"), (b"FCGI_MAX_REQS", b"100")]
                        writer.write(encode_record(GET_VALUES_RESULT, 0, encode_pairs(answer)))
                    continue
                req = state.setdefault(rec.request_id, {"params": bytearray(), "stdin": 0})
                if rec.type == BEGIN_REQUEST:
                    req["flags"] = parse_begin_request(rec.content)[1]
                    # A little later, so that a multiplexing server can begin more.
                    await asyncio.sleep(0.01)
                elif rec.type == PARAMS:
                    req["params"] += rec.content  # type: ignore[operator]
                elif rec.type == STDIN and rec.content:
                    req["stdin"] += len(rec.content)  # type: ignore[operator]
                elif rec.type == STDIN:
                    # Answer only after the empty STDIN record: Apache needs it read.
                    in_flight = len(state)
                    del state[rec.request_id]
                    served += 1
                    pairs = decode_pairs(bytes(req["params"]))  # type: ignore[arg-type]
                    flags = int(req.get("flags", 0))  # type: ignore[call-overload]
                    body = json.dumps(
                        {
                            "params": [
                                [k.decode("latin-1"), v.decode("latin-1")] for k, v in pairs
                            ],
                            "begin_flags": flags,
                            "request_id": rec.request_id,
                            "stdin_bytes": req["stdin"],
                            "connection": connection,
                            "request_on_connection": served,
                            "in_flight_on_connection": in_flight,
                        }
                    ).encode()
                    head = b"Status: 200 OK\r\nContent-Type: application/json\r\n\r\n"
                    writer.writelines(encode_stream(STDOUT, rec.request_id, head + body))
                    writer.write(encode_record(STDOUT, rec.request_id))
                    writer.write(encode_end_request(rec.request_id))
                    await writer.drain()
                    if not flags & KEEP_CONN:
                        return
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _main(socket_path: str | None, port: int | None) -> None:
    if socket_path:
        server = await asyncio.start_unix_server(_serve_connection, path=socket_path)
        os.chmod(socket_path, 0o666)  # Apache's unprivileged children connect too
    else:
        server = await asyncio.start_server(_serve_connection, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket")
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.socket, args.port))


if __name__ == "__main__":
    main()
