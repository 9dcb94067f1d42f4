"""A FastAPI app with a large import set, for ``preload_pss.py``.

Many routes with pydantic models (as a large API has) on top of FastAPI,
pydantic, httpx and a broad slice of the standard library: most of a
worker's memory is code and objects built at import, which ``--preload``
lets workers share.
"""

from __future__ import annotations

import asyncio  # noqa: F401
import csv  # noqa: F401
import decimal  # noqa: F401
import email.mime.multipart  # noqa: F401
import http.cookies  # noqa: F401
import json  # noqa: F401
import logging.handlers  # noqa: F401
import sqlite3  # noqa: F401
import statistics  # noqa: F401
import urllib.request  # noqa: F401
import uuid  # noqa: F401
import xml.etree.ElementTree  # noqa: F401
import zoneinfo  # noqa: F401

import httpx  # noqa: F401
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, Field, create_model

ROUTES = 300

app = FastAPI(title="big")
app.add_middleware(CORSMiddleware, allow_origins=["https://example.org"])


class Address(BaseModel):
    street: str
    city: str
    postcode: str = Field(pattern=r"^[0-9A-Z -]{3,10}$")


def _add_route(i: int) -> None:
    model = create_model(
        f"Item{i}",
        id=(int, ...),
        name=(str, Field(max_length=200)),
        tags=(list[str], []),
        price=(float, 0.0),
        address=(Address | None, None),
    )

    async def read(item_id: int, q: str | None = None) -> BaseModel:
        return model(id=item_id, name=q or f"item {i}")

    async def write(item: model) -> BaseModel:  # type: ignore[valid-type]
        return item  # type: ignore[no-any-return]

    app.get(f"/r{i}/{{item_id}}", response_model=model)(read)
    app.post(f"/r{i}", response_model=model)(write)


for _i in range(ROUTES):
    _add_route(_i)


@app.get("/")
async def root() -> dict[str, str]:
    return {"hello": "world"}
