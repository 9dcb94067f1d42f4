"""What a newcomer meets first: one-line errors that name the fix, uvicorn's
option names, options from the environment, --env-file and --reload.

Every case runs the real ``fcgi-asgi`` process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, free_port
from tests.test_cli import FCGI, request, run_cli, spawn, wait_for_socket

pytestmark = pytest.mark.timeout(90)


def one_line_error(*args: str, env: dict[str, str] | None = None) -> str:
    code, _, err = run_cli(*args, env=env)
    assert code != 0, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "args,message",
    [
        # Before: "directory /proc does not exist", which is false.
        (("--socket", "/proc/x.sock"), "directory /proc does not accept new files"),
        # Before: "could not import module 'tests.apps_cli'", naming no directory.
        (("--socket", "S", "--app-dir", "/nope"), "--app-dir '/nope': no such directory"),
        # Before: "not a listening socket".
        (("--fd", "99"), "file descriptor 99 is not open"),
        # Before: accepted, and without effect.
        (("--socket", "S", "--allow", "127.0.0.1"), "--allow applies to TCP only"),
        # Before: accepted.
        (("--socket", "S", "--root-path", "/app?x"), "--root-path is a path prefix"),
    ],
)
def test_error_names_the_real_problem(args, message, sock_path):
    args = tuple(sock_path if a == "S" else a for a in args)
    err = one_line_error("tests.apps_cli:app", *args)
    assert message in err
    assert not os.path.exists(sock_path)


def test_module_not_found_names_the_app_dir(tmp_path, sock_path):
    err = one_line_error("nosuchmodule:app", "--socket", sock_path, "--app-dir", str(tmp_path))
    assert f"could not import module 'nosuchmodule' from --app-dir {tmp_path}" in err


@pytest.mark.parametrize(
    "app,args,message",
    [
        # Before: started, then 500 on every request.
        (
            "tests.flask_site:app",
            ("--interface", "asgi"),
            "'tests.flask_site:app' is a WSGI app (it takes environ, start_response); "
            "use --interface wsgi",
        ),
        (
            "tests.apps_cli:factory",
            (),
            "'tests.apps_cli:factory' takes no arguments, so it looks like an app factory: "
            "give --factory to call it",
        ),
    ],
)
def test_wsgi_app_or_factory_is_detected_at_start(app, args, message, sock_path):
    err = one_line_error(app, "--socket", sock_path, *args)
    assert message in err
    assert not os.path.exists(sock_path)


def test_factory_detected_in_a_worker_too(sock_path):
    code, _, err = run_cli("tests.apps_cli:factory", "--socket", sock_path, "--workers", "1")
    assert code == 1
    assert "fcgi-asgi: error: 'tests.apps_cli:factory' takes no arguments" in err
    assert "give --factory to call it" in err
    assert not os.path.exists(sock_path)


def test_wsgi_app_through_a2wsgi_is_served(sock_path):
    proc = spawn("tests.flask_site:asgi_app", "--socket", sock_path)
    try:
        wait_for_socket(sock_path, proc)
        out = request(sock_path, "/items/7")
        assert json.loads(out)["item_id"] == 7
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def _ping(sock: str, path: str) -> str | None:
    """The answer at ``path``: ``pong`` when it is the gateway's --ping-path."""
    try:
        return request(sock, path)
    except subprocess.CalledProcessError:
        return None  # the app's 404


