import meshlens.auto  # noqa: F401  (the one line a service adds)
import logging
import random
import time
from typing import Any

from flask import Flask, Response, jsonify


logging.basicConfig(level=logging.INFO)
log = logging.getLogger("inventory")
app = Flask("inventory")


def _redis() -> Any:
    """Redis when one answers on loopback; the demo runs without it too."""
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=0.2)
        client.ping()
        return client
    except Exception:
        return None


CACHE = _redis()


@app.route("/health")
def health() -> str:
    return "ok"


@app.route("/stock/<int:product_id>")
def stock(product_id: int) -> Response:
    if product_id % 17 == 0:  # a bad product id: the demo's errors
        raise RuntimeError(f"no stock record for product {product_id}")
    time.sleep(random.uniform(0.001, 0.02) if product_id % 10 else 0.3)  # every tenth is slow
    level = None
    if CACHE is not None:
        CACHE.incr(f"meshlens-demo:views:{product_id}")
        level = CACHE.get(f"meshlens-demo:views:{product_id}")
    log.info("stock looked up for %d", product_id)
    return jsonify(product=product_id, views=int(level) if level else None)
