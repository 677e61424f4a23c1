"""The telemetry catalogue: every metric meshlens emits or reads, declared once.

The runtime creates its instruments from this module; dashboards, alerts and the
metrics table in the docs are built from it. A metric name, a label or a bucket
boundary is written here and nowhere else.

Names follow the OpenTelemetry stable semantic conventions translated to Prometheus
by the OpenTelemetry-to-Prometheus rules: dots become underscores, the unit is
appended (``s`` -> ``_seconds``, ``By`` -> ``_bytes``; annotations such as
``{request}`` are dropped) and counters end in ``_total``.

This module has no dependencies beyond the standard library, so the build tooling
can import it without pulling in OpenTelemetry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum


class Kind(str, Enum):
    """The Prometheus metric type of a declared metric."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class Origin(str, Enum):
    """Who produces the metric."""

    MESHLENS = "meshlens"  # the meshlens runtime, on the service's /metrics
    PROMETHEUS = "prometheus"  # synthesised by Prometheus itself (up)
    ISTIO = "istio"  # the Envoy sidecars, via Istio's standard metrics
    OTELCOL = "otelcol"  # the OpenTelemetry Collector's own telemetry
    KAFKA_EXPORTER = "kafka-exporter"  # the broker-side lag exporter


@dataclass(frozen=True)
class MetricSpec:
    """One metric: how it is created, queried and documented."""

    name: str
    """The Prometheus family name as queried (counters include ``_total``)."""
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    unit: str = ""
    """The OpenTelemetry unit (``s``, ``By``, ``{request}``), empty when dimensionless."""
    buckets: tuple[float, ...] = ()
    semconv: str | None = None
    """The OpenTelemetry instrument this translates, when it follows the semantic conventions."""
    deviation: str = ""
    """Why the name is not the plain translation of ``semconv``, when it is not."""
    origin: Origin = Origin.MESHLENS
    multiprocess_mode: str = "livesum"
    """For gauges in pre-fork servers: how the live workers' values combine (a prometheus-client
    ``live*`` mode, so that a dead worker's gauges disappear with it)."""

    @property
    def emitted(self) -> bool:
        return self.origin is Origin.MESHLENS

    @property
    def base_name(self) -> str:
        """The name prometheus-client is given: counters without their ``_total``."""
        if self.kind is Kind.COUNTER and self.name.endswith("_total"):
            return self.name[: -len("_total")]
        return self.name

    def series_names(self) -> tuple[str, ...]:
        """Every sample name the family exposes, as a PromQL selector would name it."""
        if self.kind is Kind.HISTOGRAM:
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


# Bucket boundaries advised by the semantic conventions for request durations.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
# Database and cache calls are typically faster than a whole request: finer low end.
DB_DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
EVENT_LOOP_LAG_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

# Label names, each written once.
HTTP_REQUEST_METHOD = "http_request_method"
HTTP_ROUTE = "http_route"
HTTP_RESPONSE_STATUS_CODE = "http_response_status_code"
URL_SCHEME = "url_scheme"
SERVER_ADDRESS = "server_address"
ERROR_TYPE = "error_type"
DB_SYSTEM_NAME = "db_system_name"
DB_NAMESPACE = "db_namespace"
DB_OPERATION_NAME = "db_operation_name"
RPC_SYSTEM = "rpc_system"
RPC_SERVICE = "rpc_service"
RPC_METHOD = "rpc_method"
RPC_GRPC_STATUS_CODE = "rpc_grpc_status_code"
CPU_MODE = "cpu_mode"
GC_GENERATION = "cpython_gc_generation"
OVERFLOW_LABEL = "otel_metric_overflow"
"""The one label of the overflow series that takes what passes a cardinality limit."""

# Self-metric label names.
REASON = "reason"
METRIC = "metric"
SIGNAL = "signal"
VERSION = "version"
MULTIPROCESS = "multiprocess"

