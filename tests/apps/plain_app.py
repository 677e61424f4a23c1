"""A Flask service with no meshlens line at all: for `meshlens-run` and `opentelemetry-instrument`
(run as a script, or served by gunicorn as `plain_app:app`)."""

import os

from flask import Flask

app = Flask(__name__)


@app.route("/health")
def health():
    return "ok"


@app.route("/items/<int:item_id>")
def item(item_id: int):
    return {"id": item_id, "pid": os.getpid()}


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["APP_PORT"]), threaded=True)
