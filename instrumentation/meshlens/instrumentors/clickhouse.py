"""ClickHouse client spans for clickhouse-driver (native protocol) and clickhouse-connect (HTTP).

No OpenTelemetry contrib instrumentation exists for either. Each call the application makes
(a query, a command, an insert) is one client span with the database conventions' attributes:
``db.system.name=clickhouse``, ``db.namespace`` (the database), ``db.operation.name``,
``db.collection.name`` when the statement names one table, and ``db.query.text`` with its
literals replaced by ``?`` and cut at :data:`meshlens.instrumentors._db.MAX_QUERY_TEXT_LENGTH`.
The RED processor turns each span into one ``db_client_operation_duration_seconds``
observation. A failed call is an error span with the exception recorded (and ClickHouse's error
code in ``db.response.status_code``), and is counted with its ``error_type``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.trace import SpanKind, Tracer
from wrapt import wrap_function_wrapper

from meshlens._version import __version__
from meshlens.instrumentors import _db, supported_versions

_logger = logging.getLogger("meshlens")

SYSTEM = "clickhouse"
_SCOPE = "meshlens.instrumentors.clickhouse"


def _error_type(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _attributes(statement: _db.Statement, database: str | None, host: str | None, port: int | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"db.system.name": SYSTEM, "db.query.text": statement.text}
    if statement.operation:
        attributes["db.operation.name"] = statement.operation
    if statement.collection:
        attributes["db.collection.name"] = statement.collection
    if database:
        attributes["db.namespace"] = database
    if host:
        attributes["server.address"] = host
    if port:
        attributes["server.port"] = port
    return attributes


class _Traced:
    """Runs one client call inside its span; describing the call never fails it."""

    def __init__(self, tracer: Tracer, describe: Callable[[Any, tuple[Any, ...], Mapping[str, Any]], Any]) -> None:
        self._tracer = tracer
        self._describe = describe

    def _start(self, instance: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> trace.Span | None:
        try:
            statement, attributes = self._describe(instance, args, kwargs)
            if statement.truncated:
                _db.count_truncated(SYSTEM)
            return self._tracer.start_span(statement.span_name, kind=SpanKind.CLIENT, attributes=attributes)
        except Exception:
            _logger.debug("meshlens: could not describe a ClickHouse call; it runs untraced", exc_info=True)
            return None

    @staticmethod
    def _failed(span: trace.Span, exc: BaseException) -> None:
        span.set_attribute("error.type", _error_type(exc))
        code = getattr(exc, "code", None)
        if isinstance(code, int):
            span.set_attribute("db.response.status_code", str(code))
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:256]))

    def __call__(
        self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        span = self._start(instance, args, kwargs)
        if span is None:
            return wrapped(*args, **kwargs)
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                return wrapped(*args, **kwargs)
            except BaseException as exc:
                self._failed(span, exc)
                raise

    def iterate(self, wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """For calls that return an iterator (``execute_iter``): the span lasts until the rows
        are read, and is current only while the client works, never while the caller holds a row."""
        span = self._start(instance, args, kwargs)
        if span is None:
            return wrapped(*args, **kwargs)
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                rows = iter(wrapped(*args, **kwargs))
        except BaseException as exc:
            self._failed(span, exc)
            span.end()
            raise
        return self._rows(span, rows)

    def _rows(self, span: trace.Span, rows: Iterator[Any]) -> Iterator[Any]:
        try:
            while True:
                with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                    try:
                        row = next(rows)
                    except StopIteration:
                        return
                yield row
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._failed(span, exc)
            raise
        finally:
            span.end()


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


# --- clickhouse-driver ---------------------------------------------------------------

_DRIVER_METHODS = ("execute", "execute_iter", "insert_dataframe")


def _describe_driver_call(client: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    statement = _db.describe(str(_argument(args, kwargs, 0, "query") or ""))
    connection = client.connection
    # Before the first connect, the host is the first one configured; after it, the one in use.
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    if host is None and connection.hosts:
        host, port = connection.hosts[0]
    return statement, _attributes(statement, connection.database, host, port)


class ClickHouseDriverInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Client spans for ``clickhouse_driver.Client`` (``execute``, ``execute_iter``,
    ``insert_dataframe``; the DB-API cursor and ``query_dataframe`` go through them)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return supported_versions("clickhouse-driver")

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(_SCOPE, __version__, kwargs.get("tracer_provider"))
        traced = _Traced(tracer, _describe_driver_call)
        wrap_function_wrapper("clickhouse_driver.client", "Client.execute", traced)
        wrap_function_wrapper("clickhouse_driver.client", "Client.execute_iter", traced.iterate)
        wrap_function_wrapper("clickhouse_driver.client", "Client.insert_dataframe", traced)

    def _uninstrument(self, **kwargs: Any) -> None:
        import clickhouse_driver.client

        for method in _DRIVER_METHODS:
            unwrap(clickhouse_driver.client.Client, method)


# --- clickhouse-connect --------------------------------------------------------------


def _connect_target(client: Any) -> tuple[str | None, str | None, int | None]:
    url = urlsplit(str(getattr(client, "url", "") or ""))
    return getattr(client, "database", None), url.hostname, url.port


def _described_connect_call(
    query_of: Callable[[tuple[Any, ...], Mapping[str, Any]], str],
) -> Callable[[Any, tuple[Any, ...], Mapping[str, Any]], tuple[Any, dict[str, Any]]]:
    def describe(client: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        statement = _db.describe(query_of(args, kwargs))
        return statement, _attributes(statement, *_connect_target(client))

    return describe


def _query_context_text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    context = _argument(args, kwargs, 0, "context")
    query = getattr(context, "final_query", None) or getattr(context, "query", "")
    return query.decode(errors="replace") if isinstance(query, bytes) else str(query)


def _insert_context_text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    return f"INSERT INTO {getattr(_argument(args, kwargs, 0, 'context'), 'table', '')}"


def _raw_insert_text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    return f"INSERT INTO {_argument(args, kwargs, 0, 'table')}"


def _first_text(name: str) -> Callable[[tuple[Any, ...], Mapping[str, Any]], str]:
    def text(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        value = _argument(args, kwargs, 0, name)
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")

    return text


# The methods every public call reaches once (query, query_df, insert, command, query_arrow...).
_CONNECT_METHODS: Mapping[str, Callable[[tuple[Any, ...], Mapping[str, Any]], str]] = {
    "_query_with_context": _query_context_text,
    "data_insert": _insert_context_text,
    "raw_insert": _raw_insert_text,
    "command": _first_text("cmd"),
    "raw_query": _first_text("query"),
    "raw_stream": _first_text("query"),
}


def _defining_class(cls: type, method: str) -> type | None:
    """The class of ``cls``'s hierarchy that implements ``method`` (the HTTP client, or the
    backend client it derives from in clickhouse-connect 1.x)."""
    for klass in cls.__mro__:
        function = klass.__dict__.get(method)
        if function is not None and not getattr(function, "__isabstractmethod__", False):
            return klass
    return None


class ClickHouseConnectInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Client spans for clickhouse-connect's HTTP client (every query, command and insert)."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return supported_versions("clickhouse-connect")

    def _instrument(self, **kwargs: Any) -> None:
        from clickhouse_connect.driver.httpclient import HttpClient

        tracer = trace.get_tracer(_SCOPE, __version__, kwargs.get("tracer_provider"))
        for method, query_of in _CONNECT_METHODS.items():
            klass = _defining_class(HttpClient, method)
            if klass is None:
                continue
            wrap_function_wrapper(klass, method, _Traced(tracer, _described_connect_call(query_of)))

    def _uninstrument(self, **kwargs: Any) -> None:
        from clickhouse_connect.driver.httpclient import HttpClient

        for method in _CONNECT_METHODS:
            klass = _defining_class(HttpClient, method)
            if klass is not None:
                unwrap(klass, method)
