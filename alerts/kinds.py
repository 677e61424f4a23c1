"""The plain alerts: each kind turns a few fields of ``alerts.yaml`` into a PromQL expression and
into synthetic series on which that expression must fire, or must not.

A kind knows what its expression means, so it can build the series from the definition alone:
10% above the threshold (fires), 10% below (stays quiet), and a step from healthy to broken at a
known minute (fires exactly ``for`` after the first evaluation that sees it, not a minute sooner).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from meshlens.catalogue import (
    HISTOGRAM_BUCKET_LABEL,
    INSTANCE,
    JOB,
    NAMESPACE,
    POD,
    SERVICE,
    UP,
    Kind,
)
from meshlens_alerts import scenarios as sc
from meshlens_alerts.spec import Duration, LineDict, Reader, le_as_written, render_labels, template_problems

SEVERITIES = ("page", "ticket")
DEFAULT_BY = (NAMESPACE, SERVICE)
COMMON_REQUIRED = ("alert", "kind", "severity", "summary", "description")
COMMON_OPTIONAL = ("for", "labels", "runbook_url")

# Label values of the synthetic series; the target labels look like a real scrape.
SYNTHETIC_TARGET = {
    NAMESPACE: "shop",
    SERVICE: "checkout",
    JOB: "checkout",
    POD: "checkout-7d9f-x2x4q",
    INSTANCE: "10.0.0.7:9464",
}
TOTAL_PER_STEP = 1_000_000
"""Requests per minute in the synthetic traffic: large, so that ratios of whole requests are exact."""


@dataclass
class Common:
    """The fields every alert has."""

    alert: str
    severity: str
    for_: Duration
    summary: str
    description: str
    labels: dict[str, str]
    runbook_url: str
    file: str
    line: int

    @property
    def subject(self) -> str:
        return f"alert {self.alert}"


@dataclass
class Rendered:
    """The alerting rules of one alert (several when they share its name) and the promtool
    scenarios that prove them."""

    rules: list[dict[str, Any]]
    scenarios: list[sc.Scenario]
    expressions: list[tuple[str, str]] = field(default_factory=list)
    """(what, PromQL) for the build's validator: the rule's expression."""


def synthetic_labels(labels: Sequence[str]) -> dict[str, str]:
    """Target labels plus a readable value for each other label the query groups by."""
    values = dict(SYNTHETIC_TARGET)
    for label in labels:
        values.setdefault(label, f"{label.replace('_', '-')}-1")
    return values


def selector(name: str, matchers: dict[str, tuple[str, str]]) -> str:
    inner = ", ".join(f'{label}{op}"{_escape(value)}"' for label, (op, value) in matchers.items())
    return f"{name}{{{inner}}}" if inner else name


def regex_matchers(patterns: dict[str, str]) -> dict[str, tuple[str, str]]:
    return {label: ("=~", pattern) for label, pattern in patterns.items()}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def by_clause(labels: Sequence[str]) -> str:
    return f" by ({', '.join(labels)})" if labels else ""


class AlertKind:
    """A kind of plain alert. Subclasses read their fields, write their expression and build
    their series; the scenarios around them are the same for every kind."""

    kind: ClassVar[str]
    fields: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()
    threshold: float | None = None
    window: Duration = Duration("0s", 0)
    has_quiet = False
    """Whether "no traffic at all" is a case of its own (for ratios of requests)."""

    def __init__(self, common: Common, node: LineDict, reader: Reader) -> None:
        self.common = common
        self.node = node
        self.reader = reader

    # -- what subclasses provide --------------------------------------------

    def expr(self) -> str:
        raise NotImplementedError

    def by(self) -> tuple[str, ...]:
        return ()

    def series(self, shape: str, steps: int, step_at: int = 0) -> list[sc.Series]:
        """Series for ``shape``: "fire" (above the threshold), "calm" (below), "quiet" (no
        traffic), or "step" (healthy for ``step_at`` steps, then broken)."""
        raise NotImplementedError

    def fired_labels(self) -> list[dict[str, str]]:
        """The label sets (without alertname) the alert has on the synthetic series."""
        base = synthetic_labels(self.by())
        return [{label: base[label] for label in self.by()}]

    def lag_steps(self) -> int:
        """Evaluations between a step's first broken sample and the expression turning true."""
        return 0

    # -- shared -------------------------------------------------------------

    def rendered(self) -> Rendered:
        expr = self.expr()
        return Rendered([self.rule(expr)], self.scenarios(), [(self.common.subject, expr)])

    def rule(self, expr: str) -> dict[str, Any]:
        rule: dict[str, Any] = {
            "alert": self.common.alert,
            "expr": expr,
            "labels": {"severity": self.common.severity, **self.common.labels},
            "annotations": self.annotations_template(),
        }
        if self.common.for_.seconds:
            rule["for"] = self.common.for_.text
        return rule

    def annotations_template(self) -> dict[str, str]:
        return {
            "summary": self.common.summary,
            "description": self.common.description,
            "runbook_url": self.common.runbook_url,
        }

    def expected(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        static = {"severity": self.common.severity, **self.common.labels}
        fired = [{**labels, **static} for labels in self.fired_labels()]
        notes = [
            {key: render_labels(text, labels) for key, text in self.annotations_template().items()} for labels in fired
        ]
        return fired, notes

    def check_annotations(self) -> None:
        """Annotations may only use ``{{ $labels.x }}`` of labels the alert has: anything else
        renders as "<no value>" at 3 a.m., or cannot be predicted by the generated tests."""
        available = {*self.by(), "severity", *self.common.labels}
        for labels in self.fired_labels():
            available |= set(labels)
        for key in ("summary", "description"):
            text = getattr(self.common, key)
            referenced, others = template_problems(text)
            for label in referenced:
                if label not in available:
                    self.reader.problem(
                        self.common.line,
                        self.common.subject,
                        f"{key} uses $labels.{label}, which this alert does not have",
                        f"use one of: {', '.join(sorted(available))}",
                    )
            for action in others:
                self.reader.problem(
                    self.common.line,
                    self.common.subject,
                    f"{key} uses the template action {action}",
                    "annotations may only use {{ $labels.<name> }}: the generated tests must "
                    "predict the text (put values on the dashboard the runbook links to)",
                )

    def scenarios(self) -> list[sc.Scenario]:
        name = self.common.alert
        hold = int(self.common.for_.seconds // sc.STEP)
        window = max(int(self.window.seconds // sc.STEP), 1)
        late = window + hold + 2
        fired, notes = self.expected()
        threshold = "" if self.threshold is None else f" {self.threshold:g}"
        result = [
            sc.Scenario(
                f"{name}: fires above its threshold{threshold}",
                self.series("fire", late),
                [sc.AlertCheck(late * sc.STEP, name, fired, notes)],
            ),
            sc.Scenario(
                f"{name}: stays quiet below its threshold{threshold}",
                self.series("calm", late),
                [sc.AlertCheck(late * sc.STEP, name, [])],
            ),
        ]
        step_at = window + 1
        broken = step_at + 1 + self.lag_steps()  # the first evaluation that sees the breakage
        end = broken + hold + 1
        checks = [sc.AlertCheck((broken + hold) * sc.STEP, name, fired, notes)]
        if hold:
            checks.insert(0, sc.AlertCheck((broken + hold - 1) * sc.STEP, name, []))
        result.append(
            sc.Scenario(
                f"{name}: fires {self.common.for_.text} after it breaks, not sooner",
                self.series("step", end, step_at),
                checks,
            )
        )
        if self.has_quiet:
            result.append(
                sc.Scenario(
                    f"{name}: no traffic, no alert",
                    self.series("quiet", late),
                    [sc.AlertCheck(late * sc.STEP, name, [])],
                )
            )
        return result

    # -- reading helpers ----------------------------------------------------

    def read_threshold(self, positive: bool = False, ratio: bool = False) -> float:
        subject = self.common.subject
        value = self.reader.number(self.node, "threshold", subject)
        if math.isnan(value):
            return value
        if ratio and not 0 < value < 1:
            fix = f"write {value / 100:g} for {value:g}%" if 1 <= value <= 100 else "write a ratio such as 0.05 for 5%"
            self.reader.problem(self.node.line, subject, f"threshold {value:g} is not a ratio between 0 and 1", fix)
        elif value < 0 or (positive and value == 0):
            self.reader.problem(
                self.node.line,
                subject,
                f"threshold {value:g} must be {'above' if positive else 'at least'} 0",
                "write a positive threshold",
            )
        return value


# --- The kinds -------------------------------------------------------------


class TargetDown(AlertKind):
    """Prometheus cannot scrape a target (``up == 0``)."""

    kind = "target_down"
    optional = ("selector",)

    def __init__(self, common: Common, node: LineDict, reader: Reader) -> None:
        super().__init__(common, node, reader)
        self.selector = reader.matchers(node, "selector", common.subject, UP)

    def expr(self) -> str:
        return f"{selector(UP.name, regex_matchers(self.selector))} == 0"

    def _labels(self) -> dict[str, str]:
        labels = dict(SYNTHETIC_TARGET)
        labels.update({label: sc.example_of(pattern) or "" for label, pattern in self.selector.items()})
        return labels

    def fired_labels(self) -> list[dict[str, str]]:
        return [self._labels()]

    def series(self, shape: str, steps: int, step_at: int = 0) -> list[sc.Series]:
        values = {
            "fire": sc.gauge(sc.Phase(steps, 0)),
            "calm": sc.gauge(sc.Phase(steps, 1)),
            "step": sc.gauge(sc.Phase(step_at, 1), sc.Phase(steps - step_at, 0)),
        }[shape]
        return [sc.Series(UP.name, self._labels(), values)]


class TargetAbsent(AlertKind):
    """A service's targets are gone altogether (``absent()`` of its ``up`` series): one rule per
    service, the services being those with SLOs unless listed."""

    kind = "target_absent"
    optional = ("services",)
    LOOKBACK_STEPS = 5
    """Prometheus still returns a series for 5 minutes after its last sample (the lookback delta)."""

    def __init__(self, common: Common, node: LineDict, reader: Reader, default_services: Sequence[str]) -> None:
        super().__init__(common, node, reader)
        listed = node.get("services", list(default_services))
        if not isinstance(listed, list) or not all(isinstance(s, str) and s for s in listed):
            reader.problem(
                node.line,
                common.subject,
                "services must be a list of service names",
                "write `services: [checkout, payments]`",
            )
            listed = []
        if not listed:
            reader.problem(
                node.line,
                common.subject,
                "no services to watch: no SLO declares one and none is listed",
                "list them: `services: [checkout]`",
            )
        self.services = tuple(listed)

    def expressions(self) -> list[str]:
        return [f'absent({UP.name}{{{SERVICE}="{_escape(service)}"}})' for service in self.services]

    def rendered(self) -> Rendered:
        rules = []
        for service, expr in zip(self.services, self.expressions(), strict=True):
            rule = self.rule(expr)
            rule["labels"][SERVICE] = service  # tells apart the rules that share the alert name
            rules.append(rule)
        return Rendered(rules, self.scenarios(), [(self.common.subject, expr) for expr in self.expressions()])

    def fired_labels(self) -> list[dict[str, str]]:
        return [{SERVICE: service} for service in self.services]

    def lag_steps(self) -> int:
        return self.LOOKBACK_STEPS

    def series(self, shape: str, steps: int, step_at: int = 0) -> list[sc.Series]:
        other = sc.Series(UP.name, {**SYNTHETIC_TARGET, SERVICE: "some-other-service"}, sc.gauge(sc.Phase(steps, 1)))
        if shape == "fire":
            return [other]
        out = [other]
        for service in self.services:
            labels = {**SYNTHETIC_TARGET, SERVICE: service, JOB: service}
            values = sc.gauge(sc.Phase(steps, 1)) if shape == "calm" else sc.absent_after(1, step_at, steps - step_at)
            out.append(sc.Series(UP.name, labels, values))
        return out


class ErrorRatio(AlertKind):
    """The share of requests that failed, over a window, above a ratio."""

    kind = "error_ratio"
    fields = ("metric", "errors", "window", "threshold")
    optional = ("selector", "by", "min_rate")
    has_quiet = True

    def __init__(self, common: Common, node: LineDict, reader: Reader) -> None:
        super().__init__(common, node, reader)
        subject = common.subject
        self.spec = reader.metric(node, "metric", subject, (Kind.COUNTER, Kind.HISTOGRAM))
        self.window = reader.duration(node, "window", subject)
        self.threshold = self.read_threshold(ratio=True)
        self.min_rate = reader.number(node, "min_rate", subject, default=0)
        self.errors: dict[str, str] = {}
        self.selector: dict[str, str] = {}
        self._by = DEFAULT_BY
        if self.spec is not None:
            self.errors = reader.matchers(node, "errors", subject, self.spec)
            self.selector = reader.matchers(node, "selector", subject, self.spec)
            self._by = reader.labels_list(node, "by", subject, self.spec, DEFAULT_BY)
            check_examples(reader, node, subject, {**self.errors, **self.selector})
            for label, pattern in self.errors.items():
                if sc.example_of(pattern) == "" or _matches_empty(pattern):
                    reader.problem(
                        node.line,
                        subject,
                        f"errors.{label} {pattern!r} also matches requests without "
                        f"{label}: every request would count as an error",
                        'match only error values, such as "5.." for status codes',
                    )

    def by(self) -> tuple[str, ...]:
        return self._by

    def _name(self) -> str:
        assert self.spec is not None
        return f"{self.spec.name}_count" if self.spec.kind is Kind.HISTOGRAM else self.spec.name

    def expr(self) -> str:
        name, by, window = self._name(), by_clause(self._by), self.window.text
        everything = selector(name, regex_matchers(self.selector))
        failed = selector(name, regex_matchers({**self.selector, **self.errors}))
        return (
            f"(sum{by} (rate({failed}[{window}])) / (sum{by} (rate({everything}[{window}])) > {self.min_rate:g})) "
            f"> {self.threshold:g}"
        )

    def series(self, shape: str, steps: int, step_at: int = 0) -> list[sc.Series]:
        base = series_labels(self._by, self.selector)
        failed_labels = {**base, **{label: sc.example_of(p) or "" for label, p in self.errors.items()}}
        total = TOTAL_PER_STEP
        assert self.threshold is not None
        if shape in ("fire", "calm"):
            margin = sc.FIRE_MARGIN if shape == "fire" else sc.CALM_MARGIN
            bad = round(total * self.threshold * margin)
            failed, ok = sc.counter(sc.Phase(steps, bad)), sc.counter(sc.Phase(steps, total - bad))
        elif shape == "quiet":
            failed = ok = sc.counter(sc.Phase(steps, 0))
        else:
            failed = sc.counter(sc.Phase(step_at, 0), sc.Phase(steps - step_at, total * sc.SPIKE))
            ok = sc.counter(sc.Phase(steps, total))
        name = self._name()
        return [sc.Series(name, failed_labels, failed), sc.Series(name, base, ok)]


class QuantileAbove(AlertKind):
    """A latency quantile of a histogram above a threshold that is one of its bucket boundaries."""

    kind = "quantile_above"
    fields = ("metric", "quantile", "threshold", "window")
    optional = ("selector", "by", "min_rate")

    def __init__(self, common: Common, node: LineDict, reader: Reader) -> None:
        super().__init__(common, node, reader)
        subject = common.subject
        self.spec = reader.metric(node, "metric", subject, (Kind.HISTOGRAM,))
        self.window = reader.duration(node, "window", subject)
        self.quantile = reader.number(node, "quantile", subject)
        if not math.isnan(self.quantile) and not 0 < self.quantile < 1:
            reader.problem(
                node.line,
                subject,
                f"quantile {self.quantile:g} must be between 0 and 1",
                "write 0.99 for the 99th percentile",
            )
        self.threshold = self.read_threshold(positive=True)
        self.min_rate = reader.number(node, "min_rate", subject, default=0)
        self.selector: dict[str, str] = {}
        self._by = DEFAULT_BY
        self.bucket_ok = False
        if self.spec is not None:
            self.selector = reader.matchers(node, "selector", subject, self.spec)
            self._by = reader.labels_list(node, "by", subject, self.spec, DEFAULT_BY)
            check_examples(reader, node, subject, self.selector)
            self.bucket_ok = reader.bucket_boundary(self.threshold, self.spec, node.line, subject)

    def by(self) -> tuple[str, ...]:
        return self._by

    def expr(self) -> str:
        assert self.spec is not None
        matchers = regex_matchers(self.selector)
        window = self.window.text
        buckets = selector(f"{self.spec.name}_bucket", matchers)
        grouped = ", ".join((HISTOGRAM_BUCKET_LABEL, *self._by))
        quantile = f"histogram_quantile({self.quantile:g}, sum by ({grouped}) (rate({buckets}[{window}])))"
        expr = f"{quantile} > {self.threshold:g}"
        if self.min_rate:
            count = selector(f"{self.spec.name}_count", matchers)
            expr = (
                f"({expr}) and on ({', '.join(self._by)}) "
                f"(sum{by_clause(self._by)} (rate({count}[{window}])) > {self.min_rate:g})"
            )
        return expr

    def series(self, shape: str, steps: int, step_at: int = 0) -> list[sc.Series]:
        assert self.spec is not None and self.threshold is not None
        bounds = self.spec.buckets
        at = bounds.index(self.threshold)
        total = TOTAL_PER_STEP
        # Observations per step, by bucket index (len(bounds) is +Inf). Firing: 1.5x the quantile's
        # tail just above the threshold puts the quantile a third of the way into the next bucket.
        above = round(1.5 * (1 - self.quantile) * total)
        fire = {at: total - above, at + 1: above}
        calm = {at: total}
        if shape == "fire":
            phases = [(steps, fire)]
        elif shape == "calm":
            phases = [(steps, calm)]
        else:
            phases = [(step_at, calm), (steps - step_at, {at + 1: total * sc.SPIKE})]
        base = series_labels(self._by, self.selector)
        out = []
        for index, bound in enumerate((*bounds, math.inf)):
            values = sc.counter(*(sc.Phase(n, sum(c for i, c in dist.items() if i <= index)) for n, dist in phases))
            le = "+Inf" if math.isinf(bound) else le_as_written(bound)
            out.append(sc.Series(f"{self.spec.name}_bucket", {**base, HISTOGRAM_BUCKET_LABEL: le}, values))
        count = sc.counter(*(sc.Phase(n, sum(dist.values())) for n, dist in phases))
        out.append(sc.Series(f"{self.spec.name}_count", base, count))
        return out


class GaugeRatioAbove(AlertKind):
    """One gauge over another, summed per group, above a threshold (saturation)."""

    kind = "gauge_ratio_above"
    fields = ("numerator", "denominator", "threshold")
    optional = ("by",)
    DENOMINATOR = 4

    def __init__(self, common: Common, node: LineDict, reader: Reader) -> None:
        super().__init__(common, node, reader)
        subject = common.subject
        self.numerator = reader.metric(node, "numerator", subject, (Kind.GAUGE,))
        self.denominator = reader.metric(node, "denominator", subject, (Kind.GAUGE,))
        self.threshold = self.read_threshold(positive=True)
        self._by = DEFAULT_BY
        if self.numerator is not None and self.denominator is not None:
            by = reader.labels_list(node, "by", subject, self.numerator, DEFAULT_BY)
            self._by = tuple(label for label in by if reader.label(label, self.denominator, node.line, subject))

    def by(self) -> tuple[str, ...]:
        return self._by

    def expr(self) -> str:
        assert self.numerator is not None and self.denominator is not None
        by = by_clause(self._by)
        return f"sum{by} ({self.numerator.name}) / (sum{by} ({self.denominator.name}) > 0) > {self.threshold:g}"

    def series(self, shape: str, steps: int, step_at: int = 0) -> list[sc.Series]:
        assert self.numerator is not None and self.denominator is not None and self.threshold is not None
        base = synthetic_labels(self._by)
        workers = self.DENOMINATOR
        if shape in ("fire", "calm"):
            margin = sc.FIRE_MARGIN if shape == "fire" else sc.CALM_MARGIN
            busy = sc.gauge(sc.Phase(steps, workers * self.threshold * margin))
        else:
            busy = sc.gauge(sc.Phase(step_at, 0), sc.Phase(steps - step_at, workers * self.threshold * 10))
        return [
            sc.Series(self.numerator.name, base, busy),
            sc.Series(self.denominator.name, base, sc.gauge(sc.Phase(steps, workers))),
        ]


class _OneMetric(AlertKind):
    """A kind on one metric of the catalogue, narrowed by a selector and grouped by labels."""

    fields = ("metric", "window", "threshold")
    optional = ("selector", "by")
    metric_kind: Kind
    positive_threshold = False

    def __init__(self, common: Common, node: LineDict, reader: Reader) -> None:
        super().__init__(common, node, reader)
        subject = common.subject
        self.spec = reader.metric(node, "metric", subject, (self.metric_kind,))
        self.window = reader.duration(node, "window", subject)
        self.threshold = self.read_threshold(positive=self.positive_threshold)
        self.selector: dict[str, str] = {}
        self._by = DEFAULT_BY
        if self.spec is not None:
            self.selector = reader.matchers(node, "selector", subject, self.spec)
            self._by = reader.labels_list(node, "by", subject, self.spec, DEFAULT_BY)
            check_examples(reader, node, subject, self.selector)

    def by(self) -> tuple[str, ...]:
        return self._by

    def matched(self) -> str:
        """The metric's selector in PromQL."""
        assert self.spec is not None
        return selector(self.spec.name, regex_matchers(self.selector))


class RateAbove(_OneMetric):
    """Events per second of a counter, per group, above a threshold (0: any at all)."""

    kind = "rate_above"

    metric_kind = Kind.COUNTER

    def expr(self) -> str:
        matched = self.matched()
        return f"sum{by_clause(self._by)} (rate({matched}[{self.window.text}])) > {self.threshold:g}"

    def series(self, shape: str, steps: int, step_at: int = 0) -> list[sc.Series]:
        assert self.spec is not None and self.threshold is not None
        base = series_labels(self._by, self.selector)
        per_step = self.threshold * sc.STEP
        if shape == "fire":
            values = sc.counter(sc.Phase(steps, per_step * sc.FIRE_MARGIN if per_step else 1))
        elif shape == "calm":
            values = sc.counter(sc.Phase(steps, per_step * sc.CALM_MARGIN))
        else:
            values = sc.counter(sc.Phase(step_at, 0), sc.Phase(steps - step_at, max(per_step, 1) * sc.SPIKE))
        return [sc.Series(self.spec.name, base, values)]


class GaugeGrowing(_OneMetric):
    """A gauge above a threshold and still growing over the window (consumer lag)."""

    kind = "gauge_growing"
    SLOPE = 1e-4
    """Growth per step, as a share of the threshold: slow enough to stay within the 10% margins."""

    metric_kind = Kind.GAUGE
    positive_threshold = True

    def expr(self) -> str:
        matched = self.matched()
        by = by_clause(self._by)
        return f"(sum{by} ({matched}) > {self.threshold:g}) and (sum{by} (delta({matched}[{self.window.text}])) > 0)"

    def series(self, shape: str, steps: int, step_at: int = 0) -> list[sc.Series]:
        assert self.spec is not None and self.threshold is not None
        base = series_labels(self._by, self.selector)
        slope = self.threshold * self.SLOPE
        if shape == "fire":
            values = sc.ramp(self.threshold * sc.FIRE_MARGIN, slope, steps)
        elif shape == "calm":
            values = sc.ramp(self.threshold * sc.CALM_MARGIN, slope, steps)
        else:
            values = sc.ramp(self.threshold * sc.FIRE_MARGIN, self.threshold / 100, steps - step_at, step_at)
        return [sc.Series(self.spec.name, base, values)]


KINDS: dict[str, type[AlertKind]] = {
    kind.kind: kind
    for kind in (TargetDown, TargetAbsent, ErrorRatio, QuantileAbove, GaugeRatioAbove, RateAbove, GaugeGrowing)
}


def series_labels(by: Sequence[str], patterns: dict[str, str]) -> dict[str, str]:
    """Labels of a generated test series: a made-up value per group label, and for each
    selector label a value its pattern matches."""
    labels = synthetic_labels((*by, *patterns))
    labels.update({label: sc.example_of(pattern) or "" for label, pattern in patterns.items()})
    return labels


def check_examples(reader: Reader, node: LineDict, subject: str, patterns: dict[str, str]) -> None:
    """The generated tests need a label value each pattern matches."""
    for label, pattern in patterns.items():
        if sc.example_of(pattern) is None:
            reader.problem(
                node.line,
                subject,
                f"cannot make up a value of {label} that {pattern!r} matches for the generated tests",
                "use a simpler pattern (literals, ., [..], |, ?, *, +)",
            )


def _matches_empty(pattern: str) -> bool:
    return re.fullmatch(pattern, "") is not None
