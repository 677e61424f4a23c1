"""The house panel library: grafanalib panels in meshlens's style, laid out for Grafana 11.

A ``*.dashboard.py`` file binds ``dashboard = panels.dashboard(...)`` (grafanalib's convention),
built from rows of panels::

    dashboard = panels.dashboard(
        uid="meshlens-example", title="Example", description="What it answers.",
        variables=panels.service_variables(catalogue.HTTP_SERVER_REQUEST_DURATION),
        rows=[panels.row("Traffic", panels.timeseries("Requests", panels.query(expr, "{{service}}")))],
    )

Each panel remembers the file and line that built it, so that ``meshlens build`` can point at
the line of a panel whose query is wrong. Positions (gridPos) and panel ids are assigned here:
rows stack top to bottom, panels flow left to right within a row, 24 columns wide.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import attr
from attr.validators import instance_of
from grafanalib import core

from meshlens.catalogue import HISTOGRAM_BUCKET_LABEL, NAMESPACE, SERVICE, MetricSpec
from meshlens.instruments import EXEMPLAR_TRACE_ID
from meshlens_dashboards import promql

GRID_WIDTH = 24
ROW_HEIGHT = 1
DEFAULT_HEIGHT = 8
HOUSE_TAG = "meshlens"
PROMETHEUS_PLUGIN = "prometheus"
DATASOURCE_VARIABLE = "datasource"
PROMETHEUS_DATASOURCE: dict[str, str] = {"type": PROMETHEUS_PLUGIN, "uid": f"${{{DATASOURCE_VARIABLE}}}"}

ORIGIN_ATTRIBUTE = "_meshlens_origin"
"""Where a panel or dashboard was built: (file, line) of the first frame outside this library."""

_LIBRARY_FILES = frozenset({Path(__file__).resolve(), Path(promql.__file__).resolve()})


@dataclass(frozen=True)
class Origin:
    file: str
    line: int


def origin_of(obj: object) -> Origin | None:
    found = getattr(obj, ORIGIN_ATTRIBUTE, None)
    return found if isinstance(found, Origin) else None


def _caller() -> Origin:
    frame = sys._getframe(1)
    while frame is not None and Path(frame.f_code.co_filename).resolve() in _LIBRARY_FILES:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:  # pragma: no cover - only when called from this module alone
        return Origin("<unknown>", 0)
    return Origin(frame.f_code.co_filename, frame.f_lineno)


def _remember(obj: Any, where: Origin) -> Any:
    # attrs classes (not slotted) accept extra attributes; the build reads it back with origin_of.
    setattr(obj, ORIGIN_ATTRIBUTE, where)
    return obj


# --- Queries ---------------------------------------------------------------


@attr.s
class PromTarget(core.Target):
    """A Prometheus query as Grafana 11 stores it (grafanalib's Target also writes Graphite-era
    keys such as ``target``, ``metric`` and ``step``, and knows no exemplars)."""

    exemplar: bool = attr.ib(default=False, validator=instance_of(bool))

    def to_json_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "datasource": PROMETHEUS_DATASOURCE,
            "expr": self.expr,
            "format": self.format,
            "instant": self.instant,
            "range": not self.instant,
            "refId": self.refId,
        }
        if self.legendFormat:
            data["legendFormat"] = self.legendFormat
        if self.exemplar:
            data["exemplar"] = True
        return data


def query(expr: str, legend: str = "", *, instant: bool = False, exemplar: bool = False) -> PromTarget:
    """One query of a panel; ``legend`` is a Grafana legend template such as ``{{service}}``."""
    return PromTarget(
        expr=expr,
        legendFormat=legend,
        instant=instant,
        exemplar=exemplar,
        format="table" if instant else core.TIME_SERIES_TARGET_FORMAT,
    )


def _with_ref_ids(targets: Sequence[PromTarget]) -> list[PromTarget]:
    for index, target in enumerate(targets):
        target.refId = chr(ord("A") + index)
    return list(targets)


def legend(*labels: str) -> str:
    """A legend template naming each series by these labels: ``{{a}} {{b}}``."""
    return " ".join("{{" + label + "}}" for label in labels)


# --- Panels ----------------------------------------------------------------


def thresholds(base: str, *steps: tuple[float, str]) -> list[dict[str, Any]]:
    """Colour steps. Grafana reads the first step as -Infinity whatever its value; the schema
    wants a number there, so it is written as 0 (every thresholded value here is >= 0)."""
    return [{"color": base, "value": 0}, *({"color": color, "value": value} for value, color in steps)]


def _size(width: int, height: int) -> core.GridPos:
    if not 0 < width <= GRID_WIDTH:
        raise ValueError(f"panel width must be 1..{GRID_WIDTH}, not {width}")
    return core.GridPos(h=height, w=width, x=0, y=0)


def timeseries(
    title: str,
    *targets: PromTarget,
    unit: str = "short",
    description: str = "",
    width: int = 12,
    height: int = DEFAULT_HEIGHT,
    stacked: bool = False,
    steps: list[dict[str, Any]] | None = None,
) -> core.TimeSeries:
    panel = core.TimeSeries(
        title=title,
        description=description,
        dataSource=PROMETHEUS_DATASOURCE,
        targets=_with_ref_ids(targets),
        unit=unit,
        gridPos=_size(width, height),
        fillOpacity=25 if stacked else 10,
        stacking={"mode": "normal", "group": "A"} if stacked else {},
        tooltipMode="multi",
        legendDisplayMode="table",
        legendCalcs=["mean", "max", "lastNotNull"],
        thresholds=steps or [],
        thresholdsStyleMode="line" if steps else "off",
        valueMin=0,
        maxDataPoints=None,  # grafanalib's 100 points make a 6-hour graph coarse; Grafana picks by width
    )
    return _remember(panel, _caller())


def stat(
    title: str,
    *targets: PromTarget,
    unit: str = "short",
    description: str = "",
    width: int = 6,
    height: int = 4,
    steps: list[dict[str, Any]] | None = None,
    decimals: int | None = None,
) -> core.Stat:
    panel = core.Stat(
        title=title,
        description=description,
        dataSource=PROMETHEUS_DATASOURCE,
        targets=_with_ref_ids(targets),
        format=unit,
        gridPos=_size(width, height),
        reduceCalc="lastNotNull",
        colorMode="value",
        graphMode="area",
        noValue="no data",
        decimals=decimals,
        thresholds=steps or thresholds("green"),
        color={"mode": "thresholds"},
        maxDataPoints=None,
    )
    return _remember(panel, _caller())


def table(
    title: str,
    *targets: PromTarget,
    columns: Sequence[str],
    description: str = "",
    width: int = 24,
    height: int = DEFAULT_HEIGHT,
    decimals: int = 3,
) -> core.Table:
    """Instant queries merged into one row per label set; ``columns`` names each query's value
    column (``Value #A``...) in query order. Grafana 11's schema accepts no per-column unit
    (override values must be objects), so queries scale their values and columns name the unit."""
    refs = _with_ref_ids(targets)
    if len(columns) != len(refs):
        raise ValueError(f"table {title!r}: {len(refs)} queries but {len(columns)} column names")
    rename = {f"Value #{target.refId}": name for target, name in zip(refs, columns, strict=True)}
    panel = core.Table(
        title=title,
        description=description,
        dataSource=PROMETHEUS_DATASOURCE,
        targets=refs,
        gridPos=_size(width, height),
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": rename}},
        ],
        sortBy=[core.TableSortByField(displayName=columns[0], desc=True)],
        maxDataPoints=None,
        extraJson={"fieldConfig": {"defaults": {"decimals": decimals}}},
    )
    return _remember(panel, _caller())


@attr.s
class Heatmap(core.Panel):
    """The heatmap panel of Grafana 9+. grafanalib 0.7.1 only has the pre-9 one (cards,
    xBucketSize...), which Grafana migrates on load and the 11.6 schema refuses."""

    unit: str = attr.ib(default="s", validator=instance_of(str))
    exemplarColor: str = attr.ib(default="rgba(255,0,255,0.7)", validator=instance_of(str))

    def to_json_data(self) -> dict[str, Any]:
        return self.panel_json(
            {
                "type": core.HEATMAP_TYPE,
                "fieldConfig": {
                    "defaults": {"custom": {"scaleDistribution": {"type": "linear"}}},
                    "overrides": [],
                },
                "options": {
                    "calculate": False,
                    "cellGap": 1,
                    "color": {
                        "mode": "scheme",
                        "scheme": "Spectral",
                        "scale": "exponential",
                        "exponent": 0.5,
                        "steps": 64,
                        "reverse": False,
                    },
                    "exemplars": {"color": self.exemplarColor},
                    "filterValues": {"le": 1e-9},
                    "legend": {"show": True},
                    "rowsFrame": {"layout": "auto"},
                    "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
                    "yAxis": {"axisPlacement": "left", "unit": self.unit},
                },
            }
        )


def heatmap(
    title: str,
    spec: MetricSpec,
    *matchers: promql.Match | Iterable[promql.Match],
    unit: str = "s",
    description: str = "",
    width: int = 12,
    height: int = DEFAULT_HEIGHT,
) -> Heatmap:
    """A histogram's buckets over time, with exemplars: each dot is a sampled request whose
    trace id exemplar label opens the trace in Jaeger."""
    buckets = promql.sum_by(promql.rate(spec, *matchers, part="bucket", function="increase"), HISTOGRAM_BUCKET_LABEL)
    target = PromTarget(
        expr=buckets, legendFormat=legend(HISTOGRAM_BUCKET_LABEL), format="heatmap", exemplar=True, refId="A"
    )
    # Exemplar dots open their trace through the Prometheus data source's exemplar link
    # (exemplarTraceIdDestinations on the label below), which the Helm chart provisions.
    exemplars = f"Dots are exemplars: sampled requests; their {EXEMPLAR_TRACE_ID} label opens the trace in Jaeger."
    panel = Heatmap(
        title=title,
        description=f"{description} {exemplars}".strip(),
        dataSource=PROMETHEUS_DATASOURCE,
        targets=[target],
        unit=unit,
        gridPos=_size(width, height),
        maxDataPoints=None,
    )
    return _remember(panel, _caller())


# --- Rows, variables and the dashboard -------------------------------------


@dataclass
class Row:
    title: str
    panels: list[core.Panel]
    origin: Origin = field(default_factory=lambda: Origin("<unknown>", 0))


def row(title: str, *panels: core.Panel) -> Row:
    return Row(title, list(panels), _caller())


def datasource_variable() -> core.Template:
    variable = core.Template(name=DATASOURCE_VARIABLE, label="Prometheus", query=PROMETHEUS_PLUGIN, type="datasource")
    return _remember(variable, _caller())


def label_variable(
    name: str,
    spec: MetricSpec | str,
    *matchers: promql.Match | Iterable[promql.Match],
    label: str | None = None,
    title: str | None = None,
) -> core.Template:
    """A multi-value variable listing the values of a label (``name`` by default) on ``spec``."""
    variable = core.Template(
        name=name,
        label=title or name.capitalize(),
        query=promql.label_values(spec, label or name, *matchers),
        dataSource=PROMETHEUS_DATASOURCE,
        includeAll=True,
        multi=True,
        allValue=".*",
        refresh=core.REFRESH_ON_TIME_RANGE_CHANGE,
        sort=core.SORT_ALPHA_ASC,
    )
    return _remember(variable, _caller())


def service_variables(spec: MetricSpec) -> list[core.Template]:
    """Data source, namespace and service, the services being those that report ``spec``."""
    return [
        datasource_variable(),
        label_variable(NAMESPACE, spec),
        label_variable(SERVICE, spec, promql.NAMESPACE_FILTER),
    ]


def namespace_variables(spec: MetricSpec) -> list[core.Template]:
    return [datasource_variable(), label_variable(NAMESPACE, spec)]


def _layout(rows: Sequence[Row]) -> list[core.Panel]:
    """Stacks rows, flows each row's panels left to right, and numbers every panel."""
    laid: list[core.Panel] = []
    y = 0
    next_id = 1
    for group in rows:
        header = _remember(
            core.RowPanel(title=group.title, gridPos=core.GridPos(h=ROW_HEIGHT, w=GRID_WIDTH, x=0, y=y)), group.origin
        )
        header.id = next_id
        next_id += 1
        laid.append(header)
        y += ROW_HEIGHT
        x = 0
        line_height = 0
        for panel in group.panels:
            size = panel.gridPos
            if x + size.w > GRID_WIDTH:
                y += line_height
                x, line_height = 0, 0
            panel.gridPos = core.GridPos(h=size.h, w=size.w, x=x, y=y)
            panel.id = next_id
            next_id += 1
            laid.append(panel)
            x += size.w
            line_height = max(line_height, size.h)
        y += line_height
    return laid


def dashboard(
    *,
    uid: str,
    title: str,
    description: str,
    rows: Sequence[Row],
    variables: Sequence[core.Template] = (),
    tags: Sequence[str] = (),
    time_from: str = "now-6h",
) -> core.Dashboard:
    """A dashboard with the house defaults: shared crosshair, links to the other meshlens
    dashboards (by tag, keeping time and variables), read-only in Grafana (it is generated)."""
    board = core.Dashboard(
        title=title,
        uid=uid,
        description=description,
        tags=[HOUSE_TAG, *tags],
        panels=_layout(rows),
        templating=core.Templating(list=list(variables)),
        time=core.Time(time_from, "now"),
        timezone="browser",
        refresh="30s",
        editable=False,
        graphTooltip=core.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        links=[
            core.DashboardLink(
                title="meshlens", type="dashboards", tags=[HOUSE_TAG], asDropdown=True, includeVars=True, keepTime=True
            ),
        ],
    )
    return _remember(board, _caller())
