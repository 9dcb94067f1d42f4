"""The access log's parts on real pipes and a real event loop: batched
writes, whole lines from processes sharing a pipe, the shortcut past
``logging`` and when it is not taken."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fcgi_asgi import accesslog
from fcgi_asgi.accesslog import DEFAULT_FORMAT, AccessLog, AccessLogFormat
from fcgi_asgi.logbuffer import MAX_PENDING_LINES, BufferedLineHandler
from fcgi_asgi.logconfig import configure_logging, logging_config
from tests.conftest import ROOT

SCOPE: dict[str, Any] = {
    "client": ("10.0.0.7", 41236),
    "method": "GET",
    "raw_path": b"/caf%C3%A9",
    "path": "/café",
    "query_string": b"a=1&b=%22",
    "http_version": "1.1",
    "headers": [(b"host", b"example.test"), (b"user-agent", b'say "hi"\\ \xe9')],
}


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def pipe() -> Iterator[tuple[int, Any]]:
    r, w = os.pipe()
    writer = open(w, "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    yield r, writer
    writer.close()
    os.close(r)


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    """``fcgi_asgi.access`` as it was before the test, afterwards."""
    logger = logging.getLogger("fcgi_asgi.access")
    saved = logger.handlers[:], logger.propagate, logger.level, logger.disabled
    yield logger
    logger.handlers, logger.propagate, logger.level, logger.disabled = saved
    for name in ("fcgi_asgi", "fcgi_asgi.error"):
        other = logging.getLogger(name)
        other.handlers, other.propagate = [], True
        other.setLevel(logging.NOTSET)


async def test_lines_are_written_together_later_and_in_order(pipe):
    r, writer = pipe
    handler = BufferedLineHandler(writer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    add = handler.message_writer()
    assert add is not None
    for i in range(100):
        add(f"line {i}")
    assert _read_all(r) == b""  # nothing written by the logging call itself
    data = b""
    for _ in range(500):  # the batch's timer fires within a few loop iterations
        await asyncio.sleep(0.01)
        data += _read_all(r)
        if data.count(b"\n") >= 100:
            break
    assert data.decode().splitlines() == [f"line {i}" for i in range(100)]
    for i in range(MAX_PENDING_LINES):
        add(f"more {i}")
    # A full buffer is written at once, without waiting for the loop.
    assert len(_read_all(r).splitlines()) == MAX_PENDING_LINES


def test_without_a_running_loop_lines_are_written_at_once(pipe):
    r, writer = pipe
    handler = BufferedLineHandler(writer)
    logger = logging.Logger("test.nolloop")
    logger.addHandler(handler)
    logger.warning("now %d", 1)
    assert _read_all(r) == b"now 1\n"


# Two processes writing batches of lines to one pipe, as workers do with stdout.
_WRITER = """
import asyncio, logging, sys
from fcgi_asgi.logbuffer import BufferedLineHandler
handler = BufferedLineHandler(sys.stdout)
handler.setFormatter(logging.Formatter("%(message)s"))
add = handler.message_writer()
tag = sys.argv[1]
async def main():
    for batch in range(20):
        for i in range(300):
            add(f"{tag} {batch:03d} {i:03d} " + tag * 90)
        await asyncio.sleep(0)
