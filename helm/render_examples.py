"""Renders the chart for each scenario into helm/meshlens/examples/<scenario>/ (rendered.yaml, NOTES.txt).

    python helm/render_examples.py           # regenerate the committed examples (after any chart change,
                                             # and after `meshlens build` changes files/)
    python helm/render_examples.py --check   # fail when they are stale

Scenarios: the chart's defaults (no custom resource definitions in the cluster), and every
helm/meshlens/ci/<scenario>-values.yaml. A scenario file says which CRDs its cluster has in a
comment line, "## api-versions: group/version/Kind ...", passed to helm as --api-versions: the one
place that says it, read by this script and by the tests alike.

Helm is the one helm/install-helm.sh caches (Helm 4 by default; MESHLENS_HELM names another).
The tests import this module to render exactly as the examples were rendered.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HELM_DIR = Path(__file__).resolve().parent
REPOSITORY_ROOT = HELM_DIR.parent
CHART = HELM_DIR / "meshlens"
EXAMPLES = CHART / "examples"
TOOLS = REPOSITORY_ROOT / ".cache" / "tools"
HELM_MAJORS = (3, 4)
RELEASE = "meshlens"
NAMESPACE = "observability"
DEFAULTS = "defaults"
API_VERSIONS_MARK = "## api-versions:"
# Added to a copy of the chart only: renders NOTES.txt's text into an object `helm template` shows.
_NOTES_TEMPLATE = "zz-meshlens-notes.yaml"
_NOTES_TEMPLATE_TEXT = (
    'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n'
    '  NOTES.txt: {{ include "meshlens.notes" . | trim | toJson }}\n'
)


def helm_binary(major: int = 4) -> Path | None:
    """The cached Helm of one major version (or MESHLENS_HELM for the default one), if installed."""
    configured = os.environ.get("MESHLENS_HELM")
    candidate = Path(configured) if configured and major == HELM_MAJORS[-1] else TOOLS / f"helm{major}" / "helm"
    return candidate if os.access(candidate, os.X_OK) else None


def scenario_files(chart: Path = CHART) -> dict[str, Path | None]:
    """Scenario name -> its values file (None for the chart's defaults), in a stable order."""
    scenarios: dict[str, Path | None] = {DEFAULTS: None}
    for path in sorted((chart / "ci").glob("*-values.yaml")):
        scenarios[path.name.removesuffix("-values.yaml")] = path
    return scenarios


def api_versions(values_file: Path | None) -> list[str]:
    """The CRDs (group/version/Kind) a scenario's cluster has, from its api-versions comment."""
    if values_file is None:
        return []
    for line in values_file.read_text().splitlines():
        if line.startswith(API_VERSIONS_MARK):
            return line[len(API_VERSIONS_MARK) :].split()
    return []


def template_args(values_file: Path | None) -> list[str]:
    """`helm template` arguments of a scenario, after the chart path."""
    args = ["--namespace", NAMESPACE]
    if values_file is not None:
        args += ["--values", str(values_file)]
    for api_version in api_versions(values_file):
        args += ["--api-versions", api_version]
    return args


def helm_template(helm: Path, chart: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", RELEASE, str(chart), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def render(helm: Path, values_file: Path | None, chart: Path = CHART) -> str:
    """The manifests of one scenario; raises RuntimeError with helm's message when it fails."""
    result = helm_template(helm, chart, template_args(values_file))
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed for {values_file or 'the defaults'}:\n{result.stderr}")
    return result.stdout


def copy_chart(destination: Path, chart: Path = CHART) -> Path:
    """A copy of the chart (without its examples) to render variants of, returned as its path."""
    target = destination / chart.name
    shutil.copytree(chart, target, ignore=shutil.ignore_patterns("examples", "*.partial"))
    return target


def render_notes(helm: Path, values_file: Path | None, chart: Path = CHART) -> str:
    """NOTES.txt of one scenario, rendered with its --api-versions (helm install cannot take them)."""
    with tempfile.TemporaryDirectory(prefix="meshlens-notes-") as scratch:
        copy = copy_chart(Path(scratch), chart)
        (copy / "templates" / _NOTES_TEMPLATE).write_text(_NOTES_TEMPLATE_TEXT)
        args = [*template_args(values_file), "--show-only", f"templates/{_NOTES_TEMPLATE}"]
        result = helm_template(helm, copy, args)
    if result.returncode != 0:
        raise RuntimeError(f"rendering NOTES failed for {values_file or 'the defaults'}:\n{result.stderr}")
    return yaml.safe_load(result.stdout)["data"]["NOTES.txt"].rstrip("\n") + "\n"


def examples(helm: Path) -> dict[Path, str]:
    """Every example file (path -> text) as the chart renders it now."""
    files: dict[Path, str] = {}
    for name, values_file in scenario_files().items():
        header = (
            f"# DO NOT EDIT: rendered by `python helm/render_examples.py` from helm/meshlens"
            f"{f' with ci/{values_file.name}' if values_file else ' with its defaults'}.\n"
        )
        files[EXAMPLES / name / "rendered.yaml"] = header + render(helm, values_file)
        files[EXAMPLES / name / "NOTES.txt"] = render_notes(helm, values_file)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed examples are stale")
    args = parser.parse_args(argv)
    helm = helm_binary()
    if helm is None:
        print("helm not found under .cache/tools: run helm/install-helm.sh (or make tools)", file=sys.stderr)
        return 2
    wanted = examples(helm)
    stale = [path for path, text in wanted.items() if not path.exists() or path.read_text() != text]
    known = {path for path in EXAMPLES.rglob("*") if path.is_file()} if EXAMPLES.exists() else set()
    extra = sorted(known - set(wanted))
    if args.check:
        for path in [*stale, *extra]:
            print(f"stale: {path.relative_to(REPOSITORY_ROOT)}", file=sys.stderr)
        if stale or extra:
            print("run: python helm/render_examples.py", file=sys.stderr)
        return 1 if stale or extra else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(wanted[path])
        partial.replace(path)
        print(f"wrote {path.relative_to(REPOSITORY_ROOT)}")
    for path in extra:  # a scenario that no longer exists
        path.unlink()
        print(f"removed {path.relative_to(REPOSITORY_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
