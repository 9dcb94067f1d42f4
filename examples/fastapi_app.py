"""A FastAPI app with a JSON endpoint validating a pydantic body.

fcgi-asgi examples.fastapi_app:app --socket /tmp/fastapi.sock
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None) -> dict[str, object]:
    return {"item_id": item_id, "q": q}


@app.post("/items")
async def create_item(item: Item) -> dict[str, object]:
    return {"name": item.name, "total": item.price * 2, "tags": item.tags}