# Messaging (Kafka client) and connection-pool label names, per the semantic conventions.
MESSAGING_SYSTEM = "messaging_system"
MESSAGING_DESTINATION_NAME = "messaging_destination_name"
MESSAGING_CONSUMER_GROUP_NAME = "messaging_consumer_group_name"
MESSAGING_DESTINATION_PARTITION_ID = "messaging_destination_partition_id"
MESSAGING_OPERATION_NAME = "messaging_operation_name"
DB_CLIENT_CONNECTION_POOL_NAME = "db_client_connection_pool_name"
DB_CLIENT_CONNECTION_STATE = "db_client_connection_state"

# Target labels: Prometheus adds them to every series at scrape time (from the ServiceMonitor
# or PodMonitor's Kubernetes service discovery), so no metric declares them, yet every query
# may filter or group by them. Dashboards' namespace/service variables and the build's
# validator read them from here.
NAMESPACE = "namespace"
POD = "pod"
SERVICE = "service"
JOB = "job"
INSTANCE = "instance"
CONTAINER = "container"
TARGET_LABELS: tuple[str, ...] = (JOB, INSTANCE, NAMESPACE, POD, SERVICE, CONTAINER)


@dataclass(frozen=True)
class Catalogue:
    """The set of declared metrics, indexed by name."""

    metrics: tuple[MetricSpec, ...]
    _by_name: dict[str, MetricSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, MetricSpec] = {}
        for spec in self.metrics:
            if spec.name in by_name:
                raise ValueError(f"metric {spec.name!r} is declared twice in the catalogue")
            by_name[spec.name] = spec
        object.__setattr__(self, "_by_name", by_name)

    def __iter__(self) -> Iterator[MetricSpec]:
        return iter(self.metrics)

    def __getitem__(self, name: str) -> MetricSpec:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def emitted(self) -> tuple[MetricSpec, ...]:
        return tuple(m for m in self.metrics if m.emitted)

    def lookup_series(self, series: str) -> MetricSpec | None:
        """The metric a sample name (``..._bucket``, ``..._count``) belongs to, if declared."""
        for spec in self.metrics:
            if series in spec.series_names():
                return spec
        return None


# --- HTTP ------------------------------------------------------------------

HTTP_SERVER_REQUEST_DURATION = MetricSpec(
    name="http_server_request_duration_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Duration of HTTP server requests.",
    labels=(HTTP_REQUEST_METHOD, HTTP_ROUTE, HTTP_RESPONSE_STATUS_CODE),
    buckets=DURATION_BUCKETS,
    semconv="http.server.request.duration",
)
HTTP_SERVER_ACTIVE_REQUESTS = MetricSpec(
    name="http_server_active_requests",
    kind=Kind.GAUGE,
    unit="{request}",
    help="Number of HTTP server requests in flight.",
    labels=(HTTP_REQUEST_METHOD, URL_SCHEME),
    semconv="http.server.active_requests",
    multiprocess_mode="livesum",
)
HTTP_CLIENT_REQUEST_DURATION = MetricSpec(
    name="http_client_request_duration_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Duration of HTTP client requests; error_type names what failed (a status code, or an exception "
    "such as a refused connection, with no status code).",
    labels=(HTTP_REQUEST_METHOD, SERVER_ADDRESS, HTTP_RESPONSE_STATUS_CODE, ERROR_TYPE),
    buckets=DURATION_BUCKETS,
    semconv="http.client.request.duration",
)

# --- RPC -------------------------------------------------------------------

RPC_SERVER_DURATION = MetricSpec(
    name="rpc_server_duration_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Duration of inbound RPCs.",
    labels=(RPC_SYSTEM, RPC_SERVICE, RPC_METHOD, RPC_GRPC_STATUS_CODE),
    buckets=DURATION_BUCKETS,
    semconv="rpc.server.duration",
)
RPC_CLIENT_DURATION = MetricSpec(
    name="rpc_client_duration_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Duration of outbound RPCs.",
    labels=(RPC_SYSTEM, RPC_SERVICE, RPC_METHOD, RPC_GRPC_STATUS_CODE),
    buckets=DURATION_BUCKETS,
    semconv="rpc.client.duration",
)

