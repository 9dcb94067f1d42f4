"""The smallest ASGI app: answers every request with "Hello, world!".

fcgi-asgi examples.hello:app --socket /tmp/hello.sock
"""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b"Hello, world!\n"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
