"""PostgreSQL (psycopg, psycopg2, asyncpg, SQLAlchemy) and Redis (redis-py, redis.asyncio)
from a service with only the import line, against the real servers on loopback.

Each request runs a known set of statements or commands; the test checks the spans the
collector receives (children of the request's server span, with the conventions'
attributes) and that /metrics counts exactly those operations, under the right labels.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import pytest
from library_checks import (
    CLIENT_KIND,
    INSTRUMENTATION_FAILED,
    SERVER_KIND,
    STATUS_ERROR,
    delta,
    descends_from,
    exemplar_trace_ids,
    label_values,
    traceparent,
)

from harness import base_env, bin_path, free_port, running, sample_value, started_sink

pytestmark = pytest.mark.slow

DB_COUNT = "db_client_operation_duration_seconds_count"
PG_STATEMENTS = {"CREATE": 1, "INSERT": 1, "SELECT": 3}
REDIS_COMMANDS = {"SET": 1, "GET": 2, "PIPELINE": 1}
SCOPE = "opentelemetry.instrumentation."


@dataclass(frozen=True)
class Case:
    path: str
    scope: str
    system: str
    operations: dict[str, int]
    namespace: str | None  # None: not checked here (see test_redis_namespace_is_the_database_index)
    port: int


CASES = {
    "psycopg": Case("/psycopg", SCOPE + "psycopg", "postgresql", PG_STATEMENTS, "test", 5432),
    "psycopg2": Case("/psycopg2", SCOPE + "psycopg2", "postgresql", PG_STATEMENTS, "test", 5432),
    "asyncpg": Case("/asyncpg", SCOPE + "asyncpg", "postgresql", PG_STATEMENTS, "test", 5432),
    "sqlalchemy": Case("/sqlalchemy", SCOPE + "sqlalchemy", "postgresql", PG_STATEMENTS, "test", 5432),
    "redis": Case("/redis", SCOPE + "redis", "redis", REDIS_COMMANDS, None, 6379),
    "redis-asyncio": Case("/redis-asyncio", SCOPE + "redis", "redis", REDIS_COMMANDS, None, 6379),
}


def _uvicorn(port: int) -> list[str]:
    return [bin_path("uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "db_app:app"]


sink = pytest.fixture(scope="module")(started_sink)

@pytest.fixture(scope="module")
def service(sink, tmp_path_factory):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="db-app")
    with running(_uvicorn(port), port, env, tmp_path_factory.mktemp("db") / "service.log") as service:
        yield service


def _request(service, sink, path):
    """GETs ``path`` in a new trace; returns the trace id and the request's server span."""
    trace_id, parent_span_id, header = traceparent()
    status, body, _ = service.get(path, {"traceparent": header})
    assert status == 200, body
    spans = sink.wait_trace(trace_id, lambda s: any(x.kind == SERVER_KIND and x.parent_span_id == parent_span_id
                                                    for x in s))
    server = next(s for s in spans if s.kind == SERVER_KIND and s.parent_span_id == parent_span_id)
    assert server.attributes["http.route"] == path
    return trace_id, server


def _operation(span):
    if "db.redis.pipeline_length" in span.attributes:
        return "PIPELINE"
    return span.name.split(" ", 1)[0].upper()


