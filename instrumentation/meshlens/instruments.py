"""prometheus-client instruments created from the catalogue, each with a cardinality guard.

Every labelled metric keeps at most ``limit`` distinct label sets. Past the limit an
observation goes to a single overflow series labelled ``otel_metric_overflow="true"``
(what the OpenTelemetry metrics SDK specification prescribes) and is counted in
``meshlens_metric_overflow_total``: memory stays bounded and nothing is silently lost.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from meshlens import catalogue
from meshlens.catalogue import CATALOGUE, Catalogue, Kind, MetricSpec

EXEMPLAR_TRACE_ID = "trace_id"
EXEMPLAR_SPAN_ID = "span_id"


class ExemplarSink(Protocol):
    """Where exemplars go when prometheus-client cannot keep them (pre-fork workers)."""

    def record(self, key: str, value: float, trace_id: int, span_id: int, timestamp: float) -> None: ...


def exemplar_key(name: str, labels: dict[str, str]) -> str:
    """Identifies one bucket series, the same way for writers and for the collector."""
    return name + "\x00" + "\x00".join(f"{k}={labels[k]}" for k in sorted(labels))


class GuardedMetric:
    """One catalogue metric: a prometheus-client metric plus its overflow series."""

    def __init__(
        self,
        spec: MetricSpec,
        limit: int,
        overflow_counter: GuardedMetric | None,
        exemplar_sink: ExemplarSink | None = None,
    ) -> None:
        self.spec = spec
        self.limit = limit
        self._overflow_counter = overflow_counter
        self._exemplar_sink = exemplar_sink
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], Any] = {}
        self._bucket_keys: dict[tuple[tuple[str, ...], int], str] = {}
        self._upper_bounds = (*spec.buckets, float("inf"))
        self.metric = _build(spec, spec.labels)
        self._overflow_metric = _build(spec, (catalogue.OVERFLOW_LABEL,)) if spec.labels else None
        self._overflow_child: Any = None

    # -- recording ----------------------------------------------------------

    def labels(self, *values: str) -> Any:
        """The child for these label values (in the catalogue's label order)."""
        child = self._children.get(values)
        if child is not None:
            return child
        if not self.spec.labels:
            return self.metric
        with self._lock:
            child = self._children.get(values)
            if child is not None:
                return child
            if len(self._children) < self.limit:
                child = self.metric.labels(*values)
                self._children[values] = child
                return child
        # Past the limit: the key is not remembered, so memory stays bounded.
        if self._overflow_counter is not None:
            self._overflow_counter.labels(self.spec.name).inc()
        if self._overflow_child is None:
            assert self._overflow_metric is not None
            self._overflow_child = self._overflow_metric.labels("true")
        return self._overflow_child

    def observe(self, values: tuple[str, ...], amount: float, trace_id: int = 0, span_id: int = 0) -> None:
        """Observe into a histogram, with the trace as exemplar when one is given."""
        child = self.labels(*values)
        if not trace_id:
            child.observe(amount)
            return
        if self._exemplar_sink is None:
            child.observe(
                amount, {EXEMPLAR_TRACE_ID: format(trace_id, "032x"), EXEMPLAR_SPAN_ID: format(span_id, "016x")}
            )
            return
        child.observe(amount)
        index = bisect_left(self._upper_bounds, amount)
        key = self._bucket_keys.get((values, index))
        if key is None:
            if child is self._overflow_child:
                labels = {catalogue.OVERFLOW_LABEL: "true"}
            else:
                labels = dict(zip(self.spec.labels, values, strict=True))
            labels["le"] = floatToGoString(self._upper_bounds[index])
            key = exemplar_key(self.spec.name + "_bucket", labels)
            if child is not self._overflow_child:  # overflowing keys are not remembered
                self._bucket_keys[(values, index)] = key
        self._exemplar_sink.record(key, amount, trace_id, span_id, time.time())

    def series_count(self) -> int:
        return len(self._children)

    # -- collection (single process) ----------------------------------------

    def collect(self) -> Iterator[Metric]:
        families = list(self.metric.collect())
        if self._overflow_child is not None and self._overflow_metric is not None:
            for extra in self._overflow_metric.collect():
                families[0].samples.extend(extra.samples)
        return iter(families)


def _build(spec: MetricSpec, labelnames: tuple[str, ...]) -> MetricWrapperBase:
    common: dict[str, Any] = {"labelnames": labelnames, "registry": None}
    if spec.kind is Kind.HISTOGRAM:
        return Histogram(spec.base_name, spec.help, buckets=spec.buckets, **common)
    if spec.kind is Kind.COUNTER:
        return Counter(spec.base_name, spec.help, **common)
    return Gauge(spec.base_name, spec.help, multiprocess_mode=spec.multiprocess_mode, **common)


class Instruments(Collector):
    """Every metric the runtime emits, created from the catalogue."""

    def __init__(
        self,
        label_set_limit: int,
        catalogue_: Catalogue = CATALOGUE,
        exemplar_sink: ExemplarSink | None = None,
    ) -> None:
        self._metrics: dict[str, GuardedMetric] = {}
        overflow_spec = catalogue.MESHLENS_METRIC_OVERFLOW
        # The overflow counter's own label is the metric name: bounded by the catalogue.
        overflow = GuardedMetric(overflow_spec, limit=len(catalogue_.metrics) + 1, overflow_counter=None)
        self._metrics[overflow_spec.name] = overflow
        for spec in catalogue_.emitted():
            if spec.name not in self._metrics:
                self._metrics[spec.name] = GuardedMetric(spec, label_set_limit, overflow, exemplar_sink)

    def __getitem__(self, spec: MetricSpec) -> GuardedMetric:
        return self._metrics[spec.name]

    def __iter__(self) -> Iterator[GuardedMetric]:
        return iter(self._metrics.values())

    def collect(self) -> Iterable[Metric]:
        for metric in self._metrics.values():
            yield from metric.collect()

    def register_into(self, registry: CollectorRegistry) -> None:
        registry.register(self)
