"""The fcgi-asgi command as a real process: errors, signals, sockets, backlog."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.timeout(60)

FCGI = [sys.executable, "-m", "fcgi_asgi"]


def spawn(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(
        [*FCGI, *args],
        cwd=ROOT,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20, **kw):
    proc = spawn(*args, env=env, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out.decode(), err.decode()


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        if os.path.exists(path):
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise TimeoutError(f"{path} never accepted")


def request(path: str, uri: str = "/", timeout: float = 10) -> str:
    out = subprocess.run(
        [*FCGI, "request", "--socket", path, uri],
        capture_output=True,
        timeout=timeout,
        check=True,
    )
    return out.stdout.decode()


@pytest.fixture
def gateway(sock_path):
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = spawn("tests.apps_cli:app", "--socket", sock_path, *args, env=env)
        procs.append(proc)
        wait_for_socket(sock_path, proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_version_and_help():
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("fcgi-asgi ")
    code, out, _ = run_cli("--help")
    assert code == 0 and "--socket" in out and "--root-path" in out


@pytest.mark.parametrize(
    "app,message",
    [
        ("nosuchmodule:app", "could not import module 'nosuchmodule'"),
        ("tests.apps_cli:nope", "has no attribute 'nope'"),
        ("tests.apps_cli:not_callable", "is not callable"),
        ("tests.apps_cli", 'must be given as "module:attribute"'),
    ],
)
def test_bad_app_is_one_line_error(app, message, sock_path):
    code, _, err = run_cli(app, "--socket", sock_path)
    assert code == 1
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(sock_path)


def test_import_error_inside_app(sock_path):
    code, _, err = run_cli(
        "tests.apps_cli:app", "--socket", sock_path, env={"FCGI_TEST_IMPORT_ERROR": "no config"}
    )
    assert code == 1
    assert "RuntimeError: no config" in err


def test_factory(gateway, sock_path):
    proc = spawn("tests.apps_cli:factory", "--factory", "--socket", sock_path)
    try:
        wait_for_socket(sock_path, proc)
        assert request(sock_path).startswith("pid ")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_live_socket_is_not_stolen(gateway, sock_path):
    first = gateway()
    code, _, err = run_cli("tests.apps_cli:app", "--socket", sock_path)
    assert code == 1
    assert "in use by a running server" in err
    assert request(sock_path) == f"pid {first.pid} uid {os.getuid()}"


def test_stale_socket_is_replaced(sock_path, gateway):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    proc = gateway()
    assert request(sock_path).startswith(f"pid {proc.pid}")


def test_non_socket_path_is_never_removed(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("precious")
    code, _, err = run_cli("tests.apps_cli:app", "--socket", str(path))
    assert code == 1
    assert "exists and is not a socket" in err
    assert path.read_text() == "precious"


def test_missing_directory(tmp_path):
    code, _, err = run_cli("tests.apps_cli:app", "--socket", str(tmp_path / "no" / "s.sock"))
    assert code == 1 and "does not exist" in err


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_socket_path_too_long(workers):
    path = "/tmp/" + "x" * 120 + ".sock"
    code, _, err = run_cli("tests.apps_cli:app", "--socket", path, *workers)
    assert code == 1
    assert "None" not in err
    assert f"socket path {path} is too long (130 bytes; the limit is 108)" in err
    assert not os.path.exists(path)


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody, root included, can create files in: a read-only tmpfs."""
    path = tmp_path / "ro"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", str(path)], check=True)


def test_unwritable_directory(read_only_dir):
    code, _, err = run_cli("tests.apps_cli:app", "--socket", str(read_only_dir / "s.sock"))
    assert code == 1, err
    assert f"directory {read_only_dir} is not writable" in err


def test_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli("tests.apps_cli:app", "--port", str(port))
    assert code == 1
    assert f"port {port} on 127.0.0.1 is already in use" in err


def test_conflicting_listeners(sock_path):
    code, _, err = run_cli("tests.apps_cli:app", "--socket", sock_path, "--port", "9")
    assert code == 1 and "only one of" in err


