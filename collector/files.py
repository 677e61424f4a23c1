"""The files this package contributes to the chart's ``files/`` folder, as text, deterministically.

``meshlens build`` writes them with the rest of the generated files; ``python -m meshlens_collector``
writes or checks them on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from meshlens_collector import pipelines
from meshlens_collector.templating import to_template

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
CHART_FILES = REPOSITORY_ROOT / "helm" / "meshlens" / "files"
"""The chart's ``files/`` folder in a checkout (the generated paths below are relative to it)."""

# Relative path in files/ -> the function that builds its config. The chart's templates read these
# paths (collector/<role>.yaml, jaeger/<storage>.yaml); the Helm tests render each of them.
SOURCES: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
    "collector/gateway.yaml": ("gateway()", pipelines.gateway),
    "collector/agent.yaml": ("agent()", pipelines.agent),
    **{
        f"jaeger/{storage}.yaml": (f"jaeger({storage!r})", partial(pipelines.jaeger, storage))
        for storage in pipelines.JAEGER_STORAGES
    },
}
SOURCE_FILE = f"collector/{Path(pipelines.__file__).name}"


def header(function: str) -> str:
    # No double braces here: the chart runs these files through `tpl`.
    return (
        f"# DO NOT EDIT: generated from {SOURCE_FILE} ({function}) by `meshlens build`\n"
        "# (or `python -m meshlens_collector --write`). Edit the Python, then regenerate.\n"
        "# A Helm template: the chart fills the placeholders from values.yaml with `tpl`, then `fromYaml`.\n"
    )


def generated_files() -> dict[str, str]:
    """Paths relative to the chart's ``files/`` folder -> their text."""
    return {path: header(source) + to_template(build()) for path, (source, build) in SOURCES.items()}
