"""Instruments every supported library that is installed, with OpenTelemetry's contrib packages.

Detection reads package metadata only (the instrumentor's declared ``instruments``
requirement against the installed distributions), as ``opentelemetry-instrument``
does, so a library that is not installed, or installed at a version the
instrumentation does not support, is never imported. A failing instrumentation
costs that library's telemetry and one log line, never the service.

An installed library is instrumented when the application first imports it, not
at start-up: ``opentelemetry-instrument`` imports every installed library it can
instrument (seconds of start-up for a service that has SQLAlchemy, gRPC and Celery
installed but uses none of them in this process).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts, get_dist_dependency_conflicts
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.trace import TracerProvider
from opentelemetry.util._importlib_metadata import EntryPoint, entry_points
from packaging.requirements import InvalidRequirement, Requirement

from meshlens._hooks import after_import

_logger = logging.getLogger("meshlens")

ENTRY_POINT_GROUP = "opentelemetry_instrumentor"
# meshlens correlates logs itself (meshlens.logs); the contrib logging instrumentor
# would add a second record factory with other attribute names.
HANDLED_BY_MESHLENS = frozenset({"logging"})

# Instrumentations that must wait for the application: the Django instrumentor reads
# the settings, and configures empty ones when they are not set up yet, which breaks
# the usual wsgi.py (it sets DJANGO_SETTINGS_MODULE after the import line) and any
# app that calls settings.configure(). It runs at the start of django.setup() instead.
DEFERRED_UNTIL = {"django": ("django", "setup")}


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _top_level_modules(dist: metadata.Distribution) -> set[str]:
    """The importable top-level names a distribution installs: its ``top_level.txt``, or
    what its file list shows (modern wheels have no ``top_level.txt``; Python 3.10's
    ``packages_distributions`` reads only that file, hence this)."""
    listed = (dist.read_text("top_level.txt") or "").split()
    if listed:
        return set(listed)
    names = set()
    for path in dist.files or ():
        parts = path.parts
        name = parts[0] if len(parts) > 1 else inspect.getmodulename(str(path))
        if name and "." not in name and name != "__pycache__":
            names.add(name)
    return names


@functools.cache
def _modules_by_distribution() -> dict[str, frozenset[str]]:
    modules: dict[str, set[str]] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            modules.setdefault(_normalize(name), set()).update(_top_level_modules(dist))
    return {name: frozenset(found) for name, found in modules.items()}


# The extras under which a contrib instrumentation package lists the libraries it instruments.
CONTRIB_EXTRAS = ("instruments", "instruments-any")


def instrumented_requirements(dist: Any, extras: Iterable[str] = CONTRIB_EXTRAS) -> list[Requirement]:
    """The requirements a distribution declares under ``extras``: for a contrib package, the
    libraries it instruments (its ``instruments`` extras); for meshlens's own instrumentors,
    the meshlens extra their entry point names (see :func:`_own_extras`)."""
    markers = [{"extra": extra} for extra in extras]
    found = []
    for line in getattr(dist, "requires", None) or ():
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is not None and any(requirement.marker.evaluate(marker) for marker in markers):
            found.append(requirement)
    return found


def _own_extras(entry_point: EntryPoint) -> tuple[str, ...]:
    """The extras an entry point names (``module:Class [extra]``): meshlens's own instrumentors
    name the meshlens extra that lists what they instrument; contrib ones name none."""
    return tuple(getattr(entry_point, "extras", None) or ())


def trigger_modules(dist: Any, extras: Iterable[str] = CONTRIB_EXTRAS) -> frozenset[str]:
    """The top-level modules of the installed libraries an instrumentation instruments."""
    names = {_normalize(requirement.name) for requirement in instrumented_requirements(dist, extras)}
    by_distribution = _modules_by_distribution()
    return frozenset(module for name in names for module in by_distribution.get(name, ()))


def _redis_namespace(span: Any, instance: Any, args: Any, kwargs: Any) -> None:
    """Sets ``db.namespace`` to the database index, which the Redis instrumentation
    leaves out under the stable database conventions (every Redis call then had an
    empty namespace). Clients and pipelines both carry their connection pool."""
    if not span.is_recording():
        return
    pool = getattr(instance, "connection_pool", None)
    database = getattr(pool, "connection_kwargs", {}).get("db")
    if database is not None:
        span.set_attribute("db.namespace", str(database))


# Options meshlens passes to contrib instrumentors, by entry-point name.
INSTRUMENTOR_OPTIONS: Mapping[str, Mapping[str, object]] = {"redis": {"request_hook": _redis_namespace}}


def _aiohttp_server_keeps_incoming_context(module: ModuleType) -> None:
    """The aiohttp-server middleware (contrib 0.66b1) parents its span on the incoming
    context but never makes that context current: the handler then runs without the
    request's baggage (and Istio's x-request-id), so neither reaches downstream calls,
    child spans or log records. Every other contrib server instrumentation attaches the
    context; this makes aiohttp's do the same, around the contrib middleware."""
    create = module.create_aiohttp_middleware

    @functools.wraps(create)
    def create_keeping_context(*args: Any, **kwargs: Any) -> Any:
        traced = create(*args, **kwargs)

        @module.web.middleware
        async def keep_incoming_context(request: Any, handler: Any) -> Any:
            token = otel_context.attach(module.extract(request, getter=module.getter))
            try:
                return await traced(request, handler)
            finally:
                otel_context.detach(token)

        return keep_incoming_context

    module.create_aiohttp_middleware = create_keeping_context


# Fixes meshlens applies to a contrib instrumentation's module before instrumenting, by
# entry-point name: (module, patch).
CONTRIB_FIXES: Mapping[str, tuple[str, Callable[[ModuleType], None]]] = {
    "aiohttp-server": ("opentelemetry.instrumentation.aiohttp_server", _aiohttp_server_keeps_incoming_context),
}