def test_tcp_serves(sock_path):
    port = free_port()
    proc = spawn("tests.apps_cli:app", "--host", "127.0.0.1", "--port", str(port))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        out = subprocess.run(
            [*FCGI, "request", "--port", str(port), "/"], capture_output=True, timeout=10
        )
        assert out.returncode == 0 and out.stdout.startswith(b"pid ")
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_sigterm_finishes_request_runs_shutdown_removes_socket(gateway, sock_path, tmp_path):
    marker = tmp_path / "shutdown"
    sleeping = tmp_path / "sleeping"
    proc = gateway(
        env={"FCGI_TEST_SHUTDOWN_MARKER": str(marker), "FCGI_TEST_SLEEP_MARKER": str(sleeping)}
    )
    slow = subprocess.Popen(
        [*FCGI, "request", "--socket", sock_path, "/sleep?1"], stdout=subprocess.PIPE
    )
    # SIGTERM once the request runs (a fixed delay lost the race on a loaded machine).
    deadline = time.monotonic() + 30
    while not sleeping.exists():
        assert time.monotonic() < deadline and slow.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = slow.communicate(timeout=10)
    assert slow.returncode == 0 and out.startswith(b"pid ")
    assert proc.wait(10) == 0
    assert marker.read_text() == "shutdown ran"
    assert not os.path.exists(sock_path)


def test_sigint_exits_zero(gateway, sock_path):
    proc = gateway()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert not os.path.exists(sock_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_lifespan_startup_stops_cleanly(gateway, sock_path, sig):
    # The socket is bound (and accepts into its backlog) before startup ends.
    proc = gateway(env={"FCGI_TEST_STARTUP_HANG": "1"})
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    assert b"during startup, stopping" in proc.stderr.read()
    assert not os.path.exists(sock_path)


def test_second_signal_ends_a_hung_lifespan_shutdown(gateway, sock_path):
    proc = gateway(env={"FCGI_TEST_SHUTDOWN_HANG": "1"})
    proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.5)  # waits for the app's shutdown, as it should
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert b"lifespan shutdown cancelled" in proc.stderr.read()
    assert not os.path.exists(sock_path)