# --- Databases and caches --------------------------------------------------

DB_CLIENT_OPERATION_DURATION = MetricSpec(
    name="db_client_operation_duration_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Duration of database client operations (PostgreSQL, Redis, ...).",
    labels=(DB_SYSTEM_NAME, DB_NAMESPACE, DB_OPERATION_NAME, ERROR_TYPE),
    buckets=DB_DURATION_BUCKETS,
    semconv="db.client.operation.duration",
)

# Prometheus reserves the `_count` suffix for histograms and summaries (promtool
# rejects a gauge named so), hence `..._connections`, `process_threads` and
# `process_open_file_descriptors` instead of the plain translation of `*.count`.
_COUNT_SUFFIX = "Prometheus reserves `_count` for histograms and summaries (promtool check metrics)."

# --- Messaging and connection pools ------------------------------------------
# messaging_*: recorded for confluent-kafka, kafka-python and aiokafka (meshlens.kafka): the
#   producer's and the consumer's spans give the durations and the sent count (meshlens.red),
#   received messages are counted as they arrive, and the lag comes from the consumer itself.
# db_client_connection*: recorded by meshlens.pools for SQLAlchemy engines.

MESSAGING_CLIENT_OPERATION_DURATION = MetricSpec(
    name="messaging_client_operation_duration_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Duration of a producer's send call (Kafka): handing the message to the client, which delivers "
    "it in the background for confluent-kafka and kafka-python; error_type is set when the call failed.",
    labels=(MESSAGING_SYSTEM, MESSAGING_DESTINATION_NAME, MESSAGING_OPERATION_NAME, ERROR_TYPE),
    buckets=DB_DURATION_BUCKETS,
    semconv="messaging.client.operation.duration",
)
MESSAGING_CLIENT_SENT_MESSAGES = MetricSpec(
    name="messaging_client_sent_messages_total",
    kind=Kind.COUNTER,
    unit="{message}",
    help="Messages a producer handed to the broker (Kafka); error_type is set when the send failed.",
    labels=(MESSAGING_SYSTEM, MESSAGING_DESTINATION_NAME, ERROR_TYPE),
    semconv="messaging.client.sent.messages",
)
MESSAGING_CLIENT_CONSUMED_MESSAGES = MetricSpec(
    name="messaging_client_consumed_messages_total",
    kind=Kind.COUNTER,
    unit="{message}",
    help="Messages a consumer received from the broker (Kafka).",
    labels=(MESSAGING_SYSTEM, MESSAGING_DESTINATION_NAME, MESSAGING_CONSUMER_GROUP_NAME, ERROR_TYPE),
    semconv="messaging.client.consumed.messages",
)
MESSAGING_PROCESS_DURATION = MetricSpec(
    name="messaging_process_duration_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Time the service spent processing what one consumer call returned (a message, or a batch): from the "
    "call's return to the consumer's next call. error_type names the exception when the processing failed: "
    "for Kafka, an exception logged at ERROR (logger.exception) while the message was being processed.",
    labels=(MESSAGING_SYSTEM, MESSAGING_DESTINATION_NAME, MESSAGING_CONSUMER_GROUP_NAME, ERROR_TYPE),
    buckets=DURATION_BUCKETS,
    semconv="messaging.process.duration",
)
MESSAGING_KAFKA_CONSUMER_LAG = MetricSpec(
    name="messaging_kafka_consumer_lag",
    kind=Kind.GAUGE,
    unit="{message}",
    help="Messages of a partition that the consumer group has not committed yet, as the consuming "
    "client sees it (confluent-kafka: the high watermark minus the committed offset, from librdkafka's "
    "statistics); 0 for a partition this process no longer owns; summed over pre-fork workers.",
    labels=(MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_DESTINATION_NAME, MESSAGING_DESTINATION_PARTITION_ID),
    deviation="The semantic conventions define no consumer-lag metric; named in their messaging.kafka.* "
    "namespace with their attribute names, beside the broker-side kafka_consumergroup_lag.",
    multiprocess_mode="livesum",
)
DB_CLIENT_CONNECTION_COUNT = MetricSpec(
    name="db_client_connections",
    kind=Kind.GAUGE,
    unit="{connection}",
    help="Connections of a client pool (SQLAlchemy), by state (idle, used); summed over pre-fork workers.",
    labels=(DB_CLIENT_CONNECTION_POOL_NAME, DB_CLIENT_CONNECTION_STATE),
    semconv="db.client.connection.count",
    deviation=_COUNT_SUFFIX,
    multiprocess_mode="livesum",
)
DB_CLIENT_CONNECTION_MAX = MetricSpec(
    name="db_client_connection_max",
    kind=Kind.GAUGE,
    unit="{connection}",
    help="Most connections a client pool may open (pool size plus overflow); summed over pre-fork workers.",
    labels=(DB_CLIENT_CONNECTION_POOL_NAME,),
    semconv="db.client.connection.max",
    multiprocess_mode="livesum",
)
DB_CLIENT_CONNECTION_PENDING_REQUESTS = MetricSpec(
    name="db_client_connection_pending_requests",
    kind=Kind.GAUGE,
    unit="{request}",
    help="Callers waiting for a connection from a client pool.",
    labels=(DB_CLIENT_CONNECTION_POOL_NAME,),
    semconv="db.client.connection.pending_requests",
    multiprocess_mode="livesum",
)
DB_CLIENT_CONNECTION_WAIT_TIME = MetricSpec(
    name="db_client_connection_wait_time_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Time a caller waited to check a connection out of a client pool.",
    labels=(DB_CLIENT_CONNECTION_POOL_NAME,),
    buckets=DB_DURATION_BUCKETS,
    semconv="db.client.connection.wait_time",
)
DB_CLIENT_CONNECTION_TIMEOUTS = MetricSpec(
    name="db_client_connection_timeouts_total",
    kind=Kind.COUNTER,
    unit="{timeout}",
    help="Checkouts that gave up waiting for a pool connection.",
    labels=(DB_CLIENT_CONNECTION_POOL_NAME,),
    semconv="db.client.connection.timeouts",
)

