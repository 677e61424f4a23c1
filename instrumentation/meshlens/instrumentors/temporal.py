"""Temporal: every client and worker traced with the SDK's own OpenTelemetry interceptor, and
the SDK's metrics on the service's ``/metrics``.

Tracing. ``Client.connect(...)`` and ``Worker(...)`` get the SDK's ``TracingInterceptor`` added
to the interceptors the application passed (kept, in their order). It carries the trace in
Temporal's headers, so a workflow started inside an HTTP request is a child of the request's
trace, and its activities children of the workflow, across processes. It is added once: not
when the application already passes one (or the SDK's ``OpenTelemetryPlugin``), and not to a
worker whose client has it (workers inherit their client's interceptors).

Metrics. The SDK's core records its metrics into a bounded buffer (``MetricBuffer``) of the
default Temporal runtime, which meshlens sets up at the first ``Client.connect`` that names no
runtime of its own; a background thread drains it every :data:`DRAIN_INTERVAL_S` into the
catalogue's ``temporal_*`` families, so there is one ``/metrics``. A runtime the application
creates or sets itself is left alone (its metrics are its own), and an update that finds the
buffer full is dropped by the SDK, which logs it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from wrapt import wrap_function_wrapper

from meshlens import catalogue
from meshlens._version import __version__
from meshlens.catalogue import Kind, MetricSpec
from meshlens.instrumentors import supported_versions

_logger = logging.getLogger("meshlens")

DRAIN_INTERVAL_S = 1.0
"""How often the SDK's metric buffer is drained: a scrape sees updates at most this old."""
BUFFER_SIZE = 50_000
"""Metric updates the SDK's buffer holds between two drains (a workflow task makes about ten)."""

# The SDK's metric (default prefix "temporal_") -> the catalogue family, and for each of its
# labels the SDK attribute it comes from.
_SDK_ATTRIBUTE = {catalogue.TEMPORAL_NAMESPACE: "namespace"}
_COLLECTED: Mapping[str, MetricSpec] = {
    "temporal_workflow_task_schedule_to_start_latency": catalogue.TEMPORAL_WORKFLOW_TASK_SCHEDULE_TO_START_LATENCY,
    "temporal_workflow_task_execution_latency": catalogue.TEMPORAL_WORKFLOW_TASK_EXECUTION_LATENCY,
    "temporal_workflow_endtoend_latency": catalogue.TEMPORAL_WORKFLOW_ENDTOEND_LATENCY,
    "temporal_activity_schedule_to_start_latency": catalogue.TEMPORAL_ACTIVITY_SCHEDULE_TO_START_LATENCY,
    "temporal_activity_execution_latency": catalogue.TEMPORAL_ACTIVITY_EXECUTION_LATENCY,
    "temporal_workflow_completed": catalogue.TEMPORAL_WORKFLOW_COMPLETED,
    "temporal_workflow_failed": catalogue.TEMPORAL_WORKFLOW_FAILED,
    "temporal_workflow_task_execution_failed": catalogue.TEMPORAL_WORKFLOW_TASK_EXECUTION_FAILED,
    "temporal_activity_execution_failed": catalogue.TEMPORAL_ACTIVITY_EXECUTION_FAILED,
    "temporal_worker_task_slots_available": catalogue.TEMPORAL_WORKER_TASK_SLOTS_AVAILABLE,
}


