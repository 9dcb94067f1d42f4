"""The C speedups stay memory-safe, and agree with the Python rules, whatever a
caller in the same process passes them (issue 16): the functions are importable.

Each reproducer runs in a subprocess, so that a crash fails its test and not
the run; .ci/sanitize runs this file again with the extension built under
AddressSanitizer and UBSan, where a use-after-free is reported even when it
does not crash.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if os.environ.get("FCGI_ASGI_NO_EXTENSIONS"):
    pytest.skip("FCGI_ASGI_NO_EXTENSIONS is set: no C speedups to check", allow_module_level=True)

# Lines every snippet starts with: the module, the Python references, and
# outcome(), which names what a call returned or raised.
PRELUDE = """
import gc, sys
from fcgi_asgi import _speedups
from fcgi_asgi.protocol.records import Record, decode_params_py, encode_pairs, encode_record
from fcgi_asgi.asgi.scope import ASGI_VERSION, build_scope, request_headers_py

def outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return ("raised", type(exc).__name__)
"""


def run_snippet(code: str, env: dict[str, str] | None = None) -> str:
    """Run PRELUDE + code in a fresh interpreter; its last line of output."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stderr[-4000:]}"
    return proc.stdout.strip().splitlines()[-1]


# -- 1. request_headers held borrowed keys and values across Python code ----------


def test_request_headers_dict_cleared_by_a_key_eq() -> None:
    """The issue's reproducer: a key's __eq__ (run by the HTTP_CONTENT_TYPE
    lookup) empties the dict; C raised nothing and read freed bytes."""
    out = run_snippet(
        """
        class K(bytes):
            def __hash__(self): return hash(b"CONTENT_TYPE")
            def __eq__(self, o): p.clear(); return False
        def make():
            global p
            p = {bytes(bytearray(b"HTTP_CONTENT_TYPE")): bytes(bytearray(b"text/plain")),
                 K(b"zz"): b"x"}
            return p
        print(outcome(_speedups.request_headers, make()), outcome(request_headers_py, make()))
        """
    )
    assert out == "('raised', 'RuntimeError') ('raised', 'RuntimeError')"


def test_request_headers_dict_cleared_by_a_gc_callback() -> None:
    """Plain bytes keys: a collection started by an allocation inside the call
    runs a gc callback that empties the dict. Python 3.11 collects inside the
    allocation: before the C code reads the dict (it sees an empty one) or
    while it walks it (it sees the change and raises); 3.12 and later wait
    for the eval loop, so the call returns the headers of the dict as it was.
    Each first-generation threshold from 1 to 8 lands the collection at
    another allocation of the call."""
    out = run_snippet(
        """
        def make():
            return {bytes(bytearray(b"HTTP_X_%d" % i)): bytes(bytearray(b"v%d" % i))
                    for i in range(64)}
        expected = request_headers_py(make())
        armed = [False]
        def cb(phase, info):
            if phase == "start" and armed[0]:
                armed[0] = False
                p.clear()
        gc.callbacks.append(cb)
        seen = []
        for threshold in range(1, 9):
            p = make()
            # From an empty first generation, nothing allocated until the C
            # call: where the collection lands depends on the call alone.
            gc.collect()
            gc.set_threshold(threshold)
            armed[0] = True
            try:
                got = ("ok", _speedups.request_headers(p))
            except RuntimeError:
                got = ("raised", "RuntimeError")
            gc.set_threshold(700)
            if armed[0]:
                got = ("no collection", None)
            elif got == ("ok", expected):
                got = ("ok, as it was", None)
            elif got == ("ok", []):
                got = ("ok, emptied first", None)
            seen.append(got)
        gc.callbacks.remove(cb)
        print(sorted(set(seen)))
        """
    )
    if sys.version_info < (3, 12):
        # Both sides of the walk, and nothing else (a crash, a mangled list).
        assert out == "[('ok, emptied first', None), ('raised', 'RuntimeError')]", out
    else:
        assert out == "[('ok, as it was', None)]", out