# --- Temporal ----------------------------------------------------------------
# The Temporal SDK's own metrics (its core's MetricBuffer, drained by
# meshlens.instrumentors.temporal into these families), under the SDK's names with the
# OpenTelemetry-to-Prometheus unit suffixes. The SDK's `namespace` attribute becomes
# `temporal_namespace`: Prometheus's target label `namespace` (the Kubernetes namespace)
# would otherwise overwrite it at scrape time. Other SDK metrics are not collected.

TEMPORAL_NAMESPACE = "temporal_namespace"
TEMPORAL_TASK_QUEUE = "task_queue"
TEMPORAL_WORKFLOW_TYPE = "workflow_type"
TEMPORAL_ACTIVITY_TYPE = "activity_type"
TEMPORAL_FAILURE_REASON = "failure_reason"
TEMPORAL_WORKER_TYPE = "worker_type"
# From a task's few milliseconds to a workflow's hours (end-to-end latency).
TEMPORAL_LATENCY_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip

TEMPORAL_WORKFLOW_TASK_SCHEDULE_TO_START_LATENCY = MetricSpec(
    name="temporal_workflow_task_schedule_to_start_latency_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Time a workflow task waited in its task queue before a worker of this service picked it up "
    "(Temporal SDK): long waits mean too few workers or pollers.",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE),
    buckets=TEMPORAL_LATENCY_BUCKETS,
)
TEMPORAL_WORKFLOW_TASK_EXECUTION_LATENCY = MetricSpec(
    name="temporal_workflow_task_execution_latency_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Time this service's workers spent running one workflow task (Temporal SDK).",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_WORKFLOW_TYPE),
    buckets=TEMPORAL_LATENCY_BUCKETS,
)
TEMPORAL_WORKFLOW_ENDTOEND_LATENCY = MetricSpec(
    name="temporal_workflow_endtoend_latency_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Time from a workflow's start to its completion, failure or cancellation (Temporal SDK).",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_WORKFLOW_TYPE),
    buckets=TEMPORAL_LATENCY_BUCKETS,
)
TEMPORAL_ACTIVITY_SCHEDULE_TO_START_LATENCY = MetricSpec(
    name="temporal_activity_schedule_to_start_latency_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Time an activity task waited in its task queue before a worker of this service picked it up "
    "(Temporal SDK).",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE),
    buckets=TEMPORAL_LATENCY_BUCKETS,
)
TEMPORAL_ACTIVITY_EXECUTION_LATENCY = MetricSpec(
    name="temporal_activity_execution_latency_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="Time this service's workers spent running one activity attempt (Temporal SDK).",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_ACTIVITY_TYPE, TEMPORAL_WORKFLOW_TYPE),
    buckets=TEMPORAL_LATENCY_BUCKETS,
)
TEMPORAL_WORKFLOW_COMPLETED = MetricSpec(
    name="temporal_workflow_completed_total",
    kind=Kind.COUNTER,
    unit="{workflow}",
    help="Workflows this service's workers completed successfully (Temporal SDK).",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_WORKFLOW_TYPE),
)
TEMPORAL_WORKFLOW_FAILED = MetricSpec(
    name="temporal_workflow_failed_total",
    kind=Kind.COUNTER,
    unit="{workflow}",
    help="Workflows that failed on this service's workers (Temporal SDK).",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_WORKFLOW_TYPE),
)
TEMPORAL_WORKFLOW_TASK_EXECUTION_FAILED = MetricSpec(
    name="temporal_workflow_task_execution_failed_total",
    kind=Kind.COUNTER,
    unit="{task}",
    help="Workflow tasks that failed on this service's workers (a bug or non-determinism; Temporal retries "
    "them), by failure reason (Temporal SDK).",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_WORKFLOW_TYPE, TEMPORAL_FAILURE_REASON),
)
TEMPORAL_ACTIVITY_EXECUTION_FAILED = MetricSpec(
    name="temporal_activity_execution_failed_total",
    kind=Kind.COUNTER,
    unit="{attempt}",
    help="Activity attempts that failed on this service's workers, by failure reason (Temporal SDK).",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_ACTIVITY_TYPE, TEMPORAL_WORKFLOW_TYPE,
            TEMPORAL_FAILURE_REASON),
)
TEMPORAL_WORKER_TASK_SLOTS_AVAILABLE = MetricSpec(
    name="temporal_worker_task_slots_available",
    kind=Kind.GAUGE,
    unit="{slot}",
    help="Free task slots of this service's Temporal workers, by worker type; at zero, tasks wait.",
    labels=(TEMPORAL_NAMESPACE, TEMPORAL_TASK_QUEUE, TEMPORAL_WORKER_TYPE),
)

