"""Kafka: one trace from the request that produced a message to the consumer that processed it.

What OpenTelemetry's contrib instrumentations do, and what meshlens changes:

- **Producers** (confluent-kafka ``Producer.produce``, kafka-python ``KafkaProducer.send``,
  aiokafka ``AIOKafkaProducer.send``) are traced by contrib, unchanged: a PRODUCER span
  ``<topic> send`` in the caller's trace, and its context written into the message headers
  by the global propagator, which meshlens sets to write W3C, B3 and Jaeger at once.
- **Consumers** are traced by meshlens, in place of contrib's consumer spans, which break
  the trace: confluent-kafka's instrumentation opens each message's span under a new root
  ``recv`` span (the producer is only a link, so the consumer is in another trace) and skips
  messages whose value is empty (it tests the message's truthiness, its length);
  kafka-python's and aiokafka's end the span the moment the message is returned, so the
  processing is outside it and nothing the handler calls joins the trace. meshlens replaces
  the functions those instrumentations wrap the consumer with (still wrapped by contrib's
  machinery, so the proxy classes and the ``instrument_consumer`` API keep working).

The consumer span, per the OpenTelemetry messaging conventions (``process`` operation,
CONSUMER kind, ``messaging.*`` attributes):

- **One message** (confluent-kafka ``poll()``, kafka-python iteration, aiokafka ``getone()``
  and ``async for``): the span ``process <topic>`` is a **child** of the producer's span (the
  message's creation context, read from its headers in any of the three formats), so the
  producing request, the send and the processing are one trace. It is current while the
  service handles the message: it starts when the call returns the message and ends at the
  consumer's next call (or ``close()``), so the handler's own calls (HTTP, databases) are its
  children and its duration is the processing time.
- **A batch** (confluent-kafka ``consume(n)``, aiokafka ``getmany()``, even of one message): one span
  ``process <topic>`` whose parent is whatever is current (the messages may come from many traces), with a
  **link** to each message's producer span, as the conventions prescribe for batches (at most
  the SDK's link limit; the rest are dropped and counted by the SDK).
- A call that returns nothing (an empty poll, a timeout, confluent-kafka's partition-EOF and
  error events) makes no span.

A failed processing: a poll loop has no point where the handler's failure is visible (the
loop catches it and goes on), so meshlens takes the one signal such loops give: an exception
logged at ERROR or above (``logger.exception(...)``) while a message's processing span is
current marks that processing failed (the exception recorded, status ERROR, ``error.type``),
which ``messaging_process_duration_seconds`` then counts under ``error_type``. An exception
that escapes the loop ends the consumer and is not seen.

Metrics: the producer's and the consumer's spans give ``messaging_client_operation_duration_seconds``,
``messaging_client_sent_messages_total`` and ``messaging_process_duration_seconds`` (in
:mod:`meshlens.red`, like every other RED metric, so unsampled messages count too);
``messaging_client_consumed_messages_total`` is counted here as messages are received.

Consumer lag (``messaging_kafka_consumer_lag``) is measured by the client: for
confluent-kafka, from librdkafka's statistics (``consumer_lag``: the partition's high
watermark minus the group's committed offset), which librdkafka assembles from what it
already knows and hands to the application's thread during ``poll()``: no extra broker round
trips. meshlens turns the statistics on (every 5 s) unless the service set
``statistics.interval.ms`` itself, and chains the service's own ``stats_cb``. A partition the
consumer no longer owns is set to 0, so that the sum over pre-fork workers stays right after a
rebalance. kafka-python and aiokafka have no such statistics (their committed offsets cost a
broker round trip each); meshlens does not measure their lag.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_BATCH_MESSAGE_COUNT,
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_KAFKA_OFFSET,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    MessagingOperationTypeValues,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer

from meshlens import catalogue
from meshlens._hooks import after_import
from meshlens._once import WarnOnce
from meshlens.instruments import GuardedMetric, Instruments

_logger = logging.getLogger("meshlens")

SYSTEM = "kafka"
PROCESS = MessagingOperationTypeValues.PROCESS.value
"""``messaging.operation.name`` and ``.type`` of the consumer's span."""
STATISTICS_INTERVAL_MS = 5000
"""How often librdkafka reports its statistics (and so the lag), unless the service chose."""

# The contrib modules whose consumer functions meshlens replaces.
CONFLUENT_CONTRIB = "opentelemetry.instrumentation.confluent_kafka"
KAFKA_PYTHON_CONTRIB = "opentelemetry.instrumentation.kafka"
AIOKAFKA_CONTRIB = "opentelemetry.instrumentation.aiokafka"

