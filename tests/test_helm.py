"""The Helm chart, rendered by real Helm 3 and Helm 4 and checked against real schemas.

Helm comes from helm/install-helm.sh (`make tools`), cached under .cache/tools/. Without it these
tests skip and say so; under CI (CI=true) a missing Helm or missing reference schemas fail instead.

Rendering is what `python helm/render_examples.py` does (imported, not repeated), so the
committed examples and these checks see the same output.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from meshlens_bundle.schemas import (
    CRDS,
    OTELCOL_CONTRIB_MANIFEST,
    SchemasMissingError,
    missing_is_failure,
    require_schema,
)
from meshlens_collector import pipelines
from meshlens_collector.checks import CoreSchemas, check_components, check_pipelines, env_references

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "helm"
KUBERNETES_VERSIONS = ("1.30", latest_version())
CORE_SCHEMAS = Path("otelcol/core-config-schemas")


def _load_render_examples() -> Any:
    spec = importlib.util.spec_from_file_location("render_examples", ROOT / "helm" / "render_examples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_examples = _load_render_examples()
SCENARIOS = render_examples.scenario_files()
CR_SCENARIOS = [name for name, path in SCENARIOS.items() if render_examples.api_versions(path)]


def _missing(message: str) -> None:
    if missing_is_failure():
        pytest.fail(f"{message} (CI=true: required)")
    pytest.skip(message)


def _helm(major: int) -> Path:
    helm = render_examples.helm_binary(major)
    if helm is None:
        _missing(f"Helm {major} is not under .cache/tools/helm{major}: run helm/install-helm.sh (or make tools)")
    return helm


def _schema(relative: Path) -> Path:
    try:
        return require_schema(relative)
    except SchemasMissingError as missing:
        _missing(str(missing))
        raise


def _docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@cache
def _render(scenario: str) -> tuple[list[dict[str, Any]], str]:
    """(objects, NOTES.txt) of one scenario, rendered once per test session with Helm 4."""
    helm = render_examples.helm_binary(4)
    values = SCENARIOS[scenario]
    return _docs(render_examples.render(helm, values)), render_examples.render_notes(helm, values)


@pytest.fixture(params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> str:
    _helm(4)
    return request.param


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def _workloads(docs: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (doc for doc in docs if doc["kind"] in {"Deployment", "DaemonSet", "StatefulSet"})


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} rendered; have {[(d['kind'], d['metadata']['name']) for d in docs]}")


# ---- custom resources against their CRDs -------------------------------------------------------


def _strict(node: Any) -> Any:
    """The CRD schema with unknown fields rejected, except where Kubernetes keeps unknown fields."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    strict = {key: _strict(value) for key, value in node.items()}
    if "properties" in strict and "additionalProperties" not in strict and not strict.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        strict["additionalProperties"] = False
    return strict


@cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict schema, from every CRD in the reference schemas."""
    schemas = {}
    for path in sorted(_schema(CRDS).rglob("*.yaml")):
        for crd in _docs(path.read_text()):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                # Istio's CRDs do not declare the envelope; every object has it.
                envelope = {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
                schema["properties"] = {**envelope, **schema.get("properties", {})}
                api_version = f"{crd['spec']['group']}/{version['name']}"
                schemas[api_version, crd["spec"]["names"]["kind"]] = schema
    return schemas


def _crd_errors(doc: dict[str, Any]) -> list[str] | None:
    """Errors of a custom resource against its CRD; None when the object is not a custom resource."""
    schema = _crd_schemas().get((doc["apiVersion"], doc["kind"]))
    if schema is None:
        return None
    return [
        f"{'.'.join(str(part) for part in error.absolute_path) or '(top)'}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]


def test_every_object_validates_against_kubernetes_or_its_crd(scenario: str) -> None:
    docs, _notes = _render(scenario)
    failures = []
    for doc in docs:
        where = f"{doc['kind']} {doc['metadata']['name']}"
        crd_errors = _crd_errors(doc)
        if crd_errors is not None:
            failures += [f"{where}: {error}" for error in crd_errors]
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                failures.append(f"{where} (Kubernetes {version}): {path}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                failures.append(f"{where}: neither a built-in kind nor a known CRD: {error.message}")
    assert not failures, "\n".join(failures)


def test_crd_validation_rejects_unknown_fields() -> None:
    # The check above would pass anything if the strict schemas were not strict.
    telemetry = {
        "apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry", "metadata": {"name": "x"},
        "spec": {"tracing": [{"providers": [{"name": "p"}], "randomSamplingPercentage": 10, "samplingRate": 1}]},
    }  # fmt: skip
    podmonitor = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"},
        "spec": {"selector": {}, "podMetricsEndpoints": [{"port": "metrics", "intervall": "30s"}]},
    }  # fmt: skip
    assert any("samplingRate" in error for error in _crd_errors(telemetry) or [])
    assert any("intervall" in error for error in _crd_errors(podmonitor) or [])


# ---- lint and bad values, with both Helm majors ------------------------------------------------


@pytest.mark.parametrize("major", render_examples.HELM_MAJORS)
def test_lint_strict(major: int) -> None:
    helm = _helm(major)
    chart = render_examples.CHART
    for values in SCENARIOS.values():
        args = ["--values", str(values)] if values else []
        result = subprocess.run([str(helm), "lint", "--strict", str(chart), *args],
                                capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
        assert result.returncode == 0, f"helm {major} lint --strict {values or ''}:\n{result.stdout}{result.stderr}"


BAD_VALUES = {
    # case: (--set argument, the value's path, words the message must have (Helm 3 or Helm 4 wording))
    "string replica count": (["--set-string", "collector.gateway.replicas=3"], "collector.gateway.replicas",
                             ("integer",)),
    "unknown key": (["--set", "collector.replicaCount=3"], "collector", ("replicaCount",)),
    "sampling percentage of 250": (["--set", "collector.tailSampling.probabilisticPercentage=250"],
                                   "collector.tailSampling.probabilisticPercentage", ("100",)),
    "istio sampling percentage of 250": (["--set", "istio.telemetry.samplingPercentage=250"],
                                         "istio.telemetry.samplingPercentage", ("100",)),
    "unknown storage": (["--set", "jaeger.storage.type=cassandra"], "jaeger.storage.type", ("memory", "badger")),
    "external without endpoint": (["--set", "jaeger.mode=external"], "jaeger.external.endpoint", ("1",)),
    "a secret value instead of a reference": (["--set", "jaeger.external.authorizationSecret.value=Bearer x"],
                                              "jaeger.external.authorizationSecret", ("value",)),
}  # fmt: skip


@pytest.mark.parametrize("major", render_examples.HELM_MAJORS)
@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_value_fails_naming_the_value(major: int, case: str) -> None:
    helm = _helm(major)
    args, path, words = BAD_VALUES[case]
    result = render_examples.helm_template(helm, render_examples.CHART, args)
    assert result.returncode != 0, f"{case}: helm template accepted it"
    message = result.stderr
    assert "values don't meet the specifications of the schema" in message, message
    # Helm 3 names the value collector.gateway.replicas, Helm 4 /collector/gateway/replicas.
    assert path in message or "/" + path.replace(".", "/") in message, f"{case}: {path} not named in:\n{message}"
    for word in words:
        assert word in message, f"{case}: {word!r} not in:\n{message}"


# ---- the collector configs as rendered ---------------------------------------------------------


def _collector_configs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, its container, its parsed config) for every collector-style workload."""
    maps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    for workload in _workloads(docs):
        volumes = workload["spec"]["template"]["spec"].get("volumes", [])
        config_map = next((v["configMap"]["name"] for v in volumes if v["name"] == "config"), None)
        if config_map is None:
            continue
        yield workload, _containers(workload)[0], yaml.safe_load(maps[config_map]["data"]["config.yaml"])