# --- Python runtime --------------------------------------------------------

PROCESS_CPU_TIME = MetricSpec(
    name="process_cpu_time_seconds_total",
    kind=Kind.COUNTER,
    unit="s",
    help="CPU time consumed by the service's processes.",
    labels=(CPU_MODE,),
    semconv="process.cpu.time",
)
PROCESS_MEMORY_USAGE = MetricSpec(
    name="process_memory_usage_bytes",
    kind=Kind.GAUGE,
    unit="By",
    help="Resident memory of the service's processes (summed over pre-fork workers).",
    semconv="process.memory.usage",
)
PROCESS_MEMORY_VIRTUAL = MetricSpec(
    name="process_memory_virtual_bytes",
    kind=Kind.GAUGE,
    unit="By",
    help="Virtual memory of the service's processes (summed over pre-fork workers).",
    semconv="process.memory.virtual",
)
PROCESS_THREAD_COUNT = MetricSpec(
    name="process_threads",
    kind=Kind.GAUGE,
    unit="{thread}",
    help="Threads of the service's processes (summed over pre-fork workers).",
    semconv="process.thread.count",
    deviation=_COUNT_SUFFIX,
)
PROCESS_OPEN_FILE_DESCRIPTOR_COUNT = MetricSpec(
    name="process_open_file_descriptors",
    kind=Kind.GAUGE,
    unit="{file_descriptor}",
    help="Open file descriptors of the service's processes (summed over pre-fork workers).",
    semconv="process.open_file_descriptor.count",
    deviation=_COUNT_SUFFIX,
)
CPYTHON_GC_COLLECTIONS = MetricSpec(
    name="cpython_gc_collections_total",
    kind=Kind.COUNTER,
    unit="{collection}",
    help="Garbage collector runs, by generation.",
    labels=(GC_GENERATION,),
    semconv="cpython.gc.collections",
)
CPYTHON_GC_COLLECTED_OBJECTS = MetricSpec(
    name="cpython_gc_collected_objects_total",
    kind=Kind.COUNTER,
    unit="{object}",
    help="Objects collected by the garbage collector, by generation.",
    labels=(GC_GENERATION,),
    semconv="cpython.gc.collected_objects",
)
CPYTHON_GC_UNCOLLECTABLE_OBJECTS = MetricSpec(
    name="cpython_gc_uncollectable_objects_total",
    kind=Kind.COUNTER,
    unit="{object}",
    help="Objects the garbage collector found uncollectable, by generation.",
    labels=(GC_GENERATION,),
    semconv="cpython.gc.uncollectable_objects",
)
ASYNCIO_EVENT_LOOP_LAG = MetricSpec(
    name="python_asyncio_event_loop_lag_seconds",
    kind=Kind.HISTOGRAM,
    unit="s",
    help="How late the asyncio event loop ran a callback scheduled for a known time: "
    "the time every other coroutine waited behind blocking code.",
    buckets=EVENT_LOOP_LAG_BUCKETS,
)
PROCESS_WORKERS = MetricSpec(
    name="meshlens_process_workers",
    kind=Kind.GAUGE,
    unit="{process}",
    help="Live processes of the service that report into this /metrics (pre-fork workers).",
    multiprocess_mode="livesum",
)