class SdkMetrics:
    """The default Temporal runtime with a metric buffer, and the thread that drains it into
    meshlens's instruments. Set up once per process, at the first client that needs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._installed = False
        self._buffer: Any = None
        self._thread: threading.Thread | None = None

    def install_default_runtime(self) -> None:
        with self._lock:
            if self._installed:
                return
            self._installed = True
            from meshlens import current

            meshlens_runtime = current()
            if meshlens_runtime is None:
                return  # meshlens is not running here: no /metrics to serve them on
            import temporalio.runtime as sdk

            reference = getattr(sdk, "_runtime_ref", None)
            # The application made or set the default runtime, or keeps one per fork: its choice.
            chosen = getattr(reference, "_default_runtime", None) is not None
            if chosen or getattr(reference, "_prevent_default", False):
                _logger.info("meshlens: the Temporal runtime is the application's own; its SDK metrics are not "
                             "collected")
                return
            buffer = sdk.MetricBuffer(BUFFER_SIZE, sdk.MetricBufferDurationFormat.SECONDS)
            runtime = sdk.Runtime(telemetry=sdk.TelemetryConfig(metrics=buffer))
            try:
                sdk.Runtime.set_default(runtime, error_if_already_set=True)
            except RuntimeError:
                return
            self._buffer = buffer
            instruments = meshlens_runtime.instruments
            self._thread = threading.Thread(
                target=self._drain_forever, args=(instruments,), name="meshlens-temporal-metrics", daemon=True
            )
            self._thread.start()

    def _drain_forever(self, instruments: Any) -> None:
        stop = threading.Event()
        while not stop.wait(DRAIN_INTERVAL_S):
            try:
                self.drain(instruments)
            except Exception:  # a bad update costs that update, never the thread
                _logger.debug("meshlens: draining Temporal SDK metrics failed", exc_info=True)

    def drain(self, instruments: Any) -> None:
        for update in self._buffer.retrieve_updates():
            metric = update.metric
            spec = _COLLECTED.get(metric.name)
            if spec is None:
                continue
            attributes = update.attributes
            values = tuple(str(attributes.get(_SDK_ATTRIBUTE.get(label, label), "")) for label in spec.labels)
            instrument = instruments[spec]
            if spec.kind is Kind.HISTOGRAM:
                instrument.observe(values, float(update.value))
            elif spec.kind is Kind.COUNTER:
                instrument.labels(*values).inc(update.value)
            else:
                instrument.labels(*values).set(update.value)


_SDK_METRICS = SdkMetrics()


def _traces_already(interceptors: Sequence[Any], plugins: Sequence[Any]) -> bool:
    """Whether the application already traces this client or worker with the SDK's own tools."""
    import temporalio.contrib.opentelemetry as otel

    interceptor_types = tuple(
        kind for kind in (getattr(otel, "TracingInterceptor", None), getattr(otel, "OpenTelemetryInterceptor", None))
        if kind is not None
    )
    plugin_type = getattr(otel, "OpenTelemetryPlugin", None)
    return any(isinstance(interceptor, interceptor_types) for interceptor in interceptors) or (
        plugin_type is not None and any(isinstance(plugin, plugin_type) for plugin in plugins)
    )


def _tracing_interceptor(tracer_provider: Any) -> Any:
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return TracingInterceptor(trace.get_tracer("temporalio.contrib.opentelemetry", __version__, tracer_provider))


def _connect_wrapper(tracer_provider: Any) -> Callable[..., Any]:
    def connect(wrapped: Callable[..., Any], cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            interceptors = list(kwargs.get("interceptors") or ())
            if not _traces_already(interceptors, kwargs.get("plugins") or ()):
                kwargs["interceptors"] = [*interceptors, _tracing_interceptor(tracer_provider)]
            if kwargs.get("runtime") is None:
                _SDK_METRICS.install_default_runtime()
        except Exception:
            _logger.warning("meshlens: could not add tracing to a Temporal client; it runs untraced", exc_info=True)
        return wrapped(*args, **kwargs)

    return connect


def _worker_wrapper(tracer_provider: Any) -> Callable[..., Any]:
    def init(wrapped: Callable[..., Any], worker: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            client = args[0] if args else kwargs.get("client")
            client_config = client.config() if client is not None else {}
            inherited = list(client_config.get("interceptors") or ())
            interceptors = list(kwargs.get("interceptors") or ())
            plugins = [*(client_config.get("plugins") or ()), *(kwargs.get("plugins") or ())]
            if not _traces_already([*inherited, *interceptors], plugins):
                kwargs["interceptors"] = [*interceptors, _tracing_interceptor(tracer_provider)]
        except Exception:
            _logger.warning("meshlens: could not add tracing to a Temporal worker; it runs untraced", exc_info=True)
        return wrapped(*args, **kwargs)

    return init


class TemporalInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Adds the Temporal SDK's tracing interceptor to every client and worker, and collects
    the SDK's metrics (see the module's documentation)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return supported_versions("temporal")

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.get("tracer_provider")
        wrap_function_wrapper("temporalio.client", "Client.connect", _connect_wrapper(tracer_provider))
        wrap_function_wrapper("temporalio.worker", "Worker.__init__", _worker_wrapper(tracer_provider))

    def _uninstrument(self, **kwargs: Any) -> None:
        import temporalio.client
        import temporalio.worker

        # From the class's own dictionary: `connect` is a classmethod, which the wrapper holds as such.
        for klass, name in ((temporalio.client.Client, "connect"), (temporalio.worker.Worker, "__init__")):
            wrapper = vars(klass).get(name)
            if wrapper is not None and hasattr(wrapper, "__wrapped__"):
                setattr(klass, name, wrapper.__wrapped__)
