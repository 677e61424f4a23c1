"""What the build reports when an input is wrong: where, what, and what to change."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One mistake in an input file, said so that the fix needs no further digging."""

    file: str
    line: int | None
    subject: str
    """What is wrong: ``panel 'Request rate'``, ``alert MeshlensHighErrorRatio``, ``slo checkout/latency``."""
    message: str
    fix: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.subject}: {self.message}\n    fix: {self.fix}"


class BuildFailed(Exception):
    """The inputs have problems; nothing was written."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(set(problems), key=lambda p: (p.file, p.line or 0, p.subject, p.message))
        super().__init__("\n".join(str(problem) for problem in self.problems))


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name nearest to a misspelt one, if any is near."""
    matches = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, known: Iterable[str], what: str) -> str:
    """A fix sentence: the closest known name, or where the known names are declared."""
    near = closest(name, known)
    if near:
        return f"did you mean {near!r}?"
    return f"use a {what} declared in the telemetry catalogue (instrumentation/meshlens/catalogue.py, docs/metrics.md)"
