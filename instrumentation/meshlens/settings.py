"""One frozen settings object: keyword arguments > environment > defaults.

Every setting is declared once, below, with its variable, its default and its
documentation; ``docs/settings.md`` is generated from these declarations.
Standard ``OTEL_*`` variables mean what the OpenTelemetry specification says;
meshlens's own use the ``MESHLENS_`` prefix.

A bad value never stops the service: it logs one warning naming the variable,
the value and the default used instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

_logger = logging.getLogger("meshlens")

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
PROTOCOLS = ("http/protobuf", "grpc")
TRACES_EXPORTERS = ("otlp", "console", "none")
COMPRESSIONS = ("none", "gzip")
DEFAULT_METRICS_PORT = 9464
DEFAULT_OTLP_HTTP_ENDPOINT = "http://localhost:4318"
DEFAULT_OTLP_GRPC_ENDPOINT = "http://localhost:4317"


class InvalidSetting(ValueError):
    """A value that cannot be used; the message says why."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off", ""):
        return False
    raise InvalidSetting("expected true or false")


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise InvalidSetting("expected an integer") from None
        if not low <= value <= high:
            raise InvalidSetting(f"expected an integer from {low} to {high}")
        return value

    return parse


def _float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise InvalidSetting("expected a number") from None
        if not low <= value <= high:
            raise InvalidSetting(f"expected a number from {low:g} to {high:g}")
        return value

    return parse


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise InvalidSetting(f"expected one of {', '.join(choices)}")
        return value

    return parse


def _text(raw: str) -> str:
    return raw.strip()


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _key_values(raw: str) -> tuple[tuple[str, str], ...]:
    """``k=v,k2=v2`` as the OTLP headers and resource attribute variables are written."""
    from urllib.parse import unquote

    pairs = []
    for part in raw.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidSetting(f"expected key=value pairs separated by commas, got {part.strip()!r}")
        pairs.append((unquote(key.strip()), unquote(value.strip())))
    return tuple(pairs)


def _setting(
    env: str | None,
    parse: Callable[[str], Any],
    default: Any,
    doc: str,
    *,
    fallback_env: str | None = None,
) -> Any:
    return field(
        default=default,
        metadata={"env": env, "fallback_env": fallback_env, "parse": parse, "doc": doc},
    )


