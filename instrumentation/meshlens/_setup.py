"""Puts the parts together: what ``import meshlens.auto`` and ``meshlens.configure()`` do."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import prometheus_client
import prometheus_client.values
from opentelemetry import propagate, trace
from opentelemetry.processor.baggage import BaggageSpanProcessor
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.util._importlib_metadata import entry_points
from prometheus_client import CollectorRegistry

from meshlens import (
    catalogue,
    httpserver,
    jaeger_compat,
    kafka,
    libraries,
    logs,
    mmap_values,
    multiprocess,
    pools,
    propagation,
    servers,
)
from meshlens._hooks import after_import
from meshlens._threads import start_or_run
from meshlens._version import __version__
from meshlens.exposition import ApplicationMetrics, BeforeScrape, MetricsServer
from meshlens.instruments import Instruments
from meshlens.red import RedMetricsProcessor
from meshlens.runtime import EventLoopLagMonitor, RuntimeMetrics
from meshlens.settings import Settings, load_settings
from meshlens.tracing import (
    CountedBatchSpanProcessor,
    build_resource,
    build_span_processor,
    build_tracer_provider,
    flush_and_shutdown,
)

_logger = logging.getLogger("meshlens")

# The contrib instrumentations emit the stable HTTP and database attribute names only
# when asked; meshlens reads both, and asks for the stable ones unless the user chose.
SEMCONV_OPT_IN = ("OTEL_SEMCONV_STABILITY_OPT_IN", "http,database")


@dataclass
class Runtime:
    """What a configured meshlens holds; returned by :func:`meshlens.configure`."""

    settings: Settings
    tracer_provider: TracerProvider
    instruments: Instruments
    registry: CollectorRegistry
    group: multiprocess.Group | None
    runtime_metrics: RuntimeMetrics | None
    span_processor: CountedBatchSpanProcessor | None = None
    """The export queue, once :meth:`start_background` has run."""
    metrics_server: MetricsServer | None = None
    """The /metrics endpoint, once :meth:`start_background` has run (None when off or the port is taken)."""
    instrumented: list[libraries.Outcome] = field(default_factory=list)
    _started: bool = False
    _stopped: bool = False

    def start_background(self) -> None:
        """Starts what runs beside the service, in threads: span export, the pre-fork runtime
        sampler and the /metrics endpoint. Once per process, and a process forked after it
        does not start them again (the SDK restarts span export in the child itself, and the
        group's /metrics stays with the process that opened it). Where threads must wait for
        the fork (:attr:`multiprocess.Group.threads_after_fork`) each worker calls it."""
        if self._started or self._stopped:
            return
        self._started = True
        settings = self.settings
        self.span_processor = build_span_processor(settings, self.instruments)
        if self.span_processor is not None:
            self.tracer_provider.add_span_processor(self.span_processor)
        if self.group is not None and self.runtime_metrics is not None:
            # Another worker may answer the scrape: keep this one's files current.
            self.runtime_metrics.start_background(settings.runtime_interval_s)
        if settings.metrics_port:
            server = MetricsServer(
                self.registry, settings.metrics_host, settings.metrics_port,
                self.group.directory if self.group else None,
            )  # fmt: skip
            self.metrics_server = server if server.start() else None

    def sample_span_queue(self) -> None:
        if self.span_processor is not None:
            self.span_processor.sample_queue()

    def shutdown(self) -> None:
        """Flushes buffered spans and stops the endpoint; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        # Stop taking scrapes first, beside the flush: a pre-fork worker that is exiting
        # still shares the port, and the kernel would go on handing it scrapes that die with
        # it (a failed or cut-off scrape); once it stops listening they go to the others.
        closing = None
        if self.metrics_server is not None:
            # At interpreter exit on Python 3.12+ it stops here (within a half-second poll of
            # the serving loop), then spans are flushed.
            closing = start_or_run(self.metrics_server.stop, "meshlens-metrics-stop")
        flush_and_shutdown(self.tracer_provider, self.span_processor, self.settings.shutdown_timeout_s)
        if self.runtime_metrics is not None:
            self.runtime_metrics.stop()
        if closing is not None:
            closing.join(2.0)


_lock = threading.Lock()
_runtime: Runtime | None = None
_disabled = False


def current() -> Runtime | None:
    """The running configuration, if meshlens is configured in this process."""
    return _runtime


def configure(**overrides: Any) -> Runtime | None:
    """Sets up tracing, metrics and log correlation, and instruments installed libraries.

    Keyword arguments override the environment (see :class:`meshlens.Settings`). A
    second call returns the first call's runtime. Returns None when
    ``OTEL_SDK_DISABLED=true``, or when setup failed (logged): the service always runs.
    """
    global _runtime, _disabled
    with _lock:
        if _runtime is not None or _disabled:
            if overrides:
                _logger.warning("meshlens: already configured; configure(%s) ignored", ", ".join(overrides))
            return _runtime
        settings = load_settings(**overrides)
        if settings.sdk_disabled:
            _disabled = True
            return None
        try:
            _runtime = _start(settings)
        except Exception:
            _disabled = True
            _logger.exception("meshlens: setup failed; the service runs without meshlens telemetry")
            return None
        return _runtime


def _propagator(names: tuple[str, ...]) -> TextMapPropagator:
    """meshlens's formats (see :mod:`meshlens.propagation`) plus any other installed entry point named."""
    others: list[TextMapPropagator] = []
    for name in names:
        if name == "none" or name in propagation.FORMATS:
            continue
        points = list(entry_points(group="opentelemetry_propagator", name=name))
        if not points:
            _logger.warning("meshlens: unknown propagator %r in OTEL_PROPAGATORS; skipped", name)
            continue
        try:
            others.append(points[0].load()())
        except Exception as exc:
            _logger.warning("meshlens: propagator %r failed to load (%s); skipped", name, exc)
    return propagation.MeshlensPropagator(names, others)


def _start(settings: Settings) -> Runtime:
    group = multiprocess.detect_group(settings.multiprocess_dir)
    exemplar_sink = None
    if group is not None:
        multiprocess.prepare(group)
        # prometheus-client's multiprocess tools (and its value class, where meshlens falls back
        # to it) find the folder through this variable, here and in the workers it forks.
        os.environ[multiprocess.ENV_PROMETHEUS_DIR] = str(group.directory)
        prometheus_client.values.ValueClass = mmap_values.value_class(group.directory)
        exemplar_sink = multiprocess.ExemplarFile(group.directory)
    # `_created` series double the series count for a timestamp Prometheus does not use.
    prometheus_client.disable_created_metrics()
    instruments = Instruments(settings.metric_label_set_limit, exemplar_sink=exemplar_sink)
    instruments[catalogue.MESHLENS_INFO].labels(__version__, group.server if group else "").set(1)

    os.environ.setdefault(*SEMCONV_OPT_IN)
    runtime_metrics = RuntimeMetrics(instruments) if settings.runtime_metrics else None
    loop_monitor = EventLoopLagMonitor(instruments) if settings.runtime_metrics else None
    on_request = loop_monitor.watch_current_loop if loop_monitor else None
    red = RedMetricsProcessor(instruments, on_request, frozenset({httpserver.SCOPE_NAME}))
    tracer_provider = build_tracer_provider(settings, build_resource(settings), red)
    trace.set_tracer_provider(tracer_provider)
    propagate.set_global_textmap(_propagator(settings.propagators))

    if settings.baggage_to_attributes:
        tracer_provider.add_span_processor(BaggageSpanProcessor(frozenset(settings.baggage_to_attributes).__contains__))
    if settings.log_correlation:
        logs.install(settings.baggage_to_attributes)

    registry = CollectorRegistry(auto_describe=False)
    runtime = Runtime(
        settings=settings,
        tracer_provider=tracer_provider,
        instruments=instruments,
        registry=registry,
        group=group,
        runtime_metrics=runtime_metrics,
    )
    samplers = [runtime.sample_span_queue]
    if runtime_metrics is not None:
        samplers.insert(0, runtime_metrics.sample)
    registry.register(BeforeScrape(samplers))
    if group is None:
        registry.register(instruments)
        registry.register(ApplicationMetrics(spec.base_name for spec in catalogue.CATALOGUE))
    else:
        registry.register(multiprocess.GroupCollector(group.directory))
    if group is None or not group.threads_after_fork:
        runtime.start_background()  # else each worker starts them after the fork (multiprocess._check_uwsgi)

    asgi_options: dict[str, Any] = {}
    if not settings.framework_internal_spans:
        asgi_options["exclude_spans"] = ["receive", "send"]
    disabled = set(settings.disabled_instrumentations)
    replaced: dict[str, str] = {}
    if settings.http_server_spans == "meshlens":
        telemetry = httpserver.HttpServerTelemetry(
            tracer_provider, instruments, on_request, httpserver.url_matcher(settings.excluded_urls)
        )
        frameworks = [name for name in httpserver.FRAMEWORKS if not {"*", name} & disabled]
        httpserver.hook_frameworks(telemetry, frameworks, libraries.fastapi_traces_itself())
        replaced = {name: "meshlens's HTTP server middleware" for name in frameworks}
        wrapper = servers.meshlens_wrapper(telemetry)
    else:
        wrapper = servers.contrib_wrapper(tracer_provider, asgi_options)
    # Before the contrib instrumentors load: meshlens replaces their Kafka consumer spans.
    kafka.install(instruments, settings.disabled_instrumentations)
    runtime.instrumented = libraries.instrument_installed(
        tracer_provider, settings.disabled_instrumentations, {"fastapi": asgi_options},
        framework_internal_spans=settings.framework_internal_spans, replaced=replaced,
    )
    if not {"*", "wsgi", "asgi"} & disabled:
        servers.hook_servers(wrapper)
    if not {"*", "sqlalchemy"} & disabled:
        after_import("sqlalchemy", pools.PoolMetrics(instruments).install)
    if not {"*", jaeger_compat.NAME} & disabled:
        jaeger_detail = jaeger_compat.install(tracer_provider)
        if jaeger_detail is not None:
            runtime.instrumented.append(libraries.Outcome(jaeger_compat.NAME, True, jaeger_detail))
    atexit.register(runtime.shutdown)
    _install_sigterm_flush(runtime)
    return runtime


def _install_sigterm_flush(runtime: Runtime) -> None:
    """Flushes on SIGTERM where the process would otherwise die without running atexit.

    Only when SIGTERM still has its default action: a server that handles SIGTERM
    itself (gunicorn) exits normally and atexit flushes. uvicorn restores the handler
    it found when it stops and re-raises the signal, so this handler then runs too.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            runtime.shutdown()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_sigterm)


def _reset_for_tests() -> None:
    """Forgets the configuration (tests only; the global providers stay set)."""
    global _runtime, _disabled
    with _lock:
        if _runtime is not None:
            _runtime.shutdown()
            if _runtime.metrics_server is not None:
                _runtime.metrics_server.stop()
        _runtime = None
        _disabled = False
