"""The chart's values, schema and metadata, without Helm: documented, strict, and tied to their one source.

Where the chart must repeat a value that the Python code owns (a port, the exemplar label, the
package version), a test here pins it to that source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from meshlens._version import __version__
from meshlens.instruments import EXEMPLAR_TRACE_ID
from meshlens.settings import DEFAULT_METRICS_PORT, DEFAULT_OTLP_GRPC_ENDPOINT, DEFAULT_OTLP_HTTP_ENDPOINT
from meshlens_bundle.schemas import OTELCOL_CONTRIB_MANIFEST, SchemasMissingError, missing_is_failure, require_schema

CHART = Path(__file__).resolve().parent.parent / "helm" / "meshlens"
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# The maps whose keys the user chooses (label and annotation names): typed, not closed.
OPEN_MAPS = {"#/$defs/labels", "#/$defs/annotations", "#/$defs/nodeSelector"}


def test_chart_version_and_app_version_are_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == __version__
    assert chart["appVersion"] == __version__


def test_values_the_runtime_owns_are_pinned() -> None:
    assert VALUES["ports"]["otlpGrpc"] == urlsplit(DEFAULT_OTLP_GRPC_ENDPOINT).port
    assert VALUES["ports"]["otlpHttp"] == urlsplit(DEFAULT_OTLP_HTTP_ENDPOINT).port
    assert VALUES["prometheusOperator"]["podMonitor"]["metricsPort"] == DEFAULT_METRICS_PORT
    assert VALUES["grafana"]["datasources"]["prometheus"]["exemplarTraceIdLabel"] == EXEMPLAR_TRACE_ID


def test_collector_image_is_the_release_the_configs_are_checked_against() -> None:
    try:
        manifest = require_schema(OTELCOL_CONTRIB_MANIFEST)
    except SchemasMissingError as missing:
        if missing_is_failure():
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    release = yaml.safe_load(manifest.read_text())["dist"]["version"]
    assert VALUES["collector"]["image"]["repository"] == "otel/opentelemetry-collector-contrib"
    assert VALUES["collector"]["image"]["tag"] == release


def test_every_value_is_documented_on_the_line_above() -> None:
    undocumented = []
    lines = VALUES_TEXT.splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z][\w.-]*:", line):
            previous = lines[number - 1].strip() if number else ""
            if not previous.startswith("## "):
                undocumented.append(f"values.yaml:{number + 1}: {line.strip()}")
    assert not undocumented, "keys without a `##` comment above:\n" + "\n".join(undocumented)


def _walk(node: Any, where: str = "#") -> Any:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{where}/{index}")


def test_schema_is_strict() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    problems = []
    for where, node in _walk(SCHEMA):
        if not isinstance(node, dict) or node.get("type") != "object":
            continue
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                problems.append(f"{where}: additionalProperties is not false")
        elif where not in OPEN_MAPS:
            problems.append(f"{where}: an object without properties")
    for where, node in _walk(SCHEMA):
        # Every property names its type (or enum, const, reference): nothing is accepted by omission.
        # The cross-field rules under allOf only narrow what the properties already typed.
        is_property = isinstance(node, dict) and "/properties/" in where and not where.endswith("/properties")
        if is_property and not where.startswith("#/allOf") and not {"type", "enum", "const", "$ref", "anyOf"} & set(node):
            problems.append(f"{where}: no type")
    assert not problems, "\n".join(problems)


def test_defaults_validate_and_schema_and_values_have_the_same_keys() -> None:
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)  # unknown keys fail here (additionalProperties)
    resolver_root = SCHEMA

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            node = resolver_root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
        return node

    def compare(values: Any, schema: dict[str, Any], where: str) -> None:
        schema = resolve(schema)
        if "properties" in schema:
            assert set(values) == set(schema["properties"]), where
            # Required, all of them: each setting's default lives in values.yaml, not in a template.
            assert set(schema.get("required", [])) == set(schema["properties"]), where
            for key, value in values.items():
                compare(value, schema["properties"][key], f"{where}.{key}")

    compare(VALUES, SCHEMA, "values")


BAD = {
    "string replica count": ({"collector": {"gateway": {"replicas": "3"}}}, "'3' is not of type 'integer'"),
    "sampling percentage of 250": ({"collector": {"tailSampling": {"probabilisticPercentage": 250}}},
                                   "250 is greater than the maximum of 100"),
    "unknown key": ({"colector": {}}, "Additional properties are not allowed ('colector' was unexpected)"),
    "root user": ({"podSecurity": {"runAsUser": 0}}, "0 is less than the minimum of 1"),
    "resources without limits": ({"jaeger": {"resources": {"limits": None}}}, "None is not of type 'object'"),
    "a digest that is not one": ({"jaeger": {"image": {"digest": "latest"}}}, "does not match"),
    "an env var with a literal and a reference": (
        {"collector": {"extraEnv": [{"name": "TOKEN", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}},
        "is valid under each of",
    ),
}  # fmt: skip


def _merged(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: _merged(base.get(key), value) for key, value in override.items()}}
    return override


@pytest.mark.parametrize("case", list(BAD))
def test_schema_rejects(case: str) -> None:
    override, message = BAD[case]
    errors = [error.message for error in jsonschema.Draft7Validator(SCHEMA).iter_errors(_merged(VALUES, override))]
    assert any(message in error for error in errors), errors
