import meshlens.auto  # noqa: F401  (the one line a service adds)
import logging
import os

import httpx
from fastapi import FastAPI, HTTPException

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("storefront")
app = FastAPI(title="storefront")
ORDERS = os.environ["ORDERS_URL"]
# One client per worker: connections are reused across requests.
orders = httpx.AsyncClient(base_url=ORDERS, timeout=5)


@app.get("/health")
async def health() -> str:
    return "ok"


@app.post("/checkout/{product_id}")
async def checkout(product_id: int) -> dict[str, object]:
    """The shop's BFF: places the order; payment happens behind Kafka."""
    placed = await orders.post("/orders", json={"product": product_id})
    if placed.status_code >= 500:
        log.error("orders failed for product %d", product_id)
        raise HTTPException(status_code=502, detail="orders unavailable")
    log.info("checked out product %d", product_id)
    return placed.json()