asyncio.run(main())
"""


def test_processes_sharing_a_pipe_never_mix_half_lines():
    r, w = os.pipe()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, tag],
            stdout=w,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        for tag in "AB"
    ]
    os.close(w)
    data = b""
    with os.fdopen(r, "rb") as reader:
        while chunk := reader.read(1024):  # a slow reader: the writers fill the pipe
            data += chunk
    for proc in procs:
        assert proc.wait(30) == 0
    lines = data.decode().splitlines()
    assert len(lines) == 2 * 20 * 300
    for line in lines:
        tag = line[0]
        assert line.endswith(" " + tag * 90) and line.count(tag) == 91, line[:120]
    for tag in "AB":
        mine = [line[:9] for line in lines if line[0] == tag]
        assert mine == sorted(mine)  # each process's lines in its order


def test_default_render_matches_the_format():
    fast = AccessLogFormat()
    slow = AccessLogFormat(DEFAULT_FORMAT + "{referer:.0}")  # the same line, the general way
    for scope in (SCOPE, {**SCOPE, "client": None, "query_string": b""}):
        line = fast.render(scope, 404, 5, 0.25, 3)
        assert line == slow.render(scope, 404, 5, 0.25, 3)
    assert fast.render(SCOPE, 200, 0, 0, 1) == (
        '10.0.0.7:41236 - "GET /caf%C3%A9?a=1&b=%22 HTTP/1.1" 200'
    )


_CLIENTS = st.none() | st.tuples(st.text(max_size=12), st.integers(-(2**70), 2**70))


@given(
    st.one_of(_CLIENTS, st.lists(st.text(max_size=4), max_size=3), st.integers()),
    st.text(max_size=8) | st.binary(max_size=4),
    st.binary(max_size=24),
    st.binary(max_size=24),
    st.sampled_from(["1.0", "1.1", "2", "3"]) | st.text(max_size=4),
    st.integers(-(2**70), 2**70) | st.booleans(),
)
def test_default_render_c_matches_python(
    client: Any, method: Any, raw: bytes, qs: bytes, version: Any, status: int
) -> None:
    """The default line from C (when built) is the Python line, whatever the
    scope holds: C writes the usual ASCII values, the rest falls back."""
    scope = {
        "client": client,
        "method": method,
        "raw_path": raw,
        "query_string": qs,
        "http_version": version,
    }

    def outcome(render: Any) -> Any:
        try:
            return render(scope, status, 0, 0.0, 1)
        except Exception as exc:  # an int client: not subscriptable, in both
            return type(exc)

    expected = outcome(accesslog.render_default_py)
    assert outcome(accesslog.render_default) == expected
    usual = (
        (client is None or (type(client) is tuple and client[0].isascii()))
        and all(type(v) is str and v.isascii() for v in (method, version))
        and raw.isascii()
        and qs.isascii()
        and type(status) is int
        and all(-(2**63) <= n < 2**63 for n in (status, *(client[1:] if client else ())))
    )
    if usual and accesslog._c_access_line is not None:
        assert accesslog._c_access_line(scope, status) == expected  # C wrote it


def _direct_log(path: Path, name: str) -> tuple[BufferedLineHandler, AccessLog]:
    """An access log in the default format through a BufferedLineHandler
    writing bare lines to ``path``: the shortcut past ``logging``."""
    handler = BufferedLineHandler(open(path, "w"))  # noqa: SIM115 (closed by the test)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test.accesslog.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return handler, AccessLog(AccessLogFormat(), logger)


def test_default_line_of_an_unusual_scope_goes_through_the_direct_writer(
    tmp_path: Path,
) -> None:
    """The shortcut past ``logging`` (C line, else Python) logs a scope an app
    rewrote with values of other types, and the usual one, in order."""
    handler, log = _direct_log(tmp_path / "log", "unusual")
    assert log.direct
    odd = {**SCOPE, "client": ["10.0.0.8", "80"], "method": "GÉT", "raw_path": b"/\xe9"}
    log.log(SCOPE, 200, 0, 0.0, 1)
    log.log(odd, 201, 0, 0.0, 2)
    handler.close()
    assert (tmp_path / "log").read_text().splitlines() == [
        '10.0.0.7:41236 - "GET /caf%C3%A9?a=1&b=%22 HTTP/1.1" 200',
        '10.0.0.8:80 - "GÉT /\xe9?a=1&b=%22 HTTP/1.1" 201',
    ]


async def test_default_lines_are_queued_in_c_batched_and_in_order(tmp_path: Path) -> None:
    """The default setup's logger (one C call a line when the speedups are
    built): lines wait for the batch's write while the loop runs, a full
    batch goes out at once, and lines C leaves to Python keep their place."""
    handler, log = _direct_log(tmp_path / "log", "batched")
    if accesslog._c_access_logger is not None:
        assert type(log.log).__name__ == "builtin_function_or_method"
    odd = {**SCOPE, "raw_path": b"/\xe9"}  # not ASCII: rendered in Python
    expected = []
    for i in range(10):
        log.log(odd if i % 3 == 0 else SCOPE, 200 + i, 0, 0.0, i)
        target = "/\xe9" if i % 3 == 0 else "/caf%C3%A9"
        expected.append(f'10.0.0.7:41236 - "GET {target}?a=1&b=%22 HTTP/1.1" {200 + i}')
    assert (tmp_path / "log").read_text() == ""  # waiting for the batch's write
    text = ""
    for _ in range(500):  # the batch's timer fires within a few loop iterations
        await asyncio.sleep(0.01)
        text = (tmp_path / "log").read_text()
        if text.count("\n") >= 10:
            break
    assert text.splitlines() == expected
    for i in range(MAX_PENDING_LINES):
        log.log(SCOPE, 200, 0, 0.0, i)
    # A full batch is written at once, without waiting for the loop.
    assert len((tmp_path / "log").read_text().splitlines()) == 10 + MAX_PENDING_LINES
    handler.close()


def test_json_render_is_json():
    record = json.loads(AccessLogFormat("json").render(SCOPE, 201, 42, 0.0125, 9))
    assert record["user_agent"] == 'say "hi"\\ é'
    assert record["host"] == "example.test" and record["referer"] is None
    assert record["path"] == "/café" and record["target"] == "/caf%C3%A9?a=1&b=%22"
    assert (record["status"], record["bytes"], record["request_id"]) == (201, 42, 9)
    assert record["duration_ms"] == 12.5 and record["pid"] == os.getpid()
    none = json.loads(AccessLogFormat("json").render({**SCOPE, "client": None}, 200, 0, 0, 1))
    assert none["client"] is None


async def test_default_setup_takes_the_shortcut(access_logger, pipe):
    r, writer = pipe
    configure_logging()
    access_logger.handlers[0].setStream(writer)  # type: ignore[attr-defined]
    log = AccessLog(AccessLogFormat(), access_logger)
    assert log.direct
    log.log(SCOPE, 200, 13, 0.001, 1)
    log.flush()
    line = _read_all(r).decode()
    # The same bytes logging's own formatter gives, prefix included.
    record = logging.makeLogRecord({"msg": AccessLogFormat().render(SCOPE, 200, 13, 0.001, 1)})
    expected = logging.Formatter(logging_config()["formatters"]["access"]["format"]).format(record)
    assert line.split(" [", 1)[1] == expected.split(" [", 1)[1] + "\n"
    assert len(line.split(" [", 1)[0]) == len("2026-01-02 10:00:00,123")


async def test_user_handlers_get_records(access_logger):
    # What --log-config gives: a handler of the user's, filters, propagation.
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    access_logger.handlers = [Collect()]
    access_logger.propagate = False
    access_logger.setLevel(logging.INFO)
    log = AccessLog(AccessLogFormat(), access_logger)
    assert not log.direct
    log.log(SCOPE, 200, 13, 0.001, 1)
    assert [r.getMessage() for r in seen] == [AccessLogFormat().render(SCOPE, 200, 13, 0, 1)]
    assert seen[0].name == "fcgi_asgi.access" and seen[0].levelno == logging.INFO
    access_logger.setLevel(logging.WARNING)
    log.log(SCOPE, 200, 13, 0.001, 1)
    assert len(seen) == 1  # a level above INFO turns the access log off


async def test_our_handler_with_another_format_batches_through_logging(access_logger, pipe):
    r, writer = pipe
    handler = BufferedLineHandler(writer)
    handler.setFormatter(logging.Formatter("A %(levelname)s %(message)s"))
    access_logger.handlers = [handler]
    access_logger.propagate = False
    access_logger.setLevel(logging.INFO)
    log = AccessLog(AccessLogFormat(), access_logger)
    assert not log.direct
    log.log(SCOPE, 200, 13, 0.001, 1)
    log.log(SCOPE, 204, 0, 0.001, 1)
    assert _read_all(r) == b""
    log.flush()
    assert _read_all(r).decode().splitlines() == [
        "A INFO " + AccessLogFormat().render(SCOPE, status, 0, 0, 1) for status in (200, 204)
    ]


async def test_a_record_with_a_traceback_keeps_its_place(pipe):
    r, writer = pipe
    handler = BufferedLineHandler(writer)
    handler.setFormatter(logging.Formatter(logging_config()["formatters"]["access"]["format"]))
    logger = logging.Logger("test.traceback")
    logger.addHandler(handler)
    add = handler.message_writer()
    assert add is not None
    add("first-line")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("boom")
    add("the-end")
    handler.flush()
    text = _read_all(r).decode()
    assert text.index("first-line") < text.index("boom") < text.index("ZeroDivisionError")
    assert text.index("ZeroDivisionError") < text.index("the-end")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] "
    for word in ("first-line", "boom", "the-end"):
        assert re.search(f"^{stamp}{word}$", text, re.M), text
