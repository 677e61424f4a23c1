import meshlens.auto  # noqa: F401  (the one line a service adds)
import asyncio
import gc
import logging
import os
import time

import httpx
from fastapi import FastAPI, HTTPException
from opentelemetry import trace


logging.basicConfig(level=logging.INFO)
log = logging.getLogger("fastapi_app")
app = FastAPI()


@app.get("/health")
async def health():
    return "ok"


@app.get("/items/{item_id}")
async def item(item_id: int):
    log.info("fetched item %d", item_id)
    return {"id": item_id, "pid": os.getpid()}


@app.get("/fail")
async def fail():
    raise HTTPException(status_code=500, detail="boom")


@app.get("/block/{ms}")
async def block(ms: int):
    """Blocks the event loop: what the event-loop lag metric is for."""
    time.sleep(ms / 1000)
    return "blocked"


@app.get("/sleep/{ms}")
async def sleep(ms: int):
    await asyncio.sleep(ms / 1000)
    return "slept"


@app.get("/call")
async def call(url: str):
    async with httpx.AsyncClient() as client:
        response = await client.get(url, timeout=10)
    return {"status": response.status_code, "body": response.text}


@app.get("/spans-alive")
async def spans_alive():
    """How many span objects this process still holds (this request's own among them)."""
    return sum(1 for obj in gc.get_objects() if isinstance(obj, trace.Span))