@pytest.mark.parametrize("library", list(CASES))
def test_operations_are_child_spans_and_counted_once(library, service, sink):
    case = CASES[library]
    total = sum(case.operations.values())
    before = service.metrics()
    trace_id, server = _request(service, sink, case.path)

    def operations_of(spans):
        # SQLAlchemy's "connect" span is Engine.connect(), a pool checkout: not an operation.
        return [s for s in spans if s.scope == case.scope and s.name != "connect"]

    spans = sink.wait_trace(trace_id, lambda s: len(operations_of(s)) >= total)
    operations = operations_of(spans)
    assert len(operations) == total, [s.name for s in operations]
    assert collections.Counter(_operation(s) for s in operations) == case.operations
    for span in operations:
        assert span.kind == CLIENT_KIND
        assert descends_from(span, server, spans), f"{span.name} is not under the request's server span"
        assert span.start_ns >= server.start_ns and span.end_ns <= server.end_ns
        attributes = span.attributes
        assert attributes["db.system.name"] == case.system
        assert attributes["server.address"] == "127.0.0.1"
        assert attributes["server.port"] == case.port
        assert attributes["db.query.text"]
        if case.namespace is not None:
            assert attributes["db.namespace"] == case.namespace
        if case.system == "redis":
            # Values and keys are not recorded: "SET ? ? ? ?".
            assert "meshlens-test" not in attributes["db.query.text"]
    if library == "sqlalchemy":
        # SQLAlchemy names the operation after the statement and the database.
        assert {s.attributes["db.operation.name"] for s in operations} == {"CREATE test", "INSERT test", "SELECT test"}
        assert [s.name for s in spans if s.scope == case.scope and s not in operations] == ["connect"]
        # psycopg's spans for the same statements are siblings in the trace, not extra operations.
        driver = [s for s in spans if s.scope == SCOPE + "psycopg"]
        assert len(driver) == total

    after = service.metrics()
    labels = {"db_system_name": case.system}
    if case.namespace is not None:
        labels["db_namespace"] = case.namespace
    for operation, calls in case.operations.items():
        assert delta(before, after, DB_COUNT, db_operation_name=operation, **labels) == calls, operation
    # Nothing else: no lower-case duplicate, no driver span counted twice, no connect.
    assert delta(before, after, DB_COUNT, **labels) == total
    assert delta(before, after, "db_client_operation_duration_seconds_sum", **labels) > 0
    assert "" not in label_values(after, DB_COUNT, "db_operation_name")
    # The histogram's exemplars link to this request's trace.
    assert trace_id in exemplar_trace_ids(service.metrics(openmetrics=True), "db_client_operation_duration_seconds",
                                          **labels)


def test_failed_statement_is_an_error_span_and_still_counted(service, sink):
    before = service.metrics()
    trace_id, server = _request(service, sink, "/psycopg/fail")
    spans = sink.wait_trace(trace_id, lambda s: any(x.scope == SCOPE + "psycopg" for x in s))
    failed = next(s for s in spans if s.scope == SCOPE + "psycopg")
    assert failed.status_code == STATUS_ERROR
    assert failed.parent_span_id == server.span_id
    assert delta(before, service.metrics(), DB_COUNT, db_system_name="postgresql", db_namespace="test",
                 db_operation_name="SELECT") == 1


def test_redis_namespace_is_the_database_index(service, sink):
    before = service.metrics()
    _request(service, sink, "/redis")
    assert delta(before, service.metrics(), DB_COUNT, db_system_name="redis", db_namespace="0",
                 db_operation_name="GET") == 2


def test_no_instrumentation_failed(service):
    log = service.log()
    assert INSTRUMENTATION_FAILED not in log, log
    assert "Traceback" not in log, log


def test_old_conventions_chosen_by_the_user(sink, tmp_path):
    """A user who sets OTEL_SEMCONV_STABILITY_OPT_IN (here: empty, the old names only)
    keeps that choice, and the metrics keep their labels."""
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="db-app-old", OTEL_SEMCONV_STABILITY_OPT_IN="")
    with running(_uvicorn(port), port, env, tmp_path / "service.log") as service:
        before = service.metrics()
        trace_id, _ = _request(service, sink, "/psycopg")
        _request(service, sink, "/redis")
        spans = sink.wait_trace(trace_id, lambda s: len([x for x in s if x.kind == CLIENT_KIND]) >= 5)
        span = next(s for s in spans if s.kind == CLIENT_KIND)
        assert span.attributes["db.system"] == "postgresql"
        assert span.attributes["db.name"] == "test"
        assert "db.system.name" not in span.attributes
        after = service.metrics()
        for operation, calls in PG_STATEMENTS.items():
            assert delta(before, after, DB_COUNT, db_system_name="postgresql", db_namespace="test",
                         db_operation_name=operation) == calls
        for operation, calls in REDIS_COMMANDS.items():
            assert delta(before, after, DB_COUNT, db_system_name="redis", db_namespace="0",
                         db_operation_name=operation) == calls
        assert INSTRUMENTATION_FAILED not in service.log()


def test_sqlalchemy_pool_metrics_on_the_endpoint(service, sink):
    """The service's engine (pool_size=2) after a request: its connection is back, idle."""
    _request(service, sink, "/sqlalchemy")
    text = service.metrics()
    pool = {"db_client_connection_pool_name": "127.0.0.1:5432/test"}
    assert sample_value(text, "db_client_connections", db_client_connection_state="used", **pool) == 0
    assert sample_value(text, "db_client_connections", db_client_connection_state="idle", **pool) >= 1
    assert sample_value(text, "db_client_connection_max", **pool) == 12  # pool_size 2 + max_overflow 10
    assert sample_value(text, "db_client_connection_wait_time_seconds_count", **pool) >= 1