def test_collector_configs(scenario: str) -> None:
    docs, _notes = _render(scenario)
    manifest = _schema(OTELCOL_CONTRIB_MANIFEST)
    core = CoreSchemas(_schema(CORE_SCHEMAS))
    problems, checked = [], 0
    for workload, container, config in _collector_configs(docs):
        name = workload["metadata"]["name"]
        problems += [f"{name}: {problem}" for problem in check_pipelines(config)]
        defined_env = {env["name"] for env in container.get("env", [])}
        problems += [f"{name}: ${{env:{var}}} is not set on the container" for var in env_references(config) - defined_env]
        if container["name"] == "jaeger":
            continue  # Jaeger's own components are not otelcol-contrib's: checked in test_jaeger_config
        checked += 1
        problems += [f"{name}: {problem}" for problem in check_components(config, manifest)]
        core_problems, _unchecked = core.check(config)
        problems += [f"{name}: {problem}" for problem in core_problems]
    assert not problems, "\n".join(problems)
    assert checked >= 1, "every scenario runs a collector"


def test_config_checksum_rolls_the_pods(scenario: str) -> None:
    docs, _notes = _render(scenario)
    maps = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ConfigMap"}
    for workload, _container, _config in _collector_configs(docs):
        volumes = workload["spec"]["template"]["spec"]["volumes"]
        text = maps[next(v["configMap"]["name"] for v in volumes if v["name"] == "config")]["data"]["config.yaml"]
        expected = hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
        assert workload["spec"]["template"]["metadata"]["annotations"]["checksum/config"] == expected


def test_gateway_exports_where_the_backend_listens() -> None:
    _helm(4)
    for scenario in ("defaults", "external-jaeger"):
        docs, _notes = _render(scenario)
        gateway = next(c for w, _, c in _collector_configs(docs) if w["kind"] == "Deployment" and "collector" in w["metadata"]["name"])
        (exporter,) = gateway["exporters"].values()
        if scenario == "defaults":
            jaeger = _find(docs, "Service", "meshlens-jaeger")
            port = next(p["port"] for p in jaeger["spec"]["ports"] if p["name"] == "otlp-grpc")
            assert exporter["endpoint"] == f"meshlens-jaeger.observability.svc:{port}"
            assert exporter["headers"] == [] and exporter["tls"] == {"insecure": True}
        else:
            assert exporter["endpoint"] == "tempo-distributor.tempo.svc:4317"
            assert exporter["headers"] == [{"name": "authorization", "value": "${env:MESHLENS_TRACES_AUTHORIZATION}"}]
            assert not [d for d in docs if "jaeger" in d["metadata"]["name"]], "external mode renders no Jaeger"