# --- meshlens's own health -------------------------------------------------

MESHLENS_INFO = MetricSpec(
    name="meshlens_info",
    kind=Kind.GAUGE,
    help="Always 1; labels describe the meshlens runtime in this service.",
    labels=(VERSION, MULTIPROCESS),
    multiprocess_mode="livemax",
)
MESHLENS_SPANS_EXPORTED = MetricSpec(
    name="meshlens_spans_exported_total",
    kind=Kind.COUNTER,
    unit="{span}",
    help="Spans the exporter delivered to the OTLP endpoint.",
)
MESHLENS_SPANS_DROPPED = MetricSpec(
    name="meshlens_spans_dropped_total",
    kind=Kind.COUNTER,
    unit="{span}",
    help="Spans lost before delivery, by reason (queue_full: the bounded queue was full; "
    "export_failed: the endpoint was down or refused them; shutdown: not flushed in time).",
    labels=(REASON,),
)
MESHLENS_EXPORT_FAILURES = MetricSpec(
    name="meshlens_export_failures_total",
    kind=Kind.COUNTER,
    unit="{export}",
    help="Failed export calls (after the exporter's own retries), by signal.",
    labels=(SIGNAL,),
)
MESHLENS_SPAN_QUEUE_SIZE = MetricSpec(
    name="meshlens_span_queue_size",
    kind=Kind.GAUGE,
    unit="{span}",
    help="Spans waiting in the export queue.",
    multiprocess_mode="livesum",
)
MESHLENS_SPAN_QUEUE_CAPACITY = MetricSpec(
    name="meshlens_span_queue_capacity",
    kind=Kind.GAUGE,
    unit="{span}",
    help="Capacity of the export queue; spans past it are dropped and counted.",
    multiprocess_mode="livesum",
)
MESHLENS_DB_QUERY_TEXT_TRUNCATED = MetricSpec(
    name="meshlens_db_query_text_truncated_total",
    kind=Kind.COUNTER,
    unit="{query}",
    help="Database query texts cut at the length limit before they were put on a span (meshlens's own "
    "instrumentors: ClickHouse).",
    labels=(DB_SYSTEM_NAME,),
)
MESHLENS_METRIC_OVERFLOW = MetricSpec(
    name="meshlens_metric_overflow_total",
    kind=Kind.COUNTER,
    unit="{observation}",
    help="Observations recorded into a metric's overflow series because the metric "
    "reached its limit of distinct label sets.",
    labels=(METRIC,),
)

