import meshlens.auto  # noqa: F401  (the one line a service adds)
import json
import logging
import os
import time

import requests
import sqlalchemy
from confluent_kafka import Producer
from flask import Flask, Response, jsonify, request

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("orders")
app = Flask("orders")
PRICING = os.environ["PRICING_URL"]
TOPIC = os.environ.get("ORDERS_TOPIC", "orders")
http = requests.Session()
LIST_PRICE = 150
LOST_EVERY = int(os.environ.get("ORDERS_LOST_EVERY", "307"))


def _engine() -> sqlalchemy.Engine:
    """The database the demo prepared: PostgreSQL when one answers on loopback, else SQLite."""
    url = os.environ["ORDERS_DATABASE_URL"]
    if url.startswith("postgresql"):
        return sqlalchemy.create_engine(url, pool_size=4, connect_args={"connect_timeout": 2})
    return sqlalchemy.create_engine(url)


ENGINE = _engine()
_producer: Producer | None = None


def producer() -> Producer:
    """Made in the worker that uses it: librdkafka's threads do not survive gunicorn's fork."""
    global _producer
    if _producer is None:
        _producer = Producer({"bootstrap.servers": os.environ["KAFKA_BOOTSTRAP"], "linger.ms": 5})
    return _producer


@app.route("/health")
def health() -> str:
    return "ok"


@app.route("/orders", methods=["POST"])
def place_order() -> tuple[Response, int]:
    product = int(request.get_json()["product"])
    # 1 product in LOST_EVERY is one the catalogue lost: a trickle of 5xx, so that the error
    # panels have data, below what the fast burn-rate alert pages on (0.6% over 30 minutes).
    if product % LOST_EVERY == 0:
        raise RuntimeError(f"no catalogue entry for product {product}")
    priced = http.get(f"{PRICING}/price/{product}", timeout=5)
    if priced.status_code == 503:  # pricing's feed is stale: the list price will do
        log.warning("pricing unavailable for product %d; list price used", product)
        price = LIST_PRICE
    else:
        priced.raise_for_status()
        price = priced.json()["price"]
    # A client retrying a checkout sends the same idempotency key: the database refuses the
    # duplicate (a failed INSERT in the Databases dashboard) and the order is not placed twice.
    key = "retry" if product % 53 == 0 else f"order-{product}-{time.time_ns()}"
    try:
        with ENGINE.begin() as connection:
            order_id = connection.execute(
                sqlalchemy.text("INSERT INTO demo_orders (idempotency_key, product, price) "
                                "VALUES (:key, :product, :price) RETURNING id"),
                {"key": key, "product": product, "price": price},
            ).scalar_one()
    except sqlalchemy.exc.IntegrityError:
        log.info("duplicate checkout for product %d ignored", product)
        return jsonify(error="duplicate order"), 409
    event = {"order": order_id, "product": product, "price": price}
    if product % 101 == 0:  # a gift note far past the broker's message size: the send fails
        event["gift_note"] = "x" * 2_000_000
    try:
        producer().produce(TOPIC, json.dumps(event).encode(), key=str(order_id).encode())
    except Exception:
        log.exception("order %d placed, but its event could not be sent", order_id)
    producer().poll(0)
    log.info("order %d placed for product %d at %d", order_id, product, price)
    return jsonify(order=order_id, price=price, placed_at=time.time()), 201


@app.teardown_appcontext
def _deliver(_exc: BaseException | None) -> None:
    if _producer is not None:
        _producer.poll(0)
