"""jaeger-client services keep their code: their OpenTracing spans go through meshlens.

When the application imports ``jaeger_client``, ``Config.new_tracer()`` (and so
``Config.initialize_tracer()``, which calls it) returns meshlens's OpenTracing tracer
(:class:`meshlens.opentracing_bridge.BridgeTracer`) instead of a Jaeger tracer: its spans are
OpenTelemetry spans of meshlens's tracer provider, exported over OTLP with the
auto-instrumented ones, in the same traces; no Jaeger agent, no UDP, no sampling poll.
``initialize_tracer()`` is jaeger-client's own: the first call sets ``opentracing.tracer``
and returns the tracer, a later one logs "Jaeger tracer already initialized, skipping" and
returns None.

What a ``Config`` says and how it is used:

- ``service_name``: the spans belong to the process's service (``OTEL_SERVICE_NAME``, one
  resource per process, as for every other span). When the two names differ, the OpenTracing
  spans carry the jaeger-client name as the ``jaeger.service_name`` attribute and meshlens
  logs once which variable to set.
- ``sampler`` settings: meshlens's sampler (``OTEL_TRACES_SAMPLER``) decides, for all spans alike;
  a caller's sampled flag, a Jaeger debug request and the ``sampling.priority`` tag are honoured.
- ``max_tag_value_length``: cuts string tags and log values, as jaeger-client does.
- ``scope_manager``: not used; meshlens keeps the active span in OpenTelemetry's context
  (contextvars: threads and asyncio alike), shared with the auto-instrumented spans.
- custom header names (``trace_id_header``, ``baggage_header_prefix``, ``debug_id_header``):
  not used; meshlens reads and writes the standard names. A Config that sets them logs once.
- reporter, agent and throttler settings: not used; spans go over OTLP.

Detection reads package metadata only: ``jaeger_client`` is never imported by meshlens.
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=jaeger_client`` leaves jaeger-client alone. A failure
to build the tracer is logged once and the application gets jaeger-client's own tracer.
"""

from __future__ import annotations

import functools
import logging
from importlib import metadata
from types import ModuleType
from typing import Any

from opentelemetry.trace import TracerProvider

from meshlens._hooks import after_import
from meshlens._once import WarnOnce

_logger = logging.getLogger("meshlens")

# Its name in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS: the module that is patched.
NAME = "jaeger_client"
DISTRIBUTION = "jaeger-client"
SHIM_DISTRIBUTION = "opentelemetry-opentracing-shim"
SERVICE_NAME_ATTRIBUTE = "jaeger.service_name"
# What jaeger-client uses when a Config does not name its headers.
_STANDARD_HEADERS = {"trace_id_header": "uber-trace-id", "baggage_header_prefix": "uberctx-",
                     "debug_id_header": "jaeger-debug-id"}
_PATCHED = "_meshlens_original"

_log_failure_once = WarnOnce(
    "meshlens: building the OpenTelemetry tracer for jaeger_client failed; jaeger-client's own tracer is used"
)


def installed() -> bool:
    """Whether jaeger-client is installed (from package metadata; nothing is imported)."""
    try:
        metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


def install(tracer_provider: TracerProvider) -> str | None:
    """Patches ``jaeger_client.Config`` once the application imports it; returns what will
    happen (for the runtime's list of instrumented libraries), or None when it is not installed."""
    if not installed():
        return None
    try:
        metadata.distribution(SHIM_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        _logger.warning("meshlens: jaeger-client is installed but %s is not; its spans go to the Jaeger "
                        "agent, not with meshlens's (pip install 'meshlens[jaeger-client]')", SHIM_DISTRIBUTION)
        return None
    after_import(NAME, functools.partial(_patch, tracer_provider))
    return "jaeger_client.Config tracers on OpenTelemetry, when jaeger_client is imported"


def _patch(tracer_provider: TracerProvider, module: ModuleType) -> None:
    config_class = module.Config
    if hasattr(config_class.new_tracer, _PATCHED):
        return
    original = config_class.new_tracer

    @functools.wraps(original)
    def new_tracer(self: Any, io_loop: Any = None) -> Any:
        try:
            return create_tracer(self, tracer_provider)
        except Exception:
            _log_failure_once()
            return original(self, io_loop)

    setattr(new_tracer, _PATCHED, original)
    config_class.new_tracer = new_tracer


def unpatch(module: ModuleType) -> None:
    """Gives ``jaeger_client.Config`` its own ``new_tracer`` back (tests)."""
    original = getattr(module.Config.new_tracer, _PATCHED, None)
    if original is not None:
        module.Config.new_tracer = original


@functools.cache
def _log_service_name(jaeger_name: str, service_name: str) -> None:
    _logger.warning("meshlens: jaeger_client's service_name %r is not this process's service.name %r; "
                    "its spans carry it as %s (set OTEL_SERVICE_NAME=%s to make it the service's name)",
                    jaeger_name, service_name, SERVICE_NAME_ATTRIBUTE, jaeger_name)


@functools.cache
def _log_custom_header(option: str, value: str) -> None:
    _logger.warning("meshlens: jaeger_client Config sets %s=%r; meshlens reads and writes %r "
                    "(with W3C and B3) instead", option, value, _STANDARD_HEADERS[option])


def create_tracer(config: Any, tracer_provider: TracerProvider) -> Any:
    """The OpenTracing tracer for a ``jaeger_client.Config``, on ``tracer_provider``."""
    from opentelemetry.shim.opentracing_shim import __name__ as shim_scope
    from opentelemetry.shim.opentracing_shim.version import __version__ as shim_version

    from meshlens.opentracing_bridge import DEFAULT_MAX_TAG_VALUE_CHARS, BridgeTracer

    jaeger_name = str(config.service_name)
    resource = getattr(tracer_provider, "resource", None)
    service_name = str(resource.attributes.get("service.name", "")) if resource is not None else ""
    attributes: dict[str, str] = {}
    if service_name and jaeger_name != service_name:
        attributes[SERVICE_NAME_ATTRIBUTE] = jaeger_name
        _log_service_name(jaeger_name, service_name)
    for option, standard in _STANDARD_HEADERS.items():
        value = getattr(config, option, standard)
        if isinstance(value, str) and value.lower().replace("_", "-") != standard:
            _log_custom_header(option, value)
    max_chars = getattr(config, "max_tag_value_length", DEFAULT_MAX_TAG_VALUE_CHARS)
    if not isinstance(max_chars, int) or max_chars <= 0:
        max_chars = DEFAULT_MAX_TAG_VALUE_CHARS
    otel_tracer = tracer_provider.get_tracer(shim_scope, shim_version)
    return BridgeTracer(otel_tracer, tracer_provider, jaeger_name, max_chars, attributes)