# --- Read, not emitted -----------------------------------------------------

UP = MetricSpec(
    name="up",
    kind=Kind.GAUGE,
    help="1 when Prometheus scraped the target, 0 when the scrape failed.",
    labels=TARGET_LABELS,
    origin=Origin.PROMETHEUS,
)

# Labels of the read-only metrics that dashboards and alerts select or group by.
REPORTER = "reporter"
SOURCE_WORKLOAD = "source_workload"
SOURCE_WORKLOAD_NAMESPACE = "source_workload_namespace"
DESTINATION_WORKLOAD = "destination_workload"
DESTINATION_WORKLOAD_NAMESPACE = "destination_workload_namespace"
DESTINATION_SERVICE_NAME = "destination_service_name"
RESPONSE_CODE = "response_code"
CONNECTION_SECURITY_POLICY = "connection_security_policy"
RECEIVER = "receiver"
TRANSPORT = "transport"
EXPORTER = "exporter"
PROCESSOR = "processor"
DATA_TYPE = "data_type"
CONSUMERGROUP = "consumergroup"
TOPIC = "topic"
PARTITION = "partition"
HISTOGRAM_BUCKET_LABEL = "le"
"""The upper bound label of a histogram's ``_bucket`` series (Prometheus's own)."""

_ISTIO_LABELS = (
    REPORTER,
    SOURCE_WORKLOAD,
    SOURCE_WORKLOAD_NAMESPACE,
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    DESTINATION_WORKLOAD,
    DESTINATION_WORKLOAD_NAMESPACE,
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    DESTINATION_SERVICE_NAME,
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    RESPONSE_CODE,
    "grpc_response_status",
    "response_flags",
    CONNECTION_SECURITY_POLICY,
)
ISTIO_REQUESTS = MetricSpec(
    name="istio_requests_total",
    kind=Kind.COUNTER,
    help="Requests handled by the Envoy sidecars (Istio standard metrics).",
    labels=_ISTIO_LABELS,
    origin=Origin.ISTIO,
)
ISTIO_REQUEST_DURATION = MetricSpec(
    name="istio_request_duration_milliseconds",
    kind=Kind.HISTOGRAM,
    unit="ms",
    help="Request duration seen by the Envoy sidecars (Istio standard metrics).",
    labels=_ISTIO_LABELS,
    origin=Origin.ISTIO,
)
ISTIO_TCP_SENT_BYTES = MetricSpec(
    name="istio_tcp_sent_bytes_total",
    kind=Kind.COUNTER,
    unit="By",
    help="Bytes sent on TCP connections through the sidecars.",
    labels=_ISTIO_LABELS,
    origin=Origin.ISTIO,
)
ISTIO_TCP_RECEIVED_BYTES = MetricSpec(
    name="istio_tcp_received_bytes_total",
    kind=Kind.COUNTER,
    unit="By",
    help="Bytes received on TCP connections through the sidecars.",
    labels=_ISTIO_LABELS,
    origin=Origin.ISTIO,
)

