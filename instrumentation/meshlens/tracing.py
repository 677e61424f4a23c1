"""Traces: resource, sampler, OTLP exporter and a bounded, counted export queue.

The export path never slows a request: spans wait in the SDK's bounded queue and a
background thread exports them. When the collector is down, slow or refusing, what
cannot be delivered is dropped and counted (``meshlens_spans_dropped_total``), and
one warning is logged per outage instead of one per batch.
"""

from __future__ import annotations

# Imported for its side effect, before the tracer provider exists: the module
# registers an after-fork handler that re-creates the lock ThreadPoolExecutor.submit
# takes, and the SDK's own after-fork handler (which refreshes the resource with a
# ThreadPoolExecutor) must run after it. The other way round, a child forked after
# set-up (`gunicorn --preload`, `meshlens-run gunicorn`, Celery's pool) hangs on that
# lock for ever.
import concurrent.futures.thread  # noqa: F401
import contextvars
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    EventBase,
    ReadableSpan,
    Span,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    Tracer,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
)
from opentelemetry.trace import Span as TraceSpan
from opentelemetry.trace.propagation import get_current_span
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.util.types import AnyValue, Attributes

from meshlens import catalogue
from meshlens._threads import start_or_run
from meshlens._version import __version__
from meshlens.instruments import Instruments
from meshlens.otlp import SPAN_CONTEXT_BY_POSITION, UNSET_STATUS, EncodedSpan
from meshlens.propagation import JAEGER_DEBUG_KEY, JaegerDebugSampler
from meshlens.settings import DEFAULT_OTLP_GRPC_ENDPOINT, DEFAULT_OTLP_HTTP_ENDPOINT, Settings

try:  # the SDK's internal span metrics when they are off (a private module of the SDK)
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
except ImportError:  # another SDK release: the metrics hook is always called

    class NoOpTracerMetrics:  # type: ignore[no-redef]
        """Stands in for the SDK's class: nothing is an instance of it."""

_logger = logging.getLogger("meshlens")
_sdk_logger = logging.getLogger("opentelemetry.sdk.trace")  # where the SDK's span warnings go

# Enum members read once: each read of ``Decision.DROP`` runs Python code of the enum class.
_DROP, _RECORD_ONLY, _RECORD_AND_SAMPLE = Decision.DROP, Decision.RECORD_ONLY, Decision.RECORD_AND_SAMPLE
_SERVER = SpanKind.SERVER

# Downward-API variables, as the usual pod specs name them, for each resource attribute.
KUBERNETES_ENV: Mapping[str, tuple[str, ...]] = {
    "k8s.pod.name": ("K8S_POD_NAME", "POD_NAME"),
    "k8s.namespace.name": ("K8S_NAMESPACE_NAME", "POD_NAMESPACE"),
    "k8s.node.name": ("K8S_NODE_NAME", "NODE_NAME"),
    "k8s.pod.uid": ("K8S_POD_UID", "POD_UID"),
    "k8s.container.name": ("K8S_CONTAINER_NAME", "CONTAINER_NAME"),
}
# Loggers of the OTLP exporters, which otherwise log every failed batch.
EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
)


class CachedHashResource(Resource):
    """A resource whose hash is computed once.

    The SDK hashes a resource by serialising its attributes to JSON, and the OTLP
    encoder hashes the resource of every span it encodes: about a tenth of the
    export's cost, for a value that never changes (resources are immutable).
    """

    _hash: int | None = None

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = super().__hash__()
        return self._hash

    def merge(self, other: Resource) -> CachedHashResource:
        merged = super().merge(other)
        return CachedHashResource(merged.attributes, merged.schema_url)


def build_resource(settings: Settings, env: Mapping[str, str] | None = None) -> Resource:
    env = os.environ if env is None else env
    attributes: dict[str, Any] = {
        "telemetry.distro.name": "meshlens",
        "telemetry.distro.version": __version__,
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": ".".join(str(part) for part in sys.version_info[:3]),
    }
    for attribute, variables in KUBERNETES_ENV.items():
        for variable in variables:
            if env.get(variable):
                attributes[attribute] = env[variable]
                break
    attributes.update(dict(settings.resource_attributes))
    if settings.service_name:
        attributes["service.name"] = settings.service_name
    elif "service.name" not in attributes:
        attributes["service.name"] = f"unknown_service:{os.path.basename(sys.executable) or 'python'}"
    # Not Resource.create: it would read OTEL_* again behind the settings' back.
    return CachedHashResource(attributes)


