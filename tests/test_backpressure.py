"""Flow control: a web server that stops reading makes the app wait; memory stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

from fcgi_asgi.client import build_params
from fcgi_asgi.protocol.records import (
    END_REQUEST,
    PARAMS,
    STDIN,
    STDOUT,
    RecordReader,
    encode_begin_request,
    encode_pairs,
    encode_record,
)
from tests import apps
from tests.conftest import connect

CHUNK = 64 << 10
COUNT = 3200  # 200 MiB


class StalledReader(asyncio.Protocol):
    """A web server that reads nothing until told to, then parses STDOUT."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = RecordReader()
        self.received = 0
        self.digest = hashlib.sha256()
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for record in self.reader.feed(data):
            if record.type == STDOUT:
                self.received += len(record.content)
                self.digest.update(record.content)
            elif record.type == END_REQUEST and not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc):  # type: ignore[no-untyped-def]
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed before END_REQUEST"))


async def test_slow_reader_bounds_buffering(serve):
    await stall_then_read(await serve(apps.app))


def test_slow_reader_bounds_buffering_on_uvloop(sock_path):
    """The same on uvloop, the default loop of the CLI (its writelines() path)."""
    import uvloop

    from fcgi_asgi import FastCGIServer
    from fcgi_asgi.config import Config

    async def main() -> None:
        server = FastCGIServer(Config(app=apps.app, socket=sock_path, access_log=False))
        await server.start()
        try:
            await stall_then_read(server)
        finally:
            await server.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def stall_then_read(server) -> None:  # type: ignore[no-untyped-def]
    """A 200 MiB stream to a peer that reads nothing for 2 s, then everything."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_unix_connection(StalledReader, server.config.socket)
    # Paused here, not in connection_made: uvloop starts reading after that call.
    transport.pause_reading()
    params = build_params("GET", "/stream", query=f"{COUNT},{CHUNK}")
    transport.write(
        encode_begin_request(1)
        + encode_record(PARAMS, 1, encode_pairs(params))
        + encode_record(PARAMS, 1)
        + encode_record(STDIN, 1)
    )
    # Stall for 2 s, sampling the gateway's write buffer and the app's progress.
    max_buffered = 0
    for _ in range(40):
        await asyncio.sleep(0.05)
        for conn in server.ctx.connections:
            if conn.transport is not None:
                max_buffered = max(max_buffered, conn.transport.get_write_buffer_size())
    sent_while_stalled = apps.EVENTS["stream_sent"]
    assert proto.received == 0, "the stalled peer read anyway"
    # The app got at most a write buffer plus kernel socket buffers ahead.
    assert sent_while_stalled < 8 << 20, sent_while_stalled
    assert max_buffered <= server.config.write_buffer_size + CHUNK + 64, max_buffered

    transport.resume_reading()
    await asyncio.wait_for(proto.done, 60)
    expected = hashlib.sha256()
    head = b"Status: 200 OK\r\n\r\n"
    expected.update(head)
    for i in range(COUNT):
        expected.update(apps.stream_chunk(i, CHUNK))
    assert proto.received == len(head) + COUNT * CHUNK
    assert proto.digest.hexdigest() == expected.hexdigest()
    transport.close()


async def test_unread_upload_pauses_reading(serve):
    """An app that does not read its body: the gateway stops reading the socket,
    so it holds only about read_buffer_size of body, not everything sent."""
    server = await serve(apps.app, read_buffer_size=256 << 10)

    async with await connect(server) as client:
        req = await client.begin(build_params("POST", "/sleep", query="1.5", content_length=0))

        async def push() -> int:
            sent = 0
            for _ in range(400):  # up to 25 MiB
                await req.send_body(b"u" * CHUNK)
                sent += CHUNK
            return sent

        pusher = asyncio.ensure_future(push())
        await asyncio.sleep(1.0)
        conn = next(iter(server.ctx.connections))
        # The limit, plus what one read from the socket (up to 256 KiB) brought in.
        assert conn._body_buffered <= (256 << 10) + (256 << 10) + CHUNK
        assert not pusher.done()  # the client is blocked: the gateway stopped reading
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
