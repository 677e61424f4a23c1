"""Instruments every supported library that is installed, with OpenTelemetry's contrib packages.

Detection reads package metadata only (the instrumentor's declared ``instruments``
requirement against the installed distributions), as ``opentelemetry-instrument``
does, so a library that is not installed, or installed at a version the
instrumentation does not support, is never imported. A failing instrumentation
costs that library's telemetry and one log line, never the service.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import TracerProvider
from opentelemetry.util._importlib_metadata import EntryPoint, entry_points

_logger = logging.getLogger("meshlens")

ENTRY_POINT_GROUP = "opentelemetry_instrumentor"
# meshlens correlates logs itself (meshlens.logs); the contrib logging instrumentor
# would add a second record factory with other attribute names.
HANDLED_BY_MESHLENS = frozenset({"logging"})

# The libraries meshlens supports and tests, by entry-point name, for the docs and
# the `meshlens[...]` extras. Any other installed contrib instrumentation is used too.
SUPPORTED = (
    "flask", "django", "fastapi", "starlette", "aiohttp-server",
    "requests", "httpx", "urllib3", "urllib", "aiohttp-client",
    "grpc_client", "grpc_server", "grpc_aio_client", "grpc_aio_server",
    "psycopg", "psycopg2", "asyncpg", "sqlalchemy", "redis", "celery",
)  # fmt: skip


# Instrumentations that must wait for the application: the Django instrumentor reads
# the settings, and configures empty ones when they are not set up yet, which breaks
# the usual wsgi.py (it sets DJANGO_SETTINGS_MODULE after the import line) and any
# app that calls settings.configure(). It runs at the start of django.setup() instead.
DEFERRED_UNTIL = {"django": ("django", "setup")}


@dataclass(frozen=True)
class Outcome:
    name: str
    instrumented: bool
    detail: str = ""


def _dist(entry_point: EntryPoint) -> object | None:
    return getattr(entry_point, "dist", None)


def instrument_installed(
    tracer_provider: TracerProvider,
    disabled: Iterable[str] = (),
    options: Mapping[str, Mapping[str, object]] | None = None,
) -> list[Outcome]:
    """Instruments each installed library; returns what happened to each candidate."""
    disabled = set(disabled)
    outcomes: list[Outcome] = []
    if "*" in disabled:
        return outcomes
    # The contrib instrumentations also record their own OpenTelemetry metrics; meshlens
    # derives its metrics from spans instead, so theirs go to a no-op provider.
    meter_provider = NoOpMeterProvider()
    seen: set[str] = set()
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        if name in seen or name in HANDLED_BY_MESHLENS:
            continue
        seen.add(name)
        if name in disabled:
            outcomes.append(Outcome(name, False, "disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"))
            continue
        try:
            dist = _dist(entry_point)
            if dist is not None:
                conflict = get_dist_dependency_conflicts(dist)  # type: ignore[arg-type]
                if conflict is not None:
                    outcomes.append(Outcome(name, False, str(conflict)))
                    continue
            kwargs = {"tracer_provider": tracer_provider, "meter_provider": meter_provider,
                      **(options or {}).get(name, {})}
            if name in DEFERRED_UNTIL:
                _defer(name, entry_point, kwargs)
                outcomes.append(Outcome(name, True, "deferred until {}.{}()".format(*DEFERRED_UNTIL[name])))
                continue
            outcomes.append(_instrument(name, entry_point, kwargs))
        except ModuleNotFoundError as exc:
            # Declared requirements satisfied, yet the library is absent (alternative
            # packages of one instrumentation): nothing to instrument.
            outcomes.append(Outcome(name, False, f"not installed: {exc.name or exc}"))
        except Exception as exc:
            _logger.warning("meshlens: could not instrument %s (%s: %s); it runs untraced",
                            name, type(exc).__name__, exc)
            outcomes.append(Outcome(name, False, f"{type(exc).__name__}: {exc}"))
    instrumented = sorted(o.name for o in outcomes if o.instrumented)
    _logger.debug("meshlens: instrumented %s", ", ".join(instrumented) or "nothing")
    return outcomes


def _instrument(name: str, entry_point: EntryPoint, kwargs: dict[str, object]) -> Outcome:
    instrumentor = entry_point.load()()
    if getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
        return Outcome(name, True, "already instrumented")
    instrumentor.instrument(skip_dep_check=True, **kwargs)
    return Outcome(name, True)


def _defer(name: str, entry_point: EntryPoint, kwargs: dict[str, object]) -> None:
    module_name, function_name = DEFERRED_UNTIL[name]
    module = importlib.import_module(module_name)
    original = getattr(module, function_name)

    @functools.wraps(original)
    def first_call(*args: object, **call_kwargs: object) -> object:
        setattr(module, function_name, original)
        try:
            _instrument(name, entry_point, kwargs)
        except Exception as exc:
            _logger.warning("meshlens: could not instrument %s (%s: %s); it runs untraced",
                            name, type(exc).__name__, exc)
        return original(*args, **call_kwargs)

    setattr(module, function_name, first_call)
