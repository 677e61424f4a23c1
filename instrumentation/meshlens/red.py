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

import contextvars
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    MessagingOperationTypeValues,
)
from opentelemetry.semconv.attributes.db_attributes import DB_NAMESPACE, DB_OPERATION_NAME, DB_SYSTEM_NAME
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.exception_attributes import EXCEPTION_TYPE
from opentelemetry.semconv.attributes.http_attributes import HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS
from opentelemetry.semconv.attributes.url_attributes import URL_FULL, URL_SCHEME
from opentelemetry.trace import SpanKind, StatusCode

from meshlens import catalogue
from meshlens.instruments import Instruments

# Attribute names, stable semantic conventions first (from the semantic-conventions
# package), then the older names that instrumentations still emit unless told otherwise
# (the package keeps those only as deprecated; RPC has no stable names yet).
_METHOD = (HTTP_REQUEST_METHOD, "http.method")
_ROUTE = (HTTP_ROUTE,)
_STATUS = (HTTP_RESPONSE_STATUS_CODE, "http.status_code")
_SCHEME = (URL_SCHEME, "http.scheme")
_SERVER_ADDRESS = (SERVER_ADDRESS, "net.peer.name", "http.host")
_URL = (URL_FULL, "http.url")
_DB_SYSTEM = (DB_SYSTEM_NAME, "db.system")
_DB_NAMESPACE = (DB_NAMESPACE, "db.name", "db.redis.database_index")
_DB_OPERATION = (DB_OPERATION_NAME, "db.operation")
_RPC_SYSTEM = ("rpc.system",)
_RPC_SERVICE = ("rpc.service",)
_RPC_METHOD = ("rpc.method",)
_RPC_STATUS = ("rpc.grpc.status_code",)
_REDIS_PIPELINE = "db.redis.pipeline_length"
# Messaging (Kafka): aiokafka's and meshlens's spans use the current names, confluent-kafka's
# and kafka-python's producer spans the older ``messaging.destination``.
_MESSAGING_DESTINATION = (MESSAGING_DESTINATION_NAME, "messaging.destination")
_MESSAGING_PROCESS = MessagingOperationTypeValues.PROCESS.value
_MESSAGING_SEND = MessagingOperationTypeValues.SEND.value  # the operation name of a Kafka producer's send
_EXCEPTION = "exception"
_OTHER_ERROR = "_OTHER"
_GRPC_OK, _GRPC_UNKNOWN = "0", "2"

# Systems whose operation names are case-insensitive keywords: "select" and "SELECT"
# are one operation, and one label value.
_UPPERCASE_OPERATIONS = frozenset((
    "postgresql", "mysql", "mariadb", "sqlite", "mssql", "microsoft.sql_server", "oracle", "oracle.db",
    "db2", "ibm.db2", "cockroachdb", "trino", "clickhouse", "redis", "valkey",
))  # fmt: skip

# SQLAlchemy's span for a statement and the driver's span for the same statement
# (psycopg, asyncpg, ...) are siblings, the driver's running inside SQLAlchemy's. The
# metric counts the statement once: at the SQLAlchemy span, the one the application made.
_SQLALCHEMY = "opentelemetry.instrumentation.sqlalchemy"
_SQLALCHEMY_CONNECT = "connect"  # Engine.connect(): a pool checkout, not a database operation
_enclosing_statement: contextvars.ContextVar[int] = contextvars.ContextVar("meshlens_sqlalchemy_statement", default=0)

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


def _error_type(span: ReadableSpan) -> str:
    """``error.type`` as the conventions define it: the attribute when the instrumentation
    sets it, else the type of the exception the span recorded; empty for a success."""
    attributes = span.attributes or {}
    value = attributes.get(ERROR_TYPE)
    if value is not None:
        return str(value)
    if span.status.status_code is not StatusCode.ERROR:
        return ""
    event = _exception_event(span)
    if event is not None and event.attributes:
        return str(event.attributes.get(EXCEPTION_TYPE, _OTHER_ERROR))
    return _OTHER_ERROR


def _exception_event(span: ReadableSpan) -> Event | None:
    """The first exception the span recorded."""
    return next((event for event in span.events if event.name == _EXCEPTION), None)


