"""Dashboards: the house library, the shipped *.dashboard.py files, and the Grafana 11.6 schema."""

from __future__ import annotations

import json
import re
import shutil
import tokenize
from pathlib import Path

import pytest
import yaml
from grafanalib import core

from meshlens import catalogue
from meshlens.catalogue import CATALOGUE
from meshlens.instruments import EXEMPLAR_TRACE_ID
from meshlens_alerts import generate
from meshlens_bundle import build, grafana
from meshlens_bundle import dashboards as loader
from meshlens_bundle import promql as promql_check
from meshlens_bundle.problems import Problem
from meshlens_bundle.schemas import SchemasMissingError, missing_is_failure
from meshlens_dashboards import panels, promql

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(build.DEFAULT_DASHBOARDS.glob("*.dashboard.py"))
CHART_DASHBOARDS = ROOT / "helm" / "meshlens" / "files" / "dashboards"
EXPECTED = {
    "meshlens-service-overview", "meshlens-dependencies", "meshlens-databases", "meshlens-kafka", "meshlens-temporal",
    "meshlens-python-runtime", "meshlens-istio-mesh", "meshlens-collector", "meshlens-slos",
}


def load(path: Path) -> loader.LoadedDashboard:
    problems: list[Problem] = []
    board = loader.load(path, loader.Shower(path.parent, "dashboards"), problems)
    assert board is not None and not problems, problems
    return board


@pytest.fixture(scope="module")
def shipped() -> list[loader.LoadedDashboard]:
    return [load(path) for path in SHIPPED]


@pytest.fixture(scope="module")
def schema() -> Path:
    try:
        return grafana.schema_path()
    except SchemasMissingError as exc:
        if missing_is_failure():
            raise
        pytest.skip(f"the Grafana dashboard schema is absent: {exc}")


# --- The shipped set -----------------------------------------------------------


def test_the_shipped_set_is_complete(shipped):
    assert {board.uid for board in shipped} == EXPECTED


def test_every_shipped_dashboard_passes_the_grafana_schema(shipped, schema):
    for board in shipped:
        assert grafana.schema_problems(board.model, schema) == [], board.source


def test_every_generated_dashboard_in_the_chart_passes_the_grafana_schema(schema):
    files = sorted(CHART_DASHBOARDS.glob("*.json"))
    assert {f.stem for f in files} == EXPECTED
    for path in files:
        assert grafana.schema_problems(json.loads(path.read_text()), schema) == [], path.name


def test_every_query_names_only_catalogue_metrics_and_labels(shipped):
    """The build's own validator, on the shipped dashboards: names, then promtool's parser."""
    names = promql_check.Names(generate.build(build.DEFAULT_ALERTS, "alerts").recorded)
    located = [promql_check.Located(q.file, q.line, q.subject, q.expr, q.variable_query)
               for board in shipped for q in board.queries]
    assert len(located) > 100
    problems = [p for item in located for p in promql_check.check_names(item, names)]
    assert problems == []
    if shutil.which("promtool"):
        assert promql_check.check_parse(located, promql_check.promtool_path()) == []


def test_no_metric_name_is_typed_by_hand_in_dashboards_or_alerts_code():
    """Queries come from the catalogue's MetricSpecs; a metric name in a string literal of the
    dashboards' or alerts' Python would bypass it (YAML may name metrics: the build checks them)."""
    # Every catalogue name has an underscore but `up`, an English word too: only `up{`/`up[` count.
    names = {name for spec in CATALOGUE for name in spec.series_names() if "_" in name}
    bare = [name for spec in CATALOGUE for name in spec.series_names() if "_" not in name]
    offenders = []
    for path in [*sorted((ROOT / "dashboards").glob("*.py")), *sorted((ROOT / "alerts").glob("*.py"))]:
        with path.open("rb") as stream:
            for token in tokenize.tokenize(stream.readline):
                if token.type == tokenize.STRING:
                    words = set(token.string.replace('"', " ").replace("'", " ").replace("{", " ").split())
                    offenders += [f"{path.name}:{token.start[0]}: {name}" for name in names & words]
                    offenders += [f"{path.name}:{token.start[0]}: {name}" for name in bare
                                  if re.search(rf"\b{name}\s*[{{\[]", token.string)]
    assert offenders == []


def test_panels_are_laid_out_on_the_grid_without_overlap(shipped):
    for board in shipped:
        cells: set[tuple[int, int]] = set()
        ids = [panel["id"] for panel in board.model["panels"]]
        assert len(ids) == len(set(ids)), board.uid
        for panel in board.model["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= panels.GRID_WIDTH
            covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                       for y in range(grid["y"], grid["y"] + grid["h"])}
            assert not covered & cells, (board.uid, panel["title"])
            cells |= covered
        assert "rows" not in board.model
        assert board.model["schemaVersion"] == grafana.SCHEMA_VERSION


