"""The vocabulary of the generated promtool tests: synthetic series, built phase by phase, and
the checks made on them.

Every generated test is computed from what an alert *means* (its threshold, window and ``for``),
never read back from the rule it tests: a rule whose threshold or ``for`` drifts from its
definition fails its own test.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

try:  # the regular-expression parser behind `re`, public as sre_parse before Python 3.11
    from re import _constants as sre_constants  # type: ignore[attr-defined]
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

STEP = 60
"""Seconds between samples, and between rule evaluations, in every generated test."""

FIRE_MARGIN = 1.1
"""A firing series sits 10% above the threshold, a calm one 10% below: a threshold moved by more
than that (either way) makes one of them fail."""
CALM_MARGIN = 0.9
SPIKE = 1_000_000
"""How many times the healthy traffic a step scenario sends after its step: enough that every
windowed rate crosses its threshold at the first evaluation after the step."""


def number(value: float) -> str:
    """A sample value as promtool reads it, integers without a decimal point."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def minutes(seconds: float) -> str:
    return f"{int(seconds // STEP)}m"


@dataclass(frozen=True)
class Phase:
    """``steps`` samples, each ``amount`` after the previous one (a counter) or equal to it (a gauge)."""

    steps: int
    amount: float


def counter(*phases: Phase) -> str:
    """Expanding notation of a counter from 0 at t=0, increasing by each phase's amount per step."""
    parts = []
    value = 0.0
    first = True
    for phase in phases:
        if phase.steps <= 0:
            continue
        if first:
            parts.append(f"0+{number(phase.amount)}x{phase.steps}")
            value = phase.amount * phase.steps
            first = False
        else:
            start = value + phase.amount
            parts.append(f"{number(start)}+{number(phase.amount)}x{phase.steps - 1}")
            value = start + phase.amount * (phase.steps - 1)
    return " ".join(parts)


def gauge(*phases: Phase) -> str:
    """Expanding notation of a gauge that holds each phase's value for its steps (the first
    phase also covers t=0)."""
    parts = []
    first = True
    for phase in phases:
        if phase.steps <= 0:
            continue
        count = phase.steps if first else phase.steps - 1
        parts.append(f"{number(phase.amount)}+0x{count}")
        first = False
    return " ".join(parts)


def ramp(start: float, slope: float, steps: int, flat_steps: int = 0) -> str:
    """A gauge flat at ``start`` for ``flat_steps``, then rising by ``slope`` per step."""
    if flat_steps:
        return f"{number(start)}+0x{flat_steps} {number(start + slope)}+{number(slope)}x{steps - 1}"
    return f"{number(start)}+{number(slope)}x{steps}"


def absent_after(value: float, steps: int, gone: int) -> str:
    """A gauge present for ``steps`` samples, then missing for ``gone`` more."""
    return f"{number(value)}+0x{steps} _x{gone}" if gone else f"{number(value)}+0x{steps}"


@dataclass(frozen=True)
class Series:
    name: str
    labels: Mapping[str, str]
    values: str

    def to_test(self) -> dict[str, str]:
        inner = ", ".join(f'{key}="{value}"' for key, value in sorted(self.labels.items()))
        return {"series": f"{self.name}{{{inner}}}", "values": self.values}


@dataclass(frozen=True)
class AlertCheck:
    """At ``at`` seconds, ``alertname`` fires with exactly these label sets (none: it must not)."""

    at: float
    alertname: str
    fired: Sequence[Mapping[str, str]]
    annotations: Sequence[Mapping[str, str]] = ()

    def to_test(self) -> dict[str, Any]:
        expected = [
            {"exp_labels": dict(sorted(labels.items())), "exp_annotations": dict(sorted(notes.items()))}
            for labels, notes in zip(self.fired, self.annotations, strict=True)
        ]
        return {"alertname": self.alertname, "eval_time": minutes(self.at), "exp_alerts": expected}


@dataclass(frozen=True)
class ValueCheck:
    """At ``at`` seconds, ``expr`` returns exactly these samples (labels, value)."""

    at: float
    expr: str
    samples: Sequence[tuple[Mapping[str, str], float]]

    def to_test(self) -> dict[str, Any]:
        return {
            "expr": self.expr,
            "eval_time": minutes(self.at),
            "exp_samples": [{"labels": _selector_text(labels), "value": value} for labels, value in self.samples],
        }


def _selector_text(labels: Mapping[str, str]) -> str:
    name = labels.get("__name__", "")
    inner = ", ".join(f'{key}="{value}"' for key, value in sorted(labels.items()) if key != "__name__")
    return f"{name}{{{inner}}}"


@dataclass
class Scenario:
    """One promtool test group: its series and what must (not) fire when."""

    name: str
    series: list[Series]
    alerts: list[AlertCheck] = field(default_factory=list)
    values: list[ValueCheck] = field(default_factory=list)

    def to_test(self) -> dict[str, Any]:
        group: dict[str, Any] = {
            "name": self.name,
            "interval": minutes(STEP),
            "input_series": [series.to_test() for series in self.series],
        }
        if self.alerts:
            group["alert_rule_test"] = [check.to_test() for check in self.alerts]
        if self.values:
            group["promql_expr_test"] = [check.to_test() for check in self.values]
        return group


def example_of(pattern: str) -> str | None:
    """A short string that the (anchored) regular expression matches, for a synthetic label value:
    ``5..`` gives ``500``. None when the pattern is beyond this small generator."""
    try:
        text = _generate(list(sre_parse.parse(pattern)))
    except (re.error, _Unsupported):
        return None
    return text if re.fullmatch(pattern, text) else None


class _Unsupported(Exception):
    pass


def _generate(items: list[Any]) -> str:
    constants = sre_constants
    out = []
    for op, arg in items:
        if op is constants.LITERAL:
            out.append(chr(arg))
        elif op is constants.ANY:
            out.append("0")
        elif op is constants.IN:
            out.append(_first_in(arg, constants))
        elif op is constants.BRANCH:
            out.append(_generate(list(arg[1][0])))
        elif op is constants.SUBPATTERN:
            out.append(_generate(list(arg[-1])))
        elif op in (constants.MAX_REPEAT, constants.MIN_REPEAT):
            low, _high, body = arg
            out.append(_generate(list(body)) * max(low, 0))
        elif op is constants.AT:
            continue
        elif op is constants.NOT_LITERAL:
            out.append("x" if chr(arg) != "x" else "y")
        else:
            raise _Unsupported(op)
    return "".join(out)


def _first_in(items: list[Any], constants: Any) -> str:
    for op, arg in items:
        if op is constants.LITERAL:
            return chr(arg)
        if op is constants.RANGE:
            return chr(arg[0])
        if op is constants.CATEGORY:
            return {constants.CATEGORY_DIGIT: "0", constants.CATEGORY_SPACE: " "}.get(arg, "a")
    raise _Unsupported("negated or empty class")