def _method(attributes: Mapping[str, Any]) -> str | None:
    method = _first(attributes, _METHOD)
    if method is None:
        return None
    method = str(method)
    return method if method in KNOWN_METHODS else "_OTHER"


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _db_operation(span: ReadableSpan, attributes: Mapping[str, Any], system: str, namespace: str) -> str:
    operation = _first(attributes, _DB_OPERATION)
    if operation is not None:
        operation = str(operation)
        # SQLAlchemy appends the database name ("SELECT shop"), which is db.namespace.
        if namespace and operation.endswith(namespace) and operation[-len(namespace) - 1 : -len(namespace)] == " ":
            operation = operation[: -len(namespace) - 1]
    elif _REDIS_PIPELINE in attributes:
        # The span is named after every command in the pipeline ("SET GET INCR"); the
        # conventions name the operation PIPELINE.
        operation = "PIPELINE"
    else:
        # Instrumentations without the attribute name the span after the command
        # or the statement's first keyword ("SELECT", "GET").
        operation = span.name.split(" ", 1)[0]
    if system in _UPPERCASE_OPERATIONS:
        operation = operation.upper()
    return operation[:_MAX_OPERATION_LENGTH]


def _url_host(url: Any) -> str:
    """The host of an absolute URL, as server.address gives it (no port, no brackets)."""
    if not isinstance(url, str):
        return ""
    start = url.find("://")
    if start < 0:
        return ""
    start += 3
    end = len(url)
    for separator in "/?#":
        index = url.find(separator, start, end)
        if index >= 0:
            end = index
    at = url.rfind("@", start, end)
    if at >= 0:
        start = at + 1
    if url.startswith("[", start):
        close = url.find("]", start, end)
        return url[start + 1 : close] if close > 0 else url[start:end]
    colon = url.find(":", start, end)
    return url[start : colon if colon >= 0 else end]


def _server_address(attributes: Mapping[str, Any]) -> str:
    address = _first(attributes, _SERVER_ADDRESS)
    if address is not None:
        return str(address)
    # urllib and urllib3 give only the URL.
    return _url_host(_first(attributes, _URL))


