"""Serve an ASGI app over FastCGI from your own asyncio program.

    python examples/embed.py /tmp/embed.sock
    fcgi-asgi request --socket /tmp/embed.sock /    # in another shell

Stops on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from hello import app  # examples/hello.py

import fcgi_asgi


async def main(path: str) -> None:
    server = await fcgi_asgi.start_server(app, socket=path)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.close)
    async with server:
        print(f"serving on {server.address}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/embed.sock"))
