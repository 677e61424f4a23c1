import meshlens.auto  # noqa: F401  (the one line a service adds)

# A service that produces a Kafka message per HTTP request, with the client the path names:
# /produce/confluent-kafka, /produce/kafka-python or /produce/aiokafka.

import asyncio
import os
import signal

from aiohttp import web

PORT = int(os.environ["PORT"])
BOOTSTRAP = os.environ["KAFKA_BOOTSTRAP"]
# kafka-python 3 asks the broker for ApiVersions v4, which librdkafka's mock cluster answers
# in a form kafka-python cannot decode; naming the version skips the probe.
KAFKA_PYTHON_API_VERSION = (2, 0, 0)
_producers: dict[str, object] = {}


async def _send(client: str, topic: str, value: bytes) -> None:
    if client == "confluent-kafka":
        import confluent_kafka

        producer = _producers.get(client) or _producers.setdefault(
            client, confluent_kafka.Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5}))
        producer.produce(topic, value)
        remaining = await asyncio.to_thread(producer.flush, 10)
        assert remaining == 0, "not delivered"
    elif client == "kafka-python":
        import kafka

        producer = _producers.get(client) or _producers.setdefault(
            client, kafka.KafkaProducer(bootstrap_servers=BOOTSTRAP, api_version=KAFKA_PYTHON_API_VERSION))
        future = producer.send(topic, value)
        await asyncio.to_thread(future.get, 10)
    else:
        import aiokafka

        producer = _producers.get(client)
        if producer is None:
            producer = aiokafka.AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
            await producer.start()
            _producers[client] = producer
        await producer.send_and_wait(topic, value)


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def produce(request: web.Request) -> web.Response:
    await _send(request.match_info["client"], request.query["topic"], request.query.get("value", "hello").encode())
    return web.json_response({"sent": True})


async def main() -> None:
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/produce/{client}", produce)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
