"""meshlens's span encoder writes exactly the bytes the stock OTLP encoder serialises."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.span import TraceState

from meshlens import otlp


def _provider(resource: Resource) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _stock(spans) -> bytes:
    return stock_encode_spans(spans).SerializePartialToString()


def _every_shape_of_span():
    provider, exporter = _provider(Resource({"service.name": "shop", "k8s.pod.name": "shop-1", "process.pid": 42},
                                            schema_url="https://opentelemetry.io/schemas/1.26.0"))
    other_provider, other_exporter = _provider(Resource({"service.name": "other"}))
    server = provider.get_tracer("opentelemetry.instrumentation.flask", "0.66b1",
                                 schema_url="https://opentelemetry.io/schemas/1.11.0")
    scoped = provider.get_tracer("meshlens", "1.0", attributes={"scope.kind": "test", "n": 3})
    bare = provider.get_tracer("unnamed")
    remote_parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331, is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=TraceState([("vendor", "x"), ("meshlens", "1")]),
    )
    with server.start_as_current_span(
        "GET /items/{id}", kind=SpanKind.SERVER, context=set_span_in_context(NonRecordingSpan(remote_parent)),
        attributes={"http.request.method": "GET", "http.route": "/items/{id}", "http.response.status_code": 200,
                    "server.port": 8000, "ratio": 0.25, "flag": True, "off": False, "empty": "",
                    "unicode": "caf\u00e9 \u2603", "tags": ["a", "b", ""], "ids": [1, -2, 3], "floats": [1.5, -0.0],
                    "bools": [True, False], "big": 2**63 - 1, "negative": -(2**63), "zero": 0},
    ) as span:
        span.add_event("cache miss", {"key": "item:1", "size": 12})
        span.add_event("empty event")
        with scoped.start_as_current_span("lookup", kind=SpanKind.INTERNAL) as child:
            child.set_status(Status(StatusCode.ERROR, "no such item"))
            child.record_exception(KeyError("item:1"))
        # Links without trace state: the stock encoder leaves a link's trace state out (see below).
        linked = SpanContext(trace_id=remote_parent.trace_id, span_id=remote_parent.span_id, is_remote=True)
        with scoped.start_as_current_span("call", kind=SpanKind.CLIENT,
                                          links=[Link(linked, {"link.reason": "retry"}), Link(linked)]):
            pass
        with bare.start_as_current_span("", kind=SpanKind.PRODUCER) as produce:
            produce.set_status(Status(StatusCode.OK))
        with bare.start_as_current_span("consume", kind=SpanKind.CONSUMER):
            pass
    with other_provider.get_tracer("other").start_as_current_span("root"):
        pass
    return [*exporter.get_finished_spans(), *other_exporter.get_finished_spans()]


def test_every_shape_of_span_encodes_to_the_stock_bytes():
    spans = _every_shape_of_span()
    assert otlp.encode_spans(spans) == _stock(spans)
    # Twice: the second run reads resources, scopes and attributes from the caches.
    assert otlp.encode_spans(spans) == _stock(spans)
    decoded = ExportTraceServiceRequest.FromString(otlp.encode_spans(spans))
    assert len(decoded.resource_spans) == 2
    assert sum(len(scope.spans) for rs in decoded.resource_spans for scope in rs.scope_spans) == len(spans)


def test_each_span_alone_encodes_to_the_stock_bytes():
    for span in _every_shape_of_span():
        assert otlp.encode_spans([span]) == _stock([span]), span.name


def test_spans_encoded_as_they_ended_give_the_stock_bytes_in_one_group_or_many():
    spans = _every_shape_of_span()
    one_scope = [span for span in spans if span.instrumentation_scope.name == "meshlens"]
    assert len(one_scope) == 2
    assert otlp.encode_spans([otlp.EncodedSpan(span) for span in one_scope]) == _stock(one_scope)  # one pass
    assert otlp.encode_spans([otlp.EncodedSpan(span) for span in spans]) == _stock(spans)  # grouped
    mixed = [otlp.EncodedSpan(span) if n % 2 else span for n, span in enumerate(spans)]
    assert otlp.encode_spans(mixed) == _stock(spans)


class PublicOnly:
    """A span seen only through ReadableSpan's public properties (another implementation)."""

    def __init__(self, span) -> None:
        self._span = span

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._span, name)


def test_spans_without_the_sdk_fields_encode_through_the_public_interface():
    spans = _every_shape_of_span()
    assert otlp.encode_spans([PublicOnly(span) for span in spans]) == _stock(spans)


def test_a_links_trace_state_is_carried():
    # opentelemetry-proto's Span.Link has trace_state; the stock encoder does not fill it.
    provider, exporter = _provider(Resource({"service.name": "shop"}))
    linked = SpanContext(trace_id=1, span_id=2, is_remote=True, trace_state=TraceState([("vendor", "x")]))
    with provider.get_tracer("t").start_as_current_span("s", links=[Link(linked)]):
        pass
    encoded = otlp.encode_spans(exporter.get_finished_spans())
    link = ExportTraceServiceRequest.FromString(encoded).resource_spans[0].scope_spans[0].spans[0].links[0]
    assert link.trace_state == "vendor=x"
    assert link.flags == 0x300  # has-is-remote and is-remote


def test_nothing_to_encode():
    assert otlp.encode_spans([]) == _stock([]) == b""


def test_an_integer_beyond_int64_is_left_out_and_logged(caplog):
    provider, exporter = _provider(Resource({"service.name": "shop"}))
    with provider.get_tracer("t").start_as_current_span("s", attributes={"huge": 2**64, "kept": 1}):
        pass
    spans = exporter.get_finished_spans()
    with caplog.at_level(logging.ERROR):
        encoded = otlp.encode_spans(spans)
    assert "huge" in caplog.text
    attributes = ExportTraceServiceRequest.FromString(encoded).resource_spans[0].scope_spans[0].spans[0].attributes
    assert [kv.key for kv in attributes] == ["kept"]


def test_the_repeated_value_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(otlp, "_REPEATED_ATTRIBUTE_CACHE_SIZE", 8)
    monkeypatch.setattr(otlp, "_repeated_attributes", {})
    provider, exporter = _provider(Resource({"service.name": "shop"}))
    tracer = provider.get_tracer("t")
    for n in range(50):
        with tracer.start_as_current_span("s", attributes={"url.path": f"/random/{n}"}):
            pass
    spans = exporter.get_finished_spans()
    assert otlp.encode_spans(spans) == _stock(spans)
    assert len(otlp._repeated_attributes) <= 8


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1])
def test_out_of_range_integers_are_refused_like_the_stock_encoder(value):
    with pytest.raises(ValueError):
        otlp.encode_value(value)
