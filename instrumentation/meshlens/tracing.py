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
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
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
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from meshlens import catalogue
from meshlens._version import __version__
from meshlens.instruments import Instruments
from meshlens.otlp import EncodedSpan
from meshlens.settings import DEFAULT_OTLP_GRPC_ENDPOINT, DEFAULT_OTLP_HTTP_ENDPOINT, Settings

_logger = logging.getLogger("meshlens")

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
        if result.decision is Decision.DROP and not CALLER_RECORDS_METRICS.get():
            # The SDK gives a span the attributes of its sampling result, not the ones it
            # was started with: a DROP result carries none, so pass the originals on.
            return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)
        return result

    def get_description(self) -> str:
        return f"RecordUnsampled{{{self._delegate.get_description()}}}"


def build_sampler(settings: Settings) -> Sampler:
    ratio = TraceIdRatioBased(settings.sampler_arg)
    delegate: Sampler = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }[settings.sampler]
    return RecordUnsampled(delegate)


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

    from meshlens.otlp import FastOTLPSpanExporter

    compression_ = Compression.Gzip if settings.otlp_compression == "gzip" else Compression.NoCompression
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

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._reason.first = ""
        try:
            result = self._delegate.export(spans)
        except Exception as exc:  # an exporter bug must not kill the export thread
            self._reason.first = f"{type(exc).__name__}: {exc}"
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self._exported.inc(len(spans))
            if self._outage_started is not None:
                _logger.warning(
                    "meshlens: span export to %s recovered after %.1f s; %d spans were dropped meanwhile",
                    self._endpoint, time.monotonic() - self._outage_started, self._outage_dropped,
                )  # fmt: skip
                self._outage_started = None
            return result
        self._dropped.inc(len(spans))
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
        self._outage_dropped += len(spans)
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
        if queue is not None and span.context.trace_flags.sampled and len(queue) >= self._capacity:
            # Full: drop this span here, counted, rather than let the SDK drop the oldest
            # one and log a warning from the request's thread for every span.
            self._queue_full.inc()
            return
        emit = self._emit
        if emit is None or not span.context.trace_flags.sampled:
            super().on_end(span)
            return
        try:
            item: Any = EncodedSpan(span)
        except Exception:  # never lose the span over its encoding: the exporter encodes it again
            _logger.debug("meshlens: could not encode a span ahead of export", exc_info=True)
            item = span
        emit(item)

    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def sample_queue(self) -> None:
        self._queue_size.set(self.queued())

    def count_shutdown_drops(self, count: int) -> None:
        self._shutdown_drops.inc(count)


def build_tracer_provider(
    settings: Settings, resource: Resource, instruments: Instruments, metrics_processor: SpanProcessor
) -> tuple[TracerProvider, CountedBatchSpanProcessor | None]:
    """The provider, with the metrics processor ahead of the export queue."""
    # shutdown_on_exit=False: meshlens flushes at exit itself, within its own deadline.
    provider = TracerProvider(resource=resource, sampler=build_sampler(settings), shutdown_on_exit=False)
    provider.add_span_processor(metrics_processor)
    exporter = build_exporter(settings)
    if exporter is None:
        return provider, None
    endpoint = traces_endpoint(settings) if settings.traces_exporter == "otlp" else settings.traces_exporter
    processor = CountedBatchSpanProcessor(ObservedExporter(exporter, instruments, endpoint), settings, instruments)
    provider.add_span_processor(processor)
    return provider, processor


def flush_and_shutdown(
    provider: TracerProvider, processor: CountedBatchSpanProcessor | None, timeout_s: float
) -> None:
    """Flushes what is buffered and stops the export thread, within ``timeout_s``.

    What is still queued when the deadline passes is counted as dropped (reason
    ``shutdown``), so a slow collector at exit shows in the numbers, not as a hang.
    """
    done = threading.Event()

    def run() -> None:
        try:
            provider.force_flush(int(timeout_s * 1000))
            provider.shutdown()
        except Exception:
            _logger.debug("meshlens: error while flushing spans", exc_info=True)
        finally:
            done.set()

    thread = threading.Thread(target=run, name="meshlens-flush", daemon=True)
    try:
        thread.start()
    except RuntimeError:
        # Python 3.12+ starts no thread once the interpreter is finalising (atexit):
        # flush inline; the queue is bounded, and force_flush honours the deadline.
        run()
        return
    if done.wait(timeout_s):
        return
    left = processor.queued() if processor is not None else 0
    if processor is not None:
        processor.count_shutdown_drops(left)
    _logger.warning("meshlens: %d spans not flushed within %.1f s at exit; dropped", left, timeout_s)
