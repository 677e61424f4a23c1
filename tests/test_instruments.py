"""Instruments from the catalogue: cardinality guard, overflow series, exemplars."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from meshlens import catalogue
from meshlens.instruments import Instruments

SERVER = catalogue.HTTP_SERVER_REQUEST_DURATION


def _registry(instruments: Instruments) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(instruments)
    return registry


def test_observations_past_the_limit_go_to_one_overflow_series_and_are_counted():
    instruments = Instruments(label_set_limit=3)
    histogram = instruments[SERVER]
    for index in range(10):
        histogram.observe(("GET", f"/route/{index}", "200"), 0.01)
    histogram.observe(("GET", "/route/0", "200"), 0.01)  # admitted before the limit: stays its own series
    assert histogram.series_count() == 3
    text = generate_latest(_registry(instruments)).decode()
    counts = [line for line in text.splitlines() if line.startswith("http_server_request_duration_seconds_count")]
    assert len(counts) == 4
    assert 'http_server_request_duration_seconds_count{otel_metric_overflow="true"} 7.0' in text
    assert 'http_server_request_duration_seconds_count{http_request_method="GET",http_response_status_code="200",http_route="/route/0"} 2.0' in text
    assert 'meshlens_metric_overflow_total{metric="http_server_request_duration_seconds"} 7.0' in text


def test_memory_for_label_sets_stays_bounded_under_a_flood():
    instruments = Instruments(label_set_limit=50)
    histogram = instruments[SERVER]
    for index in range(20_000):
        histogram.observe(("GET", f"/{index}", "404"), 0.001, trace_id=index + 1, span_id=1)
    assert histogram.series_count() == 50
    buckets = len(SERVER.buckets) + 1
    assert len(histogram._bucket_keys) <= 50 * buckets
    # One exemplar per bucket series at most: the admitted series and the overflow series.
    assert len(instruments.exemplars.snapshot()) <= 51 * buckets


def test_exemplars_carry_trace_and_span_ids_in_openmetrics():
    instruments = Instruments(label_set_limit=10)
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    instruments[SERVER].observe(("GET", "/items/{id}", "200"), 0.042, trace_id=trace_id, span_id=0xF067AA0BA902B7)
    text = generate_openmetrics(_registry(instruments)).decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == SERVER.name)
    exemplars = [s.exemplar for s in family.samples if s.exemplar]
    assert len(exemplars) == 1
    assert exemplars[0].labels == {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
    assert exemplars[0].value == 0.042
    bucket = next(s for s in family.samples if s.exemplar)
    assert bucket.labels["le"] == "0.05"


def test_unsampled_observations_have_no_exemplar():
    instruments = Instruments(label_set_limit=10)
    instruments[SERVER].observe(("GET", "/", "200"), 0.01)
    text = generate_openmetrics(_registry(instruments)).decode()
    assert "trace_id" not in text


def test_instruments_are_private_to_their_registry():
    Instruments(label_set_limit=10)
    names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert SERVER.name not in names
