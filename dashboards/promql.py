"""PromQL built from the catalogue: every metric and label a query names comes from a MetricSpec
or a label constant, so a rename in the catalogue is one edit and a typo is a NameError.

Queries are plain strings (what Grafana and Prometheus read); these helpers only compose them.
``meshlens build`` still parses every query and checks its names, because an SRE may write PromQL
by hand in a ``.dashboard.py`` file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshlens.catalogue import HISTOGRAM_BUCKET_LABEL, NAMESPACE, SERVICE, Kind, MetricSpec

RATE_INTERVAL = "$__rate_interval"
"""Grafana's rate window: at least four scrape intervals, whatever the zoom."""

_PARTS = ("bucket", "count", "sum")


@dataclass(frozen=True)
class Match:
    """One label matcher: ``label op "value"``."""

    label: str
    op: str
    value: str

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.label}{self.op}"{escaped}"'


def eq(label: str, value: str) -> Match:
    return Match(label, "=", value)


def ne(label: str, value: str) -> Match:
    return Match(label, "!=", value)


def regex(label: str, pattern: str) -> Match:
    return Match(label, "=~", pattern)


def not_regex(label: str, pattern: str) -> Match:
    return Match(label, "!~", pattern)


def variable(name: str) -> str:
    """A dashboard variable as Grafana interpolates it inside a regex matcher."""
    return f"${name}"


# The namespace and service variables are named after the target labels they filter.
SERVICE_FILTER: tuple[Match, ...] = (regex(NAMESPACE, variable(NAMESPACE)), regex(SERVICE, variable(SERVICE)))
NAMESPACE_FILTER: tuple[Match, ...] = (regex(NAMESPACE, variable(NAMESPACE)),)


def series(spec: MetricSpec | str, part: str | None = None) -> str:
    """The sample name to select: the family name, or a histogram's ``_bucket``/``_count``/``_sum``.
    A string is a series recorded by the generated rules (``meshlens_alerts.slo`` names them)."""
    if isinstance(spec, str):
        return spec
    if part is None:
        if spec.kind is Kind.HISTOGRAM:
            raise ValueError(f"{spec.name} is a histogram: say which part to select ({', '.join(_PARTS)})")
        return spec.name
    if spec.kind is not Kind.HISTOGRAM or part not in _PARTS:
        raise ValueError(f"{spec.name} ({spec.kind.value}) has no {part!r} part")
    return f"{spec.name}_{part}"


def selector(spec: MetricSpec | str, *matchers: Match | Iterable[Match], part: str | None = None) -> str:
    flat = _flatten(matchers)
    inner = ", ".join(str(m) for m in flat)
    return f"{series(spec, part)}{{{inner}}}" if inner else series(spec, part)


def rate(
    spec: MetricSpec,
    *matchers: Match | Iterable[Match],
    part: str | None = None,
    window: str = RATE_INTERVAL,
    function: str = "rate",
) -> str:
    """``rate(selector[window])`` of a counter or of a histogram part (``count`` by default)."""
    if spec.kind is Kind.GAUGE:
        raise ValueError(f"{spec.name} is a gauge: rate() needs a counter")
    if spec.kind is Kind.HISTOGRAM and part is None:
        part = "count"
    return f"{function}({selector(spec, *matchers, part=part)}[{window}])"


def aggregate(operator: str, expr: str, by: Iterable[str] = ()) -> str:
    labels = ", ".join(by)
    return f"{operator} by ({labels}) ({expr})" if labels else f"{operator}({expr})"


def sum_by(expr: str, *by: str) -> str:
    return aggregate("sum", expr, by)


def ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator; no result (a gap, not NaN) where the denominator is zero."""
    return f"({numerator}) / ({denominator} > 0)"


def quantile(
    q: float,
    spec: MetricSpec,
    *matchers: Match | Iterable[Match],
    by: Iterable[str] = (),
    window: str = RATE_INTERVAL,
) -> str:
    """The q-quantile of a histogram over the window, per ``by`` group."""
    if spec.kind is not Kind.HISTOGRAM:
        raise ValueError(f"{spec.name} is not a histogram")
    buckets = sum_by(rate(spec, *matchers, part="bucket", window=window), HISTOGRAM_BUCKET_LABEL, *by)
    return f"histogram_quantile({q}, {buckets})"


def label_values(spec: MetricSpec | str, label: str, *matchers: Match | Iterable[Match]) -> str:
    """A Grafana variable query: the values ``label`` takes on ``spec``'s series."""
    part = "count" if isinstance(spec, MetricSpec) and spec.kind is Kind.HISTOGRAM else None
    return f"label_values({selector(spec, *matchers, part=part)}, {label})"


def _flatten(matchers: tuple[Match | Iterable[Match], ...]) -> list[Match]:
    flat: list[Match] = []
    for item in matchers:
        if isinstance(item, Match):
            flat.append(item)
        else:
            flat.extend(item)
    return flat
