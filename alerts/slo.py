"""SLOs: recording rules for each service's error ratio over every burn-rate window, multi-window
multi-burn-rate alerts (the windows and factors are data, in ``slos.yaml``), and their tests.

Two known failures of SLO generators are designed out here:

- a quiet service (no requests at all) records an error ratio of 0, never NaN (0/0), so budget
  panels stay drawn and no burn-rate alert can fire on it;
- a latency objective's threshold must be a bucket boundary of the histogram, because the ratio
  of good requests is read from the bucket at that boundary (a threshold between buckets would
  silently use a different one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from meshlens.catalogue import (
    HISTOGRAM_BUCKET_LABEL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_SERVER_REQUEST_DURATION,
    JOB,
    NAMESPACE,
    POD,
    SERVICE,
    Kind,
    MetricSpec,
)
from meshlens_alerts import scenarios as sc
from meshlens_alerts.kinds import SEVERITIES, SYNTHETIC_TARGET, TOTAL_PER_STEP, check_examples, selector
from meshlens_alerts.spec import (
    Duration,
    Reader,
    RunbookUrl,
    le_as_written,
    le_matcher,
    render_labels,
    template_problems,
)
from meshlens_bundle.problems import Problem

# Recorded series, written once: the rules produce them, the SLO dashboard reads them.
ERROR_RATIO_RECORD = "meshlens:slo_error_ratio:rate{window}"
SLO_WINDOW_RATIO_RECORD = "meshlens:slo_error_ratio:slo_window"
OBJECTIVE_RECORD = "meshlens:slo_objective"
BUDGET_REMAINING_RECORD = "meshlens:slo_error_budget_remaining:ratio"
SLO_LABEL = "slo"
SLI_LABEL = "sli"
GROUP_BY = (NAMESPACE, SERVICE)
RECORDED_LABELS = (*GROUP_BY, SLO_LABEL, SLI_LABEL)
AVAILABILITY = "availability"
LATENCY = "latency"
DEFAULT_ERRORS = {HTTP_RESPONSE_STATUS_CODE: "5.."}


def error_ratio_record(window: str) -> str:
    return ERROR_RATIO_RECORD.format(window=window)


@dataclass(frozen=True)
class RecordedSeries:
    """A series the rules record: a name queries may use, with the labels it carries."""

    name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class BurnWindow:
    factor: float
    long: Duration
    short: Duration


@dataclass(frozen=True)
class BurnAlert:
    """One alert over several window pairs: it fires when any pair burns faster than its factor
    over both its long and its short window (the short one makes it stop soon after a fix)."""

    alert: str
    severity: str
    for_: Duration
    windows: tuple[BurnWindow, ...]
    summary: str
    description: str
    runbook_url: str
    line: int


@dataclass(frozen=True)
class Policy:
    alerts: tuple[BurnAlert, ...]
    file: str

    def windows(self) -> list[Duration]:
        found = {w.text: w for alert in self.alerts for pair in alert.windows for w in (pair.long, pair.short)}
        return sorted(found.values(), key=lambda w: w.seconds)


@dataclass(frozen=True)
class Slo:
    service: str
    sli: str
    objective: float
    window: Duration
    spec: MetricSpec
    errors: dict[str, str]
    exclude: dict[str, str]
    threshold: float | None
    namespace: str | None
    file: str
    line: int

    @property
    def name(self) -> str:
        return f"{self.service}-{self.sli}"

    @property
    def budget(self) -> float:
        return 1 - self.objective

    @property
    def subject(self) -> str:
        return f"slo {self.service}/{self.sli}"


def recorded_series(policy: Policy) -> list[RecordedSeries]:
    names = [error_ratio_record(w.text) for w in policy.windows()]
    series = [RecordedSeries(name, RECORDED_LABELS) for name in names]
    series += [
        RecordedSeries(SLO_WINDOW_RATIO_RECORD, RECORDED_LABELS),
        RecordedSeries(BUDGET_REMAINING_RECORD, RECORDED_LABELS),
        RecordedSeries(OBJECTIVE_RECORD, (SERVICE, SLO_LABEL, SLI_LABEL)),
    ]
    return series


# --- Reading ---------------------------------------------------------------


def read_policy(node: Any, reader: Reader, runbook_url: RunbookUrl) -> Policy | None:
    """``burn_rate_alerts:`` - a list of alerts, each with its severity and window pairs."""
    if not isinstance(node, list) or not node:
        reader.problem(
            None,
            "burn_rate_alerts",
            "must be a list of alerts with their window pairs",
            "see alerts/slos.yaml in meshlens for the standard four pairs",
        )
        return None
    alerts = []
    for item in node:
        entry = reader.mapping(item, "burn_rate_alerts entry", None)
        if entry is None:
            continue
        subject = f"alert {entry.get('alert', '?')}"
        reader.keys(entry, subject, ("alert", "severity", "windows", "summary", "description"), ("for", "runbook_url"))
        alert = reader.text(entry, "alert", subject)
        severity = reader.text(entry, "severity", subject)
        if severity and severity not in SEVERITIES:
            reader.problem(
                entry.line,
                subject,
                f"severity {severity!r} is not one of {', '.join(SEVERITIES)}",
                "page: wake someone up; ticket: look at it in working hours",
            )
        pairs = []
        raw = entry.get("windows")
        if not isinstance(raw, list) or not raw:
            reader.problem(
                entry.line,
                subject,
                "windows must be a list of {factor, long, short}",
                "write `- {factor: 14.4, long: 1h, short: 5m}`",
            )
            raw = []
        for pair in raw:
            window = reader.mapping(pair, subject, entry.line)
            if window is None or not reader.keys(window, subject, ("factor", "long", "short")):
                continue
            factor = reader.number(window, "factor", subject)
            long, short = reader.duration(window, "long", subject), reader.duration(window, "short", subject)
            if not math.isnan(factor) and factor <= 0:
                reader.problem(window.line, subject, f"factor {factor:g} must be above 0", "write e.g. `factor: 14.4`")
            if short.seconds >= long.seconds > 0:
                reader.problem(
                    window.line,
                    subject,
                    f"short window {short} is not shorter than long window {long}",
                    "the short window is about a twelfth of the long one (5m for 1h)",
                )
            pairs.append(BurnWindow(factor, long, short))
        alerts.append(
            BurnAlert(
                alert=alert,
                severity=severity,
                for_=reader.duration(entry, "for", subject, default="0s"),
                windows=tuple(pairs),
                summary=reader.text(entry, "summary", subject),
                description=reader.text(entry, "description", subject),
                runbook_url=runbook_url(entry, alert),
                line=entry.line,
            )
        )
    return Policy(tuple(alerts), reader.file)


def read_slos(node: Any, reader: Reader) -> list[Slo]:
    """``services: {name: {availability: {...}, latency: {...}}}``."""
    services = reader.mapping(node, "services", None)
    if services is None:
        return []
    slos = []
    for service, objectives in services.items():
        subject = f"service {service}"
        entry = reader.mapping(objectives, subject, services.line)
        if entry is None:
            continue
        reader.keys(entry, subject, (), (AVAILABILITY, LATENCY, "namespace"))
        if AVAILABILITY not in entry and LATENCY not in entry:
            reader.problem(entry.line, subject, "declares no objective", "add `availability:` and/or `latency:`")
        namespace = entry.get("namespace")
        for sli in (AVAILABILITY, LATENCY):
            if sli in entry:
                slo = _read_slo(str(service), sli, entry[sli], namespace, reader, entry.line)
                if slo is not None:
                    slos.append(slo)
    return slos


def _read_slo(service: str, sli: str, node: Any, namespace: Any, reader: Reader, line: int) -> Slo | None:
    subject = f"slo {service}/{sli}"
    entry = reader.mapping(node, subject, line)
    if entry is None:
        return None
    if sli == AVAILABILITY:
        reader.keys(entry, subject, ("objective", "window"), ("metric", "errors", "exclude"))
        spec = reader.metric(entry, "metric", subject, (Kind.HISTOGRAM, Kind.COUNTER), HTTP_SERVER_REQUEST_DURATION)
    else:
        reader.keys(entry, subject, ("objective", "window", "threshold"), ("metric", "exclude"))
        spec = reader.metric(entry, "metric", subject, (Kind.HISTOGRAM,), HTTP_SERVER_REQUEST_DURATION)
    objective = reader.number(entry, "objective", subject)
    if not math.isnan(objective) and not 0 < objective < 1:
        if objective in (1, 100):
            message = f"objective {objective:g} means 100%: no error budget, so every failed request breaks it"
            fix = "write the share of good requests to aim for, such as 0.999 for 99.9%"
        elif 1 < objective < 100:
            message = f"objective {objective:g} is not a ratio between 0 and 1 (it looks like a percentage)"
            fix = f"write {objective / 100:g} for {objective:g}%"
        else:
            message = f"objective {objective:g} is not a ratio between 0 and 1"
            fix = "write the share of good requests to aim for, such as 0.999 for 99.9%"
        reader.problem(entry.line, subject, message, fix)
    window = reader.duration(entry, "window", subject)
    if spec is None:
        return None
    errors: dict[str, str] = {}
    if sli == AVAILABILITY:
        errors = (
            reader.matchers(entry, "errors", subject, spec)
            if "errors" in entry
            else {label: pattern for label, pattern in DEFAULT_ERRORS.items() if label in spec.labels}
        )
        if not errors:
            reader.problem(entry.line, subject, f"no errors matcher for {spec.name}", 'add `errors: {label: "regex"}`')
    exclude = reader.matchers(entry, "exclude", subject, spec)
    check_examples(reader, entry, subject, errors)
    threshold = None
    if sli == LATENCY:
        threshold = reader.number(entry, "threshold", subject)
        reader.bucket_boundary(threshold, spec, entry.line, subject)
    return Slo(
        service,
        sli,
        objective,
        window,
        spec,
        errors,
        exclude,
        threshold,
        str(namespace) if namespace else None,
        reader.file,
        entry.line,
    )


def check(slos: Sequence[Slo], policy: Policy) -> list[Problem]:
    """Objectives the policy can alert on: windows within the SLO window, thresholds below 100%.
    The problems are the SLOs' (their file and line), whichever file the policy comes from."""
    problems: list[Problem] = []
    longest = max(
        (pair.long for alert in policy.alerts for pair in alert.windows), key=lambda d: d.seconds, default=None
    )
    seen: set[str] = set()
    for slo in slos:
        if slo.name in seen:
            problems.append(
                Problem(slo.file, slo.line, slo.subject, "declared twice", "keep one declaration per service and SLI")
            )
        seen.add(slo.name)
        if longest is not None and 0 < slo.window.seconds < longest.seconds:
            problems.append(
                Problem(
                    slo.file,
                    slo.line,
                    slo.subject,
                    f"window {slo.window} is shorter than the longest burn-rate window {longest}",
                    f"use an SLO window of at least {longest} (28d or 30d is usual)",
                )
            )
        if not 0 < slo.objective < 1:
            continue
        for alert in policy.alerts:
            for pair in alert.windows:
                if pair.factor * slo.budget >= 1:
                    problems.append(
                        Problem(
                            slo.file,
                            slo.line,
                            slo.subject,
                            f"objective {slo.objective!r} with burn factor {pair.factor:g} ({alert.alert}) "
                            f"needs an error ratio of {pair.factor * slo.budget:.0%}: it can never fire",
                            f"raise the objective above {1 - 1 / pair.factor:.4g}",
                        )
                    )
    return problems


