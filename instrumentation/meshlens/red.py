"""RED metrics from spans: one place turns every instrumented call into the catalogue's metrics.

The contrib instrumentations describe each call with semantic-convention attributes
on its span (method, route, status, database system). Deriving the metrics from the
span, in a span processor, gives every library the same metrics with no per-library
code, and the span's trace id is at hand for the exemplar. The sampler records
unsampled spans too (:class:`meshlens.tracing.RecordUnsampled`), so the metrics count
every request whatever the sampling ratio; exemplars come from sampled spans only,
so that each one links to a trace that exists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from meshlens import catalogue
from meshlens.instruments import Instruments

# Attribute names, stable semantic conventions first, then the older names that
# instrumentations still emit unless told otherwise.
_METHOD = ("http.request.method", "http.method")
_ROUTE = ("http.route",)
_STATUS = ("http.response.status_code", "http.status_code")
_SCHEME = ("url.scheme", "http.scheme")
_SERVER_ADDRESS = ("server.address", "net.peer.name", "http.host")
_DB_SYSTEM = ("db.system.name", "db.system")
_DB_NAMESPACE = ("db.namespace", "db.name", "db.redis.database_index")
_DB_OPERATION = ("db.operation.name", "db.operation")
_RPC_SYSTEM = ("rpc.system",)
_RPC_SERVICE = ("rpc.service",)
_RPC_METHOD = ("rpc.method",)
_RPC_STATUS = ("rpc.grpc.status_code",)

# Methods kept as label values; anything else is "_OTHER", as the conventions say,
# so a client sending made-up methods cannot grow the label set.
KNOWN_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY")
)
_MAX_OPERATION_LENGTH = 64


def _first(attributes: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = attributes.get(name)
        if value is not None:
            return value
    return None


def _method(attributes: Mapping[str, Any]) -> str | None:
    method = _first(attributes, _METHOD)
    if method is None:
        return None
    method = str(method)
    return method if method in KNOWN_METHODS else "_OTHER"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _db_operation(span: ReadableSpan, attributes: Mapping[str, Any]) -> str:
    operation = _first(attributes, _DB_OPERATION)
    if operation is None:
        # Instrumentations without the attribute name the span after the command
        # or the statement's first keyword ("SELECT", "GET").
        operation = span.name.split(" ", 1)[0]
    return str(operation)[:_MAX_OPERATION_LENGTH]


class RedMetricsProcessor(SpanProcessor):
    """Records the duration histograms and the in-flight gauge from spans."""

    def __init__(
        self,
        instruments: Instruments,
        on_server_start: Callable[[], None] | None = None,
    ) -> None:
        self._server_duration = instruments[catalogue.HTTP_SERVER_REQUEST_DURATION]
        self._active = instruments[catalogue.HTTP_SERVER_ACTIVE_REQUESTS]
        self._client_duration = instruments[catalogue.HTTP_CLIENT_REQUEST_DURATION]
        self._db_duration = instruments[catalogue.DB_CLIENT_OPERATION_DURATION]
        self._rpc_server = instruments[catalogue.RPC_SERVER_DURATION]
        self._rpc_client = instruments[catalogue.RPC_CLIENT_DURATION]
        self._on_server_start = on_server_start

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.kind is not SpanKind.SERVER:
            return
        if self._on_server_start is not None:
            self._on_server_start()
        attributes = span.attributes or {}
        method = _method(attributes)
        if method is not None:
            self._active.labels(method, _text(_first(attributes, _SCHEME))).inc()

    def on_end(self, span: ReadableSpan) -> None:
        if span.end_time is None or span.start_time is None:
            return
        attributes = span.attributes or {}
        kind = span.kind
        duration = (span.end_time - span.start_time) / 1e9
        context = span.context
        sampled = context.trace_flags.sampled
        trace_id = context.trace_id if sampled else 0
        span_id = context.span_id if sampled else 0
        if kind is SpanKind.SERVER:
            method = _method(attributes)
            if method is not None:
                self._active.labels(method, _text(_first(attributes, _SCHEME))).dec()
                labels = (
                    method,
                    _text(_first(attributes, _ROUTE)),
                    _text(_first(attributes, _STATUS)),
                )
                self._server_duration.observe(labels, duration, trace_id, span_id)
            elif _first(attributes, _RPC_SYSTEM) is not None:
                self._rpc_server.observe(self._rpc_labels(attributes), duration, trace_id, span_id)
        elif kind is SpanKind.CLIENT:
            system = _first(attributes, _DB_SYSTEM)
            if system is not None:
                labels = (
                    str(system),
                    _text(_first(attributes, _DB_NAMESPACE)),
                    _db_operation(span, attributes),
                )
                self._db_duration.observe(labels, duration, trace_id, span_id)
                return
            method = _method(attributes)
            if method is not None:
                labels = (
                    method,
                    _text(_first(attributes, _SERVER_ADDRESS)),
                    _text(_first(attributes, _STATUS)),
                )
                self._client_duration.observe(labels, duration, trace_id, span_id)
            elif _first(attributes, _RPC_SYSTEM) is not None:
                self._rpc_client.observe(self._rpc_labels(attributes), duration, trace_id, span_id)

    @staticmethod
    def _rpc_labels(attributes: Mapping[str, Any]) -> tuple[str, str, str, str]:
        return (
            _text(_first(attributes, _RPC_SYSTEM)),
            _text(_first(attributes, _RPC_SERVICE)),
            _text(_first(attributes, _RPC_METHOD)),
            _text(_first(attributes, _RPC_STATUS)),
        )

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