def test_request_ignoring_cancellation_does_not_keep_the_process(gateway, sock_path, tmp_path):
    """A request that swallows every cancellation (an app bug): after the graceful
    timeout and the cut, the single process still exits, and says why it left
    that task behind."""
    marker = tmp_path / "marker"
    proc = gateway("--timeout-graceful-shutdown", "0.5", env={"FCGI_TEST_MARKER": str(marker)})
    client = subprocess.Popen(
        [*FCGI, "request", "--socket", sock_path, "/stubborn"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if marker.exists() and marker.read_text():  # written, not just made
                break
            time.sleep(0.05)
        assert marker.read_text() == "running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        client.kill()
        client.wait(10)
    err = proc.stderr.read()
    assert b"ignored cancellation" in err, err
    assert not os.path.exists(sock_path)


def test_lifespan_startup_failure_exits_nonzero(sock_path):
    code, _, err = run_cli(
        "tests.apps_cli:app",
        "--socket",
        sock_path,
        "--lifespan",
        "on",
        env={"FCGI_TEST_STARTUP_FAIL": "1"},
    )
    assert code == 1
    assert "error: application startup failed: db is down" in err
    assert not os.path.exists(sock_path)


def test_burst_of_300_connects_is_not_refused(gateway, sock_path):
    """With the gateway stopped (SIGSTOP), 300 connects must all fit in the backlog."""
    proc = gateway()
    os.kill(proc.pid, signal.SIGSTOP)
    socks = []
    try:
        for _ in range(300):
            s = socket.socket(socket.AF_UNIX)
            s.setblocking(False)
            s.connect(sock_path)  # raises BlockingIOError when the backlog is full
            socks.append(s)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        for s in socks:
            s.close()
    assert len(socks) == 300
    assert request(sock_path).startswith("pid ")


def test_cgi_fcgi_client(gateway, sock_path):
    """libfcgi's cgi-fcgi, a FastCGI client nobody on this team wrote."""
    gateway()
    env = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "REQUEST_URI": "/",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": "5",
        "PATH": os.environ["PATH"],
    }
    out = subprocess.run(
        ["cgi-fcgi", "-bind", "-connect", sock_path],
        env=env,
        input=b"hello",
        capture_output=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 200 OK")
    assert body.startswith(b"pid ")


def test_embedding_example(sock_path):
    """examples/embed.py, as the README shows it: start_server + serve_forever."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "embed.py"), sock_path],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_socket(sock_path, proc)
        assert request(sock_path) == "Hello, world!\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert not os.path.exists(sock_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_fcgi_web_server_addrs_env_refuses_other_peers():
    port = free_port()
    proc = spawn(
        "tests.apps_cli:app",
        "--port",
        str(port),
        "--allow",
        "127.0.0.5",
        env={"FCGI_WEB_SERVER_ADDRS": "127.0.0.3, 127.0.0.4"},
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1, ("127.0.0.4", 0)).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        for source, allowed in (("127.0.0.1", False), ("127.0.0.4", True), ("127.0.0.5", True)):
            with socket.create_connection(("127.0.0.1", port), 5, (source, 0)) as s:
                s.settimeout(5)
                try:
                    s.sendall(b"\x01\x09\x00\x00\x00\x00\x00\x00")  # an empty GET_VALUES
                    reply = s.recv(100)
                except ConnectionResetError:  # refused peers are closed at once
                    reply = b""
            assert (reply[:2] == b"\x01\x0a") is allowed, (source, reply)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "refused connection from 127.0.0.1" in err.decode()


@pytest.mark.parametrize(
    "choice,module", [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio.unix_events")]
)
def test_loop_choice(gateway, sock_path, choice, module):
    gateway("--loop", choice)
    assert request(sock_path, "/loop") == module


def test_fast_reader_that_vanishes_stops_a_tight_streaming_loop(gateway, sock_path, tmp_path):
    """A peer reads as fast as the app writes, then half-closes and goes on reading
    (as Apache does when its client goes away): send() must raise soon, even for an
    app whose sends seldom wait."""
    from fcgi_asgi.client import build_params
    from fcgi_asgi.protocol.records import (
        PARAMS,
        STDIN,
        encode_begin_request,
        encode_pairs,
        encode_record,
    )

    marker = tmp_path / "outcome"
    gateway(env={"FCGI_TEST_MARKER": str(marker)})
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        params = encode_pairs(build_params("GET", "/endless"))
        s.sendall(
            encode_begin_request(1)
            + encode_record(PARAMS, 1, params)
            + encode_record(PARAMS, 1)
            + encode_record(STDIN, 1)
        )
        received = 0
        while received < 8 << 20:
            data = s.recv(1 << 20)
            assert data
            received += len(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        with contextlib.suppress(OSError):
            while s.recv(1 << 20):  # the gateway closes its side once it has noticed
                pass
    deadline = time.monotonic() + 10
    # Until written, not just made: write_text() creates the file, then writes.
    while not (marker.exists() and marker.read_text()):
        assert time.monotonic() < deadline, "the app never noticed the peer was gone"
        time.sleep(0.05)
    assert marker.read_text().startswith("ClientDisconnected after ")


@pytest.mark.parametrize(
    "args,message",
    [
        (("--fd", "-1"), "--fd must be"),
        (("--port", "0", "--params-timeout", "nan"), "--timeout-params must be"),
        (("--port", "0", "--request-timeout", "nan"), "--timeout-request must be"),
        (("--port", "0", "--slow-request-threshold", "nan"), "--slow-request-threshold must be"),
        (("--port", "0", "--timeout-graceful-shutdown", "-5"), "--timeout-graceful-shutdown"),
        (("--port", "0", "--timeout-graceful-shutdown", "nan"), "--timeout-graceful-shutdown"),
    ],
)
def test_bad_number_is_one_line_error(args, message):
    # Before the fix, --fd -1 died in socket() with a traceback and NaN
    # timeouts were accepted (NaN compares false with everything).
    code, _, err = run_cli("tests.apps:app", *args, timeout=10)
    assert code == 1
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_allow_with_workers_is_one_line_error():
    # Before the fix --allow was only parsed in each worker, after the
    # supervisor had bound the port: one error per worker among the logs.
    code, _, err = run_cli(
        "tests.apps:app", "--port", "0", "--workers", "2", "--allow", "10.0.0.0/33", timeout=20
    )
    assert code == 1
    assert "'10.0.0.0/33' is not an IP address or network" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_status_path_equal_to_ping_path_is_an_error():
    # Before the fix the ping answer silently shadowed the status page.
    code, _, err = run_cli(
        "tests.apps:app", "--port", "0", "--status-path", "/x", "--ping-path", "/x", timeout=10
    )
    assert code == 1
    assert "--status-path and --ping-path must differ" in err
    assert err.count("\n") == 1


def test_request_port_out_of_range_is_one_line_error():
    # Before the fix connect() raised OverflowError: a traceback, exit 1.
    code, _, err = run_cli("request", "/", "--port", "70000", timeout=10)
    assert code == 2
    assert "Traceback" not in err and "0-65535" in err