def test_agents_route_to_the_headless_gateway_service() -> None:
    _helm(4)
    docs, _notes = _render("agent-daemonset")
    _daemonset, container, agent = next(t for t in _collector_configs(docs) if t[0]["kind"] == "DaemonSet")
    node_env = agent["processors"]["k8sattributes"]["filter"]["node_from_env_var"]
    assert {"name": node_env, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container["env"]
    dns = agent["exporters"]["loadbalancing/gateway"]["resolver"]["dns"]
    headless = _find(docs, "Service", "meshlens-collector-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert dns["hostname"] == "meshlens-collector-headless.observability.svc"
    assert dns["port"] == str(headless["spec"]["ports"][0]["port"])
    assert _find(docs, "Service", "meshlens-agent")["spec"]["internalTrafficPolicy"] == "Local"
    assert _find(docs, "Deployment", "meshlens-collector")["spec"]["replicas"] == 3
    notes = _render("agent-daemonset")[1]
    assert "value: http://meshlens-agent.observability.svc:4318" in notes
    assert "service: meshlens-agent.observability.svc.cluster.local" not in notes  # no Istio CRDs in this scenario


def test_jaeger_config() -> None:
    _helm(4)
    for scenario in ("defaults", "hardened"):
        docs, _notes = _render(scenario)
        (workload, container, config) = next(t for t in _collector_configs(docs) if t[1]["name"] == "jaeger")
        backends = config["extensions"]["jaeger_storage"]["backends"]
        assert list(backends) == [pipelines.JAEGER_STORE]
        assert config["extensions"]["jaeger_query"]["storage"]["traces"] == pipelines.JAEGER_STORE
        assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] == pipelines.JAEGER_STORE
        if scenario == "hardened":
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts["badger"] == pipelines.BADGER_DIRECTORY
            assert all(d.startswith(mounts["badger"] + "/") for d in backends["meshlens"]["badger"]["directories"].values())
            volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
            assert volumes["badger"]["persistentVolumeClaim"]["claimName"] == "meshlens-jaeger"
            assert _find(docs, "PersistentVolumeClaim", "meshlens-jaeger")["spec"]["resources"]["requests"]["storage"] == "20Gi"
        else:
            assert backends["meshlens"] == {"memory": {"max_traces": 100000}}


# ---- custom resources: rendered only when the CRD is there ---------------------------------------


CUSTOM_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule", "Telemetry", "PeerAuthentication"}


def test_bare_cluster_gets_no_custom_resources_and_notes_say_why() -> None:
    _helm(4)
    docs, notes = _render("defaults")
    assert not [doc["kind"] for doc in docs if doc["kind"] in CUSTOM_KINDS]
    for kind in ("PodMonitor", "ServiceMonitor", "PrometheusRule", "Telemetry"):
        assert re.search(rf"^- {kind}: SKIPPED, the cluster has no {kind} CRD", notes, re.MULTILINE), notes
    assert "extensionProviders" not in notes  # Istio is not there


def test_older_istio_apis_are_used_when_only_they_exist() -> None:
    _helm(4)
    docs, notes = _render("hardened")
    kinds = {doc["kind"]: doc["apiVersion"] for doc in docs if doc["kind"] in CUSTOM_KINDS}
    assert kinds["Telemetry"] == "telemetry.istio.io/v1alpha1"
    assert kinds["PeerAuthentication"] == "security.istio.io/v1beta1"
    assert "- Telemetry (telemetry.istio.io/v1alpha1): Envoy traces 10% of requests" in notes


SWITCHES = {
    # one value -> what it removes (kind, name), with every CRD present
    "collector.enabled=false": {("Deployment", "meshlens-collector"), ("Telemetry", "meshlens-tracing"),
                                ("ServiceMonitor", "meshlens-collector"), ("ClusterRole", "observability-meshlens-collector")},
    "jaeger.mode=external": {("Deployment", "meshlens-jaeger"), ("ServiceMonitor", "meshlens-jaeger")},
    "istio.telemetry.enabled=false": {("Telemetry", "meshlens-tracing")},
    "istio.peerAuthentication.enabled=false": {("PeerAuthentication", "meshlens-strict-mtls")},
    "prometheusOperator.podMonitor.enabled=false": {("PodMonitor", "meshlens-services"),
                                                    ("PeerAuthentication", "meshlens-strict-mtls-metrics")},
    "prometheusOperator.serviceMonitors.enabled=false": {("ServiceMonitor", "meshlens-collector")},
    "prometheusOperator.rules.enabled=false": {("PrometheusRule", "meshlens-rules-meshlens-slo")},
    "grafana.dashboards.enabled=false": {("ConfigMap", "meshlens-dashboard-meshlens-red")},
    "grafana.datasources.enabled=false": {("ConfigMap", "meshlens-datasources")},
    "networkPolicy.enabled=true": set(),  # adds, checked below
}  # fmt: skip


@pytest.fixture(scope="module")
def chart_with_fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart with fixture dashboards and rules in files/, as meshlens build would write them."""
    chart = render_examples.copy_chart(tmp_path_factory.mktemp("chart"))
    for kind in ("dashboards", "rules"):
        shutil.rmtree(chart / "files" / kind, ignore_errors=True)
        shutil.copytree(FIXTURES / "files" / kind, chart / "files" / kind)
    return chart


def _render_with(chart: Path, *args: str) -> list[dict[str, Any]]:
    helm = _helm(4)
    istio = render_examples.scenario_files()["istio"]
    result = render_examples.helm_template(helm, chart, [*render_examples.template_args(istio), *args])
    assert result.returncode == 0, result.stderr
    return _docs(result.stdout)


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_part_switches_off_with_one_value(chart_with_fixtures: Path, switch: str) -> None:
    extra = ["--set", "jaeger.external.endpoint=tempo:4317"] if switch.startswith("jaeger.mode") else []
    before = {(d["kind"], d["metadata"]["name"]) for d in _render_with(chart_with_fixtures)}
    after = {(d["kind"], d["metadata"]["name"]) for d in _render_with(chart_with_fixtures, "--set", switch, *extra)}
    assert SWITCHES[switch] <= before, f"{SWITCHES[switch] - before} not rendered before {switch}"
    assert not SWITCHES[switch] & after, f"{switch} left {SWITCHES[switch] & after}"
    if switch == "networkPolicy.enabled=true":
        assert {kind for kind, _ in after - before} == {"NetworkPolicy"}


def test_generated_dashboards_and_rules_are_picked_up(chart_with_fixtures: Path) -> None:
    docs = _render_with(chart_with_fixtures, "--set", "prometheusOperator.selectorLabels.release=kps")
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]]
    assert sorted(d["metadata"]["name"] for d in dashboards) == ["meshlens-dashboard-meshlens-red",
                                                                  "meshlens-dashboard-service-overview"]
    for dashboard in dashboards:
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboard["metadata"]["annotations"] == {"grafana_folder": "meshlens"}
        ((key, text),) = dashboard["data"].items()
        assert text == (FIXTURES / "files" / "dashboards" / key).read_text().rstrip("\n")  # byte for byte
    rules = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PrometheusRule"}
    assert sorted(rules) == ["meshlens-rules-collector-health", "meshlens-rules-meshlens-slo"]
    for name, rule in rules.items():
        assert rule["metadata"]["labels"]["release"] == "kps", name
        assert _crd_errors(rule) == []
    source = yaml.safe_load((FIXTURES / "files" / "rules" / "meshlens-slo.yaml").read_text())
    assert rules["meshlens-rules-meshlens-slo"]["spec"] == source  # alert templates ({{ $labels }}) kept as they are


def test_a_broken_rule_file_fails_with_its_name(chart_with_fixtures: Path, tmp_path: Path) -> None:
    chart = render_examples.copy_chart(tmp_path, chart_with_fixtures)
    (chart / "files" / "rules" / "broken.yaml").write_text("- not: a rule file\n")
    result = render_examples.helm_template(_helm(4), chart, render_examples.template_args(SCENARIOS["istio"]))
    assert result.returncode != 0
    assert "files/rules/broken.yaml is not a Prometheus rule file" in result.stderr


def test_kube_prometheus_stack_selector_labels() -> None:
    _helm(4)
    docs, _notes = _render("kube-prometheus-stack")
    monitoring = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {d["kind"] for d in monitoring} >= {"PodMonitor", "ServiceMonitor"}
    for doc in monitoring:
        assert doc["metadata"]["labels"].get("release") == "kube-prometheus-stack", doc["metadata"]["name"]
    pod_monitor = _find(docs, "PodMonitor", "meshlens-services")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["shop"]}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"meshlens.io/instrumented": "true"}
    grafana = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("app.kubernetes.io/component") == "grafana"]
    assert grafana and all(d["metadata"]["namespace"] == "monitoring" for d in grafana)


def test_istio_resources_and_the_mesh_config_entry() -> None:
    _helm(4)
    docs, notes = _render("istio")
    telemetry = _find(docs, "Telemetry", "meshlens-tracing")
    assert telemetry["metadata"]["namespace"] == "istio-system"
    assert telemetry["spec"]["tracing"] == [{"providers": [{"name": "meshlens-otel"}], "randomSamplingPercentage": 25}]
    strict = [d for d in docs if d["kind"] == "PeerAuthentication"]
    assert sorted((d["metadata"]["namespace"], d["metadata"]["name"]) for d in strict) == [
        ("payments", "meshlens-strict-mtls"), ("payments", "meshlens-strict-mtls-metrics"),
        ("shop", "meshlens-strict-mtls"), ("shop", "meshlens-strict-mtls-metrics"),
    ]  # fmt: skip
    metrics = _find(docs, "PeerAuthentication", "meshlens-strict-mtls-metrics")
    assert metrics["spec"]["portLevelMtls"] == {"9464": {"mode": "PERMISSIVE"}}
    # The extension provider points at the collector Service's gRPC port, as rendered.
    service = _find(docs, "Service", "meshlens-collector")
    grpc = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "otlp-grpc")
    block = _extension_provider_block(notes)
    assert yaml.safe_load(block) == {"meshConfig": {"extensionProviders": [{
        "name": "meshlens-otel",
        "opentelemetry": {"service": "meshlens-collector.observability.svc.cluster.local", "port": grpc},
    }]}}  # fmt: skip


def _extension_provider_block(text: str) -> str:
    match = re.search(r"^( *)meshConfig:\n(?:\1 .*\n?)+", text, re.MULTILINE)
    assert match, f"no meshConfig block in:\n{text}"
    return match.group(0)


def test_docs_show_the_extension_provider_notes_render() -> None:
    _helm(4)
    _docs_unused, notes = _render("istio")
    rendered = yaml.safe_load(_extension_provider_block(notes))
    documented = yaml.safe_load(_extension_provider_block((ROOT / "docs" / "helm.md").read_text()))
    assert documented == rendered


def test_grafana_datasources_link_exemplars_to_jaeger() -> None:
    _helm(4)
    docs, _notes = _render("defaults")
    (text,) = _find(docs, "ConfigMap", "meshlens-datasources")["data"].values()
    datasources = {d["type"]: d for d in yaml.safe_load(text)["datasources"]}
    jaeger_service = _find(docs, "Service", "meshlens-jaeger")
    query = next(p["port"] for p in jaeger_service["spec"]["ports"] if p["name"] == "query")
    assert datasources["jaeger"]["url"] == f"http://meshlens-jaeger.observability.svc:{query}"
    (destination,) = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert destination == {"name": "trace_id", "datasourceUid": datasources["jaeger"]["uid"]}


# ---- secure by default and standard labels ------------------------------------------------------


def test_secure_by_default(scenario: str) -> None:
    docs, _notes = _render(scenario)
    assert not [d for d in docs if d["kind"] == "Secret"], "the chart never holds secret values"
    for workload in _workloads(docs):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert "hostNetwork" not in pod and "hostPID" not in pod, name
        for container in _containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["runAsNonRoot"] is True, name
            for side in ("requests", "limits"):
                assert set(container["resources"][side]) >= {"cpu", "memory"}, f"{name}: {side}"
            assert not [p for p in container.get("ports", []) if "hostPort" in p], name


def test_standard_labels(scenario: str) -> None:
    docs, _notes = _render(scenario)
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        for key in ("name", "instance", "version", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels, f"{doc['kind']} {doc['metadata']['name']}: {key}"
        assert labels["app.kubernetes.io/name"] == "meshlens"


def test_helper_templates_are_namespaced() -> None:
    names = []
    for path in (render_examples.CHART / "templates").glob("*"):
        names += re.findall(r'define "([^"]+)"', path.read_text())
    assert names and not [name for name in names if not name.startswith("meshlens.")], names


def test_helm_3_renders_what_helm_4_renders(scenario: str) -> None:
    helm3 = _helm(3)
    docs, _notes = _render(scenario)
    assert _docs(render_examples.render(helm3, SCENARIOS[scenario])) == docs


# ---- the committed examples ---------------------------------------------------------------------


def test_rendered_examples_are_current() -> None:
    helm = _helm(4)
    stale = [
        str(path.relative_to(ROOT))
        for path, text in render_examples.examples(helm).items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"stale examples {stale}: run `.venv/bin/python helm/render_examples.py`"


def test_examples_cover_every_scenario() -> None:
    committed = {path.name for path in render_examples.EXAMPLES.iterdir() if path.is_dir()}
    assert committed == set(SCENARIOS)
    assert set(CR_SCENARIOS) >= {"minimal", "istio", "kube-prometheus-stack", "agent-daemonset", "external-jaeger"}
