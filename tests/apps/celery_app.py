import meshlens.auto  # noqa: F401  (the one line a service adds)

import os

import redis
from celery import Celery
from flask import Flask, jsonify, request

BROKER_URL = os.environ.get("BROKER_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("CELERY_QUEUE", "meshlens-test")

celery = Celery("celery_app", broker=BROKER_URL)
celery.conf.update(
    task_default_queue=QUEUE,
    broker_connection_timeout=5,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
store = redis.Redis.from_url(BROKER_URL, socket_timeout=5)


@celery.task(name="meshlens_test.add")
def add(x: int, y: int, key: str) -> int:
    """Adds, and keeps the sum in Redis: a Redis call inside the task."""
    store.set(key, x + y, ex=60)
    return x + y


web = Flask(__name__)


@web.route("/health")
def health():
    return "ok"


@web.route("/enqueue")
def enqueue():
    result = add.delay(int(request.args["x"]), int(request.args["y"]), request.args["key"])
    return jsonify(task_id=result.id)
