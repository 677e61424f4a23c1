"""The collector configs the chart ships, and the Jaeger v2 config: structure here, numbers in values.yaml.

- ``gateway``: the collector Deployment. OTLP in, ``memory_limiter`` -> ``k8sattributes`` ->
  ``tail_sampling`` (every error, every slow trace, a probabilistic share of the rest) -> ``batch``,
  OTLP out to Jaeger (in the release, or an external endpoint).
- ``agent``: the optional node DaemonSet. OTLP in from the pods of its node, ``memory_limiter`` ->
  ``k8sattributes`` (its node's pods only) -> ``batch``, then the ``loadbalancing`` exporter routes
  each trace by its id to one gateway replica, so that tail sampling sees whole traces even with
  several gateway replicas.
- ``jaeger``: Jaeger v2 (itself a collector distribution), in-memory or Badger storage.

Every component is from the otelcol-contrib distribution (the Jaeger config excepted: its
storage and query extensions are Jaeger's own). Listening addresses use the pod IP from the
downward API rather than 0.0.0.0, so nothing listens on interfaces it has no reason to.
"""

from __future__ import annotations

from typing import Any

from meshlens_collector.components import Component, Kind, Pipeline, assemble
from meshlens_collector.templating import Endpoint, Helper, Value

# Environment variables the chart's pod templates must define for these configs (a test checks that
# every `${env:...}` of a rendered config is set on its container).
POD_IP_ENV = "MESHLENS_POD_IP"
NODE_NAME_ENV = "MESHLENS_NODE_NAME"

TRACES = "traces"
JAEGER_STORE = "meshlens"
"""The name of Jaeger's one storage backend, used by its query extension and its exporter."""
JAEGER_STORAGES = ("memory", "badger")
BADGER_DIRECTORY = "/badger"
"""Where the chart mounts Badger's volume."""

# Resource attributes k8sattributes adds to every span: who sent it, in Kubernetes terms.
K8S_METADATA = (
    "k8s.namespace.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.node.name",
    "k8s.deployment.name",
    "k8s.statefulset.name",
    "k8s.daemonset.name",
    "k8s.cronjob.name",
    "k8s.job.name",
)
# How a span finds its pod: the uid the meshlens runtime sets from K8S_POD_UID (it survives the hop
# through an agent), the pod IP an agent recorded, or else the IP of the connection itself.
POD_ASSOCIATION = (
    {"sources": [{"from": "resource_attribute", "name": "k8s.pod.uid"}]},
    {"sources": [{"from": "resource_attribute", "name": "k8s.pod.ip"}]},
    {"sources": [{"from": "connection"}]},
)


def _listen(port: str) -> Endpoint:
    """The pod's own IP (downward API) and a port from ``values.yaml``'s ``ports``."""
    return Endpoint(f"${{env:{POD_IP_ENV}}}", Value(f"ports.{port}"))


def _otlp_receiver() -> Component:
    return Component(Kind.RECEIVER, "otlp", {
        "protocols": {"grpc": {"endpoint": _listen("otlpGrpc")}, "http": {"endpoint": _listen("otlpHttp")}},
    })  # fmt: skip


def _memory_limiter(role: str) -> Component:
    # Percentages of the container's memory limit, which the chart always sets.
    return Component(Kind.PROCESSOR, "memory_limiter", {
        "check_interval": "1s",
        "limit_percentage": Value(f"collector.{role}.memoryLimiter.limitPercentage"),
        "spike_limit_percentage": Value(f"collector.{role}.memoryLimiter.spikeLimitPercentage"),
    })  # fmt: skip


def _k8sattributes(*, node_local: bool) -> Component:
    config: dict[str, Any] = {
        "auth_type": "serviceAccount",
        "passthrough": False,
        "extract": {"metadata": list(K8S_METADATA)},
        "pod_association": [dict(association) for association in POD_ASSOCIATION],
    }
    if node_local:  # an agent watches only its own node's pods: less memory, less API server load
        config["filter"] = {"node_from_env_var": NODE_NAME_ENV}
    return Component(Kind.PROCESSOR, "k8sattributes", config)


def _tail_sampling() -> Component:
    # Policies are OR-ed: a trace is kept when any of them says so.
    return Component(Kind.PROCESSOR, "tail_sampling", {
        "decision_wait": Value("collector.tailSampling.decisionWait"),
        "num_traces": Value("collector.tailSampling.numTraces"),
        "policies": [
            {"name": "keep-errors", "type": "status_code", "status_code": {"status_codes": ["ERROR"]}},
            {"name": "keep-slow", "type": "latency",
             "latency": {"threshold_ms": Value("collector.tailSampling.slowTraceThresholdMs")}},
            {"name": "keep-share", "type": "probabilistic",
             "probabilistic": {"sampling_percentage": Value("collector.tailSampling.probabilisticPercentage")}},
        ],
    })  # fmt: skip


def _batch() -> Component:
    return Component(Kind.PROCESSOR, "batch", {
        "send_batch_size": Value("collector.batch.sendBatchSize"),
        "timeout": Value("collector.batch.timeout"),
    })  # fmt: skip


