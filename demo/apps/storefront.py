import meshlens.auto  # noqa: F401  (the one line a service adds)
import logging
import os

import httpx
from fastapi import FastAPI, HTTPException


logging.basicConfig(level=logging.INFO)
log = logging.getLogger("storefront")
app = FastAPI(title="storefront")
INVENTORY = os.environ.get("INVENTORY_URL", "http://127.0.0.1:8001")
# One client for the process: connections are reused across requests.
inventory = httpx.AsyncClient(base_url=INVENTORY, timeout=5)


@app.get("/health")
async def health() -> str:
    return "ok"


@app.get("/products/{product_id}")
async def product(product_id: int) -> dict[str, object]:
    stock = await inventory.get(f"/stock/{product_id}")
    if stock.status_code >= 500:
        log.error("inventory failed for product %d", product_id)
        raise HTTPException(status_code=502, detail="inventory unavailable")
    log.info("served product %d", product_id)
    return {"product": product_id, "stock": stock.json()}