CALLER_RECORDS_METRICS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "meshlens_caller_records_metrics", default=False
)
"""Set while a span is started by code that records its metrics itself (meshlens's HTTP
server middlewares): an unsampled span then need not be recorded at all."""


class RecordUnsampled(Sampler):
    """Turns the delegate's DROP into RECORD_ONLY.

    Unsampled spans are then still seen by the span processors, so every request
    counts in the RED metrics; they are never exported, and the trace flags sent
    downstream still say "not sampled". Where the caller records the metrics itself
    (:data:`CALLER_RECORDS_METRICS`), DROP stays DROP: a non-recording span costs
    a fraction of a recording one.
    """

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    @property
    def delegate(self) -> Sampler:
        """The configured sampler, whose decision stands for callers that record their own metrics."""
        return self._delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        result = self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )
        if result.decision is _DROP and not CALLER_RECORDS_METRICS.get():
            # The SDK gives a span the attributes of its sampling result, not the ones it
            # was started with: a DROP result carries none, so pass the originals on.
            return SamplingResult(_RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"RecordUnsampled{{{self._delegate.get_description()}}}"


class ConfiguredSampler(JaegerDebugSampler):
    """The sampler ``OTEL_TRACES_SAMPLER`` names (one of the SDK's six, ``configured``) behind
    Jaeger's debug override, which can also give its decision for a server span in one step.

    ``should_sample`` is :class:`JaegerDebugSampler`'s over the SDK's sampler. :meth:`sampled`
    gives the same decision for a span started with no attributes and no links (as meshlens's
    server spans are) without that chain of calls, in which each sampler reads the parent
    from the context again and builds its own result: measured, about 18,000 instructions
    per request, a fifth of what meshlens added to an unsampled request. A test holds the
    two to the same answers for every kind of parent.
    """

    def __init__(self, configured: Sampler, parent_based: bool, root_bound: int) -> None:
        super().__init__(configured)
        self._parent_based = parent_based
        self._root_bound = root_bound  # a trace id's low 64 bits below it: sampled (TraceIdRatioBased)

    def sampled(self, parent_context: Context, parent: SpanContext | None, trace_id: int) -> bool | None:
        """Whether ``should_sample`` samples a span with no attributes or links in ``parent_context``,
        whose valid parent span context is ``parent`` (None for a root span); None where a
        Jaeger debug request asks for the full decision."""
        if JAEGER_DEBUG_KEY in parent_context:
            return None
        if parent is not None and self._parent_based:
            # ParentBased's default delegates, remote and local alike: follow the parent's flag.
            return parent.trace_flags.sampled
        return trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._root_bound


def build_sampler(settings: Settings) -> Sampler:
    ratio = TraceIdRatioBased(settings.sampler_arg)
    always = ratio.get_bound_for_rate(1.0)
    root, root_bound = {
        "always_on": (ALWAYS_ON, always),
        "always_off": (ALWAYS_OFF, 0),
        "traceidratio": (ratio, ratio.bound),
    }[settings.sampler.removeprefix("parentbased_")]
    parent_based = settings.sampler.startswith("parentbased_")
    configured = ParentBased(root) if parent_based else root
    # Jaeger debug requests are sampled whatever the configured sampler says; inside
    # RecordUnsampled, so that its decision is still "the configured one" for callers that
    # record their own metrics (and ServerSpanStarter's direct path sees RecordUnsampled).
    return RecordUnsampled(ConfiguredSampler(configured, parent_based, root_bound))


def traces_endpoint(settings: Settings) -> str:
    if settings.otlp_traces_endpoint:
        return settings.otlp_traces_endpoint
    if settings.otlp_protocol == "grpc":
        return settings.otlp_endpoint or DEFAULT_OTLP_GRPC_ENDPOINT
    base = settings.otlp_endpoint or DEFAULT_OTLP_HTTP_ENDPOINT
    return base.rstrip("/") + "/v1/traces"


def build_exporter(settings: Settings) -> SpanExporter | None:
    if settings.traces_exporter == "none":
        return None
    if settings.traces_exporter == "console":
        return ConsoleSpanExporter()
    endpoint = traces_endpoint(settings)
    headers = dict(settings.otlp_headers)
    timeout = settings.otlp_timeout_ms / 1000
    if settings.otlp_protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError:
            _logger.warning(
                "meshlens: OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs `pip install 'meshlens[grpc-export]'`; "
                "exporting over http/protobuf to %s instead",
                traces_endpoint(settings.replace(otlp_protocol="http/protobuf")),
            )
            return build_exporter(settings.replace(otlp_protocol="http/protobuf"))
        from grpc import Compression as GrpcCompression

        compression = GrpcCompression.Gzip if settings.otlp_compression == "gzip" else GrpcCompression.NoCompression
        return GrpcSpanExporter(
            endpoint=endpoint,
            insecure=endpoint.startswith("http://"),
            headers=headers,
            timeout=timeout,
            compression=compression,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression

    from meshlens.otlp import FastOTLPSpanExporter, keep_alive_transport

    compression_ = Compression.Gzip if settings.otlp_compression == "gzip" else Compression.NoCompression
    transport = keep_alive_transport(endpoint)
    if transport is not None:
        try:
            return FastOTLPSpanExporter(
                endpoint=endpoint, headers=headers, timeout=timeout, compression=compression_, _transport=transport
            )
        except TypeError:  # an exporter without the transport argument: the stock transport
            _logger.debug("meshlens: the OTLP exporter takes no transport; exporting through requests")
    return FastOTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=timeout, compression=compression_)


class _FirstReason(logging.Filter):
    """Keeps the first message the exporter loggers write during an export, for
    meshlens's own warning (the first says why: "connection refused"; later ones
    only say that retries ran out), and silences them: meshlens reports an outage
    once, not once per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.first: str = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            if not self.first:
                try:
                    self.first = record.getMessage()
                except Exception:
                    self.first = str(record.msg)
            return False
        return True


class ObservedExporter(SpanExporter):
    """Counts what the delegate delivers and loses, and logs an outage once."""

    def __init__(self, delegate: SpanExporter, instruments: Instruments, endpoint: str) -> None:
        self._delegate = delegate
        self.accepts_encoded_spans: bool = getattr(delegate, "accepts_encoded_spans", False)
        self._endpoint = endpoint
        self._exported = instruments[catalogue.MESHLENS_SPANS_EXPORTED].labels()
        self._dropped = instruments[catalogue.MESHLENS_SPANS_DROPPED].labels("export_failed")
        self._failures = instruments[catalogue.MESHLENS_EXPORT_FAILURES].labels("traces")
        self._reason = _FirstReason()
        for name in EXPORTER_LOGGERS:
            logging.getLogger(name).addFilter(self._reason)
        self._outage_started: float | None = None
        self._outage_dropped = 0
        self._in_flight = 0  # spans of the batch being exported, until they are counted

    def take_in_flight(self) -> int:
        """The spans of the batch being exported, counted by the caller from now on (at exit,
        as lost): the export's own outcome no longer counts them."""
        taken, self._in_flight = self._in_flight, 0
        return taken

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._reason.first = ""
        self._in_flight = len(spans)
        try:
            result = self._delegate.export(spans)
        except Exception as exc:  # an exporter bug must not kill the export thread
            self._reason.first = f"{type(exc).__name__}: {exc}"
            result = SpanExportResult.FAILURE
        count = self.take_in_flight()
        if result is SpanExportResult.SUCCESS:
            self._exported.inc(count)
            if self._outage_started is not None:
                _logger.warning(
                    "meshlens: span export to %s recovered after %.1f s; %d spans were dropped meanwhile",
                    self._endpoint, time.monotonic() - self._outage_started, self._outage_dropped,
                )  # fmt: skip
                self._outage_started = None
            return result
        self._dropped.inc(count)
        self._failures.inc()
        if self._outage_started is None:
            self._outage_started = time.monotonic()
            self._outage_dropped = 0
            _logger.warning(
                "meshlens: cannot export spans to %s (%s); requests are not affected, undelivered "
                "spans are dropped and counted in meshlens_spans_dropped_total. "
                "This is logged once per outage.",
                self._endpoint, self._reason.first or "export failed",
            )  # fmt: skip
        self._outage_dropped += count
        return result

    def shutdown(self) -> None:
        self._delegate.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._delegate.force_flush(timeout_millis)


class CountedBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, with spans lost to a full queue counted, and spans encoded
    as they end when the exporter takes encoded spans (:class:`meshlens.otlp.EncodedSpan`)."""

    def __init__(self, exporter: SpanExporter, settings: Settings, instruments: Instruments) -> None:
        super().__init__(
            exporter,
            max_queue_size=settings.span_queue_size,
            schedule_delay_millis=settings.span_schedule_delay_ms,
            max_export_batch_size=min(settings.span_batch_size, settings.span_queue_size),
            export_timeout_millis=settings.otlp_timeout_ms,
        )
        self._capacity = settings.span_queue_size
        self._observed = exporter if isinstance(exporter, ObservedExporter) else None
        self._queue_full = instruments[catalogue.MESHLENS_SPANS_DROPPED].labels("queue_full")
        self._shutdown_drops = instruments[catalogue.MESHLENS_SPANS_DROPPED].labels("shutdown")
        self._queue_size = instruments[catalogue.MESHLENS_SPAN_QUEUE_SIZE].labels()
        instruments[catalogue.MESHLENS_SPAN_QUEUE_CAPACITY].labels().set(self._capacity)
        # The SDK's queue (a deque; when full, appending silently drops the oldest span) and
        # its entry point, which takes whatever the exporter accepts.
        batch = getattr(self, "_batch_processor", None)
        self._queue: Any = getattr(batch, "_queue", None)
        self._emit: Any = getattr(batch, "emit", None) if getattr(exporter, "accepts_encoded_spans", False) else None

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        sampled = span.context.trace_flags.sampled
        if queue is not None and sampled and len(queue) >= self._capacity:
            # Full: drop this span here, counted, rather than let the SDK drop the oldest
            # one and log a warning from the request's thread for every span.
            self._queue_full.inc()
            return
        emit = self._emit
        if emit is None or not sampled:
            super().on_end(span)
            return
        try:
            item: Any = EncodedSpan(span)
        except Exception:  # never lose the span over its encoding: the exporter encodes it again
            _logger.debug("meshlens: could not encode a span ahead of export", exc_info=True)
            item = span
        emit(item)

    @property
    def encodes_on_end(self) -> bool:
        """Whether ``on_end`` encodes the span before it returns (then it may be handed the
        span itself, not a copy)."""
        return self._emit is not None

    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def take_unfinished(self) -> int:
        """The spans not delivered yet, queued or in the batch being exported, given up (the
        queue is emptied) for the caller to count: nothing counts them again."""
        in_flight = self._observed.take_in_flight() if self._observed is not None else 0
        queued = 0
        if self._queue is not None:
            while True:  # popped one by one: the request threads may still be adding spans
                try:
                    self._queue.pop()
                except IndexError:
                    break
                queued += 1
        return queued + in_flight

    def stop_within(self, timeout_s: float) -> bool:
        """Wakes the export thread to send everything queued, then to stop, and waits for it
        at most ``timeout_s``; False if it is still sending then. (The SDK's ``shutdown()``
        waits up to 30 s; its batch processor takes the deadline.)"""
        batch = getattr(self, "_batch_processor", None)
        thread = getattr(batch, "_worker_thread", None)
        if batch is None or thread is None:
            self.shutdown()
            return True
        batch.shutdown(timeout_millis=int(timeout_s * 1000))
        return not thread.is_alive()

    def sample_queue(self) -> None:
        self._queue_size.set(self.queued())

    def count_shutdown_drops(self, count: int) -> None:
        self._shutdown_drops.inc(count)


def build_tracer_provider(settings: Settings, resource: Resource, metrics_processor: SpanProcessor) -> TracerProvider:
    """The provider, with the metrics processor first; :func:`build_span_processor` adds the
    export queue when meshlens starts its threads."""
    # shutdown_on_exit=False: meshlens flushes at exit itself, within its own deadline.
    provider = TracerProvider(resource=resource, sampler=build_sampler(settings), shutdown_on_exit=False)
    provider.add_span_processor(metrics_processor)
    return provider


def build_span_processor(settings: Settings, instruments: Instruments) -> CountedBatchSpanProcessor | None:
    """The export queue and its thread (started here), or None when traces are not exported."""
    exporter = build_exporter(settings)
    if exporter is None:
        return None
    endpoint = traces_endpoint(settings) if settings.traces_exporter == "otlp" else settings.traces_exporter
    return CountedBatchSpanProcessor(ObservedExporter(exporter, instruments, endpoint), settings, instruments)


def flush_and_shutdown(
    provider: TracerProvider, processor: CountedBatchSpanProcessor | None, timeout_s: float
) -> None:
    """Sends what is buffered and stops the export thread, within ``timeout_s``.

    The export thread does the sending, and the caller waits for it at most ``timeout_s``: the
    SDK's ``force_flush`` would export in the caller's thread and ignores its timeout, so a hung
    collector would hold the stop for the exporter's whole timeout, batch after batch. The batch
    processor needs no new thread for this, so it also holds at interpreter exit on Python
    3.12+, which starts none.
    What is still queued or being sent at the deadline is counted as dropped (reason
    ``shutdown``) and logged, so a slow collector at exit shows in the numbers, not as a hang.
    """
    deadline = time.monotonic() + timeout_s
    if processor is not None:
        try:
            finished = processor.stop_within(timeout_s)
        except Exception:
            _logger.debug("meshlens: error while flushing spans", exc_info=True)
            finished = False
        left = processor.take_unfinished()
        if left or not finished:
            processor.count_shutdown_drops(left)
            _logger.warning("meshlens: %d spans not flushed within %.1f s at exit (queued or being sent); dropped",
                            left, timeout_s)  # fmt: skip
    # The other span processors (the batch processor's own shutdown is done), in what is left of
    # the deadline: one added by the application may wait on an exporter of its own.
    # (At interpreter exit on Python 3.12+, where no thread starts, they take the time they take.)
    stopping = start_or_run(functools.partial(_shut_down, provider), "meshlens-tracing-shutdown")
    if stopping is not None:
        stopping.join(max(0.0, deadline - time.monotonic()))


def _shut_down(provider: TracerProvider) -> None:
    try:
        provider.shutdown()
    except Exception:
        _logger.debug("meshlens: error while shutting down tracing", exc_info=True)


# -- server spans -------------------------------------------------------------------------

# The trace flags the SDK's start_span builds for every span, built once.
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSAMPLED_RANDOM = TraceFlags(TraceFlags.DEFAULT | TraceFlags.RANDOM_TRACE_ID)
_UNSET = UNSET_STATUS
_MAX_TRACE_ID, _MAX_SPAN_ID = (1 << 128) - 1, (1 << 64) - 1
_make_span_context = functools.partial(tuple.__new__, SpanContext)
# Hooks of the SDK's processors that do nothing: a server span skips calling them.
_NO_OP_ON_START = frozenset(
    getattr(cls, "on_start", None) for cls in (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)
)
_NO_OP_ON_ENDING = frozenset(
    getattr(cls, "_on_ending", None) for cls in (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)
)


class ServerSpan(Span):
    """The SERVER span of a request traced by meshlens's HTTP middlewares: an SDK span
    (``trace.get_current_span()`` returns it, and ``set_attribute``, ``add_event``,
    ``record_exception``, ``set_status``, child spans and log correlation work as on any
    SDK span), built for the one span every request has.

    What differs from the SDK's ``Tracer.start_span``, and why it is still the same span:

    - It allocates only what a request uses. The SDK's span builds a validated attribute
      mapping, two bounded lists and their locks up front; this one starts from the
      middleware's own attributes (strings and integers it made, valid by construction)
      in a plain dict, and switches to the SDK's ``BoundedAttributes`` the first time a
      caller sets an attribute, so that a caller's values go through the SDK's validation
      and limits exactly as before. Events and links get their bounded list on the first
      one. When span limits are configured that the middleware's attributes could exceed,
      they go through ``BoundedAttributes`` from the start.
    - Span processors see start and end as the SDK's contract says: ``on_start`` with the
      span and the parent context (after the request attributes are set, as when a span
      is started with attributes), ``_on_ending`` with the span, ``on_end`` with a
      read-only copy. Only calls known to do nothing are skipped (see
      :class:`ServerSpanPipeline`), and meshlens's export queue takes the span itself,
      because it encodes it on the spot.
    """

    # The SDK's fields as every server span starts (set on the instance when they change).
    _kind = _SERVER
    _end_time: int | None = None
    _events: Any = ()
    _links: Any = ()
    _status = _UNSET
    _trace_config = None
    _record_exception = True
    _set_status_on_exception = True

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        tracer: Tracer,
        attributes: dict[str, Any],
        sampler_attributes: Attributes,
        pipeline: ServerSpanPipeline,
        record_end_metrics: Callable[[], None] | None,
    ) -> None:
        # Not the SDK's __init__: these are the fields the SDK's Span and ReadableSpan
        # methods read, set as they would be, without the allocations described above
        # (those every server span starts with the same values are the class attributes above).
        self._name = name
        self._context = context
        self._instrumentation_info = tracer.instrumentation_info
        self._instrumentation_scope = tracer._instrumentation_scope
        self._parent = parent
        self._start_time = time.time_ns()
        self._resource = tracer.resource
        self._sampler = tracer.sampler
        self._span_processor = tracer.span_processor
        self._limits = limits = tracer._span_limits
        self._lock = threading.Lock()
        self._record_end_metrics = record_end_metrics
        self._pipeline = pipeline
        if sampler_attributes or limits.max_span_attribute_length is not None or (
            limits.max_span_attributes is not None and len(attributes) > limits.max_span_attributes
        ):
            bounded = self._bounded_attributes(sampler_attributes)
            bounded._set_items(attributes)
            self._attributes: Any = bounded
        else:
            self._attributes = attributes

    def _bounded_attributes(self, initial: Attributes) -> BoundedAttributes:
        limits = self._limits
        return BoundedAttributes(
            limits.max_span_attributes, initial, immutable=False, max_value_len=limits.max_span_attribute_length
        )

    def _validated_attributes(self) -> BoundedAttributes:
        """The attributes as the SDK keeps them, from the first attribute a caller sets on (lock held)."""
        attributes = self._attributes
        if type(attributes) is dict:  # the plain dict this span starts with (never a subclass)
            attributes = self._attributes = self._bounded_attributes(attributes)
        return attributes

    def set_attribute(self, key: str, value: AnyValue) -> None:
        with self._lock:
            if self._end_time is not None:
                _sdk_logger.warning("Setting attribute on ended span.")
                return
            self._validated_attributes()[key] = value

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        with self._lock:
            if self._end_time is not None:
                _sdk_logger.warning("Setting attribute on ended span.")
                return
            self._validated_attributes()._set_items(attributes)

    def _add_event(self, event: EventBase) -> None:
        with self._lock:
            if type(self._events) is tuple:
                self._events = BoundedList(self._limits.max_events)
        Span._add_event(self, event)

    def _add_link(self, link: Link) -> None:
        with self._lock:
            if type(self._links) is tuple:
                self._links = BoundedList(self._limits.max_links)
        Span._add_link(self, link)

    def end_request(self, name: str, attributes: Mapping[str, str | int]) -> None:
        """Renames (unless ``name`` is empty), adds the middleware's own attributes (str and int
        values it built: stored as they are, unless the span already validates attributes or
        a limit applies) and ends the span, under one lock."""
        with self._lock:
            if self._end_time is not None:
                _sdk_logger.warning("Calling end() on an ended span.")
                return
            if name:
                self._name = name
            plain = self._attributes
            limit = self._limits.max_span_attributes
            if type(plain) is dict and (limit is None or len(plain) + len(attributes) <= limit):
                plain.update(attributes)
            else:
                self._validated_attributes()._set_items(attributes)
            self._end_time = time.time_ns()
            if type(self._attributes) is not dict:  # BoundedAttributes (an ABC: isinstance is slow)
                self._attributes._immutable = True
        self._ended()

    def start(self, start_time: int | None = None, parent_context: Context | None = None) -> None:
        """A server span starts when it is made (see :meth:`ServerSpanStarter.start`)."""
        _sdk_logger.warning("Calling start() on a started span.")

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                _sdk_logger.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time.time_ns()
            if type(self._attributes) is not dict:  # BoundedAttributes (an ABC: isinstance is slow)
                self._attributes._immutable = True
        self._ended()

    def _ended(self) -> None:
        """What the SDK's Span.end does once the end time is set."""
        if self._record_end_metrics is not None:
            self._record_end_metrics()
        pipeline = self._pipeline
        for processor in pipeline.ending:
            processor._on_ending(self)
        for processor, takes_span in pipeline.ended:
            # The SDK hands on_end a read-only copy; meshlens's export queue encodes the
            # span before this call returns, so it takes the span itself.
            processor.on_end(self if takes_span else self._readable_span())


