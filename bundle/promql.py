"""Checking PromQL: promtool (Prometheus's own parser) says whether each expression parses, and
promql-parser's syntax tree says which metrics and labels it names, each of which must be
declared in the catalogue (or recorded by the generated rules).

Every expression of a build goes into one temporary rules file, one recording rule each, so
promtool runs once; its messages name the rule, which maps back to the panel or alert.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from meshlens.catalogue import CATALOGUE, OVERFLOW_LABEL, MetricSpec
from meshlens_alerts.slo import RecordedSeries
from meshlens_alerts.spec import known_labels
from meshlens_bundle.problems import Problem, did_you_mean

# Grafana's interval variables stand where PromQL wants a duration; any duration parses the same.
_GRAFANA_DURATIONS = re.compile(
    r"\$(?:\{__(?:rate_interval|interval|range)(?::\w+)?\}|__(?:rate_interval|interval|range))"
)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")
_PROMTOOL_ERROR = re.compile(r'group "(?P<group>[^"]*)", rule (?P<rule>\d+), "(?P<name>[^"]*)": (?P<message>.*)$')
_LABEL_MAKERS = {"label_replace": 1, "label_join": 1}
"""Functions whose argument at this index names a label they create."""
_CHECK_GROUP = "meshlens-check"
_CHECK_RECORD = "meshlens_check_{index}"


class PromtoolMissingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Located:
    """An expression with where it was written, for messages."""

    file: str
    line: int | None
    subject: str
    expr: str
    variable_query: bool = False


def promtool_path(given: str | None = None) -> str:
    found = shutil.which(given or "promtool")
    if not found:
        raise PromtoolMissingError(
            f"promtool not found ({given or 'promtool'} on PATH): install Prometheus's tools "
            "(`apt-get install prometheus`, or `make tools`) or pass --promtool PATH"
        )
    return found


def for_parsing(expr: str) -> str:
    return _GRAFANA_DURATIONS.sub("5m", expr)


def split_variable_query(query: str) -> tuple[str, str] | None:
    """``label_values(selector, label)`` as (selector, label); None for anything else."""
    match = _LABEL_VALUES.match(query)
    return (match.group("selector"), match.group("label")) if match else None


def check_parse(items: Sequence[Located], promtool: str) -> list[Problem]:
    """promtool's verdict on every expression, as problems at each expression's origin (each
    problem's subject and expression are those of the item: ``failed`` finds them)."""
    if not items:
        return []
    problems: list[Problem] = []
    exprs: list[tuple[Located, str]] = []
    for item in items:
        expr = item.expr
        if item.variable_query:
            parts = split_variable_query(expr)
            if parts is None:
                problems.append(
                    Problem(
                        item.file,
                        item.line,
                        item.subject,
                        f"unsupported variable query {expr!r}",
                        "write label_values(<metric selector>, <label>)",
                    )
                )
                continue
            expr = parts[0]
        exprs.append((item, for_parsing(expr)))
    rules = [{"record": _CHECK_RECORD.format(index=index), "expr": expr} for index, (_, expr) in enumerate(exprs)]
    with tempfile.TemporaryDirectory(prefix="meshlens-promql-") as folder:
        path = Path(folder) / "expressions.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": _CHECK_GROUP, "rules": rules}]}, width=1_000_000))
        result = subprocess.run(
            [promtool, "check", "rules", "--lint=none", str(path)], capture_output=True, text=True, check=False
        )
    if result.returncode == 0:
        return problems
    mapped = False
    for line in (result.stdout + result.stderr).splitlines():
        match = _PROMTOOL_ERROR.search(line)
        if not match:
            continue
        item, _ = exprs[int(match.group("rule")) - 1]
        message = match.group("message").replace("could not parse expression: ", "")
        problems.append(
            Problem(
                item.file,
                item.line,
                item.subject,
                f"PromQL does not parse: {message}",
                f"fix the expression: {item.expr}",
            )
        )
        mapped = True
    if not mapped:
        problems.append(
            Problem(
                "(promtool)",
                None,
                "promtool check rules",
                result.stderr.strip() or result.stdout,
                "report this: the build could not map promtool's error to an expression",
            )
        )
    return problems


