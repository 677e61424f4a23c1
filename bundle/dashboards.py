"""Loading ``*.dashboard.py`` files: run each, take its ``dashboard``, turn it into Grafana JSON,
and list every query in it with the file and line that built its panel.
"""

from __future__ import annotations

import re
import runpy
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafanalib import core

from meshlens_bundle.grafana import DashboardSchemaError, to_grafana_json
from meshlens_bundle.problems import Problem
from meshlens_dashboards.panels import origin_of

SUFFIX = ".dashboard.py"
UID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
"""Grafana accepts uids of up to 40 letters, digits, '-' and '_'."""


@dataclass(frozen=True)
class Query:
    """A PromQL expression of a dashboard, with where it was built."""

    file: str
    line: int | None
    subject: str
    expr: str
    variable_query: bool = False
    """A template variable's ``label_values(...)`` query rather than a panel's PromQL."""


@dataclass
class LoadedDashboard:
    source: str
    """The file as shown in messages and in the DO NOT EDIT marker."""
    uid: str
    line: int | None
    model: dict[str, Any]
    queries: list[Query] = field(default_factory=list)


class Shower:
    """How paths are shown: the dashboards folder's own files as ``<folder>/<name>``, other
    files (a helper module an SRE imports) relative to the working directory when possible."""

    def __init__(self, folder: Path, shown: str) -> None:
        self.folder = folder.resolve()
        self.shown = shown

    def __call__(self, path: str | Path) -> str:
        resolved = Path(path).resolve()
        if resolved.parent == self.folder:
            return f"{self.shown}/{resolved.name}"
        try:
            return str(resolved.relative_to(Path.cwd()))
        except ValueError:
            return str(resolved)


def find(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SUFFIX}"))


def load(path: Path, show: Shower, problems: list[Problem]) -> LoadedDashboard | None:
    source = show(path)
    try:
        namespace = runpy.run_path(str(path), run_name=f"meshlens_dashboard_{path.name[: -len(SUFFIX)]}")
    except SyntaxError as exc:
        problems.append(
            Problem(
                source, exc.lineno, "dashboard file", f"syntax error: {exc.msg}", "fix the Python syntax at that line"
            )
        )
        return None
    except Exception as exc:
        line = _line_in(path, exc)
        problems.append(
            Problem(
                source,
                line,
                "dashboard file",
                f"{type(exc).__name__}: {exc}",
                "fix the code at that line (the file must run on its own and bind `dashboard`)",
            )
        )
        return None
    board = namespace.get("dashboard")
    if not isinstance(board, core.Dashboard):
        problems.append(
            Problem(
                source,
                None,
                "dashboard file",
                f"binds no grafanalib Dashboard named `dashboard` (found {type(board).__name__})",
                "end the file with `dashboard = panels.dashboard(...)`",
            )
        )
        return None
    where = origin_of(board)
    line = where.line if where and show(where.file) == source else None
    uid = board.uid or ""
    if not UID_PATTERN.match(uid):
        problems.append(
            Problem(
                source,
                line,
                f"dashboard {board.title!r}",
                f"uid {uid!r} is not a Grafana uid",
                "give it a stable uid of up to 40 letters, digits, '-' or '_'",
            )
        )
        return None
    try:
        model = to_grafana_json(board)
    except DashboardSchemaError as exc:
        problems.append(Problem(source, line, f"dashboard {uid}", str(exc), "build it with the house library"))
        return None
    loaded = LoadedDashboard(source, uid, line, model)
    loaded.queries = list(_queries(board, model, show, source, line))
    return loaded


def _line_in(path: Path, exc: BaseException) -> int | None:
    """The deepest line of the failing file in the traceback."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename).resolve() == path.resolve():
            line = frame.lineno
    return line


def _queries(board: core.Dashboard, model: dict[str, Any], show: Shower, source: str, line: int | None) -> Any:
    # grafanalib serialises panels in order, so the JSON panels line up with the objects.
    for panel, data in zip(board.panels, model.get("panels", []), strict=True):
        where = origin_of(panel)
        file, at = (show(where.file), where.line) if where else (source, line)
        for target in data.get("targets", []):
            expr = target.get("expr")
            if expr:
                subject = f"panel {data.get('title', '')!r} query {target.get('refId', '?')}"
                yield Query(file, at, subject, expr)
    for template, data in zip(board.templating.list, model.get("templating", {}).get("list", []), strict=True):
        if data.get("type") != "query":
            continue
        where = origin_of(template)
        file, at = (show(where.file), where.line) if where else (source, line)
        yield Query(file, at, f"variable ${data.get('name')}", str(data.get("query", "")), variable_query=True)
