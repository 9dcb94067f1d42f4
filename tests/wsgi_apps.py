"""WSGI apps for the tests: plain WSGI, Flask and Django.

Every app the tests serve is wrapped in :func:`wsgiref.validate.validator`,
which raises inside the gateway (and so fails the request with a 500) when
the gateway breaks PEP 3333: the environ, ``wsgi.input``, ``start_response``
or the handling of the iterable. What an app observed in its thread (its
iterable closed, say) is reported back over HTTP through ``/events/TOKEN``.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

import django
from django.conf import settings

# token -> what the app saw; read through /events/TOKEN.
EVENTS: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()
_MAX_WAIT = 30.0  # every wait in an app is bounded
CHUNK = 64 << 10


#: Weak references to request objects (``/remember``).
REMEMBERED: list[weakref.ref[Any]] = []


def _event(token: str, **values: Any) -> None:
    with _LOCK:
        EVENTS.setdefault(token, {}).update(values)


# -- plain WSGI ---------------------------------------------------------------------


class _Marker:
    """Something a weak reference can point to."""


def _plain(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
        return [b"Hello, world!"]
    if path == "/remember":
        # A weak reference to an object only the gateway's request object
        # holds (the request has no __weakref__ slot): one put in its scope,
        # reached through wsgi.input under the validator's wrapper, for the
        # reference-cycle test.
        stream = environ["wsgi.input"]
        fetch = getattr(stream, "input", stream)._fetch
        marker = _Marker()
        fetch.__self__.scope["remembered"] = marker
        REMEMBERED.append(weakref.ref(marker))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"remembered"]
    if path == "/thread":
        # Which thread runs the app, and what it got of the body.
        size = 0
        while chunk := environ["wsgi.input"].read(65536):
            size += len(chunk)
        name = threading.current_thread().name
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{name} {size}".encode()]
    if path == "/environ":
        keys = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "REQUEST_URI", "REQUEST_METHOD")
        keys += ("CONTENT_TYPE", "CONTENT_LENGTH", "SERVER_NAME", "SERVER_PORT", "HTTP_X_TEST")
        body = repr({k: environ.get(k) for k in keys} | {"scheme": environ["wsgi.url_scheme"]})
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body.encode()]
    if path.startswith("/café") or path.startswith("/caf\xc3\xa9"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [repr((environ["SCRIPT_NAME"], environ["PATH_INFO"])).encode()]
    if path == "/digest":
        # Reads in small pieces and by lines: wsgi.input streams STDIN.
        h = hashlib.sha256()
        n = 0
        stream = environ["wsgi.input"]
        first = stream.readline()
        h.update(first)
        n += len(first)
        while chunk := stream.read(10000):
            h.update(chunk)
            n += len(chunk)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{n} {h.hexdigest()}".encode()]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and ", b"returned"]
    if path == "/stream":
        size = int(environ["QUERY_STRING"] or "0")
        start_response(
            "200 OK",
            [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))],
        )
        return _Stream(size, environ.get("HTTP_X_TOKEN", ""))
    if path == "/events":
        token = environ["QUERY_STRING"]
        with _LOCK:
            body = repr(EVENTS.get(token, {})).encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    if path == "/exc-info":
        try:
            raise ValueError("failed before the body")
        except ValueError:
            start_response("200 OK", [("Content-Type", "text/plain")])
            start_response(
                "503 Service Unavailable",
                [("Content-Type", "text/plain"), ("X-Replaced", "1")],
                sys.exc_info(),
            )
        return [b"replaced"]
    if path == "/boom":
        raise RuntimeError("the WSGI app failed on purpose")
    if path == "/sys-exit":
        sys.exit(3)
    if path == "/keyboard-interrupt":
        raise KeyboardInterrupt("raised by the WSGI app")
    if path == "/hop-by-hop":
        start_response(
            "200 OK",
            [("Content-Type", "text/plain"), ("Connection", "close, X-Hop"), ("X-Hop", "1")],
        )
        return [b"one ", b"two"]
    if path == "/file":
        import io

        wrapper = environ["wsgi.file_wrapper"]
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return wrapper(io.BytesIO(b"f" * 100_000), 8192)
    if path == "/sleep":
        # Reports how many requests run in app threads at once.
        token = environ["QUERY_STRING"]
        with _LOCK:
            ev = EVENTS.setdefault(token, {"running": 0, "most": 0})
            ev["running"] += 1
            ev["most"] = max(ev["most"], ev["running"])
        time.sleep(0.3)
        with _LOCK:
            ev["running"] -= 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [method.encode()]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]


class _Stream:
    """``size`` bytes in 64 KiB pieces; records how far it got and its close()."""

    def __init__(self, size: int, token: str) -> None:
        self.size = size
        self.token = token
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        block = hashlib.sha256(b"wsgi").digest() * (CHUNK // 32)
        while self.sent < self.size:
            piece = block[: min(CHUNK, self.size - self.sent)]
            self.sent += len(piece)
            if self.token:
                _event(self.token, sent=self.sent)
            yield piece

    def close(self) -> None:
        if self.token:
            _event(self.token, closed=True, sent=self.sent)


plain_app = validator(_plain)
#: Unwrapped: the auto interface detection sees a WSGI signature.
plain_app_unwrapped = _plain


def stream_pattern(size: int) -> bytes:
    """What ``/stream?SIZE`` sends."""
    block = hashlib.sha256(b"wsgi").digest() * (CHUNK // 32)
    whole, rest = divmod(size, CHUNK)
    return block * whole + block[:rest]


# -- Flask --------------------------------------------------------------------------


def _make_flask() -> Any:
    from flask import Flask, Response, abort, request, session, stream_with_context, url_for

    app = Flask("wsgi_flask")
    app.secret_key = secrets.token_hex(16)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return {
            "item_id": item_id,
            "url": url_for("item", item_id=item_id),
            "external": url_for("item", item_id=item_id, _external=True),
            "script_root": request.script_root,
            "path": request.path,
        }

    @app.get("/form")
    def form() -> Any:
        session["csrf"] = token = secrets.token_hex(8)
        return {"csrf": token}

    @app.post("/form")
    def submit() -> Any:
        if not session.get("csrf") or request.form.get("csrf") != session["csrf"]:
            abort(403)
        return {"name": request.form["name"]}

    @app.post("/upload")
    def upload() -> Any:
        f = request.files["file"]
        data = f.read()
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    @app.get("/stream")
    def stream() -> Any:
        def generate() -> Iterator[bytes]:
            for i in range(5):
                yield f"line {i}\n".encode()

        return Response(stream_with_context(generate()), mimetype="text/plain")

    @app.get("/cookies")
    def cookies() -> Any:
        resp = Response("cookies")
        resp.set_cookie("a", "1")
        resp.set_cookie("b", "2")
        return resp

    @app.get("/cookies/echo")
    def cookie_echo() -> Any:
        return dict(request.cookies)

    return app


def _checked(app: Any) -> Any:
    """``validator(app)`` for the gateway's side only: the environ, start_response,
    the iterable. Frameworks read ``wsgi.input`` with ``read()`` and no size
    (werkzeug trusts ``wsgi.input_terminated``), which the validator's input
    wrapper rejects as an app error, so the app gets the gateway's stream."""

    def unwrap_input(environ: dict[str, Any], start_response: Any) -> Any:
        environ["wsgi.input"] = environ["wsgi.input"].input
        return app(environ, start_response)

    return validator(unwrap_input)