_OTELCOL_LABELS = ("service_instance_id", "service_name", "service_version")
_OTELCOL_RECEIVER = (*_OTELCOL_LABELS, RECEIVER, TRANSPORT)
_OTELCOL_EXPORTER = (*_OTELCOL_LABELS, EXPORTER)
_OTELCOL_PROCESSOR = (*_OTELCOL_LABELS, PROCESSOR)


def _otelcol(name: str, kind: Kind, help_text: str, labels: tuple[str, ...]) -> MetricSpec:
    return MetricSpec(name=name, kind=kind, help=help_text, labels=labels, origin=Origin.OTELCOL)


OTELCOL_RECEIVER_ACCEPTED_SPANS = _otelcol(
    "otelcol_receiver_accepted_spans_total", Kind.COUNTER,
    "Spans the collector's receivers pushed into the pipeline.", _OTELCOL_RECEIVER,
)  # fmt: skip
OTELCOL_RECEIVER_REFUSED_SPANS = _otelcol(
    "otelcol_receiver_refused_spans_total", Kind.COUNTER,
    "Spans the collector's receivers could not push into the pipeline.", _OTELCOL_RECEIVER,
)  # fmt: skip
OTELCOL_PROCESSOR_INCOMING_ITEMS = _otelcol(
    "otelcol_processor_incoming_items_total", Kind.COUNTER,
    "Items that entered a collector processor.", (*_OTELCOL_PROCESSOR, "otel_signal"),
)  # fmt: skip
OTELCOL_PROCESSOR_OUTGOING_ITEMS = _otelcol(
    "otelcol_processor_outgoing_items_total", Kind.COUNTER,
    "Items that left a collector processor.", (*_OTELCOL_PROCESSOR, "otel_signal"),
)  # fmt: skip
OTELCOL_EXPORTER_SENT_SPANS = _otelcol(
    "otelcol_exporter_sent_spans_total", Kind.COUNTER,
    "Spans the collector's exporters delivered.", _OTELCOL_EXPORTER,
)  # fmt: skip
OTELCOL_EXPORTER_SEND_FAILED_SPANS = _otelcol(
    "otelcol_exporter_send_failed_spans_total", Kind.COUNTER,
    "Spans the collector's exporters failed to deliver.", _OTELCOL_EXPORTER,
)  # fmt: skip
OTELCOL_EXPORTER_ENQUEUE_FAILED_SPANS = _otelcol(
    "otelcol_exporter_enqueue_failed_spans_total", Kind.COUNTER,
    "Spans the collector dropped because an exporter's sending queue was full.", _OTELCOL_EXPORTER,
)  # fmt: skip
OTELCOL_EXPORTER_QUEUE_SIZE = _otelcol(
    "otelcol_exporter_queue_size", Kind.GAUGE,
    "Batches in an exporter's sending queue.", (*_OTELCOL_EXPORTER, DATA_TYPE),
)  # fmt: skip
OTELCOL_EXPORTER_QUEUE_CAPACITY = _otelcol(
    "otelcol_exporter_queue_capacity", Kind.GAUGE,
    "Capacity of an exporter's sending queue.", (*_OTELCOL_EXPORTER, DATA_TYPE),
)  # fmt: skip
OTELCOL_PROCESS_MEMORY_RSS = _otelcol(
    "otelcol_process_memory_rss_bytes", Kind.GAUGE,
    "Resident memory of the collector.", _OTELCOL_LABELS,
)  # fmt: skip

KAFKA_CONSUMERGROUP_LAG = MetricSpec(
    name="kafka_consumergroup_lag",
    kind=Kind.GAUGE,
    help="Broker-side consumer lag per group, topic and partition (kafka-exporter).",
    labels=(CONSUMERGROUP, TOPIC, PARTITION),
    origin=Origin.KAFKA_EXPORTER,
)


CATALOGUE = Catalogue(
    tuple(value for value in dict(globals()).values() if isinstance(value, MetricSpec))
)
"""Every declared metric, in declaration order."""
