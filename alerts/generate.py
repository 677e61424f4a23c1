"""A folder of SLO and alert YAML turned into Prometheus rule groups and promtool scenarios.

Each ``<name>.yaml`` in the folder may hold ``services:`` (SLOs), ``burn_rate_alerts:`` (the
burn-rate policy, once per folder) and ``alerts:`` (plain alerts); it becomes one rule file
``<name>.yaml`` with one group, and one promtool test file. A folder with SLOs but no policy
uses the policy shipped with meshlens (``slos.yaml`` beside this module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlens_alerts import kinds, slo
from meshlens_alerts import scenarios as sc
from meshlens_alerts.spec import LineDict, Reader, RunbookUrl, load_yaml
from meshlens_bundle.problems import BuildFailed, Problem

RUNBOOK_URL_BASE = "https://github.com/meshlens/meshlens/blob/main/docs/runbooks/"
"""Where each alert's runbook_url points: this base, the alert name, ``.md``. The runbooks are
``docs/runbooks/<alert>.md`` in this repository; ``meshlens build --runbook-url-base`` changes it."""

PACKAGED_DIR = Path(__file__).resolve().parent
POLICY_FILE = "slos.yaml"
TOP_LEVEL = ("services", "burn_rate_alerts", "alerts")


@dataclass(frozen=True)
class Expression:
    """One PromQL expression of a rule, with where it was defined."""

    file: str
    line: int | None
    subject: str
    expr: str


@dataclass
class RuleFile:
    stem: str
    source: str
    """The YAML file it comes from, as shown in messages and in the DO NOT EDIT marker."""
    group: dict[str, Any]
    scenarios: list[sc.Scenario]


@dataclass
class AlertsBuild:
    files: list[RuleFile] = field(default_factory=list)
    expressions: list[Expression] = field(default_factory=list)
    recorded: list[slo.RecordedSeries] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)
    """Every alert name, sorted: the runbooks and the docs list them."""


def runbook_url(base: str, alert: str) -> str:
    return f"{base}{alert}.md"


def build(
    folder: Path, shown: str, runbook_base: str = RUNBOOK_URL_BASE, runbooks_dir: Path | None = None
) -> AlertsBuild:
    """Reads every ``*.yaml`` in ``folder``; ``shown`` is how the folder is named in messages.
    ``runbooks_dir``, when given, is where each alert's runbook must exist."""
    problems: list[Problem] = []
    documents: list[tuple[Path, str, LineDict, Reader]] = []
    for path in sorted(folder.glob("*.yaml")):
        source = f"{shown}/{path.name}"
        reader = Reader(source)
        try:
            document = load_yaml(path, source)
        except BuildFailed as failed:
            problems.extend(failed.problems)
            continue
        if document is None:
            continue
        top = reader.mapping(document, "file", 1)
        if top is not None:
            reader.keys(top, "file", (), TOP_LEVEL)
            documents.append((path, source, top, reader))
        problems.extend(reader.problems)
        reader.problems.clear()

    def url_for(reader: Reader) -> RunbookUrl:
        def url(entry: LineDict, alert: str) -> str:
            given = entry.get("runbook_url")
            if given is not None:
                return reader.text(entry, "runbook_url", f"alert {alert}")
            return runbook_url(runbook_base, alert)

        return url

    policy: slo.Policy | None = None
    for _path, _source, top, reader in documents:
        if "burn_rate_alerts" in top:
            if policy is not None:
                reader.problem(
                    top.line,
                    "burn_rate_alerts",
                    f"the policy is already declared in {policy.file}",
                    "keep one burn_rate_alerts list per folder",
                )
                continue
            policy = slo.read_policy(top["burn_rate_alerts"], reader, url_for(reader))
    slos_by_file: dict[str, list[slo.Slo]] = {}
    for _path, source, top, reader in documents:
        if "services" in top:
            slos_by_file[source] = slo.read_slos(top["services"], reader)
    all_slos = [item for found in slos_by_file.values() for item in found]
    if all_slos and policy is None:
        policy = packaged_policy(runbook_base)
    if policy is not None:
        problems += slo.check(all_slos, policy)
        problems += slo.check_annotations(policy)

    services = sorted({item.service for item in all_slos})
    rendered_by_file: dict[str, list[tuple[kinds.AlertKind, kinds.Rendered]]] = {}
    for _path, source, top, reader in documents:
        if "alerts" in top:
            rendered_by_file[source] = _read_alerts(top["alerts"], reader, url_for(reader), services)

    for *_rest, reader in documents:
        problems.extend(reader.problems)
    result = AlertsBuild()
    names: dict[str, tuple[str, int | None]] = {}
    if policy is not None and all_slos:
        result.recorded = slo.recorded_series(policy)
        for alert in policy.alerts:
            names[alert.alert] = (policy.file, alert.line)
    for source, items in rendered_by_file.items():
        for kind, _rendered in items:
            name = kind.common.alert
            if name in names:
                problems.append(
                    Problem(
                        source,
                        kind.common.line,
                        kind.common.subject,
                        f"the alert name is already used in {names[name][0]}",
                        "give each alert its own name (its runbook is named after it)",
                    )
                )
            names[name] = (source, kind.common.line)
    if runbooks_dir is not None:
        for name, (source, line) in sorted(names.items()):
            runbook = runbooks_dir / f"{name}.md"
            if not runbook.is_file():
                problems.append(
                    Problem(
                        source,
                        line,
                        f"alert {name}",
                        f"has no runbook: {_relative(runbook)} is missing",
                        "write it: what fired, what users see, first checks, how to mitigate",
                    )
                )
    if problems:
        raise BuildFailed(problems)

    for path, source, _top, _reader in documents:
        rules: list[dict[str, Any]] = []
        scenarios: list[sc.Scenario] = []
        for item in slos_by_file.get(source, []):
            assert policy is not None
            rules += slo.recording_rules(item, policy)
            rules += [slo.burn_rule(item, alert) for alert in policy.alerts]
            scenarios += slo.scenarios(item, policy)
            result.expressions += [
                Expression(source, item.line, what, expr) for what, expr in slo.rendered_expressions(item, policy)
            ]
        for kind, rendered in rendered_by_file.get(source, []):
            rules += rendered.rules
            scenarios += rendered.scenarios
            result.expressions += [
                Expression(source, kind.common.line, what, expr) for what, expr in rendered.expressions
            ]
        if rules:
            group = {"name": f"meshlens-{path.stem}", "rules": rules}
            result.files.append(RuleFile(path.stem, source, group, scenarios))
    result.alerts = sorted(names)
    return result


