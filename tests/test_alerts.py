"""SLOs and alerts: what the YAML may say, the rules made from it, and the promtool tests made
from its intent (which fail when a rule's threshold or `for` drifts from it)."""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from meshlens import catalogue
from meshlens_alerts import generate, kinds, slo
from meshlens_alerts import scenarios as sc
from meshlens_alerts.spec import Duration, le_matcher
from meshlens_bundle.problems import BuildFailed

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "alerts"
RUNBOOKS = ROOT / "docs" / "runbooks"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (make tools)")


def write(folder: Path, name: str, document: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


def problems_of(folder: Path, **kwargs) -> str:
    with pytest.raises(BuildFailed) as failed:
        generate.build(folder, "mine", **kwargs)
    return str(failed.value)


def shipped_yaml(name: str) -> dict:
    return yaml.safe_load((SHIPPED / name).read_text())


def promtool_test(rule_file: generate.RuleFile, tests_from: generate.RuleFile, folder: Path,
                  only: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs the scenarios of ``tests_from`` (optionally those whose name starts with ``only``)
    against the rules of ``rule_file``."""
    (folder / "rules").mkdir(parents=True, exist_ok=True)
    (folder / "tests").mkdir(exist_ok=True)
    (folder / "rules" / "r.yaml").write_text(yaml.safe_dump({"groups": [rule_file.group]}, width=1_000_000))
    tests = [s.to_test() for s in tests_from.scenarios if only is None or s.name.startswith(only)]
    assert tests
    document = {"rule_files": ["../rules/r.yaml"], "evaluation_interval": "1m", "tests": tests}
    (folder / "tests" / "t.yaml").write_text(yaml.safe_dump(document, width=1_000_000))
    return subprocess.run(["promtool", "test", "rules", "t.yaml"], cwd=folder / "tests",
                          capture_output=True, text=True, check=False)


# --- Small pieces ----------------------------------------------------------------


def test_le_matchers_accept_both_ways_of_writing_a_bound():
    assert le_matcher(0.25) == ("=", "0.25")
    assert le_matcher(1.0) == ("=~", "1|1\\.0")  # prometheus-client writes 1.0, Go and Prometheus 3 write 1


def test_synthetic_label_values_match_their_patterns():
    assert sc.example_of("5..") == "500"
    assert sc.example_of("queue_full|export_failed") == "queue_full"
    assert sc.example_of("[45]\\d\\d") == "400"
    assert sc.example_of(".*") == ""


def test_series_notation():
    assert sc.counter(sc.Phase(3, 0), sc.Phase(2, 10)) == "0+0x3 10+10x1"
    assert sc.gauge(sc.Phase(3, 1), sc.Phase(2, 0)) == "1+0x3 0+0x1"
    assert Duration.of_seconds(3600).text == "1h"


# --- The shipped definitions -------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> generate.AlertsBuild:
    return generate.build(SHIPPED, "alerts", runbooks_dir=RUNBOOKS)


def test_every_alert_the_issue_asks_for_is_there(shipped):
    kinds_used = {entry["kind"] for entry in shipped_yaml("alerts.yaml")["alerts"]}
    assert kinds_used == set(kinds.KINDS)
    assert {"MeshlensTargetDown", "MeshlensTargetAbsent", "MeshlensHighErrorRatio", "MeshlensHighLatency",
            "MeshlensWorkersSaturated", "MeshlensEventLoopLagHigh", "MeshlensKafkaConsumerLagGrowing",
            "MeshlensCollectorRefusingSpans", "MeshlensCollectorDroppingSpans", "MeshlensSpanExportFailing",
            "MeshlensMetricCardinalityLimit", "MeshlensIstioHighErrorRatio", "MeshlensSLOBurnRateFast",
            "MeshlensSLOBurnRateSlow"} <= set(shipped.alerts)


def test_every_alert_has_severity_summary_description_and_a_runbook_in_the_repository(shipped):
    for rule_file in shipped.files:
        for rule in rule_file.group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["labels"]["severity"] in kinds.SEVERITIES
            notes = rule["annotations"]
            assert notes["summary"] and notes["description"]
            assert notes["runbook_url"] == f"{generate.RUNBOOK_URL_BASE}{rule['alert']}.md"
            assert (RUNBOOKS / f"{rule['alert']}.md").is_file()


def test_burn_rate_windows_come_from_the_yaml(shipped):
    policy = generate.packaged_policy()
    pairs = [(w.factor, w.long.text, w.short.text) for alert in policy.alerts for w in alert.windows]
    assert pairs == [(14.4, "1h", "5m"), (6, "6h", "30m"), (3, "1d", "2h"), (1, "3d", "6h")]
    assert [a.severity for a in policy.alerts] == ["page", "ticket"]
    records = {rule["record"] for f in shipped.files for rule in f.group["rules"] if "record" in rule}
    assert {slo.error_ratio_record(w) for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")} <= records


def test_a_quiet_service_records_zero_not_nan():
    """0/0 is NaN in PromQL; the ratio falls back to 0 times the request rate (0 when quiet)."""
    spec = catalogue.HTTP_SERVER_REQUEST_DURATION
    objective = slo.Slo("cart", slo.AVAILABILITY, 0.999, Duration("30d", 30 * 86400), spec,
                        dict(slo.DEFAULT_ERRORS), {}, None, None, "x", 1)
    expr = slo.ratio_expr(objective, "5m")
    assert expr.endswith(' or (0 * sum by (namespace, service) (rate(http_server_request_duration_seconds_count'
                         '{service="cart"}[5m])))')
    assert "> 0))" in expr
    quiet = [s for s in slo.scenarios(objective, generate.packaged_policy()) if "no traffic" in s.name]
    assert quiet and [check.samples[0][1] for check in quiet[0].values] == [0, 1]  # ratio 0, budget left 1


@needs_promtool
@pytest.mark.slow
def test_the_generated_tests_pass_with_promtool(shipped, tmp_path):
    for rule_file in shipped.files:
        result = promtool_test(rule_file, rule_file, tmp_path / rule_file.stem)
        assert result.returncode == 0, result.stdout + result.stderr


# --- Tests generated from intent catch drifted rules ---------------------------------


def _mutations(entry: dict) -> list[tuple[str, object]]:
    """(field, new value) pairs that change an alert's meaning enough to matter."""
    found: list[tuple[str, object]] = []
    threshold = entry.get("threshold")
    if entry["kind"] == "quantile_above":
        buckets = catalogue.CATALOGUE[entry["metric"]].buckets
        at = buckets.index(threshold)
        found += [("threshold", buckets[at + 1]), ("threshold", buckets[at - 1])]
    elif threshold == 0:
        found.append(("threshold", 1))  # "any at all" becomes "more than one a second"
    elif threshold is not None:
        found += [("threshold", threshold * 2), ("threshold", threshold / 2)]
    minutes = int(entry["for"].rstrip("m"))
    found += [("for", f"{minutes * 2}m"), ("for", f"{max(minutes // 2, 1)}m")]
    return found


CASES = [(entry["alert"], field, value) for entry in shipped_yaml("alerts.yaml")["alerts"]
         for field, value in _mutations(entry)]


@needs_promtool
@pytest.mark.slow
@pytest.mark.parametrize(("alert", "field", "value"), CASES, ids=[f"{a}-{f}={v}" for a, f, v in CASES])
def test_a_rule_whose_threshold_or_for_drifted_fails_its_generated_test(alert, field, value, shipped, tmp_path):
    document = shipped_yaml("alerts.yaml")
    mutated = copy.deepcopy(document)
    entry = next(e for e in mutated["alerts"] if e["alert"] == alert)
    entry[field] = value
    folder = tmp_path / "mutated"
    write(folder, "alerts.yaml", mutated)
    shutil.copy(SHIPPED / "slos.yaml", folder)  # the absent alert watches the SLOs' services
    drifted = next(f for f in generate.build(folder, "mutated").files if f.stem == "alerts")
    intended = next(f for f in shipped.files if f.stem == "alerts")
    # The unchanged rule passes its own tests; the drifted one fails them.
    assert promtool_test(intended, intended, tmp_path / "same", only=f"{alert}:").returncode == 0
    result = promtool_test(drifted, intended, tmp_path / "drift", only=f"{alert}:")
    assert result.returncode != 0, f"{alert} with {field}={value} still passes its tests"


SLO_CASES = [("objective", 0.99), ("objective", 0.9999), ("for", "4m"), ("for", "1m")]


@needs_promtool
@pytest.mark.slow
@pytest.mark.parametrize(("field", "value"), SLO_CASES, ids=[f"{f}={v}" for f, v in SLO_CASES])
def test_an_slo_rule_whose_objective_or_for_drifted_fails_its_generated_test(field, value, tmp_path):
    document = {
        "burn_rate_alerts": [{
            "alert": "CartBurn", "severity": "page", "for": "2m",
            "windows": [{"factor": 14.4, "long": "1h", "short": "5m"}, {"factor": 6, "long": "6h", "short": "30m"}],
            "summary": "{{ $labels.slo }} burns", "description": "{{ $labels.service }} burns its budget.",
        }],
        "services": {"cart": {"availability": {"objective": 0.999, "window": "30d"}}},
    }
    intended = generate.build(write(tmp_path / "intended", "slos.yaml", document).parent, "x").files[0]
    mutated = copy.deepcopy(document)
    if field == "for":
        mutated["burn_rate_alerts"][0]["for"] = value
    else:
        mutated["services"]["cart"]["availability"]["objective"] = value
    drifted = generate.build(write(tmp_path / "drifted", "slos.yaml", mutated).parent, "x").files[0]
    assert promtool_test(intended, intended, tmp_path / "same").returncode == 0
    assert promtool_test(drifted, intended, tmp_path / "drift").returncode != 0


# --- What the YAML may not say ---------------------------------------------------------


ALERT = {
    "alert": "CartErrors", "kind": "error_ratio", "metric": "http_server_request_duration_seconds",
    "errors": {"http_response_status_code": "5.."}, "window": "5m", "threshold": 0.05, "for": "5m",
    "severity": "page", "summary": "{{ $labels.service }} fails", "description": "{{ $labels.namespace }} x",
}


def alert_with(**changes: object) -> dict:
    entry = dict(ALERT)
    for key, value in changes.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    return {"alerts": [entry]}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"windw": "5m"}, "unknown field 'windw'\n    fix: did you mean 'window'?"),
        ({"kind": "error_ration"}, "unknown kind 'error_ration'"),
        ({"severity": "critical"}, "severity 'critical' is not one of page, ticket"),
        ({"threshold": 5}, "threshold 5 is not a ratio between 0 and 1\n    fix: write 0.05 for 5%"),
        ({"window": "5 minutes"}, "window must be a Prometheus duration"),
        ({"by": ["namespace", "servce"]}, "unknown label 'servce' on http_server_request_duration_seconds\n"
                                          "    fix: did you mean 'service'?"),
        ({"metric": "process_threads"}, "process_threads is a gauge; this needs a counter or histogram"),
        ({"summary": "{{ $value }} failed"}, "summary uses the template action {{ $value }}"),
        ({"description": "{{ $labels.route }}"}, "description uses $labels.route, which this alert does not have"),
        ({"metric": "http_client_request_duration_seconds", "errors": {"error_type": ".*"}},
         "also matches requests without error_type"),
        ({"summary": None}, "missing field 'summary'"),
    ],
)
def test_a_bad_alert_is_refused_with_its_line_and_fix(changes, expected, tmp_path):
    write(tmp_path / "a", "alerts.yaml", alert_with(**changes))
    message = problems_of(tmp_path / "a")
    assert "mine/alerts.yaml:2: alert CartErrors: " in message
    assert expected in message


