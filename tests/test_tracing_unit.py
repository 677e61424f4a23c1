"""Sampler, resource, endpoints and the export accounting, with the SDK's in-memory exporter."""

from __future__ import annotations

import logging
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshlens import catalogue
from meshlens.instruments import Instruments
from meshlens.red import RedMetricsProcessor
from meshlens.settings import load_settings
from meshlens.tracing import ObservedExporter, build_resource, build_sampler, traces_endpoint


def _provider(settings_env: dict[str, str]):
    settings = load_settings(settings_env)
    instruments = Instruments(settings.metric_label_set_limit)
    provider = TracerProvider(sampler=build_sampler(settings), resource=build_resource(settings, {}))
    provider.add_span_processor(RedMetricsProcessor(instruments))
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider, instruments, exported


def _server_span(tracer, route: str) -> None:
    attributes = {"http.request.method": "GET", "url.scheme": "http"}
    with tracer.start_as_current_span("GET " + route, kind=SpanKind.SERVER, attributes=attributes) as span:
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", 200)


def _count(instruments: Instruments, spec, *labels: str) -> float:
    metric = instruments[spec]
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and tuple(sample.labels.get(n) for n in spec.labels) == labels:
                return sample.value
    return 0.0


def test_unsampled_requests_still_count_in_metrics_but_are_not_exported():
    provider, instruments, exported = _provider({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    tracer = provider.get_tracer("test")
    for _ in range(1000):
        _server_span(tracer, "/items/{id}")
    assert _count(instruments, catalogue.HTTP_SERVER_REQUEST_DURATION, "GET", "/items/{id}", "200") == 1000
    assert 50 < len(exported.get_finished_spans()) < 170  # about 10%


def test_always_off_exports_nothing_and_counts_everything():
    provider, instruments, exported = _provider({"OTEL_TRACES_SAMPLER": "always_off"})
    tracer = provider.get_tracer("test")
    for _ in range(10):
        _server_span(tracer, "/a")
    assert exported.get_finished_spans() == ()
    assert _count(instruments, catalogue.HTTP_SERVER_REQUEST_DURATION, "GET", "/a", "200") == 10


def test_in_flight_gauge_returns_to_zero():
    provider, instruments, _ = _provider({})
    tracer = provider.get_tracer("test")
    active = instruments[catalogue.HTTP_SERVER_ACTIVE_REQUESTS]
    with tracer.start_as_current_span("GET /", kind=SpanKind.SERVER,
                                      attributes={"http.request.method": "GET", "url.scheme": "http"}):
        assert active.labels("GET", "http")._value.get() == 1
    assert active.labels("GET", "http")._value.get() == 0


def test_made_up_methods_do_not_grow_the_label_set():
    provider, instruments, _ = _provider({})
    tracer = provider.get_tracer("test")
    for method in ("FOO", "BAR", "get", "GET"):
        with tracer.start_as_current_span("x", kind=SpanKind.SERVER, attributes={"http.request.method": method}):
            pass
    assert instruments[catalogue.HTTP_SERVER_REQUEST_DURATION].series_count() == 2  # _OTHER and GET


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({}, "http://localhost:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}, "http://collector:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:9/custom"}, "http://c:9/custom"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "http://localhost:4317"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "http://c:4317"),
    ],
)
def test_endpoint_rules_of_the_specification(env, endpoint):
    assert traces_endpoint(load_settings(env)) == endpoint


def test_resource_from_settings_and_downward_api():
    settings = load_settings({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,team=a"})
    resource = build_resource(settings, {"POD_NAME": "p", "POD_NAMESPACE": "ns", "K8S_NODE_NAME": "n"})
    attributes = dict(resource.attributes)
    assert attributes["service.name"] == "from-attrs"
    assert attributes["k8s.pod.name"] == "p" and attributes["k8s.namespace.name"] == "ns"
    assert attributes["k8s.node.name"] == "n"
    assert attributes["telemetry.distro.name"] == "meshlens"
    named = build_resource(load_settings({"OTEL_SERVICE_NAME": "orders",
                                          "OTEL_RESOURCE_ATTRIBUTES": "service.name=x"}), {})
    assert named.attributes["service.name"] == "orders"
    assert build_resource(load_settings({}), {}).attributes["service.name"].startswith("unknown_service:")


class _Flaky(SpanExporter):
    def __init__(self) -> None:
        self.fail = True

    def export(self, spans):
        if self.fail:
            logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter").warning("connection refused")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self):
        return None


def test_an_outage_is_logged_once_and_its_drops_counted(caplog):
    instruments = Instruments(100)
    flaky = _Flaky()
    exporter = ObservedExporter(flaky, instruments, "http://collector:4318/v1/traces")
    spans = [object()] * 5
    with caplog.at_level(logging.INFO):
        for _ in range(20):
            exporter.export(spans)  # type: ignore[arg-type]
        flaky.fail = False
        exporter.export(spans)  # type: ignore[arg-type]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot export spans" in m for m in messages) == 1
    assert any("connection refused" in m for m in messages if "cannot export" in m)
    assert sum("recovered after" in m and "100 spans were dropped" in m for m in messages) == 1
    assert not any(m == "connection refused" for m in messages)  # the exporter's own line is silenced
    dropped = instruments[catalogue.MESHLENS_SPANS_DROPPED].labels("export_failed")._value.get()
    assert dropped == 100
    assert instruments[catalogue.MESHLENS_SPANS_EXPORTED].labels()._value.get() == 5


def _refuse_new_threads(monkeypatch) -> None:
    """As at interpreter exit on Python 3.12+: no thread can start."""
    import threading

    def refused(self):
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refused)


def test_the_exit_flush_sends_everything_queued_without_starting_a_thread(caplog, monkeypatch):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from meshlens.tracing import CountedBatchSpanProcessor, flush_and_shutdown

    settings = load_settings({"OTEL_BSP_SCHEDULE_DELAY": "600000"})
    instruments = Instruments(100)
    memory = InMemorySpanExporter()
    processor = CountedBatchSpanProcessor(ObservedExporter(memory, instruments, "http://c:4318"), settings, instruments)
    provider = TracerProvider(sampler=build_sampler(settings))
    provider.add_span_processor(processor)
    for _ in range(10):
        provider.get_tracer("test").start_span("queued").end()
    _refuse_new_threads(monkeypatch)
    with caplog.at_level(logging.WARNING):
        flush_and_shutdown(provider, processor, 5.0)
    assert len(memory.get_finished_spans()) == 10
    assert not [record for record in caplog.records if "not flushed" in record.getMessage()]
    assert instruments[catalogue.MESHLENS_SPANS_DROPPED].labels("shutdown")._value.get() == 0


def test_a_span_processor_of_the_application_cannot_hold_the_stop_past_its_deadline():
    import threading

    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from meshlens.tracing import CountedBatchSpanProcessor, flush_and_shutdown

    class Stuck(SpanProcessor):
        def __init__(self) -> None:
            self.release = threading.Event()

        def shutdown(self) -> None:
            self.release.wait(10)

    settings = load_settings({})
    instruments = Instruments(100)
    memory = InMemorySpanExporter()
    processor = CountedBatchSpanProcessor(ObservedExporter(memory, instruments, "http://c:4318"), settings, instruments)
    provider = TracerProvider(sampler=build_sampler(settings))
    provider.add_span_processor(processor)
    stuck = Stuck()
    provider.add_span_processor(stuck)
    provider.get_tracer("test").start_span("a").end()
    started = time.monotonic()
    flush_and_shutdown(provider, processor, 0.5)
    assert time.monotonic() - started < 2
    assert len(memory.get_finished_spans()) == 1
    stuck.release.set()


def test_a_batch_stuck_in_export_at_exit_is_counted_once_as_dropped(caplog, monkeypatch):
    """At exit, a collector that hangs holds a batch the queue no longer shows: those spans are
    lost too, and counted (reason shutdown), not again when the export finally fails. The stop
    takes its deadline, not the export's timeout, even where no thread can start."""
    import threading

    from meshlens.tracing import CountedBatchSpanProcessor, flush_and_shutdown

    class Hanging(SpanExporter):
        def __init__(self) -> None:
            self.entered, self.release = threading.Event(), threading.Event()

        def export(self, spans):
            self.entered.set()
            self.release.wait(10)
            return SpanExportResult.FAILURE

        def shutdown(self):
            return None

    settings = load_settings({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4", "OTEL_BSP_SCHEDULE_DELAY": "60000"})
    instruments = Instruments(100)
    hanging = Hanging()
    processor = CountedBatchSpanProcessor(ObservedExporter(hanging, instruments, "http://c:4318"), settings, instruments)
    provider = TracerProvider(sampler=build_sampler(settings))
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for _ in range(4):  # one full batch: the export thread takes it and hangs
        tracer.start_span("a").end()
    assert hanging.entered.wait(5)
    for _ in range(3):
        tracer.start_span("b").end()
    _refuse_new_threads(monkeypatch)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        flush_and_shutdown(provider, processor, 0.5)
    assert time.monotonic() - started < 2
    assert any("7 spans not flushed" in record.getMessage() for record in caplog.records)
    dropped = instruments[catalogue.MESHLENS_SPANS_DROPPED]
    assert dropped.labels("shutdown")._value.get() == 7
    hanging.release.set()
    time.sleep(0.2)  # the hung export returns, failed: its spans are already counted
    assert dropped.labels("export_failed")._value.get() == 0


def test_the_resource_hash_is_computed_once_and_survives_merging(monkeypatch):
    from opentelemetry.sdk.resources import Resource

    resource = build_resource(load_settings({"OTEL_SERVICE_NAME": "orders"}), {})
    calls = []
    original = Resource.__hash__
    monkeypatch.setattr(Resource, "__hash__", lambda self: calls.append(1) or original(self))
    assert hash(resource) == hash(resource)
    assert len(calls) == 1
    merged = resource.merge(Resource({"process.pid": 7}))
    assert type(merged) is type(resource)
    assert merged.attributes["process.pid"] == 7 and merged.attributes["service.name"] == "orders"
    assert merged == merged.merge(Resource({}))


SAMPLERS = ["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
            "parentbased_traceidratio"]


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_configured_samplers_one_step_decision_is_the_full_chains(name):
    """ServerSpanStarter asks ConfiguredSampler.sampled instead of the chain of samplers: the
    same answer for every kind of parent, and no answer (so the chain) for Jaeger debug requests."""
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from meshlens.propagation import FORMATS, MeshlensPropagator
    from meshlens.tracing import ConfiguredSampler

    sampler = build_sampler(load_settings({"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": "0.3"}))
    configured = sampler.delegate
    assert type(configured) is ConfiguredSampler
    state = TraceState([("vendor", "x")])

    def under(remote: bool, flags: int) -> Context:
        parent = SpanContext(0xABC, 0xDEF, remote, TraceFlags(flags), state)
        return trace.set_span_in_context(NonRecordingSpan(parent))

    contexts = [Context(), under(True, 1), under(True, 0), under(False, 1), under(False, 0),
                trace.set_span_in_context(NonRecordingSpan(trace.INVALID_SPAN_CONTEXT))]
    trace_ids = [(n * 0x9E3779B97F4A7C15_F39CC0605CEDC834) % (1 << 128) or 1 for n in range(1, 301)]
    answers = set()
    for context in contexts:
        parent = trace.get_current_span(context).get_span_context()
        for trace_id in trace_ids:
            sampled = configured.sampled(context, parent if parent.is_valid else None, trace_id)
            result = configured.should_sample(context, trace_id, "GET", SpanKind.SERVER, None, ())
            assert sampled is (result.decision is Decision.RECORD_AND_SAMPLE), (context, trace_id)
            assert result.trace_state == (parent.trace_state if parent.is_valid else None)
            answers.add(sampled)
    assert answers == {"always_on": {True}, "always_off": {False}}.get(name, {True, False})
    debug = MeshlensPropagator(FORMATS).extract({"jaeger-debug-id": "t-1"})
    assert configured.sampled(debug, None, trace_ids[0]) is None
    assert configured.should_sample(debug, trace_ids[0], "GET").decision is Decision.RECORD_AND_SAMPLE