def test_request_headers_takes_what_python_takes() -> None:
    """bytes subclasses and values of any type: C skipped them, Python
    includes them; a name of another type raises in both."""
    out = run_snippet(
        """
        class B(bytes):
            pass
        cases = [
            {b"HTTP_X": "text", B(b"HTTP_Y"): b"1", b"CONTENT_TYPE": bytearray(b"t"),
             b"CONTENT_LENGTH": bytearray(b"12"), "HTTP_STR": b"s", B(b"CONTENT_TYPE"): b""},
            {b"HTTP_CONTENT_LENGTH": bytearray(b"7"), b"HTTP_CONTENT_TYPE": 0},
            {b"CONTENT_TYPE": 0, b"CONTENT_LENGTH": "12", b"HTTP_A_B": None},
            {b"CONTENT_LENGTH": 12},
            {1: b"x"},
        ]
        print([outcome(_speedups.request_headers, c) == outcome(request_headers_py, c)
               for c in cases])
        """
    )
    assert out == "[True, True, True, True, True]"


# -- 2. parse_records took any tuple subclass --------------------------------------


def test_parse_records_refuses_a_struct_sequence() -> None:
    """tp_alloc of three items for time.struct_time (eleven fields): the
    record's cleanup read past them and crashed."""
    out = run_snippet(
        """
        import time, collections
        blob = encode_record(6, 1, b"abc") * 4
        print(outcome(_speedups.parse_records, blob, time.struct_time)[0],
              outcome(_speedups.parse_records, blob, type(sys.flags))[0],
              outcome(_speedups.parse_records, blob, int)[0],
              _speedups.parse_records(blob, Record)[0][0] == Record(6, 1, b"abc"),
              _speedups.parse_records(blob, collections.namedtuple("R", "a b c"))[1],
              type(_speedups.parse_records(blob, type("T", (tuple,), {}))[0][0]).__name__)
        """
    )
    assert out == "raised raised raised True 44 T"


# -- 3. raw pointers into a buffer that could move during the call ----------------

# A ctypes array whose memory a gc callback moves (ctypes.resize ignores the
# buffer exported to the caller) and whose old block it fills with 0xff.
MOVING_BUFFER = """
import ctypes
def moving(blob):
    buf = (ctypes.c_char * len(blob)).from_buffer_copy(blob)
    junk = []
    armed = [False]
    def cb(phase, info):
        if phase == "start" and armed[0]:
            armed[0] = False
            ctypes.resize(buf, 1 << 24)
            junk.extend(bytearray(b"\\xff") * len(blob) for _ in range(16))
    gc.callbacks.append(cb)
    return buf, armed

def call_while_moving(fn, blob, *args):
    for arg in ("array", "memoryview"):
        buf, armed = moving(blob)
        data = buf if arg == "array" else memoryview(buf)
        call_args = (data, *args)
        # From an empty first generation and no allocation before the C call
        # (see test_request_headers_dict_cleared_by_a_gc_callback): the move
        # comes inside the call, never before it, where the memoryview would
        # show freed memory to whoever reads it.
        gc.collect()
        gc.set_threshold(1)
        armed[0] = True
        try:
            got = ("ok", fn(*call_args))
        except Exception as exc:
            got = ("raised", type(exc).__name__)
        gc.set_threshold(700)
        yield got
"""


def test_parse_records_input_moved_by_a_gc_callback() -> None:
    out = run_snippet(
        MOVING_BUFFER
        + textwrap.dedent(
            """
        blob = b"".join(encode_record(6, 1, bytes([65 + i % 26]) * 600) for i in range(40))
        expected = ("ok", _speedups.parse_records(blob, Record))
        print([got == expected for got in call_while_moving(_speedups.parse_records, blob, Record)])
        """
        )
    )
    assert out == "[True, True]"


def test_scope_from_params_input_moved_by_a_gc_callback() -> None:
    out = run_snippet(
        MOVING_BUFFER
        + textwrap.dedent(
            """
        pairs = [(b"REQUEST_URI", b"/a/" + b"p" * 900 + b"?q=1"), (b"REMOTE_ADDR", b"10.0.0.1"),
                 (b"SERVER_NAME", b"example.org")]
        pairs += [(b"HTTP_X_%d" % i, b"v" * 200) for i in range(60)]
        blob = encode_pairs(pairs)
        expected = ("ok", build_scope(decode_params_py(blob), None, None, None))
        print([got == expected for got in call_while_moving(
            _speedups.scope_from_params, blob, ASGI_VERSION, None, None)])
        """
        )
    )
    assert out == "[True, True]"


# -- 4. strncasecmp followed LC_CTYPE -----------------------------------------------


