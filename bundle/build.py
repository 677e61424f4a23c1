"""``meshlens build``: dashboards, alerts and collector config as code, into the chart's ``files/``.

    meshlens build                      # regenerate everything into helm/meshlens/files/
    meshlens build --check              # exit 1, listing them, when committed files are stale
    meshlens build --dashboards DIR --alerts DIR --out DIR   # an SRE's own folders

Every input is checked before anything is written: each PromQL expression parses (promtool),
names only catalogue metrics and labels, each dashboard passes the Grafana 11.6 schema, each
rule file passes ``promtool check rules`` and each generated test ``promtool test rules``.
On any problem the build lists them all (file, line, panel or alert, what to change) and the
output folder stays as it was.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TextIO

import meshlens_alerts
import meshlens_dashboards
from meshlens_alerts import generate, slo
from meshlens_bundle import dashboards, grafana, output
from meshlens_bundle import promql as promql_check
from meshlens_bundle.problems import BuildFailed, Problem
from meshlens_bundle.schemas import REPOSITORY_ROOT, SchemasMissingError, missing_is_failure

DEFAULT_DASHBOARDS = Path(meshlens_dashboards.__file__).resolve().parent
DEFAULT_ALERTS = Path(meshlens_alerts.__file__).resolve().parent
CHART_FILES = REPOSITORY_ROOT / "helm" / "meshlens" / "files"
RUNBOOKS = REPOSITORY_ROOT / "docs" / "runbooks"


@dataclass
class Plan:
    """What one run reads and where it writes."""

    dashboards: Path
    alerts: Path
    out: Path
    shown_dashboards: str
    shown_alerts: str
    promtool: str
    runbook_base: str
    runbooks: Path | None
    collector: bool


@dataclass
class Result:
    files: dict[str, str] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """Output path -> the input it comes from, for the progress lines."""
    notes: list[str] = field(default_factory=list)
    test_counts: dict[str, int] = field(default_factory=dict)


def _shown(path: Path, default: Path, name: str) -> str:
    if path.resolve() == default.resolve():
        return name
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def build(plan: Plan, say: Callable[[str], None] = print) -> Result:
    """Builds and validates every file in memory; raises BuildFailed listing every problem."""
    problems: list[Problem] = []
    result = Result()

    alerts: generate.AlertsBuild | None = None
    try:
        alerts = generate.build(plan.alerts, plan.shown_alerts, plan.runbook_base, plan.runbooks)
    except BuildFailed as failed:
        problems += failed.problems

    show = dashboards.Shower(plan.dashboards, plan.shown_dashboards)
    loaded: list[dashboards.LoadedDashboard] = []
    uids: dict[str, dashboards.LoadedDashboard] = {}
    for path in dashboards.find(plan.dashboards):
        board = dashboards.load(path, show, problems)
        if board is None:
            continue
        if board.uid in uids:
            problems.append(
                Problem(
                    board.source,
                    board.line,
                    f"dashboard {board.uid}",
                    f"uid {board.uid!r} is already used by {uids[board.uid].source}",
                    "give each dashboard its own uid (it names the output file and the Grafana URL)",
                )
            )
            continue
        uids[board.uid] = board
        loaded.append(board)

    problems += _schema_problems(loaded, result)

    expressions: list[promql_check.Located] = [
        promql_check.Located(q.file, q.line, q.subject, q.expr, q.variable_query) for b in loaded for q in b.queries
    ]
    if alerts is not None:
        expressions += [promql_check.Located(e.file, e.line, e.subject, e.expr) for e in alerts.expressions]
    unparsed = promql_check.check_parse(expressions, plan.promtool)
    problems += unparsed
    # The SLO dashboard reads the series the SLO rules record. When the alerts folder itself has
    # problems, the names those rules would record under meshlens's own policy stand in.
    recorded = alerts.recorded if alerts is not None else slo.recorded_series(generate.packaged_policy())
    names = promql_check.Names(recorded)
    reported = {(p.file, p.line, p.subject) for p in unparsed}  # once, by promtool
    for item in expressions:
        if (item.file, item.line, item.subject) not in reported:
            problems += promql_check.check_names(item, names)
    say(f"  checked   {len(expressions)} PromQL expressions (promtool, catalogue names)")

    if problems:
        raise BuildFailed(problems)
    assert alerts is not None

    for board in loaded:
        relative = f"{output.DASHBOARDS}/{board.uid}.json"
        result.files[relative] = output.dashboard_text(board.model, board.source)
        result.sources[relative] = board.source
    for rule_file in alerts.files:
        rules_path, tests_path = output.rule_file_path(rule_file.stem), output.test_file_path(rule_file.stem)
        result.files[rules_path] = output.yaml_text({"groups": [rule_file.group]}, rule_file.source)
        tests = {
            "rule_files": [f"../{rules_path}"],
            "evaluation_interval": "1m",
            "tests": [scenario.to_test() for scenario in rule_file.scenarios],
        }
        result.files[tests_path] = output.yaml_text(tests, rule_file.source)
        result.sources[rules_path] = result.sources[tests_path] = rule_file.source
        result.test_counts[tests_path] = len(rule_file.scenarios)
    if plan.collector:
        _add_collector_files(result)

    _promtool_files(result, plan.promtool, say)
    return result


def _schema_problems(loaded: Sequence[dashboards.LoadedDashboard], result: Result) -> list[Problem]:
    try:
        schema = grafana.schema_path()
    except SchemasMissingError as exc:
        if missing_is_failure():
            return [
                Problem("(schemas)", None, "Grafana dashboard schema", str(exc), "provide the shared schemas in CI")
            ]
        result.notes.append(f"skipped the Grafana 11.6 schema check: {exc}")
        return []
    problems = []
    for board in loaded:
        for where, message in grafana.schema_problems(board.model, schema):
            problems.append(
                Problem(
                    board.source,
                    board.line,
                    f"dashboard {board.uid}",
                    f"does not match the Grafana 11.6 dashboard schema at {where}: {message}",
                    "build panels with meshlens_dashboards.panels, or drop the field",
                )
            )
    return problems


def _add_collector_files(result: Result) -> None:
    # The collector config is the Helm engineer's code; the build only writes what it returns.
    import meshlens_collector

    generated = getattr(meshlens_collector, "generated_files", None)
    if generated is None:
        result.notes.append("meshlens_collector.generated_files() does not exist yet: no collector files")
        return
    try:
        files = dict(generated())
    except Exception as exc:
        raise BuildFailed(
            [
                Problem(
                    "collector/",
                    None,
                    "meshlens_collector.generated_files()",
                    f"{type(exc).__name__}: {exc}",
                    "fix the collector code",
                )
            ]
        ) from exc
    problems = []
    for relative, text in sorted(files.items()):
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts or not parts:
            problems.append(
                Problem(
                    "collector/",
                    None,
                    "meshlens_collector.generated_files()",
                    f"path {relative!r} is not inside the chart's files/ folder",
                    "return paths relative to files/",
                )
            )
        elif relative in result.files:
            problems.append(
                Problem(
                    "collector/",
                    None,
                    "meshlens_collector.generated_files()",
                    f"{relative} is also a dashboard or rule file",
                    "use another path",
                )
            )
        else:
            result.files[relative] = text
            result.sources[relative] = "collector/"
    if problems:
        raise BuildFailed(problems)


def _promtool_files(result: Result, promtool: str, say: Callable[[str], None]) -> None:
    """``promtool check rules`` and ``promtool test rules`` on the generated files, in a scratch
    folder laid out like the output (the tests name their rule files relatively)."""
    rule_files = sorted(p for p in result.files if p.startswith(f"{output.RULES}/"))
    test_files = sorted(p for p in result.files if p.startswith(f"{output.RULE_TESTS}/"))
    if not rule_files:
        return
    problems = []
    with TemporaryDirectory(prefix="meshlens-build-") as scratch:
        folder = Path(scratch)
        output.stage(folder, {p: result.files[p] for p in (*rule_files, *test_files)})
        failure = promql_check.check_rule_files([folder / p for p in rule_files], promtool)
        if failure:
            problems.append(
                Problem(
                    ", ".join(result.sources[p] for p in rule_files),
                    None,
                    "generated rules",
                    f"promtool check rules failed:\n{failure}",
                    "fix the alert or SLO definition",
                )
            )
        # The two cores of a small machine: the test files run side by side.
        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(lambda p: (p, promql_check.run_rule_tests(folder / p, promtool)), test_files))
    for path, failed in outcomes:
        if failed:
            problems.append(
                Problem(
                    result.sources[path],
                    None,
                    f"generated tests {path}",
                    f"promtool test rules failed:\n{failed}",
                    "an alert that cannot fire as defined: check its threshold, window and for",
                )
            )
        else:
            say(f"  tested    {path}: {result.test_counts[path]} promtool tests passed")
    if problems:
        raise BuildFailed(problems)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshlens build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 listing stale files")
    parser.add_argument(
        "--dashboards",
        type=Path,
        default=DEFAULT_DASHBOARDS,
        help="folder of *.dashboard.py files (default: meshlens's own)",
    )
    parser.add_argument(
        "--alerts", type=Path, default=DEFAULT_ALERTS, help="folder of SLO and alert YAML (default: meshlens's own)"
    )
    parser.add_argument("--out", type=Path, default=CHART_FILES, help="output folder (default: the chart's files/)")
    parser.add_argument("--promtool", default=None, help="the promtool binary (default: promtool on PATH)")
    parser.add_argument(
        "--runbook-url-base",
        default=generate.RUNBOOK_URL_BASE,
        help="what each alert's runbook_url starts with (then <alert>.md)",
    )
    parser.add_argument(
        "--collector",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also write the collector config (default: when writing into the chart)",
    )
    return parser


def plan_from(args: argparse.Namespace) -> Plan:
    alerts = args.alerts
    for folder, what in ((args.dashboards, "--dashboards"), (alerts, "--alerts")):
        if not folder.is_dir():
            raise SystemExit(f"meshlens build: {what} {folder} is not a folder")
    if args.out.resolve() == CHART_FILES.resolve() and not CHART_FILES.parent.is_dir():
        raise SystemExit(f"meshlens build: the chart is not at {CHART_FILES.parent}; pass --out DIR")
    own_runbooks = args.runbook_url_base == generate.RUNBOOK_URL_BASE and RUNBOOKS.is_dir()
    collector = args.collector if args.collector is not None else args.out.resolve() == CHART_FILES.resolve()
    return Plan(
        dashboards=args.dashboards,
        alerts=alerts,
        out=args.out,
        shown_dashboards=_shown(args.dashboards, DEFAULT_DASHBOARDS, "dashboards"),
        shown_alerts=_shown(alerts, DEFAULT_ALERTS, "alerts"),
        promtool=promql_check.promtool_path(args.promtool),
        runbook_base=args.runbook_url_base,
        runbooks=RUNBOOKS if own_runbooks else None,
        collector=collector,
    )


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out_stream = stdout or sys.stdout
    err_stream = stderr or sys.stderr
    args = _parser().parse_args(argv)
    try:
        plan = plan_from(args)
    except promql_check.PromtoolMissingError as exc:
        print(f"meshlens build: {exc}", file=err_stream)
        return 2

    def say(line: str) -> None:
        print(line, file=out_stream, flush=True)

    target = _shown(plan.out, CHART_FILES, "helm/meshlens/files")
    say(
        f"meshlens build: {plan.shown_dashboards}/ and {plan.shown_alerts}/ -> {target}/"
        + (" (check only)" if args.check else "")
    )
    try:
        result = build(plan, say)
    except BuildFailed as failed:
        for problem in failed.problems:
            print(problem, file=err_stream)
        print(f"meshlens build: {len(failed.problems)} problem(s); nothing was written", file=err_stream)
        return 1
    for note in result.notes:
        say(f"  note      {note}")
    if args.check:
        changes = output.compare(plan.out, result.files)
        for change in changes:
            print(f"{change.status:<9} {target}/{change.path}", file=err_stream)
        if changes:
            print(
                f"meshlens build --check: {len(changes)} file(s) out of date: run `meshlens build` and commit them",
                file=err_stream,
            )
            return 1
        say(f"meshlens build --check: all {len(result.files)} generated files are up to date")
        return 0
    for change in output.write(plan.out, result.files):
        source = result.sources.get(change.path, "its source is gone")
        say(f"  {change.status:<9} {target}/{change.path}  ({source})")
    return 0
