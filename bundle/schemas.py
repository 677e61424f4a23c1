"""Where the reference schemas live (Grafana dashboard, Kubernetes CRDs, Collector manifest).

They are upstream reference data read where they lie, never copied into the repository. One
setting finds them: ``MESHLENS_SCHEMAS_DIR`` (default: ``../shared/schemas`` beside the checkout).
A user's own clone may not have them: checks that need them skip and say so, except under CI
(``CI=true``), where their absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

SCHEMAS_DIR_SETTING = "MESHLENS_SCHEMAS_DIR"
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCHEMAS_DIR = REPOSITORY_ROOT.parent / "shared" / "schemas"

# Paths inside the schemas folder, written once.
GRAFANA_DASHBOARD_SCHEMA = Path("grafana/foundation-sdk-v11.6.x/dashboard.jsonschema.json")
OTELCOL_CONTRIB_MANIFEST = Path("otelcol/otelcol-contrib-manifest.yaml")
CRDS = Path("crds")


class SchemasMissingError(RuntimeError):
    """The reference schemas are not where the setting points."""


def schemas_dir(environ: os._Environ[str] | dict[str, str] | None = None) -> Path | None:
    """The schemas folder, or None when it is absent (a user's clone without the shared data)."""
    env = os.environ if environ is None else environ
    configured = env.get(SCHEMAS_DIR_SETTING)
    path = Path(configured).expanduser() if configured else DEFAULT_SCHEMAS_DIR
    return path if path.is_dir() else None


def require_schema(relative: Path, environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """The path of one schema file; raises SchemasMissingError naming the setting when absent."""
    base = schemas_dir(environ)
    env = os.environ if environ is None else environ
    where = env.get(SCHEMAS_DIR_SETTING) or str(DEFAULT_SCHEMAS_DIR)
    if base is None or not (base / relative).exists():
        raise SchemasMissingError(
            f"{relative} not found under {where}; set {SCHEMAS_DIR_SETTING} to the folder of reference schemas"
        )
    return base / relative


def missing_is_failure(environ: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Under CI the schemas must be there: a skipped check would hide a real failure."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").lower() in {"1", "true", "yes"}
