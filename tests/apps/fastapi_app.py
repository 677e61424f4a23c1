import meshlens.auto  # noqa: F401  (the one line a service adds)
import asyncio
import logging
import os
import time

import httpx
from fastapi import FastAPI, HTTPException


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
