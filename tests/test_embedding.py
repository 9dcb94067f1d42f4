"""The embedding API speaks in its own terms: keywords, types, a closed server."""

from __future__ import annotations

import pytest

import fcgi_asgi
from fcgi_asgi import ConfigError, start_server
from fcgi_asgi.client import FastCGIClient
from tests import apps

pytestmark = pytest.mark.timeout(30)


async def test_socket_keyword_everywhere(sock_path):
    # Before: start_server(app, socket=P) raised TypeError (it took path=).
    server = await start_server(apps.app, socket=sock_path, access_log=False)
    async with server:
        async with await FastCGIClient.connect(path=sock_path) as client:
            assert (await client.request("GET", "/scope")).status == 200
        assert server.config.socket == sock_path


async def test_path_is_still_accepted(sock_path):
    async with await start_server(apps.app, path=sock_path, access_log=False) as server:
        assert server.address == f"unix:{sock_path}"
    with pytest.raises(TypeError, match="not both"):
        await start_server(apps.app, path=sock_path, socket=sock_path)


@pytest.mark.parametrize("option", ["workers", "user", "loop", "max_requests"])
async def test_options_that_do_not_apply_are_type_errors(option, sock_path):
    value = "root" if option == "user" else "asyncio" if option == "loop" else 2
    with pytest.raises(TypeError, match=rf"start_server\(\) does not take {option}="):
        await start_server(apps.app, socket=sock_path, **{option: value})


def test_run_refuses_process_options(sock_path):
    with pytest.raises(TypeError, match=r"run\(\) does not take group=, user="):
        fcgi_asgi.run(apps.app, socket=sock_path, user="nobody", group="nogroup")


@pytest.mark.parametrize(
    "options,message",
    [
        # Before: "--host needs --port", and port="9000" failed deep inside with a TypeError.
        ({"port": "9000"}, "port= must be an int or None, not str '9000'"),
        ({"host": "127.0.0.1"}, "host= needs port="),
        ({"port": 0, "keepalive_timeout": "5"}, "keepalive_timeout= must be a number"),
        ({"port": 0, "access_log": 1}, "access_log= must be a bool, not int 1"),
        ({"port": True}, "port= must be an int or None, not bool True"),
    ],
)
async def test_wrong_values_speak_in_keywords(options, message):
    with pytest.raises(ConfigError) as info:
        await start_server(apps.app, **options)
    assert str(info.value) == message or str(info.value).startswith(message)
    assert "--" not in str(info.value)


async def test_serve_forever_after_close_says_closed(sock_path):
    server = await start_server(apps.app, socket=sock_path, access_log=False)
    server.close()
    await server.wait_closed()
    # Before: it started the server again (and bound the socket anew).
    with pytest.raises(RuntimeError, match="the server is closed"):
        await server.serve_forever()


async def test_errors_are_exported(sock_path):
    async def failing(scope, receive, send):
        message = await receive()
        assert message["type"] == "lifespan.startup"
        await send({"type": "lifespan.startup.failed", "message": "no db"})

    with pytest.raises(fcgi_asgi.LifespanFailure, match="application startup failed: no db"):
        await start_server(failing, socket=sock_path, lifespan="on")
    with pytest.raises(fcgi_asgi.ListenError):
        await start_server(apps.app, socket="/nonexistent-dir/app.sock")


async def test_wsgi_app_given_as_asgi_is_refused_by_the_api_too(sock_path):
    from tests.flask_site import app as flask_app

    with pytest.raises(fcgi_asgi.AppLoadError, match=r"is a WSGI app.*interface= wsgi"):
        await start_server(flask_app, socket=sock_path, interface="asgi")
