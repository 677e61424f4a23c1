"""grafanalib 0.7.1 output made into a Grafana 11.6 dashboard, and checked against its schema.

grafanalib writes schemaVersion 12 with Grafana 5-era keys (``rows``, ``style``, ``span``,
``editable`` on panels...), ``null`` for every unset field, and template variables with
tag-query keys that Grafana dropped long ago. The 11.6 schema is strict (no extra keys, no
nulls), so this module removes exactly those keys, each named below with what wrote it, and
fails on anything else it does not expect: an unknown key is a schema error, not something
silently pruned. The house library adds what grafanalib lacks (a modern heatmap, Prometheus
targets with exemplars); see ``meshlens_dashboards.panels``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from grafanalib._gen import DashboardEncoder

from meshlens_bundle.schemas import GRAFANA_DASHBOARD_SCHEMA, require_schema

SCHEMA_VERSION = 41
"""The dashboard JSON model version of Grafana 11.6 (the schema's default)."""

# Keys grafanalib writes that Grafana 11 no longer has.
_LEGACY_DASHBOARD_KEYS = ("__inputs", "hideControls", "rows", "sharedCrosshair", "style")
_LEGACY_PANEL_KEYS = ("editable", "error", "height", "minSpan", "span")
_LEGACY_TABLE_KEYS = ("color", "columns", "fontSize", "mappings")  # Table's Grafana 7 styling
_ROW_KEYS = ("type", "collapsed", "title", "datasource", "gridPos", "id", "panels", "repeat")
_LEGACY_VARIABLE_KEYS = ("useTags", "tagsQuery", "tagValuesQuery")
_LEGACY_TIMEPICKER_KEYS = ("time_options",)


class DashboardSchemaError(ValueError):
    """The dashboard does not validate; ``problems`` are (JSON path, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{path}: {message}" for path, message in problems))
        self.problems = problems


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_nulls(item) for item in value]
    return value


def _without(mapping: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: value for key, value in mapping.items() if key not in keys}


def _modern_panel(panel: dict[str, Any]) -> dict[str, Any]:
    if panel.get("type") == "row":
        # grafanalib's RowPanel carries every Panel field; a row has only these.
        return {key: value for key, value in panel.items() if key in _ROW_KEYS}
    panel = _without(panel, _LEGACY_PANEL_KEYS)
    if panel.get("type") == "table":
        panel = _without(panel, _LEGACY_TABLE_KEYS)
    return panel


def _modern_variable(variable: dict[str, Any]) -> dict[str, Any]:
    variable = _without(variable, _LEGACY_VARIABLE_KEYS)
    current = variable.get("current")
    if isinstance(current, dict):
        current = _without(current, ("tags",))
        # grafanalib writes an empty "current" when there is no default; Grafana picks one.
        if "value" not in current:
            variable = _without(variable, ("current",))
        else:
            variable["current"] = current
    return variable


def to_grafana_json(dashboard: Any) -> dict[str, Any]:
    """The dashboard as a Grafana 11.6 JSON model (plain dicts, no nulls)."""
    raw = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    if raw.get("rows"):
        raise DashboardSchemaError([("rows", "legacy rows are not supported: use panels.row(...) instead")])
    model: dict[str, Any] = _drop_nulls(_without(raw, _LEGACY_DASHBOARD_KEYS))
    model["schemaVersion"] = SCHEMA_VERSION
    if "timepicker" in model:
        model["timepicker"] = _without(model["timepicker"], _LEGACY_TIMEPICKER_KEYS)
    model["panels"] = [_modern_panel(panel) for panel in model.get("panels", [])]
    templating = model.get("templating", {})
    templating["list"] = [_modern_variable(variable) for variable in templating.get("list", [])]
    return model


@cache
def _validator(schema_path: Path) -> jsonschema.Draft7Validator:
    schema = json.loads(schema_path.read_text())
    return jsonschema.Draft7Validator(schema)


def schema_path() -> Path:
    """The Grafana 11.6 dashboard schema; raises SchemasMissingError when it is absent."""
    return require_schema(GRAFANA_DASHBOARD_SCHEMA)


def schema_problems(model: dict[str, Any], schema: Path) -> list[tuple[str, str]]:
    """Every way the model breaks the schema, deepest first, as (JSON path, message)."""
    validator = _validator(schema)
    problems: list[tuple[str, str]] = []
    for error in validator.iter_errors(model):
        leaves = _leaf_errors(error)
        for leaf in leaves:
            path = "/".join(str(part) for part in leaf.absolute_path) or "(top)"
            problems.append((path, leaf.message))
    return sorted(set(problems))


def _leaf_errors(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """A oneOf failure says little ("is not valid under any of the given schemas"); the errors
    against the branch that came closest say what to change."""
    if error.validator == "oneOf" and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        # best_match picks one leaf; report every leaf of the same branch.
        branch = [sub for sub in error.context if sub.schema_path[0] == best.schema_path[0]]
        return [leaf for sub in branch for leaf in _leaf_errors(sub)]
    return [error]
