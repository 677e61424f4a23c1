"""A Flask service for the pre-fork tests: only the import line added."""

import meshlens.auto  # noqa: F401  (the one line a service adds)



import os

from flask import Flask, jsonify
from prometheus_client import Counter

app = Flask(__name__)
# The service's own metric: in a pre-fork server it is summed over the workers too.
FETCHED = Counter("shop_items_fetched", "Items fetched.")


@app.route("/health")
def health():
    return "ok"


@app.route("/items/<int:item_id>")
def item(item_id: int):
    FETCHED.inc()
    return jsonify(id=item_id, pid=os.getpid())
