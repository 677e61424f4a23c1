"""prometheus-client instruments created from the catalogue, each with a cardinality guard.

Every labelled metric keeps at most ``limit`` distinct label sets. Past the limit an
observation goes to a single overflow series labelled ``otel_metric_overflow="true"``
(what the OpenTelemetry metrics SDK specification prescribes) and is counted in
``meshlens_metric_overflow_total``: memory stays bounded and nothing is silently lost.

Exemplars are kept beside the histograms, one per bucket series (the latest), and
attached when a scrape collects them: in memory for a single process, in a
memory-mapped file per worker for pre-fork servers (:mod:`meshlens.multiprocess`).
Recording one is a dictionary store; prometheus-client's own exemplar path costs
several times more per observation and does not work across processes.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from meshlens import catalogue
from meshlens.catalogue import CATALOGUE, Catalogue, Kind, MetricSpec

EXEMPLAR_TRACE_ID = "trace_id"
EXEMPLAR_SPAN_ID = "span_id"


ExemplarValue = tuple[float, float, str, str]
"""(observed value, timestamp, trace id, span id) as a scrape shows them."""


class ExemplarSink(Protocol):
    """Where histogram observations leave their exemplars."""

    def record(self, key: str, value: float, trace_id: int, span_id: int, timestamp: float) -> None: ...


class MemoryExemplars:
    """The latest exemplar of each bucket series, in this process's memory."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, float, int, int]] = {}

    def record(self, key: str, value: float, trace_id: int, span_id: int, timestamp: float) -> None:
        self._latest[key] = (value, timestamp, trace_id, span_id)  # one store: atomic under the GIL

    def snapshot(self) -> dict[str, ExemplarValue]:
        return {
            key: (value, timestamp, format(trace_id, "032x"), format(span_id, "016x"))
            for key, (value, timestamp, trace_id, span_id) in list(self._latest.items())
        }


def exemplar_key(name: str, labels: Mapping[str, str]) -> str:
    """Identifies one bucket series, the same way for writers and for the collector."""
    return name + "\x00" + "\x00".join(f"{k}={labels[k]}" for k in sorted(labels))


def attach_exemplars(families: Iterable[Metric], exemplars: Mapping[str, ExemplarValue]) -> None:
    """Puts each bucket sample's exemplar on it, in place."""
    if not exemplars:
        return
    for family in families:
        if family.type != "histogram":
            continue
        family.samples = [_with_exemplar(sample, exemplars) for sample in family.samples]


def _with_exemplar(sample: Sample, exemplars: Mapping[str, ExemplarValue]) -> Sample:
    found = exemplars.get(exemplar_key(sample.name, sample.labels)) if sample.name.endswith("_bucket") else None
    if found is None:
        return sample
    value, timestamp, trace_id, span_id = found
    exemplar = Exemplar({EXEMPLAR_TRACE_ID: trace_id, EXEMPLAR_SPAN_ID: span_id}, value, timestamp)
    return sample._replace(exemplar=exemplar)


class GuardedMetric:
    """One catalogue metric: a prometheus-client metric plus its overflow series."""

    def __init__(
        self,
        spec: MetricSpec,
        limit: int,
        overflow_counter: GuardedMetric | None,
        exemplar_sink: ExemplarSink,
    ) -> None:
        self.spec = spec
        self.limit = limit
        self._overflow_counter = overflow_counter
        if overflow_counter is not None and spec.labels:
            # "No overflow" is a 0 that dashboards and alerts see, not an absent series.
            overflow_counter.labels(spec.name)
        self._exemplar_sink = exemplar_sink
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], Any] = {}
        self._bucket_keys: dict[tuple[tuple[str, ...], int], str] = {}
        self._upper_bounds = (*spec.buckets, float("inf"))
        self.metric = _build(spec, spec.labels)
        self._overflow_metric = _build(spec, (catalogue.OVERFLOW_LABEL,)) if spec.labels else None
        self._overflow_child: Any = None
        # Per label set within the limit (so bounded by it): what recording needs, prepared once.
        self._recorders: dict[tuple[str, ...], _HistogramRecorder | None] = {}
        self._adders: dict[tuple[str, ...], Callable[[float], None]] = {}

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

    def adder(self, *values: str) -> Callable[[float], None]:
        """A function adding its argument to the gauge or counter series of these label
        values (negative amounts: gauges only). Past the limit, each call of this method
        is counted as an overflow, as :meth:`labels` counts it."""
        add = self._adders.get(values)
        if add is not None:
            return add
        child = self.labels(*values)
        add = _value_adder(child, self.spec.kind)
        if child is not self._overflow_child:  # overflowing keys are not remembered
            self._adders[values] = add
        return add

    def observe(self, values: tuple[str, ...], amount: float, trace_id: int = 0, span_id: int = 0) -> None:
        """Observe into a histogram, with the trace as exemplar when one is given."""
        recorder = self._recorders.get(values, _MISSING)
        if recorder is _MISSING:
            child = self.labels(*values)
            recorder = _HistogramRecorder.of(child, self._upper_bounds)
            if child is not self._overflow_child:  # overflowing keys are not remembered
                self._recorders[values] = recorder
        else:
            child = None
        index = bisect_left(self._upper_bounds, amount)
        if recorder is None or math.isnan(amount):  # NaN lands in no bucket: prometheus-client's own rule
            if child is None:
                child = self.labels(*values)
            child.observe(amount)
        elif recorder.sum_and_bucket is None:
            recorder.add_sum(amount)
            recorder.add_to_bucket[index](1)
            child = recorder.child
        else:
            recorder.sum_and_bucket(amount, recorder.bucket_values[index], 1.0)
            child = recorder.child
        if not trace_id:
            return
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