def test_access_line_scope_cleared_by_a_key_eq() -> None:
    """A key's __eq__, run by the lookup of "method", empties the scope: the
    client found before it stays owned, and the line falls back to Python,
    which raises KeyError as the Python renderer does."""
    out = run_snippet(
        """
        from fcgi_asgi.accesslog import render_default_py
        class K(str):
            def __hash__(self): return hash("method")
            def __eq__(self, o):
                if armed: s.clear()
                return False
        armed = False
        s = {"client": (str(bytearray(b"10.0.0.1"), "ascii"), 1 << 20), K("zz"): 1,
             "method": "GET", "raw_path": b"/", "query_string": b"", "http_version": "1.1"}
        armed = True
        line = _speedups.access_line(s, 200)
        print(line, outcome(render_default_py, s, 200, 0, 0.0, 1))
        """
    )
    assert out == "None ('raised', 'KeyError')"


def test_send_fast_survives_a_connection_that_empties_the_request() -> None:
    """conn.write_last() deletes the request's fields and drops the connection;
    a key's __eq__ empties the message mid-lookup: send_fast keeps its own
    references, reads no field it freed, and declines what it cannot see."""
    out = run_snippet(
        """
        from fcgi_asgi.protocol import head  # the status lines
        class Ctx:
            pending_heads = []
            turn_end_due = True
        class Loop:
            def time(self): return 1.0
        class Conn:
            ctx = Ctx()
            loop = Loop()
            def write_last(self, data):
                global seen
                seen = len(data)
                for name in ("unsent_head", "_waiters", "conn", "bytes_sent", "request_id"):
                    delattr(req, name)
                gc.collect()
            def request_ended(self, r):
                r.ended = True
        class Req(_speedups.RequestCore):
            __slots__ = ("ended",)
            def wake(self): pass
        req = Req(Conn(), 1, True)
        req.request_id, req.status, req.bytes_sent = 1, 0, 0
        req.unsent_head = None
        req.response_started = req.response_complete = req.disconnected = False
        req.head_only = req.end_held = req._stdout_sent = False
        req.stdin_done = True
        req._waiters = [None]
        started = req.send_fast({"type": "http.response.start", "status": 200})
        sent = req.send_fast({"type": "http.response.body", "body": bytes(bytearray(b"hi"))})
        class K(str):
            def __hash__(self): return hash("status")
            def __eq__(self, o):
                if armed: m.clear()
                return False
        armed = False
        m = {"type": "http.response.start", K("zz"): 1, "status": 200}
        armed = True
        req2 = Req(Conn(), 2, True)
        print(started, sent, seen, req.ended, req2.send_fast(m), req2.unsent_head, req2.status)
        """
    )
    assert out == "True True 52 True False None 0"  # 8 + 18 + 2 + 24 bytes


def test_request_core_init_fails_cleanly_and_runs_twice() -> None:
    """__init__ with a clock that raises leaves the fields unset; a second
    __init__ releases what the first set; anything but three positional
    arguments is a TypeError."""
    out = run_snippet(
        """
        class Loop:
            def __init__(self, fail): self.fail = fail
            def time(self):
                if self.fail: raise RuntimeError("no clock")
                return 2.5
        class Conn:
            def __init__(self, fail=False): self.loop = Loop(fail)
        class Req(_speedups.RequestCore):
            __slots__ = ()
        req = Req(Conn(), 1, True)
        first = (req.request_id, req.started, list(req.body), req._waiters, req.params)
        body = req.body
        req.__init__(Conn(), 2, False)
        again = (req.request_id, req.keep_conn, req.body is body, sys.getrefcount(body))
        print(first, again, outcome(Req, Conn(True), 1, True),
              outcome(lambda: Req(Conn(), 1, keep_conn=True)), outcome(Req, Conn(), 1))
        """
    )
    assert out == (
        "(1, 2.5, [], [], b'') (2, False, False, 2) ('raised', 'RuntimeError') "
        "('raised', 'TypeError') ('raised', 'TypeError')"
    )