class RedMetricsProcessor(SpanProcessor):
    """Records the duration histograms and the in-flight gauge from spans."""

    def __init__(
        self,
        instruments: Instruments,
        on_server_start: Callable[[], None] | None = None,
        self_measured_scopes: frozenset[str] = frozenset(),
    ) -> None:
        """``self_measured_scopes``: instrumentation scopes whose server spans are measured
        where they are made (meshlens's HTTP server middlewares); skipped here."""
        self._server_duration = instruments[catalogue.HTTP_SERVER_REQUEST_DURATION]
        self._active = instruments[catalogue.HTTP_SERVER_ACTIVE_REQUESTS]
        self._client_duration = instruments[catalogue.HTTP_CLIENT_REQUEST_DURATION]
        self._db_duration = instruments[catalogue.DB_CLIENT_OPERATION_DURATION]
        self._rpc_server = instruments[catalogue.RPC_SERVER_DURATION]
        self._rpc_client = instruments[catalogue.RPC_CLIENT_DURATION]
        self._messaging_operation = instruments[catalogue.MESSAGING_CLIENT_OPERATION_DURATION]
        self._messaging_sent = instruments[catalogue.MESSAGING_CLIENT_SENT_MESSAGES]
        self._messaging_process = instruments[catalogue.MESSAGING_PROCESS_DURATION]
        self._on_server_start = on_server_start
        self._sqlalchemy_statements: set[int] = set()
        self._self_measured = self_measured_scopes

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.kind is SpanKind.CLIENT:
            scope = span.instrumentation_scope
            if scope is not None and scope.name == _SQLALCHEMY and span.name != _SQLALCHEMY_CONNECT:
                # Until this span ends, database spans started in this context are the
                # driver running SQLAlchemy's statement.
                span_id = span.context.span_id
                self._sqlalchemy_statements.add(span_id)
                _enclosing_statement.set(span_id)
            return
        if span.kind is not SpanKind.SERVER or self._measured_elsewhere(span):
            return
        if self._on_server_start is not None:
            self._on_server_start()
        attributes = span.attributes or {}
        method = _method(attributes)
        if method is not None:
            self._active.labels(method, _text(_first(attributes, _SCHEME))).inc()

    def on_end(self, span: ReadableSpan) -> None:
        kind = span.kind
        if span.end_time is None or span.start_time is None or kind is SpanKind.INTERNAL:
            return
        if kind is SpanKind.PRODUCER or kind is SpanKind.CONSUMER:
            self._messaging(span)
            return
        if kind is SpanKind.SERVER and self._measured_elsewhere(span):
            return
        attributes = span.attributes or {}
        duration = (span.end_time - span.start_time) / 1e9
        context = span.context
        sampled = context.trace_flags.sampled
        trace_id = context.trace_id if sampled else 0
        span_id = context.span_id if sampled else 0
        if kind is SpanKind.SERVER:
            method = _method(attributes)
            if method is not None:
                self._active.labels(method, _text(_first(attributes, _SCHEME))).dec()
                status = _first(attributes, _STATUS)
                if status is None and span.status.status_code is StatusCode.ERROR:
                    # The handler raised and the framework answered 500; aiohttp's
                    # instrumentation then records the exception but no status code.
                    status = 500
                labels = (method, _text(_first(attributes, _ROUTE)), _text(status))
                self._server_duration.observe(labels, duration, trace_id, span_id)
            elif _first(attributes, _RPC_SYSTEM) is not None:
                labels = self._rpc_labels(attributes)
                if labels[3] == _GRPC_OK and span.events and _exception_event(span) is not None:
                    # grpcio's server instrumentation records an exception that escaped the
                    # handler, but keeps the OK it set when the call began; the client
                    # received UNKNOWN.
                    labels = (*labels[:3], _GRPC_UNKNOWN)
                self._rpc_server.observe(labels, duration, trace_id, span_id)
        elif kind is SpanKind.CLIENT:
            if self._sqlalchemy_statements:
                self._sqlalchemy_statements.discard(context.span_id)
            system = _first(attributes, _DB_SYSTEM)
            if system is not None:
                if self._counted_elsewhere(span):
                    return
                system = str(system)
                namespace = _text(_first(attributes, _DB_NAMESPACE))
                labels = (system, namespace, _db_operation(span, attributes, system, namespace), _error_type(span))
                self._db_duration.observe(labels, duration, trace_id, span_id)
                return
            method = _method(attributes)
            if method is not None:
                labels = (method, _server_address(attributes), _text(_first(attributes, _STATUS)), _error_type(span))
                self._client_duration.observe(labels, duration, trace_id, span_id)
            elif _first(attributes, _RPC_SYSTEM) is not None:
                self._rpc_client.observe(self._rpc_labels(attributes), duration, trace_id, span_id)

    def ignores_scope(self, scope_name: str) -> bool:
        """True when this processor's on_start and on_end do nothing for the SERVER spans of
        this scope (meshlens's server spans then skip calling it)."""
        return scope_name in self._self_measured

    def _messaging(self, span: ReadableSpan) -> None:
        """A producer's send, or a consumer's processing (meshlens.kafka's ``process`` spans;
        contrib's receive spans are not processing and are not measured)."""
        attributes = span.attributes or {}
        system = attributes.get(MESSAGING_SYSTEM)
        if system is None:
            return
        assert span.end_time is not None and span.start_time is not None
        duration = (span.end_time - span.start_time) / 1e9
        context = span.context
        sampled = context.trace_flags.sampled
        trace_id = context.trace_id if sampled else 0
        span_id = context.span_id if sampled else 0
        system = str(system)
        destination = _text(_first(attributes, _MESSAGING_DESTINATION))
        error = _error_type(span)
        if span.kind is SpanKind.PRODUCER:
            operation = _text(attributes.get(MESSAGING_OPERATION_NAME)) or _MESSAGING_SEND
            self._messaging_operation.observe((system, destination, operation, error), duration, trace_id, span_id)
            self._messaging_sent.labels(system, destination, error).inc()
        elif attributes.get(MESSAGING_OPERATION_TYPE) == _MESSAGING_PROCESS:
            group = _text(attributes.get(MESSAGING_CONSUMER_GROUP_NAME))
            self._messaging_process.observe((system, destination, group, error), duration, trace_id, span_id)

    def _measured_elsewhere(self, span: ReadableSpan) -> bool:
        scope = span.instrumentation_scope
        return scope is not None and scope.name in self._self_measured

    def _counted_elsewhere(self, span: ReadableSpan) -> bool:
        """A database span that is not an operation of its own: SQLAlchemy's
        ``connect`` (a pool checkout) or the driver's span for a statement that
        SQLAlchemy runs (counted at SQLAlchemy's span)."""
        scope = span.instrumentation_scope
        if scope is not None and scope.name == _SQLALCHEMY:
            return span.name == _SQLALCHEMY_CONNECT
        return bool(self._sqlalchemy_statements) and _enclosing_statement.get() in self._sqlalchemy_statements

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
