"""Kafka across services: an HTTP request to a producer service, a message, a consumer service
that processes it, one trace; the messaging metrics on both services' /metrics; the consumer
lag measured by the client. Every service is a real process with only the import line; the
broker is librdkafka's mock cluster (a real Kafka protocol endpoint on loopback), which
kafka-python and aiokafka reach over TCP like any broker.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sys
import time
from collections.abc import Iterator

import pytest
from library_checks import CONSUMER_KIND, PRODUCER_KIND, SERVER_KIND, count, descends_from, traceparent

from harness import base_env, free_port, running, started_sink

confluent_kafka = pytest.importorskip("confluent_kafka")
pytest.importorskip("kafka")
pytest.importorskip("aiokafka")

pytestmark = pytest.mark.slow
BAGGAGE_KEY = "saga.id"

PRODUCER_SERVICE = "kafka-producer"
SENT = "messaging_client_sent_messages_total"
SEND_DURATION_COUNT = "messaging_client_operation_duration_seconds_count"
CONSUMED = "messaging_client_consumed_messages_total"
PROCESS_COUNT = "messaging_process_duration_seconds_count"
LAG = "messaging_kafka_consumer_lag"

sink = pytest.fixture(scope="module")(started_sink)


class Cluster:
    """librdkafka's mock cluster, alive as long as the client that created it."""

    def __init__(self) -> None:
        self._client = confluent_kafka.Producer({"test.mock.num.brokers": 1})
        brokers = self._client.list_topics(timeout=10).brokers.values()
        self.bootstrap = ",".join(f"{broker.host}:{broker.port}" for broker in brokers)
        # A plain producer with no meshlens in this process: messages with hand-made headers.
        self._producer = confluent_kafka.Producer({"bootstrap.servers": self.bootstrap})

    def new_topic(self) -> str:
        """A topic that exists before its consumer subscribes (the mock cluster creates it,
        with 4 partitions, on a metadata request; it times out on CreateTopics)."""
        topic = f"orders-{secrets.token_hex(4)}"
        metadata = self._producer.list_topics(topic, timeout=10)
        assert metadata.topics[topic].error is None
        return topic

    def produce(self, topic: str, value: bytes, headers: list[tuple[str, bytes]] | None = None) -> None:
        self._producer.produce(topic, value, headers=headers)
        assert self._producer.flush(10) == 0


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    return Cluster()


@pytest.fixture(scope="module")
def producer(sink, cluster, tmp_path_factory):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME=PRODUCER_SERVICE, PORT=str(port),
                   KAFKA_BOOTSTRAP=cluster.bootstrap, MESHLENS_BAGGAGE_TO_ATTRIBUTES=BAGGAGE_KEY)
    log = tmp_path_factory.mktemp("kafka-producer") / "service.log"
    with running([sys.executable, "kafka_producer_app.py"], port, env, log) as service:
        yield service


@contextlib.contextmanager
def consumer_service(sink, cluster: Cluster, client: str, mode: str, topic: str, log_dir) -> Iterator:
    port = free_port()
    name = f"kafka-consumer-{client}-{mode}-{topic}"
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME=name, PORT=str(port), KAFKA_BOOTSTRAP=cluster.bootstrap,
                   KAFKA_CLIENT=client, KAFKA_MODE=mode, KAFKA_TOPIC=topic, KAFKA_GROUP=f"group-{topic}",
                   MESHLENS_BAGGAGE_TO_ATTRIBUTES=BAGGAGE_KEY)
    with running([sys.executable, "kafka_consumer_app.py"], port, env, log_dir / f"{name}.log") as service:
        service.name = name
        service.group = f"group-{topic}"
        yield service


def processed(consumer) -> list[dict]:
    status, body, _ = consumer.get("/processed")
    assert status == 200
    return json.loads(body)