class ServerSpanPipeline:
    """The provider's span processors, sorted by what each one does with a server span.

    ``starting``: those whose ``on_start`` does something (the SDK's batch and simple
    processors' do nothing; a processor that says it ignores the scope is left out, as
    meshlens's RED processor does for the middleware's spans); ``ending``: those with an
    ``_on_ending`` that does something; ``ended``: ``(processor, takes the span itself)``.
    Rebuilt when the provider's processors change (a processor added after set-up).
    """

    __slots__ = ("ended", "ending", "source", "starting")

    def __init__(self, source: object, processors: Sequence[SpanProcessor], scope_name: str) -> None:
        self.source = source
        kept = [p for p in processors if not _ignores_scope(p, scope_name)]
        self.starting: tuple[SpanProcessor, ...] = tuple(
            p for p in kept if getattr(type(p), "on_start", None) not in _NO_OP_ON_START
        )
        self.ending: tuple[SpanProcessor, ...] = tuple(
            p for p in kept
            if hasattr(p, "_on_ending") and getattr(type(p), "_on_ending", None) not in _NO_OP_ON_ENDING
        )  # fmt: skip
        self.ended: tuple[tuple[SpanProcessor, bool], ...] = tuple(
            (p, isinstance(p, CountedBatchSpanProcessor) and p.encodes_on_end) for p in kept
        )


