"""Elasticsearch (elasticsearch-py's native tracing, turned on by meshlens) from a service with
only the import line.

No Elasticsearch server can run here: the service talks to a loopback HTTP endpoint that
answers as Elasticsearch does (its product header, JSON bodies, a 404 for a missing index).
The client's tracing, the spans' place in the trace, the metrics and the absent request bodies
are what the test checks; Elasticsearch's own behaviour is not.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from library_checks import (
    CLIENT_KIND,
    INSTRUMENTATION_FAILED,
    SERVER_KIND,
    STATUS_ERROR,
    delta,
    descends_from,
    traceparent,
)

from harness import base_env, bin_path, free_port, running, started_sink

pytestmark = pytest.mark.slow

SCOPE = "elasticsearch-api"
DB_COUNT = "db_client_operation_duration_seconds_count"


class StandIn(BaseHTTPRequestHandler):
    """Answers like an Elasticsearch 9 node; keeps each request's method, path, headers and body."""

    received: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def log_message(self, *args: object) -> None:
        return None

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Type", "application/vnd.elasticsearch+json; compatible-with=9")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.received.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        path = self.path.split("?", 1)[0]
        if path.startswith("/missing/"):
            self._answer(404, {"error": {"type": "index_not_found_exception", "reason": "no such index [missing]"},
                               "status": 404})
        elif path.endswith("/_search"):
            self._answer(200, {"took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1, "failed": 0},
                               "hits": {"total": {"value": 1, "relation": "eq"}, "max_score": 1.0, "hits": []}})
        elif "/_doc/" in path:
            self._answer(201, {"_index": "items", "_id": "1", "_version": 1, "result": "created",
                               "_shards": {"total": 1, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1})
        else:
            self._answer(200, {"name": "stand-in", "cluster_name": "meshlens", "version": {"number": "9.1.0"},
                               "tagline": "You Know, for Search"})

    do_GET = do_POST = do_PUT = do_HEAD = _handle


@pytest.fixture(scope="module")
def elasticsearch():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), StandIn)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


sink = pytest.fixture(scope="module")(started_sink)


@pytest.fixture(scope="module")
def service(elasticsearch, sink, tmp_path_factory):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="search-app", ELASTICSEARCH_URL=elasticsearch)
    argv = [bin_path("uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "elasticsearch_app:app"]
    with running(argv, port, env, Path(tmp_path_factory.mktemp("es")) / "service.log") as service:
        yield service


def _request(service, sink, path, expected):
    trace_id, parent_span_id, header = traceparent()
    status, body, _ = service.get(path, {"traceparent": header})
    assert status == 200, body
    spans = sink.wait_trace(trace_id, lambda s: len([x for x in s if x.scope == SCOPE]) >= expected
                            and any(x.kind == SERVER_KIND for x in s))
    server = next(s for s in spans if s.kind == SERVER_KIND and s.parent_span_id == parent_span_id)
    calls = sorted((s for s in spans if s.scope == SCOPE), key=lambda s: s.start_ns)
    assert len(calls) == expected, [s.name for s in calls]
    for span in calls:
        assert span.kind == CLIENT_KIND
        assert descends_from(span, server, spans)
        assert span.attributes["db.system.name"] == "elasticsearch"
    return trace_id, calls


def test_calls_are_client_spans_of_the_request_and_counted(service, sink):
    StandIn.received.clear()
    before = service.metrics()
    trace_id, (index, search) = _request(service, sink, "/search", 2)
    assert index.attributes["db.operation.name"] == "index"
    assert search.attributes["db.operation.name"] == "search"
    assert search.attributes["db.operation.parameter.index"] == "items"
    assert search.attributes["server.address"] == "127.0.0.1"
    # The request bodies went to the server, and stay out of the spans.
    assert any(b"secret-term" in body for _, _, _, body in StandIn.received)
    for span in (index, search):
        assert "db.query.text" not in span.attributes
        assert not any("secret" in str(value) for value in span.attributes.values())
    # The trace continues to the server.
    assert all(headers.get("traceparent", "").split("-")[1] == trace_id for _, _, headers, _ in StandIn.received)

    after = service.metrics()
    labels = {"db_system_name": "elasticsearch", "error_type": ""}
    assert delta(before, after, DB_COUNT, db_operation_name="index", **labels) == 1
    assert delta(before, after, DB_COUNT, db_operation_name="search", **labels) == 1
    assert delta(before, after, DB_COUNT, db_system_name="elasticsearch") == 2


def test_a_failed_call_is_an_error_span_counted_with_its_type(service, sink):
    before = service.metrics()
    _, (search,) = _request(service, sink, "/search/missing", 1)
    assert search.status_code == STATUS_ERROR
    assert search.attributes["db.response.status_code"] == "404"
    assert delta(before, service.metrics(), DB_COUNT, db_system_name="elasticsearch", db_operation_name="search",
                 error_type="elasticsearch.NotFoundError") == 1


def test_no_instrumentation_failed(service):
    log = service.log()
    assert INSTRUMENTATION_FAILED not in log, log
