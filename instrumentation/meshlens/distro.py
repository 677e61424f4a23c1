"""Entry points for ``opentelemetry-instrument``: its users get the meshlens setup.

With meshlens installed, ``opentelemetry-instrument python app.py`` configures
meshlens (select it with ``OTEL_PYTHON_DISTRO=meshlens OTEL_PYTHON_CONFIGURATOR=meshlens``
when other distros are installed too). meshlens instruments the libraries itself
when it is configured; the later per-library calls of ``opentelemetry-instrument``
then find them instrumented and do nothing.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.instrumentation.distro import BaseDistro
from opentelemetry.sdk._configuration import _BaseConfigurator
from opentelemetry.util._importlib_metadata import EntryPoint

from meshlens._setup import configure


class MeshlensDistro(BaseDistro):
    def _configure(self, **kwargs: Any) -> None:
        configure()

    def load_instrumentor(self, entry_point: EntryPoint, **kwargs: Any) -> None:
        instrumentor = entry_point.load()()
        if not getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
            instrumentor.instrument(**kwargs)


class MeshlensConfigurator(_BaseConfigurator):
    def _configure(self, **kwargs: Any) -> None:
        configure()
