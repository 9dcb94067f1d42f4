"""A Flask (WSGI) app, and the same app made ASGI with a2wsgi.

``app`` is what a newcomer gives the gateway first (an error at start that
names the fix); ``asgi_app`` is the fix, served behind nginx in the tests.
"""

from __future__ import annotations

import os

from a2wsgi import WSGIMiddleware
from flask import Flask, jsonify, request, url_for

app = Flask(__name__)


@app.get("/items/<int:item_id>")
def item(item_id: int) -> object:
    return jsonify(
        item_id=item_id,
        url=url_for("item", item_id=item_id),
        script_name=request.environ["SCRIPT_NAME"],
        path_info=request.environ["PATH_INFO"],
        pid=os.getpid(),
    )


@app.post("/items")
def create() -> object:
    data = request.get_json()
    return jsonify(created=data, length=request.content_length), 201


@app.get("/missing")
def missing() -> object:
    return "gone", 404


asgi_app = WSGIMiddleware(app)  # type: ignore[arg-type]