flask_app_unwrapped = _make_flask()
flask_app = _checked(flask_app_unwrapped)


# -- Django -------------------------------------------------------------------------

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY=secrets.token_hex(16),
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
        INSTALLED_APPS=[],
        DATA_UPLOAD_MAX_MEMORY_SIZE=None,
        FILE_UPLOAD_MAX_MEMORY_SIZE=10 << 20,
        USE_TZ=True,
    )
    django.setup()

from django.http import (  # noqa: E402
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.middleware.csrf import get_token  # noqa: E402
from django.urls import path, reverse  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def dj_item(request: HttpRequest, item_id: int) -> HttpResponse:
    return JsonResponse(
        {
            "item_id": item_id,
            "url": reverse("item", args=[item_id]),
            "absolute": request.build_absolute_uri(reverse("item", args=[item_id])),
            "script_name": request.META["SCRIPT_NAME"],
            "path": request.path,
            "path_info": request.path_info,
        }
    )


def dj_form(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return JsonResponse({"name": request.POST["name"]})
    return JsonResponse({"csrf": get_token(request)})


@csrf_exempt
def dj_upload(request: HttpRequest) -> HttpResponse:
    data = request.FILES["file"].read()
    return JsonResponse({"size": len(data), "sha256": hashlib.sha256(data).hexdigest()})


def dj_stream(request: HttpRequest) -> HttpResponse:
    return StreamingHttpResponse(f"line {i}\n".encode() for i in range(5))


def dj_cookies(request: HttpRequest) -> HttpResponse:
    resp = HttpResponse("cookies")
    resp.set_cookie("a", "1")
    resp.set_cookie("b", "2")
    return resp


def dj_cookie_echo(request: HttpRequest) -> HttpResponse:
    return JsonResponse(dict(request.COOKIES))


urlpatterns = [
    path("items/<int:item_id>", dj_item, name="item"),
    path("form", dj_form),
    path("upload", dj_upload),
    path("stream", dj_stream),
    path("cookies", dj_cookies),
    path("cookies/echo", dj_cookie_echo),
]


def _make_django() -> Any:
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


django_app = _checked(_make_django())
