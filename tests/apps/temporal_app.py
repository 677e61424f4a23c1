import meshlens.auto  # noqa: F401  (the one line a service adds)

import os
import uuid

from fastapi import FastAPI
from temporal_workflows import TASK_QUEUE, Fetch
from temporalio.client import Client, WorkflowFailureError

app = FastAPI()
_client: Client | None = None


async def client() -> Client:
    global _client
    if _client is None:
        _client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    return _client


@app.get("/health")
def health():
    return "ok"


@app.get("/run")
async def run(url: str):
    """Starts the workflow inside this request and waits for its result."""
    try:
        status = await (await client()).execute_workflow(Fetch.run, url, id=f"fetch-{uuid.uuid4().hex}",
                                                         task_queue=TASK_QUEUE)
    except WorkflowFailureError:
        return {"failed": True}
    return {"failed": False, "status": status}