def _ignores_scope(processor: SpanProcessor, scope_name: str) -> bool:
    ignores = getattr(processor, "ignores_scope", None)
    try:
        return bool(ignores(scope_name)) if callable(ignores) else False
    except Exception:
        return False


# The fields ServerSpan sets itself (in __init__) on top of its class attributes.
_SERVER_SPAN_FIELDS = frozenset((
    "_name", "_context", "_instrumentation_info", "_instrumentation_scope", "_parent", "_start_time", "_resource",
    "_sampler", "_span_processor", "_limits", "_lock", "_record_end_metrics", "_pipeline", "_attributes",
))  # fmt: skip


def _server_span_has_the_sdk_fields() -> bool:
    """Whether ServerSpan sets every field the SDK's span has in this SDK release: a release
    that adds one (which its methods would read) turns ServerSpan off, and server spans are
    then started by the tracer, as any span."""
    try:
        from opentelemetry.sdk.trace import _Span  # the SDK's concrete span, made here without a tracer

        probe = _Span("probe", INVALID_SPAN_CONTEXT)
    except Exception:
        return False
    missing = set(vars(probe)) - _SERVER_SPAN_FIELDS - set(vars(ServerSpan))
    if missing:
        _logger.debug("meshlens: the SDK's span has fields ServerSpan does not set (%s); not used", missing)
    return not missing


