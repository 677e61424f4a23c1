import meshlens.auto  # noqa: F401  (the one line a service adds)

# A service that consumes a Kafka topic with the client KAFKA_CLIENT names, the way services
# usually write their loop (confluent-kafka poll() or consume(), kafka-python iteration,
# aiokafka async for or getmany()). A message "sleep:<seconds>" takes that long to process.
#
# GET /processed lists what it handled: topic, offset, the headers' names and values, and the
# trace id current while the handler ran (what the service's logs and outgoing calls carry).

import asyncio
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import trace

PORT = int(os.environ["PORT"])
BOOTSTRAP = os.environ["KAFKA_BOOTSTRAP"]
CLIENT = os.environ["KAFKA_CLIENT"]
MODE = os.environ.get("KAFKA_MODE", "single")  # single: one message per call; batch
TOPIC = os.environ["KAFKA_TOPIC"]
GROUP = os.environ["KAFKA_GROUP"]
KAFKA_PYTHON_API_VERSION = (2, 0, 0)  # see kafka_producer_app.py

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("kafka_consumer_app")
processed: list[dict] = []


def handle(topic: str, offset: int, value: bytes | None, headers) -> None:
    context = trace.get_current_span().get_span_context()
    text = (value or b"").decode()
    if text.startswith("sleep:"):
        time.sleep(float(text.split(":", 1)[1]))
    if text.startswith("fail:"):
        # The usual loop: the failure is caught and logged, and the consumer goes on.
        try:
            raise ValueError(text.split(":", 1)[1])
        except ValueError:
            log.exception("processing %s@%d failed", topic, offset)
    log.info("processed %s@%d", topic, offset)
    processed.append({
        "topic": topic, "offset": offset, "value": text,
        "trace_id": format(context.trace_id, "032x") if context.is_valid else "",
        "headers": {name: (v or b"").decode() for name, v in (headers or [])},
    })


def consume_confluent() -> None:
    import confluent_kafka

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": BOOTSTRAP, "group.id": GROUP, "auto.offset.reset": "earliest",
        # The service's own choices, shorter than the defaults so that the test sees the lag move.
        "statistics.interval.ms": 500, "auto.commit.interval.ms": 500,
    })
    consumer.subscribe([TOPIC])
    while True:
        if MODE == "batch":
            messages = consumer.consume(num_messages=50, timeout=0.5)
        else:
            message = consumer.poll(0.5)
            messages = [message] if message is not None else []
        for message in messages:
            if message.error() is None:
                handle(message.topic(), message.offset(), message.value(), message.headers())


def consume_kafka_python() -> None:
    import kafka

    consumer = kafka.KafkaConsumer(
        TOPIC, bootstrap_servers=BOOTSTRAP, group_id=GROUP, auto_offset_reset="earliest",
        api_version=KAFKA_PYTHON_API_VERSION, auto_commit_interval_ms=500,
    )
    for record in consumer:
        handle(record.topic, record.offset, record.value, record.headers)


async def _consume_aiokafka() -> None:
    import aiokafka

    consumer = aiokafka.AIOKafkaConsumer(
        TOPIC, bootstrap_servers=BOOTSTRAP, group_id=GROUP, auto_offset_reset="earliest",
        auto_commit_interval_ms=500,
    )
    await consumer.start()
    if MODE == "batch":
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    handle(record.topic, record.offset, record.value, record.headers)
    else:
        async for record in consumer:
            handle(record.topic, record.offset, record.value, record.headers)


def consume() -> None:
    try:
        if CLIENT == "confluent-kafka":
            consume_confluent()
        elif CLIENT == "kafka-python":
            consume_kafka_python()
        else:
            asyncio.run(_consume_aiokafka())
    except Exception:
        log.exception("consumer failed")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        return None

    def do_GET(self) -> None:
        body = b"ok" if self.path == "/health" else json.dumps(processed).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    threading.Thread(target=consume, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