@dataclass(frozen=True)
class Settings:
    """What meshlens does in this process. Build it with :func:`load_settings`."""

    sdk_disabled: bool = _setting(
        "OTEL_SDK_DISABLED", _parse_bool, False, "`true` turns meshlens off entirely: no instrumentation, "
        "no exporter, no /metrics, no log changes."
    )  # fmt: skip
    service_name: str = _setting(
        "OTEL_SERVICE_NAME", _text, "", "The `service.name` resource attribute. Empty: taken from "
        "`OTEL_RESOURCE_ATTRIBUTES`, else `unknown_service:<executable>` as the specification says."
    )  # fmt: skip
    resource_attributes: tuple[tuple[str, str], ...] = _setting(
        "OTEL_RESOURCE_ATTRIBUTES", _key_values, (), "Extra resource attributes, `key=value,...`. "
        "Kubernetes pod, namespace and node are added from the downward-API variables "
        "(`K8S_POD_NAME`/`POD_NAME`, `K8S_NAMESPACE_NAME`/`POD_NAMESPACE`, `K8S_NODE_NAME`/`NODE_NAME`, "
        "`K8S_POD_UID`/`POD_UID`)."
    )  # fmt: skip
    traces_exporter: str = _setting(
        "OTEL_TRACES_EXPORTER", _one_of(*TRACES_EXPORTERS), "otlp", "Where spans go: `otlp`, "
        "`console` (stdout, for debugging) or `none`."
    )  # fmt: skip
    otlp_protocol: str = _setting(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", _one_of(*PROTOCOLS), "http/protobuf",
        "OTLP transport: `http/protobuf` or `grpc` (`grpc` needs `meshlens[grpc-export]`).",
        fallback_env="OTEL_EXPORTER_OTLP_PROTOCOL",
    )  # fmt: skip
    otlp_endpoint: str = _setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT", _text, "", "Base URL of the collector. For http/protobuf "
        "`/v1/traces` is appended. Default "
        f"`{DEFAULT_OTLP_HTTP_ENDPOINT}` (http) or `{DEFAULT_OTLP_GRPC_ENDPOINT}` (grpc)."
    )  # fmt: skip
    otlp_traces_endpoint: str = _setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", _text, "", "Full URL for spans, used as given; "
        "wins over `OTEL_EXPORTER_OTLP_ENDPOINT`."
    )  # fmt: skip
    otlp_headers: tuple[tuple[str, str], ...] = _setting(
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS", _key_values, (), "Headers sent with every export, "
        "`key=value,...` (URL-encoded values).", fallback_env="OTEL_EXPORTER_OTLP_HEADERS",
    )  # fmt: skip
    otlp_timeout_ms: int = _setting(
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", _int_in(1, 600_000), 10_000, "Milliseconds one export "
        "may take, retries included.", fallback_env="OTEL_EXPORTER_OTLP_TIMEOUT",
    )  # fmt: skip
    otlp_compression: str = _setting(
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", _one_of(*COMPRESSIONS), "none", "`gzip` or `none`.",
        fallback_env="OTEL_EXPORTER_OTLP_COMPRESSION",
    )  # fmt: skip
    sampler: str = _setting(
        "OTEL_TRACES_SAMPLER", _one_of(*SAMPLERS), "parentbased_always_on", "Which traces are kept: "
        f"{', '.join(f'`{s}`' for s in SAMPLERS)}. Unsampled requests still count in every metric."
    )  # fmt: skip
    sampler_arg: float = _setting(
        "OTEL_TRACES_SAMPLER_ARG", _float_in(0.0, 1.0), 1.0, "The ratio for the `traceidratio` "
        "samplers, from 0 to 1."
    )  # fmt: skip
    span_queue_size: int = _setting(
        "OTEL_BSP_MAX_QUEUE_SIZE", _int_in(1, 1_000_000), 2048, "Spans held for export at most; "
        "past it spans are dropped and counted in `meshlens_spans_dropped_total{reason=\"queue_full\"}`."
    )  # fmt: skip
    span_batch_size: int = _setting(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _int_in(1, 1_000_000), 128, "Spans per export request. meshlens "
        "defaults to 128, not the SDK's 512: while a batch is sent, the requests in flight wait (on a "
        "worker with one CPU, for all of it), so smaller batches make shorter waits; spans are encoded "
        "as they end, so a batch is cheap to send."
    )  # fmt: skip
    span_schedule_delay_ms: int = _setting(
        "OTEL_BSP_SCHEDULE_DELAY", _int_in(1, 3_600_000), 5000, "Milliseconds between exports."
    )  # fmt: skip
    propagators: tuple[str, ...] = _setting(
        "OTEL_PROPAGATORS", _csv, ("tracecontext", "baggage", "b3multi", "jaeger"), "Context formats read and "
        "written on every hop: `tracecontext`, `baggage`, `b3` (single header), `b3multi`, `jaeger`, `none`, "
        "or any installed OpenTelemetry propagator entry point. Incoming, the first valid one of W3C, B3 "
        "single, B3 multi, Jaeger is the parent (either B3 name reads both B3 forms); Jaeger `uberctx-*` "
        "and W3C `baggage` are merged, W3C winning on a clash. Outgoing, every named format is written, "
        "and Istio's `x-request-id` is forwarded."
    )  # fmt: skip
    baggage_to_attributes: tuple[str, ...] = _setting(
        "MESHLENS_BAGGAGE_TO_ATTRIBUTES", _csv, (), "Baggage keys copied onto every span of the request "
        "as attributes of the same name, and onto every log record as record attributes (`%(saga.id)s` in "
        "a format; empty when the request has no such entry), for instance `saga.id,tenant.id`. Baggage "
        "crosses HTTP, gRPC and Kafka hops, so an id set once is searchable on every service's spans. "
        "Baggage is sent to every downstream service: list no key whose value is a secret."
    )  # fmt: skip
    disabled_instrumentations: tuple[str, ...] = _setting(
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", _csv, (), "Libraries not to instrument, by "
        "entry-point name (`flask,redis`), or `*` for none."
    )  # fmt: skip
    framework_internal_spans: bool = _setting(
        "MESHLENS_FRAMEWORK_INTERNAL_SPANS", _parse_bool, False, "Keep the per-request internal spans of "
        "ASGI frameworks: the ASGI middleware's `http send`/`http receive` spans and FastAPI's native "
        "operation spans (dependencies, endpoint, serialization). Several extra spans per request, off "
        "by default for their cost."
    )  # fmt: skip
    http_server_spans: str = _setting(
        "MESHLENS_HTTP_SERVER_SPANS", _one_of("meshlens", "contrib"), "meshlens", "Who traces incoming HTTP "
        "requests of Flask, FastAPI/Starlette and bare WSGI/ASGI apps: `meshlens`, its lean middlewares "
        "(a fraction of the cost, see benchmarks/), or `contrib`, OpenTelemetry's contrib instrumentations "
        "(for their request/response hooks and captured headers). Django and aiohttp always use contrib."
    )  # fmt: skip
    excluded_urls: tuple[str, ...] = _setting(
        "OTEL_PYTHON_EXCLUDED_URLS", _csv, (), "Incoming URLs that get no span and no metric: regular "
        "expressions, comma-separated, searched in the full URL (`healthz,/ready$`), as the contrib "
        "instrumentations read the variable."
    )  # fmt: skip
    metrics_port: int = _setting(
        "MESHLENS_METRICS_PORT", _int_in(0, 65535), DEFAULT_METRICS_PORT, "Port of the `/metrics` "
        "endpoint; `0` turns the endpoint off."
    )  # fmt: skip
    metrics_host: str = _setting(
        "MESHLENS_METRICS_HOST", _text, "0.0.0.0", "Address the `/metrics` endpoint listens on."
    )  # fmt: skip
    metric_label_set_limit: int = _setting(
        "MESHLENS_METRIC_LABEL_SET_LIMIT", _int_in(1, 1_000_000), 2000, "Distinct label sets per "
        "metric; observations past it go to one series labelled `otel_metric_overflow=\"true\"` and are "
        "counted in `meshlens_metric_overflow_total`."
    )  # fmt: skip
    multiprocess_dir: str = _setting(
        "MESHLENS_MULTIPROC_DIR", _text, "", "Folder where pre-fork workers share their metrics. Empty: "
        "meshlens detects gunicorn, uWSGI and `uvicorn --workers` and picks a private folder.",
        fallback_env="PROMETHEUS_MULTIPROC_DIR",
    )  # fmt: skip
    runtime_metrics: bool = _setting(
        "MESHLENS_RUNTIME_METRICS", _parse_bool, True, "Python runtime metrics (CPU, memory, GC, "
        "threads, open files, event-loop lag)."
    )  # fmt: skip
    runtime_interval_s: float = _setting(
        "MESHLENS_RUNTIME_INTERVAL", _float_in(0.1, 3600.0), 5.0, "Seconds between runtime samples "
        "in pre-fork workers, whose scrape another process may answer (a single process samples at "
        "scrape time)."
    )  # fmt: skip
    log_correlation: bool = _setting(
        "MESHLENS_LOG_CORRELATION", _parse_bool, True, "Add `trace_id` and `span_id` to every log "
        "record, and to logging's default format."
    )  # fmt: skip
    shutdown_timeout_s: float = _setting(
        "MESHLENS_SHUTDOWN_TIMEOUT", _float_in(0.0, 300.0), 5.0, "Seconds a graceful stop may spend "
        "flushing buffered spans."
    )  # fmt: skip

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _warn(variable: str, raw: object, default: object, reason: str) -> None:
    _logger.warning(
        "meshlens: ignoring %s=%r (%s); using the default %r", variable, raw, reason, default
    )


