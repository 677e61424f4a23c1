"""A FastAPI service for the pre-fork tests: only the import line added."""

import meshlens.auto  # noqa: F401  (the one line a service adds)



import os

from fastapi import FastAPI

app = FastAPI()


@app.get("/health")
async def health():
    return "ok"


@app.get("/items/{item_id}")
async def item(item_id: int):
    return {"id": item_id, "pid": os.getpid()}