def wait_processed(consumer, count_: int, timeout: float = 45.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = processed(consumer)
        if len(done) >= count_:
            return done
        time.sleep(0.2)
    raise AssertionError(f"{consumer.name} processed {processed(consumer)}, expected {count_}; log:\n{consumer.log()}")


def produce_through_http(producer, client: str, topic: str, value: str = "hello",
                         baggage: str = "") -> tuple[str, str]:
    """Asks the producer service to send one message inside a trace the test starts."""
    trace_id, parent_span_id, header = traceparent()
    headers = {"traceparent": header, **({"baggage": baggage} if baggage else {})}
    status, body, _ = producer.get(f"/produce/{client}?topic={topic}&value={value}", headers)
    assert status == 200, body
    return trace_id, parent_span_id


def spans_of(sink, service: str) -> list:
    return [span for span in sink.snapshot() if span.service == service]


def has_kinds(*kinds: int):
    """A wait_trace predicate: every one of these span kinds has arrived. The producing service
    and the consumer export on their own schedules, so one side's span can come first."""
    return lambda spans: all(any(span.kind == kind for span in spans) for kind in kinds)


def wait_metric(service, name: str, predicate, timeout: float = 30.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = count(service.metrics(), name, **labels)
        if predicate(value):
            return value
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} stayed at {value}")


@pytest.fixture(scope="module")
def confluent_consumer(sink, cluster, tmp_path_factory):
    topic = cluster.new_topic()
    with consumer_service(sink, cluster, "confluent-kafka", "single", topic,
                          tmp_path_factory.mktemp("kafka-consumer")) as service:
        service.topic = topic
        yield service


def test_one_trace_from_the_http_request_through_the_message_to_its_processing(
    producer, confluent_consumer, sink
):
    consumer = confluent_consumer
    # The consumer has been polling an empty topic since it started: no spans for that.
    time.sleep(3)
    assert spans_of(sink, consumer.name) == []

    trace_id, caller_span_id = produce_through_http(producer, "confluent-kafka", consumer.topic)
    spans = sink.wait_trace(trace_id, has_kinds(SERVER_KIND, PRODUCER_KIND, CONSUMER_KIND), timeout=45)
    server = next(s for s in spans if s.kind == SERVER_KIND and s.service == PRODUCER_SERVICE)
    send = next(s for s in spans if s.kind == PRODUCER_KIND)
    process = next(s for s in spans if s.kind == CONSUMER_KIND)
    assert server.parent_span_id == caller_span_id
    assert descends_from(send, server, spans)
    assert send.name == f"{consumer.topic} send"
    # Parent, not link: the consumer's span is the producer span's child, in the same trace.
    assert process.service == consumer.name
    assert process.parent_span_id == send.span_id
    assert process.links == []
    assert process.name == f"process {consumer.topic}"
    assert process.attributes["messaging.system"] == "kafka"
    assert process.attributes["messaging.operation.type"] == "process"
    assert process.attributes["messaging.destination.name"] == consumer.topic
    assert process.attributes["messaging.consumer.group.name"] == consumer.group
    assert process.attributes["messaging.destination.partition.id"].isdigit()

    # While the handler ran, the processing span was current (logs, outgoing calls carry it).
    (handled,) = wait_processed(consumer, 1)
    assert handled["trace_id"] == trace_id
    # Every configured format went into the message headers, naming the producer's span.
    headers = {name.lower(): value for name, value in handled["headers"].items()}
    assert headers["traceparent"].split("-")[1:3] == [trace_id, send.span_id]
    assert headers["x-b3-traceid"] == trace_id
    assert headers["x-b3-spanid"] == send.span_id
    assert headers["uber-trace-id"].split(":")[:2] == [trace_id, send.span_id]

    # Still no span but the one processing span, however many empty polls since.
    time.sleep(2)
    assert [s.span_id for s in spans_of(sink, consumer.name)] == [process.span_id]


@pytest.mark.parametrize(
    "header",
    ["b3", "x-b3", "uber-trace-id"],
)
def test_a_message_from_a_b3_or_jaeger_producer_continues_its_trace(header, cluster, confluent_consumer, sink):
    consumer = confluent_consumer
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    headers = {
        "b3": [("b3", f"{trace_id}-{span_id}-1".encode())],
        "x-b3": [("X-B3-TraceId", trace_id.encode()), ("X-B3-SpanId", span_id.encode()), ("X-B3-Sampled", b"1")],
        "uber-trace-id": [("uber-trace-id", f"{trace_id}:{span_id}:0:1".encode())],
    }[header]
    cluster.produce(consumer.topic, b"from-another-stack", headers)
    (process,) = sink.wait_trace(trace_id, lambda s: any(x.kind == CONSUMER_KIND for x in s), timeout=45)
    assert process.parent_span_id == span_id
    assert process.service == consumer.name


def test_messaging_metrics_and_the_consumer_lag(producer, confluent_consumer, cluster, sink):
    consumer = confluent_consumer
    topic, group = consumer.topic, consumer.group
    before_sent = count(producer.metrics(), SENT, messaging_destination_name=topic)
    produce_through_http(producer, "confluent-kafka", topic)
    already = len(processed(consumer))
    wait_processed(consumer, already + 1)

    sent_labels = {"messaging_system": "kafka", "messaging_destination_name": topic, "error_type": ""}
    after = producer.metrics()
    assert count(after, SENT, **sent_labels) == before_sent + 1
    assert count(after, SEND_DURATION_COUNT, messaging_operation_name="send", **sent_labels) >= 1

    consumer_labels = {"messaging_system": "kafka", "messaging_destination_name": topic,
                       "messaging_consumer_group_name": group}
    handled = len(processed(consumer))
    wait_metric(consumer, CONSUMED, lambda v: v == handled, **consumer_labels)
    # The processing span of the last message ends at the next poll, a moment later.
    wait_metric(consumer, PROCESS_COUNT, lambda v: v == handled, **consumer_labels)
    # Summed over the topic's partitions (each has its own series).
    lag_labels = {"messaging_consumer_group_name": group, "messaging_destination_name": topic}
    # Everything so far is processed and committed (auto-commit every 500 ms): no lag.
    wait_metric(consumer, LAG, lambda v: v == 0, **lag_labels)

    # Six slow messages (0.5 s each): while the consumer works through them, the ones not
    # committed yet are its lag; once they are done and committed, the lag is back to 0.
    for _ in range(6):
        cluster.produce(topic, b"sleep:0.5")
    assert wait_metric(consumer, LAG, lambda v: v > 0, **lag_labels) > 0
    wait_processed(consumer, handled + 6)
    wait_metric(consumer, LAG, lambda v: v == 0, **lag_labels)
    assert count(consumer.metrics(), CONSUMED, **consumer_labels) == handled + 6
    # Processing took the handler's time: the slow messages land above 0.25 s.
    slow = count(consumer.metrics(), "messaging_process_duration_seconds_bucket", le="0.25", **consumer_labels)
    total = wait_metric(consumer, PROCESS_COUNT, lambda v: v == handled + 6, **consumer_labels)
    assert total - slow >= 6


def test_a_failure_logged_while_processing_marks_the_processing_failed(producer, confluent_consumer, sink):
    """The loop catches the handler's exception and logs it (logger.exception): the message's
    processing span records it, and the process-duration metric counts it under error_type."""
    consumer = confluent_consumer
    labels = {"messaging_system": "kafka", "messaging_destination_name": consumer.topic,
              "messaging_consumer_group_name": consumer.group}
    failed_before = count(consumer.metrics(), PROCESS_COUNT, error_type="ValueError", **labels)
    trace_id, _ = produce_through_http(producer, "confluent-kafka", consumer.topic, value="fail:card-declined")
    process = next(s for s in sink.wait_trace(trace_id, lambda s: any(x.kind == CONSUMER_KIND for x in s), timeout=45)
                   if s.kind == CONSUMER_KIND)
    assert process.status_code == 2  # ERROR
    assert "exception" in process.events
    assert process.attributes["error.type"] == "ValueError"
    wait_metric(consumer, PROCESS_COUNT, lambda v: v == failed_before + 1, error_type="ValueError", **labels)
    # A message processed without a logged failure is not marked.
    ok_trace, _ = produce_through_http(producer, "confluent-kafka", consumer.topic)
    ok = next(s for s in sink.wait_trace(ok_trace, lambda s: any(x.kind == CONSUMER_KIND for x in s), timeout=45)
              if s.kind == CONSUMER_KIND)
    assert ok.status_code != 2 and "error.type" not in ok.attributes


def test_listed_baggage_crosses_the_kafka_hop_onto_the_consumers_span(producer, confluent_consumer, sink):
    """MESHLENS_BAGGAGE_TO_ATTRIBUTES: a saga id sent as baggage to the producing service is on
    its spans, travels in the message headers, and is on the consumer's processing span."""
    consumer = confluent_consumer
    saga = f"saga-{secrets.token_hex(4)}"
    trace_id, _ = produce_through_http(producer, "confluent-kafka", consumer.topic,
                                       baggage=f"{BAGGAGE_KEY}={saga},card=4111")
    spans = sink.wait_trace(trace_id, has_kinds(PRODUCER_KIND, CONSUMER_KIND), timeout=45)
    process = next(s for s in spans if s.kind == CONSUMER_KIND)
    send = next(s for s in spans if s.kind == PRODUCER_KIND)
    assert process.attributes.get(BAGGAGE_KEY) == saga
    assert send.attributes.get(BAGGAGE_KEY) == saga
    assert "card" not in process.attributes and "card" not in send.attributes


@pytest.mark.parametrize("client", ["kafka-python", "aiokafka"])
def test_each_client_carries_the_trace_into_the_consumers_processing(client, producer, cluster, sink, tmp_path):
    topic = cluster.new_topic()
    with consumer_service(sink, cluster, client, "single", topic, tmp_path) as consumer:
        time.sleep(2)
        trace_id, _ = produce_through_http(producer, client, topic)
        spans = sink.wait_trace(trace_id, has_kinds(PRODUCER_KIND, CONSUMER_KIND), timeout=45)
        send = next(s for s in spans if s.kind == PRODUCER_KIND)
        assert send.scope.endswith(client.replace("-python", "").replace("-", "_")) or client in send.scope
        consumer_spans = [s for s in spans if s.kind == CONSUMER_KIND]
        assert len(consumer_spans) == 1, [(s.name, s.scope) for s in consumer_spans]
        process = consumer_spans[0]
        assert process.parent_span_id == send.span_id
        assert process.name == f"process {topic}"
        assert process.attributes["messaging.consumer.group.name"] == consumer.group
        (handled,) = wait_processed(consumer, 1)
        assert handled["trace_id"] == trace_id
        assert handled["headers"]["x-b3-traceid"] == trace_id
        assert handled["headers"]["uber-trace-id"].startswith(trace_id)
        # The producer's metrics name the topic; the consumer's count the message.
        assert count(producer.metrics(), SENT, messaging_destination_name=topic) == 1
        wait_metric(consumer, CONSUMED, lambda v: v == 1, messaging_destination_name=topic,
                    messaging_consumer_group_name=consumer.group)
        # No span of the consumer's but the one processing span (its empty fetches make none).
        assert [s.span_id for s in spans_of(sink, consumer.name)] == [process.span_id]


@pytest.mark.parametrize("client", ["confluent-kafka", "aiokafka"])
def test_a_batch_is_processed_in_one_span_linked_to_each_producer(client, producer, cluster, sink, tmp_path):
    topic = cluster.new_topic()
    # Three messages wait before the consumer starts, so its first call returns them together.
    traces = [produce_through_http(producer, client, topic)[0] for _ in range(3)]
    sends = {}
    for trace_id in traces:
        spans = sink.wait_trace(trace_id, lambda s: any(x.kind == PRODUCER_KIND for x in s))
        sends[trace_id] = next(s.span_id for s in spans if s.kind == PRODUCER_KIND)
    with consumer_service(sink, cluster, client, "batch", topic, tmp_path) as consumer:
        wait_processed(consumer, 3)
        batches = sink.wait_for(lambda spans: sum(
            len(s.links) for s in spans if s.service == consumer.name and s.kind == CONSUMER_KIND) >= 3, timeout=30)
        process = [s for s in batches if s.service == consumer.name and s.kind == CONSUMER_KIND]
        # A batch's span is not in any one producer's trace: it links to each of them.
        linked = {link for span in process for link in span.links}
        assert linked == set(sends.items())
        for span in process:
            assert span.trace_id not in traces
            assert span.attributes["messaging.operation.type"] == "process"
            assert span.attributes["messaging.batch.message_count"] == len(span.links)
        wait_metric(consumer, CONSUMED, lambda v: v == 3, messaging_destination_name=topic)
