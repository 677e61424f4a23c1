"""The catalogue: one declaration per metric, Prometheus names translated from the conventions."""

from __future__ import annotations

import re

import pytest

from meshlens import catalogue
from meshlens.catalogue import CATALOGUE, Catalogue, Kind, MetricSpec, Origin

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
UNIT_SUFFIX = {"s": "_seconds", "By": "_bytes", "ms": "_milliseconds"}


@pytest.mark.parametrize("spec", list(CATALOGUE), ids=lambda s: s.name)
def test_names_follow_the_translation_rules(spec: MetricSpec):
    assert NAME.match(spec.name)
    assert all(LABEL.match(label) and not label.startswith("__") for label in spec.labels)
    assert len(set(spec.labels)) == len(spec.labels)
    assert spec.help.strip()
    if spec.kind is Kind.COUNTER:
        assert spec.name.endswith("_total")
    suffix = UNIT_SUFFIX.get(spec.unit)
    if suffix:
        assert spec.base_name.endswith(suffix) or spec.name.endswith(suffix + "_total"), spec.name
    if spec.kind is Kind.HISTOGRAM and spec.emitted:
        assert list(spec.buckets) == sorted(spec.buckets) and len(set(spec.buckets)) == len(spec.buckets)
    if spec.semconv and not spec.deviation:
        stem = spec.semconv.replace(".", "_")
        assert spec.name.startswith(stem), (spec.name, spec.semconv)


def test_the_red_histogram_has_the_design_labels():
    spec = CATALOGUE["http_server_request_duration_seconds"]
    assert spec.labels == ("http_request_method", "http_route", "http_response_status_code")
    assert spec.semconv == "http.server.request.duration"


def test_read_only_metrics_are_declared():
    for name in ("up", "istio_requests_total", "istio_request_duration_milliseconds",
                 "otelcol_receiver_refused_spans_total", "otelcol_exporter_send_failed_spans_total",
                 "kafka_consumergroup_lag"):
        assert name in CATALOGUE
        assert not CATALOGUE[name].emitted


def test_series_lookup_knows_histogram_parts():
    assert CATALOGUE.lookup_series("http_server_request_duration_seconds_bucket") is catalogue.HTTP_SERVER_REQUEST_DURATION
    assert CATALOGUE.lookup_series("istio_requests_total") is catalogue.ISTIO_REQUESTS
    assert CATALOGUE.lookup_series("http_server_request_duration") is None


def test_a_name_declared_twice_is_refused():
    spec = MetricSpec(name="x_total", kind=Kind.COUNTER, help="x")
    with pytest.raises(ValueError, match="declared twice"):
        Catalogue((spec, spec))


def test_every_emitted_metric_is_meshlens_origin():
    assert {spec.origin for spec in CATALOGUE.emitted()} == {Origin.MESHLENS}
