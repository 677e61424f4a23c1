"""What the demo prints: a trace's waterfall, the dashboards' queries against the live
Prometheus, the exemplar behind a slow bucket, and the alerts that fired."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from demo.otlp_sink import ReceivedSpan
from demo.stack import Prometheus
from meshlens.catalogue import CATALOGUE, Origin

# Where the demo's stand-in for a dashboard variable or interval goes: every namespace
# and service (the dashboards select them with =~), and a rate window of a few scrapes.
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
RATE_INTERVAL = "30s"
# Producers that cannot run on one machine without Kubernetes: panels reading only
# their metrics are listed as not applicable, never counted as passing.
ABSENT_HERE = {
    Origin.ISTIO: "needs Istio sidecars",
    Origin.OTELCOL: "needs an OpenTelemetry Collector",
    Origin.KAFKA_EXPORTER: "needs kafka-exporter next to a real broker",
}
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def waterfall(spans: Iterable[ReceivedSpan], trace_id: str, width: int = 40) -> list[str]:
    """The trace as Jaeger draws it: one line per span, indented under its parent."""
    trace = sorted((s for s in spans if s.trace_id == trace_id), key=lambda s: s.start_ns)
    if not trace:
        return ["  (no spans)"]
    by_parent: dict[str, list[ReceivedSpan]] = {}
    for span in trace:
        by_parent.setdefault(span.parent_span_id, []).append(span)
    ids = {s.span_id for s in trace}
    start = min(s.start_ns for s in trace)
    total = max(s.end_ns for s in trace) - start or 1
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int, via_link: bool = False) -> None:
        offset = int(width * (span.start_ns - start) / total)
        bar = " " * offset + "█" * max(1, int(width * (span.end_ns - span.start_ns) / total))
        label = f"{'  ' * depth}{'↳ ' if via_link else ''}{span.service}: {span.name}"
        error = "  ERROR" if span.status_code == 2 else ""
        lines.append(f"  {label[:60]:<60} {bar:<{width + 1}} {(span.end_ns - span.start_ns) / 1e6:8.1f} ms{error}")
        for child in by_parent.get(span.span_id, []):
            walk(child, depth + 1)

    for root in (s for s in trace if s.parent_span_id not in ids):
        walk(root, 0)
    return lines


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return RATE_INTERVAL if name.startswith("__") else ".+"

    return VARIABLE.sub(value, expr)


def origins_of(expr: str) -> set[Origin]:
    names = {catalogue_name for catalogue_name in _METRIC_NAME.findall(expr)}
    origins = set()
    for spec in CATALOGUE:
        family = spec.base_name
        if family in names or any(name.startswith(family + "_") and name[len(family) + 1:] in
                                  ("bucket", "count", "sum", "total") for name in names):
            origins.add(spec.origin)
    return origins


@dataclass(frozen=True)
class PanelResult:
    dashboard: str
    panel: str
    expr: str
    series: int
    not_applicable: str = ""

    @property
    def empty(self) -> bool:
        return not self.not_applicable and self.series == 0


def panel_queries(folder: Path) -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, PromQL) of every generated dashboard."""
    found = []
    for path in sorted(folder.glob("*.json")):
        model = json.loads(path.read_text())
        for panel in model.get("panels", []):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((model["title"], panel.get("title", "?"), target["expr"]))
    return found


def evaluate_dashboards(prometheus: Prometheus, folder: Path, unused: dict[str, str]) -> list[PanelResult]:
    """Every panel query against the live Prometheus. ``unused``: text in a query (a metric
    prefix, a label matcher) that marks it as reading a library no demo service uses here,
    with the reason; such panels are not applicable, like those of absent producers."""
    results = []
    for dashboard, panel, expr in panel_queries(folder):
        missing = [ABSENT_HERE[origin] for origin in origins_of(expr) if origin in ABSENT_HERE]
        missing += [reason for text, reason in unused.items() if text in expr]
        if missing:
            results.append(PanelResult(dashboard, panel, expr, 0, missing[0]))
            continue
        series = [s for s in prometheus.query(substitute(expr)) if not _is_nan(s)]
        results.append(PanelResult(dashboard, panel, expr, len(series)))
    return results


def _is_nan(sample: dict[str, Any]) -> bool:
    value = sample.get("value", [0, "0"])[1]
    return isinstance(value, str) and value.lower() == "nan"


def dashboard_lines(results: list[PanelResult]) -> list[str]:
    lines = []
    by_dashboard: dict[str, list[PanelResult]] = {}
    for result in results:
        by_dashboard.setdefault(result.dashboard, []).append(result)
    for dashboard, panels in by_dashboard.items():
        data = sum(not p.empty and not p.not_applicable for p in panels)
        absent = sorted({p.not_applicable for p in panels if p.not_applicable})
        empty = [p for p in panels if p.empty]
        note = f", {len(panels) - data - len(empty)} not applicable here ({'; '.join(absent)})" if absent else ""
        lines.append(f"  {dashboard:<32} {data:>3}/{len(panels):<3} queries return data{note}")
        lines.extend(f"      NO DATA: {p.panel}: {p.expr}" for p in empty)
    return lines


def _by_route(prometheus: Prometheus, expr: str) -> dict[tuple[str, str], float]:
    return {(sample["metric"].get("service", ""), sample["metric"].get("http_route", "")): float(sample["value"][1])
            for sample in prometheus.query(substitute(expr))}


RED_PANEL = "Per route, last 5 minutes"
# The table's window is 5 minutes; the demo has not run that long, so its rates would read
# low: the demo evaluates the same queries over the last minute.
RED_WINDOW, DEMO_WINDOW = "5m", "1m"


def red_lines(prometheus: Prometheus, folder: Path) -> list[str]:
    """Rate, errors and p99 per service and route: the Service overview dashboard's table,
    its own three queries (over the last minute) evaluated against the live Prometheus."""
    rate_expr, error_expr, p99_expr = [expr.replace(f"[{RED_WINDOW}]", f"[{DEMO_WINDOW}]")
                                       for dashboard, panel, expr in panel_queries(folder)
                                       if dashboard.endswith("Service overview") and panel == RED_PANEL]
    rate = _by_route(prometheus, rate_expr)
    errors = _by_route(prometheus, error_expr)
    p99 = _by_route(prometheus, p99_expr)
    lines = [f"  {'service':<12} {'route':<22} {'req/s':>7} {'errors':>8} {'p99 ms':>8}"]
    for key in sorted(rate):
        service, route = key
        if route in ("/health", ""):
            continue
        lines.append(f"  {service:<12} {route:<22} {rate[key]:>7.2f} {errors.get(key, 0.0):>7.1f}% "
                     f"{p99.get(key, math.nan):>8.1f}")
    return lines