# --- Rules -----------------------------------------------------------------


def _matchers(slo: Slo) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {SERVICE: ("=", slo.service)}
    if slo.namespace:
        found[NAMESPACE] = ("=", slo.namespace)
    found.update({label: ("!~", pattern) for label, pattern in slo.exclude.items()})
    return found


def _count_name(spec: MetricSpec) -> str:
    return f"{spec.name}_count" if spec.kind is Kind.HISTOGRAM else spec.name


def _sum(expr: str) -> str:
    return f"sum by ({', '.join(GROUP_BY)}) ({expr})"


def ratio_expr(slo: Slo, window: str) -> str:
    """Failed over all requests; 0 (not NaN, not absent) when nothing failed or nothing came."""
    base = _matchers(slo)
    total = _sum(f"rate({selector(_count_name(slo.spec), base)}[{window}])")
    if slo.sli == AVAILABILITY:
        failing = {**base, **{label: ("=~", pattern) for label, pattern in slo.errors.items()}}
        failed = _sum(f"rate({selector(_count_name(slo.spec), failing)}[{window}])")
    else:
        assert slo.threshold is not None
        good = selector(f"{slo.spec.name}_bucket", {**base, HISTOGRAM_BUCKET_LABEL: le_matcher(slo.threshold)})
        failed = f"({total} - {_sum(f'rate({good}[{window}])')})"
    return f"({failed} / ({total} > 0)) or (0 * {total})"


