"""Takes payment for each order from Kafka. A consumer, not a web service: its metrics
are on meshlens's /metrics port all the same."""

import meshlens.auto  # noqa: F401  (the one line a service adds)
import json
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("payments")
FAULT = Path(os.environ["PAYMENTS_FAULT_FILE"])  # the demo creates it to inject the fault
running = True


class PaymentDeclined(Exception):
    pass


def _redis() -> Any:
    """Redis when one answers on loopback; the demo runs without it too."""
    try:
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_connect_timeout=0.2)
        client.ping()
        return client
    except Exception as exc:
        log.warning("Redis not reachable (%s); payments kept in memory", type(exc).__name__)
        return None


LEDGER = _redis()
if LEDGER is not None:
    LEDGER.delete("meshlens-demo:revenue")


def take_payment(order: dict[str, int]) -> None:
    if FAULT.exists():  # the injected fault: a slow, failing payment provider, and a bad deploy
        time.sleep(random.uniform(0.05, 0.25))
        if random.random() < 0.5:
            raise PaymentDeclined(f"provider timed out for order {order['order']}")
        if LEDGER is not None and random.random() < 0.2:
            # The bad deploy writes the ledger as a list: Redis refuses (WRONGTYPE).
            LEDGER.lpush("meshlens-demo:revenue", order["price"])
    if LEDGER is not None:
        LEDGER.incrby("meshlens-demo:revenue", order["price"])
    log.info("payment taken for order %d", order["order"])


def main() -> None:
    def stop(*_: object) -> None:
        global running
        running = False

    signal.signal(signal.SIGTERM, stop)
    consumer = Consumer({
        "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP"],
        "group.id": "payments",
        "auto.offset.reset": "earliest",
    })
    consumer.subscribe([os.environ.get("ORDERS_TOPIC", "orders")])
    log.info("consuming")
    while running:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        try:
            take_payment(json.loads(message.value()))
        except Exception:  # the loop goes on; meshlens marks this message's processing failed
            log.exception("payment failed")
    consumer.close()


if __name__ == "__main__":
    main()