def _serve_until_ready(sock: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = spawn("tests.apps:app", *args, env=env)
    wait_for_socket(sock, proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> bytes:
    """Stop the gateway; what it wrote to stdout and stderr (access lines go to stdout)."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err.decode()
    return out + err


def test_options_from_the_environment_and_the_command_line_wins(sock_path):
    env = {
        "FCGI_ASGI_SOCKET": sock_path,  # --socket
        "FCGI_ASGI_PING_PATH": "/from-env",
        "FCGI_ASGI_ACCESS_LOG": "false",  # a --x/--no-x switch
    }
    proc = _serve_until_ready(sock_path, env=env)
    try:
        assert _ping(sock_path, "/from-env") == "pong"
        assert _ping(sock_path, "/elsewhere") is None  # the app's 404, a loggable request
    finally:
        err = _stop(proc)
    assert b'"GET /elsewhere' not in err  # FCGI_ASGI_ACCESS_LOG=false took effect
    proc = _serve_until_ready(sock_path, "--ping-path", "/from-cli", "--access-log", env=env)
    try:
        assert _ping(sock_path, "/from-cli") == "pong"
        assert _ping(sock_path, "/from-env") is None
    finally:
        err = _stop(proc)
    assert b'"GET /from-env HTTP/1.1" 404' in err  # the access line of the app's 404


def test_uvicorn_names_and_web_concurrency(sock_path):
    env = {"WEB_CONCURRENCY": "2"}
    proc = _serve_until_ready(
        sock_path,
        "--uds",
        sock_path,
        "--limit-concurrency",
        "5",
        "--timeout-keep-alive",
        "3",
        "--limit-max-requests",
        "1000",
        "--status-path",
        "/status",
        env=env,
    )
    try:
        deadline = time.monotonic() + 20
        while True:  # both workers report to the scoreboard about once a second
            status = request(sock_path, "/status?json")
            if json.loads(status)["workers"] == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert json.loads(status)["workers"] == 2
    finally:
        _stop(proc)


def test_env_file_sets_options_and_the_real_environment_wins(tmp_path, sock_path):
    env_file = tmp_path / "app.env"
    env_file.write_text(
        "# comment\n"
        f"export FCGI_ASGI_SOCKET='{sock_path}'\n"
        'FCGI_ASGI_PING_PATH="/from-file"\n'
        "FCGI_ASGI_LIFESPAN=off  # no lifespan\n"
    )
    proc = _serve_until_ready(sock_path, "--env-file", str(env_file), env={})
    try:
        assert _ping(sock_path, "/from-file") == "pong"
    finally:
        _stop(proc)
    proc = _serve_until_ready(
        sock_path, "--env-file", str(env_file), env={"FCGI_ASGI_PING_PATH": "/real"}
    )
    try:
        assert _ping(sock_path, "/real") == "pong"
        assert _ping(sock_path, "/from-file") is None
    finally:
        _stop(proc)


@pytest.mark.parametrize(
    "env,message",
    [
        ({"FCGI_ASGI_PORT": "nine"}, "FCGI_ASGI_PORT='nine': invalid literal for int()"),
        ({"FCGI_ASGI_LIFESPAN": "maybe"}, "FCGI_ASGI_LIFESPAN='maybe': choose from auto, on, off"),
        ({"FCGI_ASGI_FACTORY": "perhaps"}, "FCGI_ASGI_FACTORY='perhaps': give one of 1, true"),
    ],
)
def test_bad_environment_value_names_the_variable(env, message):
    code, _, err = run_cli("tests.apps:app", env=env)
    assert code == 2 and message in err and "Traceback" not in err


# -- --reload ---------------------------------------------------------------------------

APP_SOURCE = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"VERSION"})
"""


def test_reload_restarts_on_a_file_change(tmp_path, sock_path):
    source = tmp_path / "devapp.py"
    source.write_text(APP_SOURCE.replace("VERSION", "v1"))
    proc = spawn("devapp:app", "--app-dir", str(tmp_path), "--socket", sock_path, "--reload")
    try:
        wait_for_socket(sock_path, proc, timeout=20)
        assert request(sock_path) == "v1"
        source.write_text(APP_SOURCE.replace("VERSION", "v2"))
        deadline = time.monotonic() + 30
        body = "v1"
        while body != "v2" and time.monotonic() < deadline:
            time.sleep(0.2)
            body = request(sock_path)
        assert body == "v2", "the app was not reloaded after its file changed"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert not os.path.exists(sock_path)


def test_reload_without_watchfiles_says_what_to_install(sock_path):
    # The same process as the command, with watchfiles made unimportable.
    code = (
        "import sys; sys.modules['watchfiles'] = None; from fcgi_asgi.cli import main; "
        f"sys.exit(main(['tests.apps:app', '--socket', {sock_path!r}, '--reload']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 1
    assert "--reload needs the watchfiles package: pip install 'fcgi-asgi[reload]'" in (
        out.stderr.decode()
    )


def test_tcp_option_from_the_environment():
    port = free_port()
    proc = spawn("tests.apps:app", env={"FCGI_ASGI_PORT": str(port)})
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None
            try:
                out = subprocess.run(
                    [*FCGI, "request", "--host", "127.0.0.1", "--port", str(port), "/scope"],
                    capture_output=True,
                    timeout=10,
                    check=True,
                )
                break
            except subprocess.CalledProcessError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert json.loads(out.stdout)["type"] == "http"
    finally:
        _stop(proc)
