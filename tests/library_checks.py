"""Helpers for the library tests (databases, HTTP clients, gRPC, Celery): spans by trace,
parent/child links, metric deltas between two scrapes. Built on harness.py, over real sockets."""

from __future__ import annotations

import secrets

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from demo.otlp_sink import OtlpSink, ReceivedSpan

INTERNAL_KIND, SERVER_KIND, CLIENT_KIND, PRODUCER_KIND, CONSUMER_KIND = 1, 2, 3, 4, 5
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
INSTRUMENTATION_FAILED = "could not instrument"


# The demo's trace sink keeps each span's instrumentation scope and links.
ScopedSpan = ReceivedSpan
ScopedSink = OtlpSink


def traceparent() -> tuple[str, str, str]:
    """A new sampled trace to continue: (trace id, parent span id, traceparent header)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def descends_from(span: ScopedSpan, ancestor: ScopedSpan, spans: list[ScopedSpan]) -> bool:
    """Whether ``ancestor`` is on the span's parent chain (within the received spans)."""
    by_id = {s.span_id: s for s in spans}
    current: ScopedSpan | None = span
    for _ in range(50):
        if current is None or not current.parent_span_id:
            return False
        if current.parent_span_id == ancestor.span_id:
            return True
        current = by_id.get(current.parent_span_id)
    return False


def count(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``; 0 when there is none."""
    total = 0.0
    for family in parse_text(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return count(after, name, **labels) - count(before, name, **labels)


def label_values(text: str, name: str, label: str, **labels: str) -> set[str]:
    """The values ``label`` takes among the samples called ``name`` that match ``labels``."""
    values = set()
    for family in parse_text(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                values.add(sample.labels.get(label, ""))
    return values


def exemplar_trace_ids(openmetrics: str, family_name: str, **labels: str) -> set[str]:
    ids = set()
    for family in parse_openmetrics(openmetrics):
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.exemplar is not None and all(sample.labels.get(k) == v for k, v in labels.items()):
                ids.add(sample.exemplar.labels["trace_id"])
    return ids