_MISSING: Any = object()


class _HistogramRecorder:
    """Observes into one histogram series without prometheus-client's per-call checks and
    bucket loop: the bucket index is found once by bisection (meshlens needs it for the
    exemplar anyway) and the two values are added directly, under one lock when the values
    are a pre-fork worker's (:meth:`meshlens.mmap_values.MmapValue.inc_both`).

    It reads the child's private ``_sum``, ``_buckets`` and ``_upper_bounds`` (the only way to
    skip the loop); :meth:`of` returns None when they are not as expected (another release
    of prometheus-client), and the child's public ``observe`` is used instead.
    """

    __slots__ = ("add_sum", "add_to_bucket", "bucket_values", "child", "sum_and_bucket")

    def __init__(self, child: Any, sum_value: Any, bucket_values: tuple[Any, ...]) -> None:
        self.child = child
        self.add_sum: Callable[[float], None] = sum_value.inc
        self.add_to_bucket = tuple(bucket.inc for bucket in bucket_values)
        self.bucket_values = bucket_values
        self.sum_and_bucket: Callable[[float, Any, float], None] | None = getattr(sum_value, "inc_both", None)

    @classmethod
    def of(cls, child: Any, upper_bounds: tuple[float, ...]) -> _HistogramRecorder | None:
        try:
            buckets = child._buckets
            if tuple(child._upper_bounds) != upper_bounds or len(buckets) != len(upper_bounds):
                return None
            return cls(child, child._sum, tuple(buckets))
        except AttributeError:
            return None


def _value_adder(child: Any, kind: Kind) -> Callable[[float], None]:
    """``child``'s value's own ``inc`` (prometheus-client's private ``_value``), skipping the
    public method's checks, which hold for a labelled child of a gauge that is not in
    "mostrecent" mode; else the public ``inc``."""
    value = getattr(child, "_value", None)
    if kind is Kind.GAUGE and value is not None and not getattr(child, "_is_most_recent", True):
        inc: Callable[[float], None] = value.inc
        return inc
    return child.inc  # type: ignore[no-any-return]


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
        self.exemplars: ExemplarSink = exemplar_sink if exemplar_sink is not None else MemoryExemplars()
        exemplar_sink = self.exemplars
        self._metrics: dict[str, GuardedMetric] = {}
        overflow_spec = catalogue.MESHLENS_METRIC_OVERFLOW
        # The overflow counter's own label is the metric name: bounded by the catalogue.
        overflow = GuardedMetric(overflow_spec, len(catalogue_.metrics) + 1, None, exemplar_sink)
        self._metrics[overflow_spec.name] = overflow
        for spec in catalogue_.emitted():
            if spec.name not in self._metrics:
                self._metrics[spec.name] = GuardedMetric(spec, label_set_limit, overflow, exemplar_sink)

    def __getitem__(self, spec: MetricSpec) -> GuardedMetric:
        return self._metrics[spec.name]

    def __iter__(self) -> Iterator[GuardedMetric]:
        return iter(self._metrics.values())

    def collect(self) -> Iterable[Metric]:
        families = [family for metric in self._metrics.values() for family in metric.collect()]
        if isinstance(self.exemplars, MemoryExemplars):
            attach_exemplars(families, self.exemplars.snapshot())
        return families

    def register_into(self, registry: CollectorRegistry) -> None:
        registry.register(self)