def _labels(slo: Slo) -> dict[str, str]:
    return {SLO_LABEL: slo.name, SLI_LABEL: slo.sli}


def recording_rules(slo: Slo, policy: Policy) -> list[dict[str, Any]]:
    windows = policy.windows()
    shortest = error_ratio_record(windows[0].text)
    own = f'{{{SLO_LABEL}="{slo.name}"}}'
    rules = [
        {"record": error_ratio_record(w.text), "expr": ratio_expr(slo, w.text), "labels": _labels(slo)} for w in windows
    ]
    rules += [
        # Averaging the short ratio over the SLO window reads the recorded series, not 30 days
        # of raw samples; it weighs each 5 minutes alike, busy or not (Sloth does the same).
        {
            "record": SLO_WINDOW_RATIO_RECORD,
            "expr": f"avg_over_time({shortest}{own}[{slo.window}])",
            "labels": _labels(slo),
        },
        {
            "record": BUDGET_REMAINING_RECORD,
            "expr": f"1 - {SLO_WINDOW_RATIO_RECORD}{own} / (1 - {slo.objective!r})",
            "labels": _labels(slo),
        },
        {
            "record": OBJECTIVE_RECORD,
            "expr": f"vector({slo.objective!r})",
            "labels": {SERVICE: slo.service, **_labels(slo)},
        },
    ]
    return rules