def test_a_latency_threshold_on_the_last_bucket_can_never_fire(tmp_path):
    entry = {**ALERT, "kind": "quantile_above", "quantile": 0.99, "threshold": 10.0}
    entry.pop("errors")
    write(tmp_path / "a", "alerts.yaml", {"alerts": [entry]})
    message = problems_of(tmp_path / "a")
    assert "threshold 10.0 s is the last bucket boundary" in message and "can never fire" in message


def test_a_latency_alert_threshold_between_buckets_names_the_nearest(tmp_path):
    entry = {**ALERT, "kind": "quantile_above", "quantile": 0.99, "threshold": 0.3}
    entry.pop("errors")
    write(tmp_path / "a", "alerts.yaml", {"alerts": [entry]})
    assert "use a nearest boundary: 0.25 and 0.5" in problems_of(tmp_path / "a")


def test_a_burn_threshold_above_100_percent_can_never_fire(tmp_path):
    document = {"services": {"cart": {"availability": {"objective": 0.9, "window": "30d"}}}}
    write(tmp_path / "s", "slos.yaml", document)
    message = problems_of(tmp_path / "s")
    assert "objective 0.9 with burn factor 14.4 (MeshlensSLOBurnRateFast) needs an error ratio of 144%" in message
    assert "can never fire" in message and "raise the objective above 0.9306" in message