def test_datasources_are_references_to_the_datasource_variable(shipped):
    for board in shipped:
        for panel in board.model["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == panels.PROMETHEUS_DATASOURCE
            for target in panel["targets"]:
                assert target["datasource"] == panels.PROMETHEUS_DATASOURCE
        variables = {v["name"]: v for v in board.model["templating"]["list"]}
        assert variables[panels.DATASOURCE_VARIABLE]["type"] == "datasource"


def test_service_dashboards_have_namespace_and_service_variables(shipped):
    for board in shipped:
        names = [v["name"] for v in board.model["templating"]["list"]]
        assert names[0] == panels.DATASOURCE_VARIABLE
        if board.uid not in ("meshlens-istio-mesh", "meshlens-collector"):
            assert catalogue.SERVICE in names, board.uid
        assert catalogue.NAMESPACE in names, board.uid


def test_the_latency_heatmap_shows_exemplars_that_link_to_traces(shipped):
    overview = next(board for board in shipped if board.uid == "meshlens-service-overview")
    heatmap = next(panel for panel in overview.model["panels"] if panel["type"] == "heatmap")
    assert heatmap["targets"][0]["exemplar"] is True
    assert heatmap["targets"][0]["format"] == "heatmap"
    assert heatmap["options"]["calculate"] is False
    assert EXEMPLAR_TRACE_ID in heatmap["description"]


def test_the_chart_links_exemplars_by_the_label_the_runtime_writes():
    """Grafana opens an exemplar's trace through the Prometheus data source's
    exemplarTraceIdDestinations, which the chart provisions from this value."""
    values = yaml.safe_load((ROOT / "helm" / "meshlens" / "values.yaml").read_text())
    assert values["grafana"]["datasources"]["prometheus"]["exemplarTraceIdLabel"] == EXEMPLAR_TRACE_ID


# --- The house library ---------------------------------------------------------


def test_a_panel_remembers_the_line_that_built_it(tmp_path):
    source = tmp_path / "lines.dashboard.py"
    source.write_text(
        "from meshlens import catalogue as c\n"
        "from meshlens_dashboards import panels as p, promql as q\n"
        "\n"
        "dashboard = p.dashboard(uid='lines', title='Lines', description='', rows=[p.row('r',\n"
        "    p.timeseries('first', p.query(q.sum_by(q.rate(c.HTTP_SERVER_REQUEST_DURATION)))),\n"
        "    p.stat('second', p.query('1')),\n"
        ")])\n"
    )
    board = load(source)
    assert [(q.subject, q.line) for q in board.queries] == [("panel 'first' query A", 5), ("panel 'second' query A", 6)]
    assert board.line == 4


def test_queries_are_built_from_the_catalogue():
    spec = catalogue.HTTP_SERVER_REQUEST_DURATION
    assert promql.rate(spec, promql.eq(catalogue.HTTP_ROUTE, "/x")) == (
        'rate(http_server_request_duration_seconds_count{http_route="/x"}[$__rate_interval])'
    )
    assert promql.quantile(0.99, spec, by=(catalogue.SERVICE,), window="5m") == (
        "histogram_quantile(0.99, sum by (le, service) (rate(http_server_request_duration_seconds_bucket[5m])))"
    )
    assert promql.label_values(spec, catalogue.SERVICE) == (
        "label_values(http_server_request_duration_seconds_count, service)"
    )
    with pytest.raises(ValueError, match="gauge"):
        promql.rate(catalogue.PROCESS_WORKERS)
    with pytest.raises(ValueError, match="histogram"):
        promql.series(spec)
    with pytest.raises(ValueError, match="no 'bucket' part"):
        promql.series(catalogue.UP, "bucket")


def test_legacy_rows_are_refused():
    board = core.Dashboard(title="old", uid="old", rows=[core.Row(panels=[])])
    with pytest.raises(grafana.DashboardSchemaError, match="legacy rows"):
        grafana.to_grafana_json(board)


def test_grafanalibs_own_output_fails_the_schema_and_the_fix_up_makes_it_pass(schema):
    """Why bundle/grafana.py exists: grafanalib 0.7.1's JSON for a plain time series panel breaks
    the 11.6 schema; after the fix-up it passes."""
    board = core.Dashboard(title="plain", uid="plain", panels=[
        core.TimeSeries(title="t", targets=[core.Target(expr="up", refId="A")],
                        gridPos=core.GridPos(h=8, w=12, x=0, y=0), id=1),
    ])
    raw = json.loads(json.dumps(board.to_json_data(), cls=grafana.DashboardEncoder))
    assert grafana.schema_problems(raw, schema)
    assert grafana.schema_problems(grafana.to_grafana_json(board), schema) == []


def test_an_uncaught_exception_in_a_dashboard_file_names_its_line(tmp_path):
    source = tmp_path / "raises.dashboard.py"
    source.write_text("from meshlens import catalogue as c\n\nVALUE = c.NO_SUCH_METRIC\n")
    problems: list[Problem] = []
    assert loader.load(source, loader.Shower(tmp_path, "mine"), problems) is None
    assert problems[0].file == "mine/raises.dashboard.py" and problems[0].line == 3
    assert "AttributeError" in problems[0].message and "NO_SUCH_METRIC" in problems[0].message


def test_a_file_without_a_dashboard_is_refused(tmp_path):
    source = tmp_path / "empty.dashboard.py"
    source.write_text("x = 1\n")
    problems: list[Problem] = []
    assert loader.load(source, loader.Shower(tmp_path, "mine"), problems) is None
    assert "binds no grafanalib Dashboard named `dashboard`" in problems[0].message


def test_output_is_deterministic(shipped):
    from meshlens_bundle import output

    for path, board in zip(SHIPPED, shipped, strict=True):
        again = load(path)
        assert output.dashboard_text(board.model, board.source) == output.dashboard_text(again.model, again.source)


def test_the_fix_up_layer_stays_small():
    """The report quotes its size: keep the measurement honest."""
    code = [line for line in (ROOT / "bundle" / "grafana.py").read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]
    assert len(code) < 150
