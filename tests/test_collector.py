"""Collector pipelines as code (meshlens_collector): structure, rules and the files the chart reads.

These need no Helm: the configs as the chart renders them are checked in test_helm.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshlens_bundle.schemas import OTELCOL_CONTRIB_MANIFEST, SchemasMissingError, missing_is_failure, require_schema
from meshlens_collector import generated_files
from meshlens_collector.__main__ import main
from meshlens_collector.checks import CoreSchemas, check_components, check_pipelines, env_references
from meshlens_collector.components import Component, Kind, Pipeline, assemble, module_candidates
from meshlens_collector.files import CHART_FILES, SOURCES
from meshlens_collector.pipelines import NODE_NAME_ENV, POD_IP_ENV, agent, gateway, jaeger
from meshlens_collector.templating import Endpoint, Helper, Value, placeholders, to_template

CHART = CHART_FILES.parent
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CONFIGS = {path: build() for path, (_function, build) in SOURCES.items()}
COLLECTOR_CONFIGS = {path: config for path, config in CONFIGS.items() if path.startswith("collector/")}


def _schema(relative: Path) -> Path:
    try:
        return require_schema(relative)
    except SchemasMissingError as missing:
        if missing_is_failure():
            pytest.fail(f"{missing} (CI=true: required)")
        pytest.skip(str(missing))
        raise


def _value(path: str) -> Any:
    node: Any = VALUES
    for key in path.split("."):
        assert isinstance(node, dict) and key in node, f"{path}: no {key!r} in values.yaml"
        node = node[key]
    return node


def test_generated_files_are_deterministic_and_marked() -> None:
    first, second = generated_files(), generated_files()
    assert first == second
    assert set(first) == {"collector/gateway.yaml", "collector/agent.yaml", "jaeger/memory.yaml", "jaeger/badger.yaml"}
    for path, text in first.items():
        head = text.splitlines()[0]
        assert head.startswith("# DO NOT EDIT: generated from collector/pipelines.py"), path
        assert "`meshlens build`" in head, path
        assert text.endswith("\n") and "\t" not in text, path


def test_the_chart_has_the_current_files() -> None:
    assert main(["--check"]) == 0, "run `python -m meshlens_collector --write` (or meshlens build)"


def test_write_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check", "--files-dir", str(tmp_path)]) == 1
    assert main(["--write", "--files-dir", str(tmp_path)]) == 0
    assert main(["--check", "--files-dir", str(tmp_path)]) == 0
    (tmp_path / "collector" / "gateway.yaml").write_text("# edited by hand\n")
    capsys.readouterr()
    assert main(["--check", "--files-dir", str(tmp_path)]) == 1
    assert "collector/gateway.yaml" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.partial"))


def test_placeholders_point_at_values_and_chart_helpers() -> None:
    helpers = set(re.findall(r'define "([^"]+)"', (CHART / "templates" / "_helpers.tpl").read_text()))
    for path, config in CONFIGS.items():
        for placeholder in placeholders(config):
            if isinstance(placeholder, Helper):
                assert placeholder.name in helpers, f"{path}: helper {placeholder.name} is not defined"
            elif isinstance(placeholder, Endpoint):
                assert isinstance(_value(placeholder.port.path), int), path
            else:
                _value(placeholder.path)


def _fill(text: str) -> Any:
    """The YAML of a generated file with each action replaced the way Helm would, helpers by a stand-in."""
    text = re.sub(r"\{\{ \.Values\.([\w.]+)( \| toString)? \| toJson \}\}",
                  lambda m: json.dumps(str(_value(m[1])) if m[2] else _value(m[1])), text)  # fmt: skip
    text = re.sub(r'\{\{ printf "%s:%d" "([^"]+)" \(int \.Values\.([\w.]+)\) \| toJson \}\}',
                  lambda m: json.dumps(f"{m[1]}:{_value(m[2])}"), text)  # fmt: skip
    text = re.sub(r'\{\{ include "([\w.]+)" \. \}\}', lambda m: json.dumps(f"<{m[1]}>"), text)
    assert "{{" not in text, text
    return yaml.safe_load(text)


def test_generated_text_is_yaml_once_filled() -> None:
    for path, text in generated_files().items():
        filled = _fill(text)
        assert list(filled) == list(CONFIGS[path]), path
        assert check_pipelines(filled) == [], path
    gateway_filled = _fill(generated_files()["collector/gateway.yaml"])
    policies = gateway_filled["processors"]["tail_sampling"]["policies"]
    assert policies[2]["probabilistic"]["sampling_percentage"] == VALUES["collector"]["tailSampling"]["probabilisticPercentage"]
    assert gateway_filled["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == f"${{env:{POD_IP_ENV}}}:4317"
    agent_filled = _fill(generated_files()["collector/agent.yaml"])
    assert agent_filled["exporters"]["loadbalancing/gateway"]["resolver"]["dns"]["port"] == "4317"  # a string there


@pytest.mark.parametrize("path", list(COLLECTOR_CONFIGS))
def test_pipelines_follow_the_rules(path: str) -> None:
    config = COLLECTOR_CONFIGS[path]
    assert check_pipelines(config) == []
    (traces,) = config["service"]["pipelines"].values()
    assert traces["processors"][0] == "memory_limiter" and traces["processors"][-1] == "batch"
    assert traces["processors"][1] == "k8sattributes"


def test_tail_sampling_keeps_errors_slow_traces_and_a_share() -> None:
    processors = gateway()["processors"]
    assert "tail_sampling" in processors and "tail_sampling" not in agent()["processors"]
    policies = {policy["type"]: policy for policy in processors["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"] == {"status_codes": ["ERROR"]}
    assert policies["latency"]["latency"]["threshold_ms"] == Value("collector.tailSampling.slowTraceThresholdMs")
    assert set(policies) == {"status_code", "latency", "probabilistic"}


def test_configs_use_only_the_environment_the_chart_sets() -> None:
    # The chart's pod templates set these; test_helm checks every rendered ${env:...} is set.
    assert env_references(gateway()) == {POD_IP_ENV}
    assert env_references(agent()) == {POD_IP_ENV}
    # k8sattributes reads this one itself, by name; test_helm checks the DaemonSet sets it.
    assert agent()["processors"]["k8sattributes"]["filter"] == {"node_from_env_var": NODE_NAME_ENV}


@pytest.mark.parametrize("path", list(COLLECTOR_CONFIGS))
def test_components_are_in_the_contrib_distribution(path: str) -> None:
    assert check_components(COLLECTOR_CONFIGS[path], _schema(OTELCOL_CONTRIB_MANIFEST)) == []


def test_a_component_outside_the_distribution_is_reported() -> None:
    config = {"exporters": {"jaeger": {}, "otlp_grpc/x": {}}, "processors": {"memory_limiter": {}},
              "extensions": {"file_storage": {}}}  # fmt: skip
    problems = check_components(config, _schema(OTELCOL_CONTRIB_MANIFEST))
    assert problems == ["exporter jaeger: no module jaegerexporter or jaeger in otelcol-contrib-manifest.yaml"]


def test_module_names() -> None:
    assert module_candidates(Kind.PROCESSOR, "memory_limiter") == ("memorylimiterprocessor", "memorylimiter")
    assert module_candidates(Kind.EXPORTER, "otlp_grpc") == ("otlpexporter",)
    assert module_candidates(Kind.EXPORTER, "otlp_http") == ("otlphttpexporter",)
    assert "filestorage" in module_candidates(Kind.EXTENSION, "file_storage")


def test_pipeline_checks_report_each_problem() -> None:
    config = {
        "receivers": {"otlp": {}},
        "processors": {"batch": {}, "memory_limiter": {}, "unused": {}},
        "exporters": {"otlp_grpc": {}, "otlp_http": {}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["batch", "memory_limiter", "missing"],
                                     "exporters": ["otlp_grpc"]}},
        },
    }  # fmt: skip
    assert check_pipelines(config) == [
        "pipeline traces: processor missing is not defined in processors",
        "pipeline traces: the first processor is batch, not memory_limiter",
        "pipeline traces: the last processor is missing, not batch",
        "exporter otlp_http is defined but no pipeline uses it",
        "processor unused is defined but no pipeline uses it",
        "service.extensions names health_check, which is not defined in extensions",
    ]


def test_a_pipeline_is_refused_when_out_of_order() -> None:
    otlp = Component(Kind.RECEIVER, "otlp")
    batch, limiter = Component(Kind.PROCESSOR, "batch"), Component(Kind.PROCESSOR, "memory_limiter")
    exporter = Component(Kind.EXPORTER, "otlp_grpc")
    with pytest.raises(ValueError, match="must start with memory_limiter and end with batch"):
        Pipeline("traces", (otlp,), (batch, limiter), (exporter,))
    with pytest.raises(ValueError, match="are not processors"):
        Pipeline("traces", (otlp,), (limiter, exporter, batch), (exporter,))
    conflicting = Pipeline("logs", (Component(Kind.RECEIVER, "otlp", {"x": 1}),), (limiter, batch), (exporter,))
    with pytest.raises(ValueError, match="configured twice"):
        assemble((Pipeline("traces", (otlp,), (limiter, batch), (exporter,)), conflicting), (), {})


def test_core_schemas_check_the_core_components() -> None:
    core = CoreSchemas(_schema(Path("otelcol/core-config-schemas")))
    problems, unchecked = core.check(gateway())
    # Placeholders are not values yet: here only the keys matter, so keep the unknown-key errors.
    assert [p for p in problems if "Additional properties" in p] == []
    assert sorted(unchecked) == ["extension health_check", "processor k8sattributes", "processor tail_sampling"]
    broken = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "x:1", "max_recv_msg_size": 4}}}},
        "processors": {"batch": {"timeout": 5}},
        "exporters": {"otlp_grpc": {"endpoint": "x:1", "headers": {"a": "b"}, "tls": {"insecure": "yes"}}},
    }
    problems, _unchecked = core.check(broken)
    assert problems == [
        "receiver otlp: protocols.grpc: Additional properties are not allowed ('max_recv_msg_size' was unexpected)",
        "processor batch: timeout: 5 is not of type 'string'",
        "exporter otlp_grpc: headers: {'a': 'b'} is not of type 'array'",
        "exporter otlp_grpc: tls.insecure: 'yes' is not of type 'boolean'",
    ]


def test_jaeger_config_has_one_store_for_query_and_export() -> None:
    for storage in ("memory", "badger"):
        config = jaeger(storage)
        (backend,) = config["extensions"]["jaeger_storage"]["backends"].items()
        assert list(backend[1]) == [storage]
        assert config["extensions"]["jaeger_query"]["storage"]["traces"] == backend[0]
        assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] == backend[0]
        assert check_pipelines(config) == []
    with pytest.raises(ValueError, match="cassandra"):
        jaeger("cassandra")


def test_templating() -> None:
    text = to_template({"a": Value("ports.otlpGrpc"), "b": [Helper("meshlens.x"), "plain"],
                        "c": Endpoint("${env:IP}", Value("ports.health")), "d": Value("ports.health", pipe="toString")})  # fmt: skip
    assert text == (
        "a: {{ .Values.ports.otlpGrpc | toJson }}\n"
        'b:\n- {{ include "meshlens.x" . }}\n- plain\n'
        'c: {{ printf "%s:%d" "${env:IP}" (int .Values.ports.health) | toJson }}\n'
        "d: {{ .Values.ports.health | toString | toJson }}\n"
    )
    with pytest.raises(ValueError, match="Helm actions"):
        to_template({"a": "{{ .Release.Name }}"})
    with pytest.raises(ValueError, match="not a values path"):
        Value(".Values.x")
    with pytest.raises(ValueError, match="not a meshlens helper"):
        Helper("other.x")
    with pytest.raises(ValueError, match="unsupported pipe"):
        Value("a.b", pipe="quote")
