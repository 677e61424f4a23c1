"""Reading the SLO and alert YAML: values with the line they came from, durations, and the
checks every field shares (known keys, catalogue metrics and labels, bucket boundaries).

Each reader collects problems instead of stopping at the first, so one build run lists every
mistake in a file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshlens.catalogue import CATALOGUE, HISTOGRAM_BUCKET_LABEL, TARGET_LABELS, Kind, MetricSpec
from meshlens_bundle.problems import BuildFailed, Problem, closest, did_you_mean

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


class LineDict(dict[str, Any]):
    """A YAML mapping that knows the line it starts on."""

    line: int = 0


RunbookUrl = Callable[[LineDict, str], str]
"""(an alert's YAML entry, its name) -> its runbook_url."""


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> LineDict:
    mapping = LineDict(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path, shown_as: str) -> Any:
    """The document, with every mapping a LineDict; a syntax error is a Problem with its line."""
    try:
        return yaml.load(path.read_text(), Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        raise BuildFailed(
            [
                Problem(
                    shown_as,
                    line,
                    "YAML",
                    f"syntax error: {reason}",
                    "fix the YAML syntax at that line (indentation, a missing colon or quote)",
                )
            ]
        ) from exc


@dataclass(frozen=True)
class Duration:
    """A Prometheus duration such as ``5m``; kept as written for the rules, in seconds for sums."""

    text: str
    seconds: float

    @classmethod
    def of_seconds(cls, seconds: float) -> Duration:
        for unit in ("d", "h", "m", "s"):
            size = _UNIT_SECONDS[unit]
            if seconds >= size and seconds % size == 0:
                return cls(f"{int(seconds // size)}{unit}", seconds)
        return cls(f"{int(seconds * 1000)}ms", seconds)

    def __str__(self) -> str:
        return self.text


@dataclass
class Reader:
    """Reads one YAML file's fields, remembering problems with their line and subject."""

    file: str
    problems: list[Problem] = field(default_factory=list)

    def problem(self, line: int | None, subject: str, message: str, fix: str) -> None:
        self.problems.append(Problem(self.file, line, subject, message, fix))

    def raise_if_any(self) -> None:
        if self.problems:
            raise BuildFailed(self.problems)

    # -- structure ----------------------------------------------------------

    def mapping(self, value: Any, subject: str, line: int | None) -> LineDict | None:
        if isinstance(value, LineDict):
            return value
        self.problem(
            line,
            subject,
            f"expected a mapping (key: value lines), found {_shown(value)}",
            "indent the fields under it as `key: value` lines",
        )
        return None

    def keys(self, node: LineDict, subject: str, required: Iterable[str], optional: Iterable[str] = ()) -> bool:
        required = tuple(required)
        known = (*required, *optional)
        fine = True
        for key in node:
            if key not in known:
                near = closest(str(key), known)
                fix = f"did you mean {near!r}?" if near else f"the fields are: {', '.join(known)}"
                self.problem(node.line, subject, f"unknown field {key!r}", fix)
                fine = False
        for key in required:
            if key not in node:
                self.problem(node.line, subject, f"missing field {key!r}", f"add `{key}:`")
                fine = False
        return fine

    # -- scalars ------------------------------------------------------------

    def text(self, node: LineDict, key: str, subject: str, default: str | None = None) -> str:
        value = node.get(key, default)
        if isinstance(value, str) and value.strip():
            return value
        self.problem(
            node.line, subject, f"{key} must be a non-empty string, found {_shown(value)}", f"write `{key}: <text>`"
        )
        return ""

    def number(self, node: LineDict, key: str, subject: str, default: float | None = None) -> float:
        value = node.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.problem(node.line, subject, f"{key} must be a number, found {_shown(value)}", f"write `{key}: 0.5`")
            return math.nan
        return float(value)

    def duration(self, node: LineDict, key: str, subject: str, default: str | None = None) -> Duration:
        value = node.get(key, default)
        text = str(value) if value is not None else ""
        match = _DURATION.match(text)
        if not match:
            self.problem(
                node.line,
                subject,
                f"{key} must be a Prometheus duration such as 5m or 1h, found {_shown(value)}",
                f"write `{key}: 5m` (units: s, m, h, d, w)",
            )
            return Duration("0s", 0)
        return Duration(text, int(match.group(1)) * _UNIT_SECONDS[match.group(2)])

    # -- the catalogue ------------------------------------------------------

    def metric(
        self, node: LineDict, key: str, subject: str, kinds: Iterable[Kind], default: MetricSpec | None = None
    ) -> MetricSpec | None:
        kinds = tuple(kinds)
        if key not in node and default is not None:
            return default
        name = node.get(key)
        if not isinstance(name, str) or name not in CATALOGUE:
            known = [spec.name for spec in CATALOGUE if spec.kind in kinds]
            self.problem(
                node.line,
                subject,
                f"unknown metric {name!r} (not in the telemetry catalogue)",
                did_you_mean(str(name), known, "metric"),
            )
            return None
        spec = CATALOGUE[name]
        if spec.kind not in kinds:
            wanted = " or ".join(kind.value for kind in kinds)
            self.problem(
                node.line,
                subject,
                f"{name} is a {spec.kind.value}; this needs a {wanted}",
                f"pick a {wanted} from docs/metrics.md",
            )
            return None
        return spec

    def label(self, label: Any, spec: MetricSpec, line: int | None, subject: str, bucket: bool = False) -> bool:
        known = known_labels(spec, bucket=bucket)
        if isinstance(label, str) and label in known:
            return True
        self.problem(line, subject, f"unknown label {label!r} on {spec.name}", did_you_mean(str(label), known, "label"))
        return False

    def matchers(self, node: LineDict, key: str, subject: str, spec: MetricSpec) -> dict[str, str]:
        """``key: {label: regex, ...}``, each label checked against the metric."""
        value = node.get(key, {})
        if value == {}:
            return {}
        mapping = self.mapping(value, f"{subject} {key}", node.line)
        if mapping is None:
            return {}
        found: dict[str, str] = {}
        for label, pattern in mapping.items():
            if not self.label(label, spec, mapping.line, subject):
                continue
            if not isinstance(pattern, str):
                self.problem(
                    mapping.line,
                    subject,
                    f"{key}.{label} must be a regular expression in quotes",
                    f'write `{label}: "5.."`',
                )
                continue
            try:
                re.compile(pattern)
            except re.error as exc:
                self.problem(
                    mapping.line,
                    subject,
                    f"{key}.{label}: {pattern!r} is not a regular expression ({exc})",
                    "fix the pattern (Prometheus uses RE2 syntax, anchored at both ends)",
                )
                continue
            found[label] = pattern
        return found

    def labels_list(
        self, node: LineDict, key: str, subject: str, spec: MetricSpec, default: tuple[str, ...]
    ) -> tuple[str, ...]:
        value = node.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.problem(
                node.line, subject, f"{key} must be a list of label names", f"write `{key}: [namespace, service]`"
            )
            return default
        return tuple(label for label in value if self.label(label, spec, node.line, subject))

    def bucket_boundary(self, value: float, spec: MetricSpec, line: int | None, subject: str) -> bool:
        """A latency threshold must be a bucket boundary, and not the last: only then does the
        bucket count give the share of requests under it, and a quantile above it exist."""
        if math.isnan(value):
            return False
        scale = _unit_scale(spec)
        if value in spec.buckets and value != spec.buckets[-1]:
            return True
        if value == spec.buckets[-1]:
            self.problem(
                line,
                subject,
                f"threshold {value}{scale} is the last bucket boundary of {spec.name}: "
                "nothing can be measured above it, so this can never fire",
                f"use a lower boundary: {', '.join(_fmt(b) for b in spec.buckets[-4:-1])}",
            )
            return False
        below = [b for b in spec.buckets if b < value]
        above = [b for b in spec.buckets if b > value]
        nearest = " and ".join(_fmt(b) for b in (below[-1:] + above[:1]))
        self.problem(
            line,
            subject,
            f"threshold {_fmt(value)}{scale} is not a bucket boundary of {spec.name}: "
            "the share of observations under it cannot be counted, only guessed",
            f"use a nearest boundary: {nearest} (boundaries: {', '.join(_fmt(b) for b in spec.buckets)})",
        )
        return False


def known_labels(spec: MetricSpec, bucket: bool = False) -> tuple[str, ...]:
    """The labels a query may name on this metric: its own, the scrape's target labels, and
    ``le`` on a histogram's buckets."""
    extra = (HISTOGRAM_BUCKET_LABEL,) if bucket and spec.kind is Kind.HISTOGRAM else ()
    return (*spec.labels, *TARGET_LABELS, *extra)


def le_matcher(bound: float) -> tuple[str, str]:
    """(operator, value) matching a bucket's ``le`` label. prometheus-client writes ``1.0`` where
    Go (and Prometheus 3, which normalises on ingestion) writes ``1``; match both."""
    written = {repr(float(bound)), _fmt(bound)}
    if len(written) == 1:
        return "=", written.pop()
    return "=~", "|".join(sorted(re.escape(form) for form in written))


def le_as_written(bound: float) -> str:
    """The ``le`` value as the meshlens runtime (prometheus-client) writes it."""
    return repr(float(bound))


def _fmt(value: float) -> str:
    return f"{value:g}"


def _unit_scale(spec: MetricSpec) -> str:
    return {"s": " s", "ms": " ms"}.get(spec.unit, "")


def _shown(value: Any) -> str:
    if value is None:
        return "nothing"
    return repr(value)


def render_labels(template: str, labels: Mapping[str, str]) -> str:
    """What Prometheus renders for ``{{ $labels.x }}`` placeholders (the only template the
    annotations use, so that the generated tests can predict them)."""
    return _LABEL_REF.sub(lambda m: labels.get(m.group(1), "<no value>"), template)


def template_problems(template: str) -> tuple[list[str], list[str]]:
    """(label names referenced, other template actions) in an annotation."""
    referenced = _LABEL_REF.findall(template)
    others = [action for action in _ACTION.findall(template) if not _LABEL_REF.fullmatch(action)]
    return referenced, others


_LABEL_REF = re.compile(r"\{\{\s*\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_ACTION = re.compile(r"\{\{.*?\}\}")