def burn_expr(slo: Slo, alert: BurnAlert) -> str:
    own = f'{{{SLO_LABEL}="{slo.name}"}}'
    pairs = []
    for pair in alert.windows:
        limit = f"({pair.factor:g} * (1 - {slo.objective!r}))"
        pairs.append(
            f"({error_ratio_record(pair.long.text)}{own} > {limit} and "
            f"{error_ratio_record(pair.short.text)}{own} > {limit})"
        )
    return " or ".join(pairs)


def _annotations(alert: BurnAlert) -> dict[str, str]:
    return {"summary": alert.summary, "description": alert.description, "runbook_url": alert.runbook_url}


def burn_rule(slo: Slo, alert: BurnAlert) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "alert": alert.alert,
        "expr": burn_expr(slo, alert),
        # The expression already carries slo and sli; as static labels they also tell the
        # rules of one alert apart (promtool refuses same-name rules with the same labels).
        "labels": {"severity": alert.severity, **_labels(slo)},
        "annotations": _annotations(alert),
    }
    if alert.for_.seconds:
        rule["for"] = alert.for_.text
    return rule


def check_annotations(policy: Policy) -> list[Problem]:
    problems: list[Problem] = []
    available = {*RECORDED_LABELS, "severity"}
    for alert in policy.alerts:
        for key in ("summary", "description"):
            referenced, others = template_problems(getattr(alert, key))
            for label in referenced:
                if label not in available:
                    problems.append(
                        Problem(
                            policy.file,
                            alert.line,
                            f"alert {alert.alert}",
                            f"{key} uses $labels.{label}, which this alert does not have",
                            f"use one of: {', '.join(sorted(available))}",
                        )
                    )
            for action in others:
                problems.append(
                    Problem(
                        policy.file,
                        alert.line,
                        f"alert {alert.alert}",
                        f"{key} uses the template action {action}",
                        "annotations may only use {{ $labels.<name> }}, so that the generated tests can check them",
                    )
                )
    return problems


# --- Tests -----------------------------------------------------------------


def _base_labels(slo: Slo) -> dict[str, str]:
    labels = {**SYNTHETIC_TARGET, SERVICE: slo.service, JOB: slo.service, POD: f"{slo.service}-7d9f-x2x4q"}
    if slo.namespace:
        labels[NAMESPACE] = slo.namespace
    return labels