# Where a consumer keeps its open processing span: (span, token, the context attached).
_PROCESSING = "_meshlens_processing"
# librdkafka's statistics name the partition that is not assigned yet "-1"; offsets below 0
# (-1001) mean "none".
_UNASSIGNED_PARTITION = "-1"


class HeadersGetter(Getter[Any]):
    """Reads Kafka message headers: a list of (name, bytes) pairs, a dict, or None.

    Kafka header names are case-sensitive, but other tracers write the HTTP spellings
    (``X-B3-TraceId``) where the propagators ask for lower case: names match ignoring case."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        if not carrier:
            return None
        items = carrier.items() if isinstance(carrier, dict) else carrier
        key = key.lower()
        found = []
        for name, value in items:
            if value is not None and isinstance(name, str) and name.lower() == key:
                found.append(value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value))
        return found or None

    def keys(self, carrier: Any) -> list[str]:
        if not carrier:
            return []
        items = carrier.items() if isinstance(carrier, dict) else carrier
        return [name for name, _ in items]


HEADERS = HeadersGetter()


@dataclass(frozen=True)
class Received:
    """One message as the consumer returned it, whichever client."""

    topic: str
    partition: int
    offset: int
    headers: Any


class ConsumerTelemetry:
    """The consumer side, shared by the three clients."""

    def __init__(self, instruments: Instruments) -> None:
        self._consumed: GuardedMetric = instruments[catalogue.MESSAGING_CLIENT_CONSUMED_MESSAGES]
        self._lag: GuardedMetric = instruments[catalogue.MESSAGING_KAFKA_CONSUMER_LAG]
        self._failed = WarnOnce("meshlens: Kafka consumer telemetry failed; the consumer runs without it")
        self._lag_failed = WarnOnce("meshlens: reading librdkafka's statistics for the consumer lag failed")
        # Partitions whose lag this process reported, by group: set to 0 when no longer assigned.
        self._reported: set[tuple[str, str, str]] = set()

    # -- spans ------------------------------------------------------------------

    def finish(self, consumer: Any) -> None:
        """Ends the span of what the consumer returned last: called at its next call."""
        try:
            state = getattr(consumer, _PROCESSING, None)
            if state is None:
                return
            setattr(consumer, _PROCESSING, None)
            span, token, attached = state
            # Detach only where we attached: an asyncio consumer may be called from another
            # task (another context), where the token does not apply.
            if context.get_current() is attached:
                context.detach(token)
            span.end()
        except Exception:
            self._failed()

    def received(
        self, tracer: Tracer, consumer: Any, messages: Sequence[Received], group: str | None, batch: bool = False
    ) -> None:
        """Opens the processing span of what a consumer call returned, and counts the messages.
        ``batch``: the call returns batches (even of one message: the span's shape must not
        depend on how many messages happened to be waiting)."""
        if not messages:
            return
        try:
            self._count(messages, group or "")
            span, attached = self._start_span(tracer, messages, group, batch)
            token = context.attach(attached)
            setattr(consumer, _PROCESSING, (span, token, attached))
        except Exception:
            self._failed()

    def _count(self, messages: Sequence[Received], group: str) -> None:
        if len(messages) == 1:
            self._consumed.labels(SYSTEM, messages[0].topic, group, "").inc()
            return
        by_topic: dict[str, int] = {}
        for message in messages:
            by_topic[message.topic] = by_topic.get(message.topic, 0) + 1
        for topic, count in by_topic.items():
            self._consumed.labels(SYSTEM, topic, group, "").inc(count)

    @staticmethod
    def _start_span(
        tracer: Tracer, messages: Sequence[Received], group: str | None, batch: bool
    ) -> tuple[Span, Context]:
        current = context.get_current()
        attributes: dict[str, Any] = {
            MESSAGING_SYSTEM: SYSTEM,
            MESSAGING_OPERATION_NAME: PROCESS,
            MESSAGING_OPERATION_TYPE: PROCESS,
        }
        if group:
            attributes[MESSAGING_CONSUMER_GROUP_NAME] = group
        topics = {message.topic for message in messages}
        topic = next(iter(topics)) if len(topics) == 1 else None
        if topic is not None:
            attributes[MESSAGING_DESTINATION_NAME] = topic
        name = f"{PROCESS} {topic}" if topic is not None else PROCESS
        links: list[Link] = []
        if not batch:
            message = messages[0]
            # The creation context: the producer's span becomes the parent.
            parent = propagate.extract(message.headers, context=current, getter=HEADERS)
            attributes[MESSAGING_DESTINATION_PARTITION_ID] = str(message.partition)
            attributes[MESSAGING_KAFKA_OFFSET] = message.offset
        else:
            parent = current
            attributes[MESSAGING_BATCH_MESSAGE_COUNT] = len(messages)
            for message in messages:
                created = trace.get_current_span(propagate.extract(message.headers, context=Context(), getter=HEADERS))
                span_context = created.get_span_context()
                if span_context.is_valid:
                    links.append(Link(span_context))
        span = tracer.start_span(name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links)
        return span, trace.set_span_in_context(span, parent)

    # -- lag --------------------------------------------------------------------

    def record_statistics(self, statistics: str, group: str) -> None:
        """librdkafka's statistics JSON: each assigned partition's ``consumer_lag``."""
        try:
            document = json.loads(statistics)
            if document.get("type") != "consumer":
                return
            for topic, topic_stats in (document.get("topics") or {}).items():
                for partition, partition_stats in (topic_stats.get("partitions") or {}).items():
                    if partition == _UNASSIGNED_PARTITION:
                        continue
                    key = (group, topic, partition)
                    if not partition_stats.get("desired", False):
                        # No longer this consumer's partition: another worker reports it now.
                        if key in self._reported:
                            self._lag.labels(*key).set(0)
                        continue
                    lag = partition_stats.get("consumer_lag", -1)
                    if isinstance(lag, int) and lag >= 0:  # -1: no committed offset yet
                        self._lag.labels(*key).set(lag)
                        self._reported.add(key)
        except Exception:
            self._lag_failed()


# --- confluent-kafka -------------------------------------------------------------


def _confluent_config(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any], dict]:
    """The consumer's configuration as a new dict, with the arguments that carry it instead:
    ``Consumer(conf)``, ``Consumer(conf=conf)`` or ``Consumer(**conf)``."""
    if args and isinstance(args[0], dict):
        config = dict(args[0])
        return (config, *args[1:]), kwargs, config
    if isinstance(kwargs.get("conf"), dict):
        config = dict(kwargs["conf"])
        return args, {**kwargs, "conf": config}, config
    config = dict(kwargs)
    return args, config, config


def _with_statistics(telemetry: ConsumerTelemetry, config: dict) -> None:
    """Turns librdkafka's statistics on (unless the service chose an interval) and chains
    the service's own callback."""
    group = str(config.get("group.id") or "")
    if not group:
        return  # no group, no committed offsets, no lag
    if "statistics.interval.ms" not in config:
        config["statistics.interval.ms"] = STATISTICS_INTERVAL_MS
    own: Callable[[str], None] | None = config.get("stats_cb")

    def on_statistics(statistics: str) -> None:
        telemetry.record_statistics(statistics, group)
        if own is not None:
            own(statistics)

    config["stats_cb"] = on_statistics