def _read_alerts(
    node: Any, reader: Reader, url: RunbookUrl, services: list[str]
) -> list[tuple[kinds.AlertKind, kinds.Rendered]]:
    if not isinstance(node, list):
        reader.problem(None, "alerts", "must be a list of alerts", "write `alerts:` then `- alert: Name` items")
        return []
    out = []
    for item in node:
        entry = reader.mapping(item, "alerts entry", None)
        if entry is None:
            continue
        name = entry.get("alert", "?")
        subject = f"alert {name}"
        kind_name = entry.get("kind")
        kind_class = kinds.KINDS.get(str(kind_name))
        if kind_class is None:
            near = [k for k in kinds.KINDS if k.startswith(str(kind_name)[:3])]
            reader.problem(
                entry.line,
                subject,
                f"unknown kind {kind_name!r}",
                f"use one of: {', '.join(kinds.KINDS)}" + (f" (did you mean {near[0]!r}?)" if near else ""),
            )
            continue
        before = len(reader.problems)
        reader.keys(
            entry, subject, (*kinds.COMMON_REQUIRED, *kind_class.fields), (*kinds.COMMON_OPTIONAL, *kind_class.optional)
        )
        severity = reader.text(entry, "severity", subject)
        if severity and severity not in kinds.SEVERITIES:
            reader.problem(
                entry.line,
                subject,
                f"severity {severity!r} is not one of {', '.join(kinds.SEVERITIES)}",
                "page: wake someone up; ticket: look at it in working hours",
            )
        extra = entry.get("labels", {})
        if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
            reader.problem(entry.line, subject, "labels must map names to strings", 'write `labels: {team: "shop"}`')
            extra = {}
        common = kinds.Common(
            alert=reader.text(entry, "alert", subject),
            severity=severity,
            for_=reader.duration(entry, "for", subject, default="0s"),
            summary=reader.text(entry, "summary", subject),
            description=reader.text(entry, "description", subject),
            labels={str(k): v for k, v in extra.items()},
            runbook_url=url(entry, str(name)),
            file=reader.file,
            line=entry.line,
        )
        if kind_class is kinds.TargetAbsent:
            kind: kinds.AlertKind = kinds.TargetAbsent(common, entry, reader, services)
        else:
            kind = kind_class(common, entry, reader)
        kind.check_annotations()
        if len(reader.problems) == before:
            out.append((kind, kind.rendered()))
    return out


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def packaged_policy(runbook_base: str = RUNBOOK_URL_BASE) -> slo.Policy:
    """The burn-rate policy shipped with meshlens (``burn_rate_alerts`` of its slos.yaml)."""
    path = PACKAGED_DIR / POLICY_FILE
    reader = Reader(f"meshlens_alerts/{POLICY_FILE}")
    top = load_yaml(path, reader.file)

    def url(entry: LineDict, alert: str) -> str:
        return runbook_url(runbook_base, alert)

    policy = slo.read_policy(top["burn_rate_alerts"], reader, url)
    reader.raise_if_any()
    assert policy is not None
    return policy
