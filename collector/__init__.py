"""OpenTelemetry Collector pipelines (and the Jaeger v2 config) as code, for the meshlens Helm chart.

``generated_files()`` returns the files the chart reads from its ``files/`` folder; ``meshlens build``
writes them, and ``python -m meshlens_collector --write`` does the same on its own.
"""

from __future__ import annotations

from meshlens_collector.files import generated_files

__all__ = ["generated_files"]