def _health_check() -> Component:
    return Component(Kind.EXTENSION, "health_check", {"endpoint": _listen("health")})


def _telemetry(level: Value | str) -> dict[str, Any]:
    # The collector's own metrics (otelcol_*), pulled by Prometheus from the `telemetry` port.
    return {
        "metrics": {
            "level": level,
            "readers": [{"pull": {"exporter": {"prometheus": {
                "host": f"${{env:{POD_IP_ENV}}}",
                "port": Value("ports.telemetry"),
            }}}}],
        },
    }  # fmt: skip


def gateway() -> dict[str, Any]:
    """The gateway collector: tail sampling, then export to the traces backend."""
    exporter = Component(Kind.EXPORTER, "otlp_grpc", {
        "endpoint": Helper("meshlens.collector.tracesEndpoint"),
        "tls": Helper("meshlens.collector.tracesTls"),
        "headers": Helper("meshlens.collector.tracesHeaders"),
        # Bounded: when the backend is down, what passes the queue is dropped and counted
        # (otelcol_exporter_enqueue_failed_spans_total), never buffered without limit.
        "sending_queue": {"enabled": True, "queue_size": Value("collector.gateway.exportQueueSize")},
        "retry_on_failure": {"enabled": True, "max_elapsed_time": "120s"},
    }, name="traces")  # fmt: skip
    traces = Pipeline(
        TRACES,
        receivers=(_otlp_receiver(),),
        processors=(_memory_limiter("gateway"), _k8sattributes(node_local=False), _tail_sampling(), _batch()),
        exporters=(exporter,),
    )
    return assemble((traces,), (_health_check(),), _telemetry(Value("collector.telemetryLevel")))


def agent() -> dict[str, Any]:
    """The node agent: enrich and batch, then route each trace by id to one gateway replica."""
    exporter = Component(Kind.EXPORTER, "loadbalancing", {
        "routing_key": "traceID",
        "protocol": {"otlp": {
            "tls": {"insecure": True},  # inside the release's namespace, as to the gateway Service
            "sending_queue": {"enabled": True, "queue_size": Value("collector.agent.exportQueueSize")},
        }},
        # The headless Service lists every gateway pod, so DNS gives the replicas themselves.
        "resolver": {"dns": {
            "hostname": Helper("meshlens.collector.gatewayHeadlessHost"),
            "port": Value("ports.otlpGrpc", pipe="toString"),
        }},
    }, name="gateway")  # fmt: skip
    traces = Pipeline(
        TRACES,
        receivers=(_otlp_receiver(),),
        processors=(_memory_limiter("agent"), _k8sattributes(node_local=True), _batch()),
        exporters=(exporter,),
    )
    return assemble((traces,), (_health_check(),), _telemetry(Value("collector.telemetryLevel")))


def jaeger(storage: str) -> dict[str, Any]:
    """Jaeger v2 all-in-one: OTLP in, one trace store, the query UI and API."""
    if storage not in JAEGER_STORAGES:
        raise ValueError(f"Jaeger storage {storage!r}: expected one of {JAEGER_STORAGES}")
    if storage == "memory":
        backend: dict[str, Any] = {"memory": {"max_traces": Value("jaeger.storage.memory.maxTraces")}}
    else:
        backend = {"badger": {
            "ephemeral": False,  # on the chart's volume (an emptyDir unless persistence is on)
            "directories": {"keys": f"{BADGER_DIRECTORY}/keys", "values": f"{BADGER_DIRECTORY}/values"},
            "ttl": {"spans": Value("jaeger.storage.badger.ttl")},
        }}  # fmt: skip
    receiver = _otlp_receiver()
    batch = Component(Kind.PROCESSOR, "batch", {})
    memory_limiter = Component(Kind.PROCESSOR, "memory_limiter", {
        "check_interval": "1s",
        "limit_percentage": Value("jaeger.memoryLimiter.limitPercentage"),
        "spike_limit_percentage": Value("jaeger.memoryLimiter.spikeLimitPercentage"),
    })  # fmt: skip
    exporter = Component(Kind.EXPORTER, "jaeger_storage_exporter", {"trace_storage": JAEGER_STORE})
    extensions = (
        Component(Kind.EXTENSION, "jaeger_storage", {"backends": {JAEGER_STORE: backend}}),
        Component(Kind.EXTENSION, "jaeger_query", {
            "storage": {"traces": JAEGER_STORE},
            "http": {"endpoint": _listen("jaegerQuery")},
            "grpc": {"endpoint": "localhost:16685"},  # the gRPC query API is not exposed by the chart
        }),
        Component(Kind.EXTENSION, "healthcheckv2", {
            "use_v2": True,
            "http": {"endpoint": _listen("health")},
        }),
    )  # fmt: skip
    traces = Pipeline(TRACES, receivers=(receiver,), processors=(memory_limiter, batch), exporters=(exporter,))
    return assemble((traces,), extensions, _telemetry("detailed"))