@pytest.fixture(scope="module")
def turkish_locale(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tr_TR.ISO-8859-9 built from the Debian `locales` sources (.ci/run installs them)."""
    if shutil.which("localedef") is None or not Path("/usr/share/i18n/locales/tr_TR").exists():
        pytest.skip("no localedef or tr_TR locale source: install Debian's `locales`")
    locpath = tmp_path_factory.mktemp("locale")
    subprocess.run(
        ["localedef", "-i", "tr_TR", "-f", "ISO-8859-9", str(locpath / "tr_TR.ISO-8859-9")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return locpath


def test_server_software_compare_ignores_the_locale(turkish_locale: Path) -> None:
    """In Turkish, tolower(0xDD 'I with dot') is 'i' and tolower('I') is not:
    strncasecmp took b"l\\xddghttpd" for lighttpd and b"LIGHTTPD" for another
    server, so the C scope's root_path differed from the Python rule's."""
    out = run_snippet(
        """
        import locale
        locale.setlocale(locale.LC_CTYPE, "tr_TR.ISO-8859-9")
        same = []
        for software in (b"l\\xddghttpd/1.4", b"LIGHTTPD/1.4", b"lighttpd/1.4.69"):
            blob = encode_pairs([(b"REQUEST_URI", b"/app/x"), (b"SCRIPT_NAME", b"/app"),
                                 (b"PATH_INFO", b"/x"), (b"SERVER_SOFTWARE", software),
                                 (b"HTTPS", b"ON")])
            c = _speedups.scope_from_params(blob, ASGI_VERSION, None, None)
            same.append(c is None or c == build_scope(decode_params_py(blob)))
        print(same)
        """,
        env={"LOCPATH": str(turkish_locale)},
    )
    assert out == "[True, True, True]"


# -- 5. the smaller differences from the Python rules -------------------------------


def test_state_that_is_not_a_dict_is_copied_like_python_does() -> None:
    out = run_snippet(
        """
        import types, collections
        blob = encode_pairs([(b"REQUEST_URI", b"/")])
        same = []
        for state in (types.MappingProxyType({"a": 1}), collections.OrderedDict(b=2), 3):
            c = outcome(_speedups.scope_from_params, blob, ASGI_VERSION, state, None)
            py = outcome(build_scope, decode_params_py(blob), None, state, None)
            same.append(c == py and (c[0] == "raised"
                                     or type(c[1]["state"]) is type(py[1]["state"])))
        print(same)
        """
    )
    assert out == "[True, True, True]"


def test_any_bytes_source_python_takes_is_taken() -> None:
    """Non-contiguous memoryviews and non-buffer objects: the Python
    versions copy them with bytes(), C raised."""
    out = run_snippet(
        """
        pairs = [(b"REQUEST_URI", b"/x?y"), (b"HTTP_HOST", b"h")]
        blob = encode_pairs(pairs)
        strided = memoryview(bytes(x for b in blob for x in (b, 0)))[::2]
        records = encode_record(6, 1, b"abc") + encode_record(6, 1)
        rstrided = memoryview(bytes(x for b in records for x in (b, 0)))[::2]
        same = [
            outcome(_speedups.decode_params, strided) == outcome(decode_params_py, strided),
            outcome(_speedups.decode_params, list(blob)) == outcome(decode_params_py, list(blob)),
            outcome(_speedups.decode_params, "str") == outcome(decode_params_py, "str"),
            _speedups.scope_from_params(strided, ASGI_VERSION, None, None)
            == build_scope(decode_params_py(blob)),
            _speedups.scope_from_params(list(blob), ASGI_VERSION, None, None)
            == build_scope(decode_params_py(blob)),
            _speedups.parse_records(rstrided, Record) == _speedups.parse_records(records, Record),
            _speedups.parse_records(list(records), Record)[1] == len(records),
        ]
        print(same)
        """
    )
    assert out == "[True, True, True, True, True, True, True]"


# -- 6. single-phase init ----------------------------------------------------------


def test_module_state_is_per_module_object() -> None:
    """Multi-phase init: a second load of the extension gets its own module
    object and state (single-phase init handed back copies of the same
    functions), and an isolated subinterpreter can import it where the
    interpreter has them (3.12 and later)."""
    out = run_snippet(
        """
        import importlib.util
        spec = _speedups.__spec__
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
        params = {b"HTTP_X_A": b"1"}
        checks = [other.request_headers is not _speedups.request_headers,
                  other.request_headers.__self__ is other,
                  other.request_headers(params) == _speedups.request_headers(params)]
        try:
            import _interpreters as interpreters  # 3.13
        except ImportError:
            try:
                import _xxsubinterpreters as interpreters  # 3.12
            except ImportError:
                interpreters = None
        if interpreters is not None:
            sub = interpreters.create()
            err = interpreters.run_string(sub, "import fcgi_asgi._speedups as m; "
                                          "assert m.request_headers({b'HTTP_A': b'1'})")
            interpreters.destroy(sub)
            checks.append(err is None)
        print(all(checks), len(checks))
        """
    )
    assert out.startswith("True")
