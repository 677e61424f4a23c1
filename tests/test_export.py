"""Span export over the wire: OTLP/HTTP with headers and gzip, OTLP/gRPC, and ratio sampling."""

from __future__ import annotations

import pytest

from harness import OtlpGrpcSink, OtlpSink, base_env, bin_path, families, free_port, running, sample_value

pytestmark = pytest.mark.slow

ROUTE = "/items/<int:item_id>"


def _flask(port: int) -> list[str]:
    return [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", "flask_app:app"]


def _routed(spans):
    return [s for s in spans if s.attributes.get("http.route") == ROUTE]


def test_otlp_http_with_headers_and_gzip(tmp_path):
    sink = OtlpSink().start()
    port = free_port()
    env = base_env(sink, free_port(), OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20s3cret,x-tenant=shop",
                   OTEL_EXPORTER_OTLP_COMPRESSION="gzip")
    try:
        with running(_flask(port), port, env, tmp_path / "service.log") as service:
            for item in range(3):
                service.get(f"/items/{item}")
            sink.wait_for(lambda spans: len(_routed(spans)) == 3)
    finally:
        sink.stop()
    assert sink.headers[-1]["authorization"] == "Bearer s3cret"
    assert sink.headers[-1]["x-tenant"] == "shop"
    assert sink.headers[-1]["content-encoding"] == "gzip"


def test_otlp_grpc(tmp_path):
    sink = OtlpGrpcSink().start()
    port = free_port()
    env = base_env(sink, free_port(), OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                   OTEL_EXPORTER_OTLP_HEADERS="x-tenant=shop")
    try:
        with running(_flask(port), port, env, tmp_path / "service.log") as service:
            for item in range(3):
                service.get(f"/items/{item}")
            spans = sink.wait_for(lambda spans: len(_routed(spans)) == 3)
    finally:
        sink.stop()
    assert _routed(spans)[0].resource["telemetry.distro.name"] == "meshlens"
    assert sink.headers[-1]["x-tenant"] == "shop"


def test_ratio_sampling_exports_a_share_and_counts_everything(tmp_path):
    sink = OtlpSink().start()
    port = free_port()
    env = base_env(sink, free_port(), OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG="0.1")
    requests = 400
    try:
        with running(_flask(port), port, env, tmp_path / "service.log") as service:
            for item in range(requests):
                assert service.get(f"/items/{item}")[0] == 200
            text = service.metrics()
            openmetrics = service.metrics(openmetrics=True)
            service.stop()
        spans = _routed(sink.spans)
    finally:
        sink.stop()
    assert sample_value(text, "http_server_request_duration_seconds_count", http_route=ROUTE) == requests
    assert 15 <= len(spans) <= 80, len(spans)  # 10% of 400, with room for chance
    exemplars = [s.exemplar for s in families(openmetrics, openmetrics=True)["http_server_request_duration_seconds"].samples
                 if s.exemplar is not None]
    exported = {s.trace_id for s in sink.spans}
    assert exemplars and all(e.labels["trace_id"] in exported for e in exemplars), "every exemplar links to a stored trace"