@dataclass(frozen=True)
class Outcome:
    name: str
    instrumented: bool
    detail: str = ""


def fastapi_traces_itself() -> bool:
    """FastAPI releases with native OpenTelemetry tracing (the ``fastapi.telemetry``
    package) trace every request once the global tracer provider is set; the contrib
    instrumentation on top would record each request twice. Read from the installed
    files, so FastAPI is not imported."""
    try:
        files = metadata.distribution("fastapi").files or ()
    except metadata.PackageNotFoundError:
        return False
    return any(str(path).replace("\\", "/") == "fastapi/telemetry/__init__.py" for path in files)


def _configure_native_fastapi(module: ModuleType, operation_spans: bool) -> None:
    """Defaults for FastAPI's native telemetry: its per-request operation spans
    (dependencies, endpoint, serialization) only when asked; an app's own
    ``telemetry=`` argument still wins."""
    original = module.FastAPI.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        telemetry = dict(kwargs.get("telemetry") or {})
        telemetry.setdefault("operation_spans", operation_spans)
        kwargs["telemetry"] = telemetry
        original(self, *args, **kwargs)

    module.FastAPI.__init__ = __init__


def instrument_installed(
    tracer_provider: TracerProvider,
    disabled: Iterable[str] = (),
    options: Mapping[str, Mapping[str, object]] | None = None,
    framework_internal_spans: bool = False,
    replaced: Mapping[str, str] | None = None,
) -> list[Outcome]:
    """Instruments each installed library; returns what happened to each candidate.

    ``replaced``: entry-point names that meshlens instruments itself, with how (they are
    left alone here).
    """
    replaced = replaced or {}
    disabled = set(disabled)
    outcomes: list[Outcome] = []
    if "*" in disabled:
        return outcomes
    # The contrib instrumentations also record their own OpenTelemetry metrics; meshlens
    # derives its metrics from spans instead, so theirs go to a no-op provider.
    meter_provider = NoOpMeterProvider()
    native_fastapi = fastapi_traces_itself()
    seen: set[str] = set()
    # meshlens's own instrumentors first: one of them replaces a contrib package of the same
    # name (Elasticsearch's, which the contrib project dropped for the client's native tracing).
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: not _own_extras(point)):
        name = entry_point.name
        if name in seen or name in HANDLED_BY_MESHLENS:
            continue
        seen.add(name)
        if name in disabled:
            outcomes.append(Outcome(name, False, "disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"))
            continue
        if name in replaced:
            outcomes.append(Outcome(name, True, replaced[name]))
            continue
        if name == "fastapi" and native_fastapi:
            after_import("fastapi.applications",
                         functools.partial(_configure_native_fastapi, operation_spans=framework_internal_spans))
            outcomes.append(Outcome(name, True, "FastAPI's native OpenTelemetry tracing"))
            continue
        try:
            dist = getattr(entry_point, "dist", None)
            own_extras = _own_extras(entry_point)
            if dist is not None:
                if own_extras:
                    conflict = get_dependency_conflicts(instrumented_requirements(dist, own_extras))
                else:
                    conflict = get_dist_dependency_conflicts(dist)
                if conflict is not None:
                    if getattr(conflict, "found", None):  # installed, at a version it does not support
                        _logger.warning("meshlens: %s; it runs untraced", conflict)
                    outcomes.append(Outcome(name, False, str(conflict)))
                    continue
            if name in CONTRIB_FIXES:
                after_import(*CONTRIB_FIXES[name])
            kwargs = {"tracer_provider": tracer_provider, "meter_provider": meter_provider,
                      **INSTRUMENTOR_OPTIONS.get(name, {}), **(options or {}).get(name, {})}
            if name in DEFERRED_UNTIL:
                _defer(name, entry_point, kwargs)
                outcomes.append(Outcome(name, True, "deferred until {}.{}()".format(*DEFERRED_UNTIL[name])))
                continue
            triggers = trigger_modules(dist, own_extras or CONTRIB_EXTRAS)
            if not triggers or any(module in sys.modules for module in triggers):
                outcomes.append(_instrument(name, entry_point, kwargs))
                continue
            once = _Once(functools.partial(_instrument_logged, name, entry_point, kwargs))
            for module in triggers:
                after_import(module, once)
            outcomes.append(Outcome(name, True, f"when {', '.join(sorted(triggers))} is imported"))
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


class _Once:
    """Runs a function the first time it is called, whatever the argument."""

    def __init__(self, function: Any) -> None:
        self._function: Any = function

    def __call__(self, _module: ModuleType) -> None:
        function, self._function = self._function, None
        if function is not None:
            function()


def _instrument_logged(name: str, entry_point: EntryPoint, kwargs: dict[str, object]) -> None:
    try:
        _instrument(name, entry_point, kwargs)
    except ModuleNotFoundError:
        pass  # an alternative package of the instrumentation, not installed
    except Exception as exc:
        _logger.warning("meshlens: could not instrument %s (%s: %s); it runs untraced",
                        name, type(exc).__name__, exc)


def _defer(name: str, entry_point: EntryPoint, kwargs: dict[str, object]) -> None:
    module_name, function_name = DEFERRED_UNTIL[name]

    def patch(module: ModuleType) -> None:
        original = getattr(module, function_name)

        @functools.wraps(original)
        def first_call(*args: object, **call_kwargs: object) -> object:
            setattr(module, function_name, original)
            _instrument_logged(name, entry_point, kwargs)
            return original(*args, **call_kwargs)

        setattr(module, function_name, first_call)

    after_import(module_name, patch)
