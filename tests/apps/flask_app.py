import meshlens.auto  # noqa: F401  (the one line a service adds)
import logging
import os
import time

import requests
from flask import Flask, jsonify, request
from prometheus_client import Counter


logging.basicConfig(level=logging.INFO)
log = logging.getLogger("flask_app")
app = Flask(__name__)
# The service's own metric: served on meshlens's /metrics, summed over pre-fork workers too.
FETCHED = Counter("shop_items_fetched", "Items fetched.")


@app.route("/health")
def health():
    return "ok"


@app.route("/items/<int:item_id>")
def item(item_id: int):
    FETCHED.inc()
    log.info("fetched item %d", item_id)
    return jsonify(id=item_id, pid=os.getpid())


@app.route("/fail")
def fail():
    raise RuntimeError("boom")


@app.route("/sleep/<int:ms>")
def sleep(ms: int):
    time.sleep(ms / 1000)
    return "slept"


@app.route("/call")
def call():
    """Calls another service: the outgoing request carries this trace."""
    response = requests.get(request.args["url"], timeout=10)
    return jsonify(status=response.status_code, body=response.text)