def test_an_slo_window_shorter_than_the_burn_windows_is_refused(tmp_path):
    write(tmp_path / "s", "slos.yaml", {"services": {"cart": {"availability": {"objective": 0.999, "window": "1d"}}}})
    assert "window 1d is shorter than the longest burn-rate window 3d" in problems_of(tmp_path / "s")


def test_two_alerts_with_one_name_are_refused(tmp_path):
    write(tmp_path / "a", "alerts.yaml", {"alerts": [ALERT, ALERT]})
    assert "the alert name is already used in mine/alerts.yaml" in problems_of(tmp_path / "a")


def test_an_alert_without_a_runbook_is_refused(tmp_path):
    write(tmp_path / "a", "alerts.yaml", {"alerts": [ALERT]})
    message = problems_of(tmp_path / "a", runbooks_dir=RUNBOOKS)
    assert "alert CartErrors: has no runbook" in message and "CartErrors.md is missing" in message


def test_a_yaml_syntax_error_names_its_line(tmp_path):
    write(tmp_path / "a", "alerts.yaml", "alerts:\n  - alert: X\n    kind: [unclosed\n")
    message = problems_of(tmp_path / "a")
    assert "mine/alerts.yaml:4: YAML: syntax error" in message


def test_an_slo_folder_without_a_policy_uses_the_shipped_one(tmp_path):
    write(tmp_path / "s", "slos.yaml", {"services": {"cart": {"latency": {"objective": 0.99, "threshold": 0.5,
                                                                          "window": "30d"}}}})
    built = generate.build(tmp_path / "s", "mine")
    alerts = [rule["alert"] for rule in built.files[0].group["rules"] if "alert" in rule]
    assert alerts == [a.alert for a in generate.packaged_policy().alerts]
    good = [rule["expr"] for rule in built.files[0].group["rules"] if rule.get("record") == slo.error_ratio_record("5m")]
    assert 'le="0.5"' in good[0]


def test_series_levels_sit_either_side_of_the_threshold():
    """The fire and calm levels bracket the threshold by the margins the drift tests rely on."""
    assert sc.FIRE_MARGIN > 1 > sc.CALM_MARGIN
    assert math.isclose(sc.FIRE_MARGIN - 1, 1 - sc.CALM_MARGIN)


def test_the_docs_list_every_alert(shipped):
    page = (ROOT / "docs" / "dashboards-and-alerts.md").read_text()
    for alert in shipped.alerts:
        assert f"| {alert} |" in page and f"(runbooks/{alert}.md)" in page, alert
