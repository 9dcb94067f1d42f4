"""RequestCore.send_fast (the C fast path of an ASGI send) does what the Python
path does: the same bytes to the web server, the same state, the same errors,
for any message in any state; and its fields are the ones the Python
fallback declares."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fcgi_asgi.asgi.bridge import ASGIRequest
from fcgi_asgi.config import Config
from fcgi_asgi.context import ServerContext
from fcgi_asgi.protocol import core
from fcgi_asgi.protocol.connection import FastCGIConnection
from fcgi_asgi.protocol.request import _COALESCE_LIMIT, Request
from tests import apps
from tests.conftest import Serve, connect, read_available

pytestmark = pytest.mark.timeout(120)

_HAVE_C = core.RequestCore is not core.RequestCorePy


class PythonOnly(ASGIRequest):
    """The Python path alone: send_fast always declines."""

    __slots__ = ()

    def send_fast(self, message: Any) -> bool:
        return False


def test_core_fields_are_the_same_in_c_and_python() -> None:
    """The C members are the fallback's slots, and Request repeats none of
    them (a repeated name would shadow the C field with a slot of its own)."""
    if not _HAVE_C:
        pytest.skip("the C speedups are not built (FCGI_ASGI_NO_EXTENSIONS)")
    members = {
        name
        for name, value in vars(core.RequestCore).items()
        if type(value).__name__ == "member_descriptor"
    }
    assert members == set(core.CORE_FIELDS) == set(core.RequestCorePy.__slots__)
    assert not set(Request.__slots__) & members
    assert not set(ASGIRequest.__slots__) & members
    from fcgi_asgi import _speedups

    assert _speedups.WHOLE_BODY_LIMIT == _COALESCE_LIMIT


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))]


def test_classes_that_change_the_response_path_decline_the_fast_path() -> None:
    """send_fast() does what Request's set_head() and send_whole() do; a
    request class of the package that changes those (the authorizer renames
    its Variable- headers) or what they call must not take it."""
    import fcgi_asgi.asgi.roles
    import fcgi_asgi.wsgi.bridge  # noqa: F401  (every request class loaded)

    path = ("set_head", "send_whole", "send_body", "finish", "wake", "flush_head", "asgi_send")
    checked = 0
    for cls in _subclasses(Request):
        if not cls.__module__.startswith("fcgi_asgi."):
            continue
        checked += 1
        # Its classes below Request, but ASGIRequest (whose asgi_send() is the path).
        own = [k for k in cls.__mro__[: cls.__mro__.index(Request)] if k is not ASGIRequest]
        changed = [name for name in path if any(name in vars(k) for k in own)]
        if changed:
            assert any("send_fast" in vars(k) for k in own), (
                f"{cls.__qualname__} changes {changed} but may take the C fast path"
            )
    assert checked >= 6
    from fcgi_asgi.asgi.roles import ASGIAuthorizerRequest

    assert ASGIAuthorizerRequest.send_fast(None, {}) is False  # type: ignore[arg-type]


_STATUS = st.sampled_from([200, 204, 404, 299, 1000, "200", 200.0, True])
_HEADER = st.sampled_from(
    [
        (b"content-type", b"text/plain"),
        [b"x-list", b"1"],
        (b"x-bad", b"a\nb"),
        (b"bad name", b"1"),
        (b"connection", b"x-a"),
        (b"status", b"500"),
        ("x-str", "1"),
        (b"x-a", b"2"),
    ]
)
_HEADERS = st.lists(_HEADER, max_size=3) | st.lists(_HEADER, max_size=2).map(tuple)
_ABSENT = object()
_BODIES = [
    b"",
    b"hello",
    b"x" * _COALESCE_LIMIT,
    b"y" * (_COALESCE_LIMIT + 1),
    bytearray(b"a"),
    "s",
]


@st.composite
def _message(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["start", "body", "body", "trailers", "other", "not a dict"]))
    if kind == "not a dict":
        return [("type", "http.response.start")]
    msg: dict[str, Any] = {}
    if kind == "start":
        msg["type"] = "http.response.start"
        if draw(st.integers(0, 9)):
            msg["status"] = draw(_STATUS)
        if draw(st.booleans()):
            msg["headers"] = draw(_HEADERS)
        trailers = draw(st.sampled_from([_ABSENT, _ABSENT, False, True, 0]))
        if trailers is not _ABSENT:
            msg["trailers"] = trailers
    elif kind == "body":
        msg["type"] = "http.response.body"
        body = draw(st.sampled_from([_ABSENT, *_BODIES]))
        if body is not _ABSENT:
            msg["body"] = body
        more = draw(st.sampled_from([_ABSENT, _ABSENT, False, True, 0, None]))
        if more is not _ABSENT:
            msg["more_body"] = more
    elif kind == "trailers":
        msg = {"type": "http.response.trailers", "headers": []}
    else:
        msg = {"type": draw(st.sampled_from(["http.response.bogus", "", 3]))}
    return msg


@st.composite
def _plausible(draw: st.DrawFn) -> list[Any]:
    """A start an app would send, then one or two bodies: what the fast path takes."""
    headers = draw(st.lists(st.sampled_from([(b"content-type", b"text/plain"), [b"x-a", b"1"]])))
    messages: list[Any] = [
        {
            "type": "http.response.start",
            "status": draw(st.sampled_from([200, 204, 404])),
            "headers": headers,
        }
    ]
    for _ in range(draw(st.integers(1, 2))):
        body: dict[str, Any] = {"type": "http.response.body"}
        if draw(st.integers(0, 4)):
            body["body"] = draw(st.sampled_from(_BODIES[:4]))
        more = draw(st.sampled_from([_ABSENT, False, True]))
        if more is not _ABSENT:
            body["more_body"] = more
        messages.append(body)
    return messages


async def _run(
    cls: type[ASGIRequest], state: dict[str, bool], messages: list[Any], watcher: bool = False
) -> tuple[list[Any], dict[str, Any], bytes]:
    """Send ``messages`` on a request of ``cls`` on a real socket; what each
    send did, the request's fields afterwards, and the bytes the peer got.
    With ``watcher``, a task waits in receive() meanwhile, as a disconnect
    watcher does."""
    loop = asyncio.get_running_loop()
    config = Config(app=apps.app, socket="/tmp/unused.sock", access_log=False)
    ctx = ServerContext(app=apps.app, config=config, state={})
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    try:
        transport, conn = await loop.connect_accepted_socket(lambda: FastCGIConnection(ctx), ours)
        req = cls(conn, 7, True)
        conn.requests[7] = req
        req.params = None
        req.scope = {"method": "GET", "path": "/"}
        req.stdin_done = state["stdin_done"]
        req.head_only = state["head_only"]
        if state["disconnected"]:
            req.disconnect()
        watch = None
        if watcher:

            async def receive_twice() -> Any:
                first = await req.receive()
                return first["type"], await req.receive()

            watch = asyncio.ensure_future(receive_twice())
            await asyncio.sleep(0)
        outcomes: list[Any] = []
        for message in messages:
            try:
                await req.send(message)
            except Exception as exc:
                outcomes.append((type(exc).__name__, str(exc)))
            else:
                outcomes.append("ok")
        for _ in range(3):  # the turn's end writes held bytes and pending heads
            await asyncio.sleep(0)
        fields = {name: getattr(req, name) for name in core.CORE_FIELDS}
        fields["conn"] = req.conn is conn
        for clock in ("started", "_stdin_seen", "_end_deadline"):  # set or not
            fields[clock] = fields[clock] > 0
        fields["ended"] = req.ended
        fields["app_error"] = req.app_error
        fields["waiting"] = len(req._waiters)
        if watch is not None:
            fields["watch"] = watch.result() if watch.done() else "waiting"
            watch.cancel()
        data = read_available(peer)
        transport.abort()
        await asyncio.sleep(0)
        return outcomes, fields, data
    finally:
        peer.close()


@settings(
    # Also under .ci/sanitize, whose profile asks for 1000: each example is
    # a loop and two sockets, slow under ASan, and 300 kill every mutant tried.
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    state=st.fixed_dictionaries(
        {"stdin_done": st.booleans(), "head_only": st.booleans(), "disconnected": st.booleans()}
    ),
    messages=_plausible() | st.lists(_message(), min_size=1, max_size=3),
    watcher=st.booleans(),
)
def test_send_fast_does_what_the_python_path_does(
    state: dict[str, bool], messages: list[Any], watcher: bool
) -> None:
    """Any sequence of messages, in any state: identical outcomes, fields and
    bytes, with a disconnect watcher waiting or not."""

    async def both() -> None:
        results = []
        for cls in (ASGIRequest, PythonOnly):
            results.append(await _run(cls, state, messages, watcher))
        fast, slow = results
        assert fast == slow

    asyncio.run(both())


def test_send_fast_takes_the_common_response() -> None:
    """A plain start and a small last body are done by the C send() itself
    (not declined to the Python path): each returns the finished awaitable,
    and the whole response is one write."""
    if not _HAVE_C:
        pytest.skip("the C speedups are not built (FCGI_ASGI_NO_EXTENSIONS)")
    from fcgi_asgi import _speedups

    taken: list[bool] = []

    class Counting(ASGIRequest):
        __slots__ = ()

        def send(self, message: Any) -> Any:
            result = super().send(message)
            taken.append(result is _speedups.SENT)
            return result

    state = {"stdin_done": True, "head_only": False, "disconnected": False}
    start = {"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]}
    body = {"type": "http.response.body", "body": b"hi"}
    outcomes, fields, data = asyncio.run(_run(Counting, state, [start, body]))
    assert taken == [True, True] and outcomes == ["ok", "ok"]
    assert fields["ended"] and fields["response_complete"] and fields["bytes_sent"] == 2
    head = b"Status: 200 OK\r\na: b\r\n\r\nhi"
    assert data == (
        b"\x01\x06\x00\x07"
        + len(head).to_bytes(2, "big")
        + b"\x00\x00"
        + head
        + b"\x01\x06\x00\x07\x00\x00\x00\x00"
        + b"\x01\x03\x00\x07\x00\x08\x00\x00"
        + bytes(8)
    )


def test_the_finished_awaitable_behaves_as_a_finished_coroutine() -> None:
    """What send() returns for a message done at once: awaiting it gives None,
    and it is a Coroutine that asyncio and anyio accept (an app may hand
    send(...) to create_task or start_soon), as a finished coroutine."""
    if not _HAVE_C:
        pytest.skip("the C speedups are not built (FCGI_ASGI_NO_EXTENSIONS)")
    import collections.abc

    from fcgi_asgi import _speedups

    sent = _speedups.SENT
    assert isinstance(sent, collections.abc.Coroutine)
    assert asyncio.iscoroutine(sent)
    with pytest.raises(StopIteration):
        sent.send(None)
    with pytest.raises(ValueError, match="thrown"):
        sent.throw(ValueError("thrown"))
    with pytest.raises(KeyError):
        sent.throw(KeyError)
    with pytest.raises(TypeError):
        sent.throw(3)  # type: ignore[arg-type]
    assert sent.close() is None
    with pytest.raises(TypeError):
        type(sent)()

    async def use() -> list[Any]:
        results = [await sent, await asyncio.create_task(sent)]
        results.append(await asyncio.wait_for(sent, 1))
        results.extend(await asyncio.gather(sent, sent))
        return results

    assert asyncio.run(use()) == [None] * 5


async def _spawning_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Hands its send() calls to tasks, as an app may: create_task, gather,
    wait_for and anyio's start_soon, each with a message send() does at once."""
    if scope["type"] != "http":
        return
    import anyio

    start = {"type": "http.response.start", "status": 200, "headers": [(b"x-via", b"task")]}
    how = scope["path"].strip("/")
    body = {"type": "http.response.body", "body": how.encode()}
    if how == "create_task":
        await asyncio.create_task(send(start))
        await asyncio.create_task(send(body))
    elif how == "gather":
        await asyncio.gather(send(start))
        await asyncio.gather(send(body))
    elif how == "wait_for":
        await asyncio.wait_for(send(start), 5)
        await asyncio.wait_for(send(body), 5)
    else:
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, start)
        async with anyio.create_task_group() as tg:
            tg.start_soon(send, body)


