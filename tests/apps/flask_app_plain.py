"""A Flask service with no meshlens line at all: run it with `meshlens-run`."""

import os

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/health")
def health():
    return "ok"


@app.route("/items/<int:item_id>")
def item(item_id: int):
    return jsonify(id=item_id, pid=os.getpid())