class ServerSpanStarter:
    """Starts the server spans of meshlens's HTTP middlewares, as the SDK's ``Tracer.start_span``
    would (same sampler, id generator, tracer configuration, internal span metrics), with
    :class:`ServerSpan` for a recording span.

    Falls back to ``tracer.start_span`` when the tracer is not the SDK's or lacks one of the
    private fields read here (another SDK release), and when the tracer is disabled.
    """

    def __init__(self, tracer: Any, scope_name: str) -> None:
        self._tracer = tracer
        self._scope_name = scope_name
        # Private fields of the SDK's Tracer: its span limits, scope and internal metrics (the
        # public API has no reader for them) and the provider's processor list.
        self._fast = isinstance(tracer, Tracer) and all(
            hasattr(tracer, name)
            for name in ("_span_limits", "_instrumentation_scope", "_tracer_metrics", "_is_enabled",
                         "id_generator", "sampler", "span_processor", "resource", "instrumentation_info")
        )  # fmt: skip
        self._fast = self._fast and _server_span_has_the_sdk_fields()
        self._pipeline: ServerSpanPipeline | None = None
        # The SDK's internal span metrics, when they are on (set when the tracer is made).
        metrics = getattr(tracer, "_tracer_metrics", None)
        self._span_metrics = None if isinstance(metrics, NoOpTracerMetrics) else metrics

    def pipeline(self) -> ServerSpanPipeline:
        active = self._tracer.span_processor
        processors = getattr(active, "_span_processors", None)
        if not isinstance(active, SynchronousMultiSpanProcessor) or not isinstance(processors, tuple):
            source: object = active
            processors = (active,)  # e.g. the SDK's concurrent processor: called as a whole
        else:
            source = processors  # the SDK replaces the tuple when a processor is added
        pipeline = self._pipeline
        if pipeline is None or pipeline.source is not source:
            pipeline = self._pipeline = ServerSpanPipeline(source, processors, self._scope_name)
        return pipeline

    def start(
        self, name: str, parent: Context, attributes_of: Callable[[Any], dict[str, Any]], carrier: Any
    ) -> TraceSpan:
        """A SERVER span under ``parent``; ``attributes_of(carrier)`` is called only for a recording span."""
        tracer = self._tracer
        if not self._fast or not tracer._is_enabled():
            return self._start_with_tracer(name, parent, attributes_of, carrier)
        # An empty context (a request with no propagation header) holds no span: no lookup.
        parent_span_context: SpanContext | None = get_current_span(parent).get_span_context() if parent else None
        ids = tracer.id_generator
        if parent_span_context is not None and parent_span_context.is_valid:
            trace_id = parent_span_context.trace_id
            random_trace_id = parent_span_context.trace_flags.random_trace_id
        else:
            parent_span_context = None
            trace_id = ids.generate_trace_id()
            random_trace_id = ids.is_trace_id_random()
        sampler = tracer.sampler
        sampled = None
        attributes: Attributes = None
        if type(sampler) is RecordUnsampled:
            # What RecordUnsampled does for a caller that records its own metrics, without
            # the context variable: the configured sampler's decision as it is.
            configured = sampler.delegate
            if type(configured) is ConfiguredSampler:
                sampled = configured.sampled(parent, parent_span_context, trace_id)
            if sampled is None:
                result = configured.should_sample(parent, trace_id, name, _SERVER, None, ())
        else:
            token = CALLER_RECORDS_METRICS.set(True)
            try:
                result = sampler.should_sample(parent, trace_id, name, _SERVER, None, ())
            finally:
                CALLER_RECORDS_METRICS.reset(token)
        if sampled is None:
            decision = result.decision
            trace_state = result.trace_state
            attributes = result.attributes
        else:
            decision = _RECORD_AND_SAMPLE if sampled else _DROP
            trace_state = parent_span_context.trace_state if parent_span_context is not None else None
        if decision is _RECORD_AND_SAMPLE:
            flags = _SAMPLED_RANDOM if random_trace_id else _SAMPLED
        else:
            flags = _UNSAMPLED_RANDOM if random_trace_id else _UNSAMPLED
        span_id = ids.generate_span_id()
        if SPAN_CONTEXT_BY_POSITION:
            # SpanContext's own __new__ checks the ids in Python; the same tuple, made directly.
            context = _make_span_context((
                trace_id, span_id, False, flags, trace_state if trace_state is not None else DEFAULT_TRACE_STATE,
                0 < trace_id <= _MAX_TRACE_ID and 0 < span_id <= _MAX_SPAN_ID,
            ))  # fmt: skip
        else:
            context = SpanContext(trace_id, span_id, False, flags, trace_state)
        metrics = self._span_metrics
        record_end_metrics = metrics.start_span(parent_span_context, decision) if metrics is not None else None
        if decision is _DROP:
            return NonRecordingSpan(context)
        pipeline = self.pipeline()
        span = ServerSpan(
            name, context, parent_span_context, tracer, attributes_of(carrier), attributes, pipeline,
            record_end_metrics,
        )  # fmt: skip
        # What the SDK's Span.start does once the span exists (nothing else holds it yet).
        for processor in pipeline.starting:
            processor.on_start(span, parent_context=parent)
        return span

    def _start_with_tracer(
        self, name: str, parent: Context, attributes_of: Callable[[Any], dict[str, Any]], carrier: Any
    ) -> TraceSpan:
        token = CALLER_RECORDS_METRICS.set(True)
        try:
            span = self._tracer.start_span(name, parent, _SERVER)
        finally:
            CALLER_RECORDS_METRICS.reset(token)
        if span.is_recording():
            span.set_attributes(attributes_of(carrier))
        return span