@pytest.mark.parametrize("how", ["create_task", "gather", "wait_for", "start_soon"])
async def test_an_app_may_hand_send_to_a_task(serve: Serve, how: str) -> None:
    """Through a real socket, the C send()'s path: the response arrives
    whole, twice on one connection."""
    server = await serve(_spawning_app)
    async with await connect(server) as client:
        for _ in range(2):
            r = await asyncio.wait_for(client.request("GET", f"/{how}"), 5)
            assert r.status == 200 and r.body == how.encode()
            assert r.header("x-via") == "task"


async def _threaded_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Calls send() in a worker thread and has the loop run what it returns
    (run_coroutine_threadsafe); the body says what send() returned there."""
    if scope["type"] != "http":
        return
    import inspect

    loop = asyncio.get_running_loop()
    start = {"type": "http.response.start", "status": 200, "headers": []}

    def in_thread() -> None:
        kinds = []
        for message in (start, None):
            if message is None:
                message = {"type": "http.response.body", "body": " ".join(kinds).encode()}
            result = send(message)
            kinds.append("coroutine" if inspect.iscoroutine(result) else type(result).__name__)
            asyncio.run_coroutine_threadsafe(result, loop).result(5)

    await loop.run_in_executor(None, in_thread)


async def test_send_from_another_thread_runs_on_the_loop(serve: Serve) -> None:
    """send() called outside the loop's thread does nothing there: it returns
    the Python coroutine, which the loop then runs (the fast path would
    write to the transport from the wrong thread)."""
    server = await serve(_threaded_app)
    async with await connect(server) as client:
        r = await asyncio.wait_for(client.request("GET", "/"), 10)
    assert r.status == 200
    assert r.body == b"coroutine"  # the start's; the body's own is not in it