def _series(slo: Slo, phases: Sequence[tuple[int, float, float]]) -> list[sc.Series]:
    """Series for phases of (steps, requests per step, failed per step)."""
    base = _base_labels(slo)
    requests = sc.counter(*(sc.Phase(steps, total) for steps, total, _ in phases))
    failed = sc.counter(*(sc.Phase(steps, bad) for steps, _, bad in phases))
    good = sc.counter(*(sc.Phase(steps, total - bad) for steps, total, bad in phases))
    count = _count_name(slo.spec)
    if slo.sli == AVAILABILITY:
        failing = {**base, **{label: sc.example_of(pattern) or "" for label, pattern in slo.errors.items()}}
        return [sc.Series(count, failing, failed), sc.Series(count, base, good)]
    assert slo.threshold is not None
    bucket = {**base, HISTOGRAM_BUCKET_LABEL: le_as_written(slo.threshold)}
    return [sc.Series(f"{slo.spec.name}_bucket", bucket, good), sc.Series(count, base, requests)]


def _fired(slo: Slo, alert: BurnAlert) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    base = _base_labels(slo)
    labels = {NAMESPACE: base[NAMESPACE], SERVICE: slo.service, **_labels(slo), "severity": alert.severity}
    notes = {key: render_labels(text, labels) for key, text in _annotations(alert).items()}
    return [labels], [notes]


def scenarios(slo: Slo, policy: Policy) -> list[sc.Scenario]:
    total = TOTAL_PER_STEP
    result = []
    longest = max(w.seconds for w in policy.windows())
    for alert in policy.alerts:
        hold = int(alert.for_.seconds // sc.STEP)
        lowest = min(pair.factor for pair in alert.windows)
        late = hold + 3  # a constant error ratio from t=0 reads exactly the same over every window
        fired, notes = _fired(slo, alert)
        name = f"{slo.name} {alert.alert}"
        for shape, margin in (("fires", sc.FIRE_MARGIN), ("stays quiet", sc.CALM_MARGIN)):
            level = lowest * slo.budget * margin
            check = sc.AlertCheck(
                late * sc.STEP, alert.alert, fired if shape == "fires" else [], notes if shape == "fires" else []
            )
            result.append(
                sc.Scenario(
                    f"{name}: {shape} at {margin:g}x its lowest burn factor ({lowest:g}x)",
                    _series(slo, [(late, total, round(total * level))]),
                    [check],
                )
            )
        # From healthy to failing every request: each window's ratio crosses its threshold at the
        # first evaluation after the step, so the alert fires exactly `for` later.
        highest = max(pair.factor for pair in alert.windows) * slo.budget
        spike = max(sc.SPIKE, math.ceil(2 * highest * (longest / sc.STEP) / (1 - highest)))
        step_at = 10
        broken = step_at + 1
        checks = [sc.AlertCheck((broken + hold) * sc.STEP, alert.alert, fired, notes)]
        if hold:
            checks.insert(0, sc.AlertCheck((broken + hold - 1) * sc.STEP, alert.alert, []))
        result.append(
            sc.Scenario(
                f"{name}: fires {alert.for_} after every request starts failing, not sooner",
                _series(slo, [(step_at, total, 0), (hold + 2, total * spike, total * spike)]),
                checks,
            )
        )
    late = max(int(alert.for_.seconds // sc.STEP) for alert in policy.alerts) + 3
    own = f'{{{SLO_LABEL}="{slo.name}"}}'
    base = _base_labels(slo)
    recorded = {NAMESPACE: base[NAMESPACE], SERVICE: slo.service, **_labels(slo)}
    shortest = error_ratio_record(policy.windows()[0].text)
    result.append(
        sc.Scenario(
            f"{slo.name}: no traffic records an error ratio of 0, not NaN, and pages nobody",
            _series(slo, [(late, 0, 0)]),
            [sc.AlertCheck(late * sc.STEP, alert.alert, []) for alert in policy.alerts],
            [
                sc.ValueCheck(late * sc.STEP, f"{shortest}{own}", [({"__name__": shortest, **recorded}, 0)]),
                sc.ValueCheck(
                    late * sc.STEP,
                    f"{BUDGET_REMAINING_RECORD}{own}",
                    [({"__name__": BUDGET_REMAINING_RECORD, **recorded}, 1)],
                ),
            ],
        )
    )
    return result


def rendered_expressions(slo: Slo, policy: Policy) -> list[tuple[str, str]]:
    """(what, PromQL) of every rule of this SLO, for the build's validator."""
    out = [(f"{slo.subject} record {rule['record']}", rule["expr"]) for rule in recording_rules(slo, policy)]
    out += [(f"{slo.subject} alert {alert.alert}", burn_expr(slo, alert)) for alert in policy.alerts]
    return out