def _default(spec: Any) -> Any:
    return spec.default if spec.default is not MISSING else spec.default_factory()


def load_settings(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Read the settings: keyword arguments, then the environment, then the defaults."""
    env = os.environ if env is None else env
    known = {spec.name: spec for spec in fields(Settings)}
    unknown = set(overrides) - set(known)
    if unknown:
        raise TypeError(f"unknown meshlens setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, spec in known.items():
        parse = spec.metadata["parse"]
        default = _default(spec)
        if name in overrides:
            value = overrides[name]
            if isinstance(value, str) and not isinstance(default, str):
                try:
                    value = parse(value)
                except InvalidSetting as exc:
                    _warn(f"configure({name}=...)", value, default, str(exc))
                    value = default
            values[name] = value
            continue
        for variable in (spec.metadata["env"], spec.metadata["fallback_env"]):
            if variable and variable in env:
                raw = env[variable]
                try:
                    values[name] = parse(raw)
                except InvalidSetting as exc:
                    _warn(variable, raw, default, str(exc))
                break
    return Settings(**values)


def settings_table() -> str:
    """The documentation table of every setting, as Markdown."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for spec in fields(Settings):
        variable = f"`{spec.metadata['env']}`"
        if spec.metadata["fallback_env"]:
            variable += f" (or `{spec.metadata['fallback_env']}`)"
        default = _default(spec)
        if isinstance(default, tuple):
            default = ",".join(str(part) for part in default) if default else ""
        elif isinstance(default, bool):
            default = str(default).lower()
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| {variable} | {shown} | {spec.metadata['doc']} |")
    return "\n".join(rows) + "\n"