def check_rule_files(paths: Iterable[Path], promtool: str) -> str | None:
    """promtool's full check of generated rule files, duplicate-rule lint included; its output on failure."""
    result = subprocess.run(
        [promtool, "check", "rules", "--lint=all", "--lint-fatal", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    return None if result.returncode == 0 else _distinct_lines(result.stdout + result.stderr)


def run_rule_tests(path: Path, promtool: str) -> str | None:
    """``promtool test rules`` on one generated test file; its output on failure."""
    result = subprocess.run(
        [promtool, "test", "rules", path.name], cwd=path.parent, capture_output=True, text=True, check=False
    )
    return None if result.returncode == 0 else _distinct_lines(result.stdout + result.stderr)


def _distinct_lines(text: str) -> str:
    """promtool repeats a rule file's error once per test group; once is enough."""
    seen: dict[str, None] = {}
    for line in text.splitlines():
        if line.strip():
            seen.setdefault(line.rstrip(), None)
    return "\n".join(seen)


class Names:
    """The metrics and labels a query may name: the catalogue's, and the recorded series'."""

    def __init__(self, recorded: Iterable[RecordedSeries] = ()) -> None:
        self.recorded = {series.name: series for series in recorded}
        self.series = sorted({name for spec in CATALOGUE for name in spec.series_names()} | set(self.recorded))

    def labels_of(self, series: str) -> tuple[str, ...] | None:
        if series in self.recorded:
            return self.recorded[series].labels
        spec: MetricSpec | None = CATALOGUE.lookup_series(series)
        if spec is None:
            return None
        overflow = (OVERFLOW_LABEL,) if spec.emitted and spec.labels else ()
        return (*known_labels(spec, bucket=series.endswith("_bucket")), *overflow, "__name__")


def check_names(item: Located, names: Names) -> list[Problem]:
    """Every metric and label the expression names must be declared."""
    expr = item.expr
    grouping_extra: list[str] = []
    if item.variable_query:
        parts = split_variable_query(expr)
        if parts is None:
            return []
        expr, label = parts
        grouping_extra.append(label)
    try:
        tree = promql_parser.parse(for_parsing(expr))
    except ValueError as exc:  # promtool accepted it (or reported it already); say so, do not guess
        return [
            Problem(
                item.file,
                item.line,
                item.subject,
                f"the name check cannot parse this expression: {exc}",
                "simplify the expression, or report it if Prometheus accepts it",
            )
        ]
    visitor = _Visitor()
    promql_parser.walk(tree, visitor.visit, None)
    problems: list[Problem] = []
    available: set[str] = set(visitor.created)
    all_known = True
    for name, matcher_labels in visitor.selectors:
        labels = names.labels_of(name) if name else None
        if name is None:
            problems.append(
                Problem(
                    item.file,
                    item.line,
                    item.subject,
                    "a selector without a metric name",
                    "name the metric: every query must select a catalogue metric",
                )
            )
            continue
        if labels is None:
            problems.append(
                Problem(
                    item.file,
                    item.line,
                    item.subject,
                    f"unknown metric {name!r} (not in the telemetry catalogue)",
                    did_you_mean(name, names.series, "metric"),
                )
            )
            all_known = False
            continue
        available |= set(labels)
        for label in matcher_labels:
            if label not in labels:
                problems.append(
                    Problem(
                        item.file,
                        item.line,
                        item.subject,
                        f"unknown label {label!r} on {name}",
                        did_you_mean(label, labels, "label"),
                    )
                )
    if not all_known:  # the labels of an unknown metric are unknown too: say nothing about them
        return problems
    for label in [*visitor.grouping, *grouping_extra]:
        if label not in available:
            problems.append(
                Problem(
                    item.file,
                    item.line,
                    item.subject,
                    f"unknown label {label!r}: none of the selected metrics has it",
                    did_you_mean(label, available, "label"),
                )
            )
    return problems


class _Visitor:
    def __init__(self) -> None:
        self.selectors: list[tuple[str | None, list[str]]] = []
        self.grouping: list[str] = []
        self.created: list[str] = []

    def visit(self, node: Any) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            labels = [m.name for m in node.matchers.matchers if m.name != "__name__"]
            labels += [m.name for group in node.matchers.or_matchers for m in group if m.name != "__name__"]
            self.selectors.append((node.name, labels))
        elif kind == "AggregateExpr":
            if node.modifier is not None:
                self.grouping.extend(node.modifier.labels)
            if str(node.op) == "count_values" and node.param is not None:
                self.created.append(getattr(node.param, "val", str(node.param)))
        elif kind == "BinaryExpr" and node.modifier is not None:
            if node.modifier.matching is not None:
                self.grouping.extend(node.modifier.matching.labels)
            self.grouping.extend(node.modifier.group_labels or ())
        elif kind == "Call" and node.func.name in _LABEL_MAKERS:
            argument = node.args[_LABEL_MAKERS[node.func.name]]
            self.created.append(getattr(argument, "val", str(argument)))