def _confluent_group(consumer: Any) -> str | None:
    config = getattr(consumer, "config", None)
    return str(config["group.id"]) if isinstance(config, dict) and config.get("group.id") else None


def _confluent_received(message: Any) -> Received:
    return Received(message.topic(), message.partition(), message.offset(), message.headers())


def _is_message(message: Any) -> bool:
    """A consumed message, not an event (partition EOF, an error) and not an empty poll."""
    return message is not None and message.error() is None


def patch_confluent(telemetry: ConsumerTelemetry, module: ModuleType) -> None:
    """Replaces the contrib instrumentor's consumer functions (called through the class, so
    both the auto-instrumented classes and ``instrument_consumer`` proxies use them)."""
    instrumentor = module.ConfluentKafkaInstrumentor

    def wrap_poll(func: Callable[..., Any], instance: Any, tracer: Tracer, args: Any, kwargs: Any) -> Any:
        telemetry.finish(instance)
        message = func(*args, **kwargs)
        if _is_message(message):
            telemetry.received(tracer, instance, [_confluent_received(message)], _confluent_group(instance))
        return message

    def wrap_consume(func: Callable[..., Any], instance: Any, tracer: Tracer, args: Any, kwargs: Any) -> Any:
        telemetry.finish(instance)
        messages = func(*args, **kwargs)
        if messages:
            received = [_confluent_received(message) for message in messages if _is_message(message)]
            telemetry.received(tracer, instance, received, _confluent_group(instance), batch=True)
        return messages

    def wrap_close(func: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
        telemetry.finish(instance)
        return func(*args, **kwargs)

    instrumentor.wrap_poll = staticmethod(wrap_poll)
    instrumentor.wrap_consume = staticmethod(wrap_consume)
    instrumentor.wrap_close = staticmethod(wrap_close)

    consumer_class = module.AutoInstrumentedConsumer
    original_init = consumer_class.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            args, kwargs, config = _confluent_config(args, kwargs)
            _with_statistics(telemetry, config)
        except Exception:
            telemetry._lag_failed()
        original_init(self, *args, **kwargs)

    consumer_class.__init__ = __init__


# --- kafka-python ----------------------------------------------------------------


def _kafka_python_received(record: Any) -> Received:
    return Received(record.topic, record.partition, record.offset, record.headers)


def patch_kafka_python(telemetry: ConsumerTelemetry, module: ModuleType) -> None:
    """Replaces the factory the contrib instrumentor wraps ``KafkaConsumer.__next__`` with.

    Only iteration is traced, as contrib does: ``poll()`` returns batches and iteration
    calls it internally, so wrapping it too would trace each message twice."""

    def wrap_next(tracer: Tracer, consume_hook: Any = None) -> Callable[..., Any]:
        def traced_next(func: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
            telemetry.finish(instance)
            record = func(*args, **kwargs)
            if record is not None:
                group = (getattr(instance, "config", None) or {}).get("group_id")
                telemetry.received(tracer, instance, [_kafka_python_received(record)], group)
            return record

        return traced_next

    module._wrap_next = wrap_next


# --- aiokafka --------------------------------------------------------------------


def patch_aiokafka(telemetry: ConsumerTelemetry, module: ModuleType) -> None:
    """Replaces the factories the contrib instrumentor wraps ``getone`` and ``getmany`` with
    (``async for`` calls ``getone``)."""

    def wrap_getone(tracer: Tracer, hook: Any = None) -> Callable[..., Any]:
        async def traced_getone(func: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
            telemetry.finish(instance)
            record = await func(*args, **kwargs)
            if record is not None:
                group = getattr(instance, "_group_id", None)
                telemetry.received(tracer, instance, [_kafka_python_received(record)], group)
            return record

        return traced_getone

    def wrap_getmany(tracer: Tracer, hook: Any = None) -> Callable[..., Any]:
        async def traced_getmany(func: Callable[..., Any], instance: Any, args: Any, kwargs: Any) -> Any:
            telemetry.finish(instance)
            batches = await func(*args, **kwargs)
            if batches:
                received = [_kafka_python_received(record) for records in batches.values() for record in records]
                group = getattr(instance, "_group_id", None)
                telemetry.received(tracer, instance, received, group, batch=True)
            return batches

        return traced_getmany

    module._wrap_getone = wrap_getone
    module._wrap_getmany = wrap_getmany


def mark_failed_processing(exc_info: Any) -> None:
    """Records a logged exception on the current span when that span is a message's processing."""
    if not isinstance(exc_info, tuple) or len(exc_info) != 3 or not isinstance(exc_info[1], BaseException):
        return
    span = trace.get_current_span()
    if not span.is_recording() or getattr(span, "kind", None) is not SpanKind.CONSUMER:
        return
    attributes = getattr(span, "attributes", None) or {}
    if attributes.get(MESSAGING_OPERATION_TYPE) != PROCESS or attributes.get(MESSAGING_SYSTEM) != SYSTEM:
        return
    exception = exc_info[1]
    span.record_exception(exception)
    span.set_status(Status(StatusCode.ERROR, f"{type(exception).__qualname__}: {exception}"))
    span.set_attribute(ERROR_TYPE, type(exception).__qualname__)


_failures_watched = False


def watch_logged_failures() -> None:
    """Chains a log record factory that hands ERROR records with an exception to
    :func:`mark_failed_processing` (once per process; a record without exception costs
    one attribute test)."""
    global _failures_watched
    if _failures_watched:
        return
    _failures_watched = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.exc_info and record.levelno >= logging.ERROR:
            try:
                mark_failed_processing(record.exc_info)
            except Exception:  # telemetry, never the log call
                _logger.debug("meshlens: marking a failed Kafka processing failed", exc_info=True)
        return record

    logging.setLogRecordFactory(factory)


def install(instruments: Instruments, disabled: Iterable[str] = ()) -> ConsumerTelemetry | None:
    """Patches each contrib Kafka instrumentation when it is imported (before it instruments)."""
    disabled = set(disabled)
    if "*" in disabled:
        return None
    telemetry = ConsumerTelemetry(instruments)
    patches = {
        "confluent_kafka": (CONFLUENT_CONTRIB, patch_confluent),
        "kafka": (KAFKA_PYTHON_CONTRIB, patch_kafka_python),
        "aiokafka": (AIOKAFKA_CONTRIB, patch_aiokafka),
    }
    for name, (module_name, patch) in patches.items():
        if name in disabled:
            continue

        def hook(module: ModuleType, patch: Any = patch) -> None:
            patch(telemetry, module)
            watch_logged_failures()

        after_import(module_name, hook)
    return telemetry
