"""HTTP clients (requests, httpx sync and async, urllib3, urllib, aiohttp) and the aiohttp
server, in services with only the import line, against a plain HTTP server on loopback.

The downstream server is not instrumented: it records the traceparent each request
carried, so the tests see what a next service would see.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from library_checks import (
    CLIENT_KIND,
    INSTRUMENTATION_FAILED,
    SERVER_KIND,
    STATUS_ERROR,
    count,
    delta,
    descends_from,
    exemplar_trace_ids,
    traceparent,
)

from harness import EchoServer, base_env, bin_path, echo_server, free_port, running, started_sink

pytestmark = pytest.mark.slow

CLIENT_COUNT = "http_client_request_duration_seconds_count"
SERVER_COUNT = "http_server_request_duration_seconds_count"
SCOPE = "opentelemetry.instrumentation."

# client: (endpoint, instrumentation scope)
CLIENTS = {
    "requests": ("/sync/requests", SCOPE + "requests"),
    "httpx": ("/sync/httpx", SCOPE + "httpx"),
    "urllib3": ("/sync/urllib3", SCOPE + "urllib3"),
    "urllib": ("/sync/urllib", SCOPE + "urllib"),
    "httpx-async": ("/async/httpx-async", SCOPE + "httpx"),
    "aiohttp": ("/async/aiohttp", SCOPE + "aiohttp_client"),
}
# These instrumentations put the URL on the span but not server.address; the metric's
# label is then taken from the URL.
NO_SERVER_ADDRESS_ATTRIBUTE = {"urllib3", "urllib"}


@pytest.fixture(scope="module")
def downstream() -> Iterator[EchoServer]:
    with echo_server() as server:
        yield server


sink = pytest.fixture(scope="module")(started_sink)

def _uvicorn(port: int) -> list[str]:
    return [bin_path("uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "client_app:app"]


@pytest.fixture(scope="module")
def service(sink, tmp_path_factory):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="client-app")
    with running(_uvicorn(port), port, env, tmp_path_factory.mktemp("clients") / "service.log") as service:
        yield service


def _query(*urls: str) -> str:
    return "?" + "&".join(f"url={quote(u, safe='')}" for u in urls)


@pytest.mark.parametrize("client", list(CLIENTS))
def test_client_calls_are_child_spans_propagated_and_counted(client, service, sink, downstream):
    endpoint, scope = CLIENTS[client]
    urls = (downstream.url("/a"), downstream.url("/b"), downstream.url("/missing"))
    trace_id, parent_span_id, header = traceparent()
    before = service.metrics()
    status, body, _ = service.get(endpoint + _query(*urls), {"traceparent": header})
    assert status == 200, body
    assert body == b"[200,200,404]"

    spans = sink.wait_trace(trace_id, lambda s: len([x for x in s if x.scope == scope]) >= 3
                            and any(x.kind == SERVER_KIND for x in s))
    server = next(s for s in spans if s.kind == SERVER_KIND)
    assert server.parent_span_id == parent_span_id
    calls = sorted((s for s in spans if s.scope == scope), key=lambda s: s.start_ns)
    assert len(calls) == 3, [(s.name, s.scope) for s in spans]
    assert [s for s in spans if s.kind == CLIENT_KIND] == calls, "one client span per call, no nested duplicate"
    for span, url, code in zip(calls, urls, (200, 200, 404), strict=True):
        assert span.kind == CLIENT_KIND
        assert span.name == "GET"
        assert descends_from(span, server, spans)
        assert span.attributes["http.request.method"] == "GET"
        assert span.attributes["url.full"] == url
        assert span.attributes["http.response.status_code"] == code
        if client not in NO_SERVER_ADDRESS_ATTRIBUTE:
            assert span.attributes["server.address"] == "127.0.0.1"
            assert span.attributes["server.port"] == downstream.port
    assert calls[2].status_code == STATUS_ERROR  # a 4xx is an error for a client
    # The next service continues the trace, as the child of the client span.
    assert sorted(downstream.traceparents(trace_id)) == sorted(f"00-{trace_id}-{s.span_id}-01" for s in calls)

    after = service.metrics()
    labels = {"http_request_method": "GET", "server_address": "127.0.0.1"}
    assert delta(before, after, CLIENT_COUNT, http_response_status_code="200", **labels) == 2
    assert delta(before, after, CLIENT_COUNT, http_response_status_code="404", **labels) == 1
    # Nothing else: no empty server_address, no span export counted as a client call.
    assert delta(before, after, CLIENT_COUNT) == 3
    assert trace_id in exemplar_trace_ids(service.metrics(openmetrics=True), "http_client_request_duration_seconds",
                                          **labels)


@pytest.mark.parametrize("client", ["requests", "aiohttp"])
def test_refused_connection_is_an_error_span_and_counted(client, service, sink):
    endpoint, scope = CLIENTS[client]
    closed = f"http://127.0.0.1:{free_port()}/nothing-listens"
    trace_id, _, header = traceparent()
    before = service.metrics()
    status, body, _ = service.get(endpoint + _query(closed), {"traceparent": header})
    assert status == 200 and b"200" not in body, body
    spans = sink.wait_trace(trace_id, lambda s: any(x.scope == scope for x in s))
    failed = next(s for s in spans if s.scope == scope)
    assert failed.status_code == STATUS_ERROR
    assert failed.attributes["error.type"]
    assert "http.response.status_code" not in failed.attributes
    after = service.metrics()
    assert delta(before, after, CLIENT_COUNT, http_request_method="GET", server_address="127.0.0.1",
                 http_response_status_code="", error_type=failed.attributes["error.type"]) == 1


def test_no_instrumentation_failed(service):
    log = service.log()
    assert INSTRUMENTATION_FAILED not in log, log
    assert "Traceback" not in log, log


def test_old_conventions_chosen_by_the_user(sink, downstream, tmp_path):
    """With the old attribute names (no server.address at all), the label comes from http.url."""
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="client-app-old", OTEL_SEMCONV_STABILITY_OPT_IN="")
    with running(_uvicorn(port), port, env, tmp_path / "service.log") as service:
        for endpoint, _ in CLIENTS.values():
            assert service.get(endpoint + _query(downstream.url("/old"), downstream.url("/missing")))[0] == 200
        text = service.metrics()
        labels = {"http_request_method": "GET", "server_address": "127.0.0.1"}
        assert count(text, CLIENT_COUNT, http_response_status_code="200", **labels) == len(CLIENTS)
        assert count(text, CLIENT_COUNT, http_response_status_code="404", **labels) == len(CLIENTS)
        assert count(text, CLIENT_COUNT) == 2 * len(CLIENTS)
        assert INSTRUMENTATION_FAILED not in service.log()


# --- aiohttp server --------------------------------------------------------------


@pytest.fixture(scope="module")
def aiohttp_service(sink, tmp_path_factory):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="aiohttp-app")
    argv = [sys.executable, "aiohttp_app.py", str(port)]
    with running(argv, port, env, tmp_path_factory.mktemp("aiohttp") / "service.log") as service:
        yield service


def test_aiohttp_server_requests(aiohttp_service, sink):
    service = aiohttp_service
    before = service.metrics()
    trace_id, parent_span_id, header = traceparent()
    assert service.get("/items/7", {"traceparent": header})[0] == 200
    for item in range(4):
        assert service.get(f"/items/{item}")[0] == 200
    assert service.get("/nowhere")[0] == 404

    spans = sink.wait_trace(trace_id, lambda s: any(x.kind == SERVER_KIND for x in s))
    server = next(s for s in spans if s.kind == SERVER_KIND)
    assert server.parent_span_id == parent_span_id
    assert server.name == "GET /items/{item_id}"
    assert server.attributes["http.route"] == "/items/{item_id}"
    assert server.attributes["http.request.method"] == "GET"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["url.path"] == "/items/7"

    after = service.metrics()
    assert delta(before, after, SERVER_COUNT, http_request_method="GET", http_route="/items/{item_id}",
                 http_response_status_code="200") == 5
    assert delta(before, after, SERVER_COUNT, http_request_method="GET", http_route="",
                 http_response_status_code="404") == 1
    assert count(after, "http_server_active_requests", http_request_method="GET", url_scheme="http") == 0


def test_aiohttp_server_error_is_a_500(aiohttp_service, sink):
    service = aiohttp_service
    before = service.metrics()
    trace_id, _, header = traceparent()
    assert service.get("/fail", {"traceparent": header})[0] == 500
    spans = sink.wait_trace(trace_id, lambda s: any(x.kind == SERVER_KIND for x in s))
    server = next(s for s in spans if s.kind == SERVER_KIND)
    assert server.status_code == STATUS_ERROR
    assert "exception" in server.events
    after = service.metrics()
    assert delta(before, after, SERVER_COUNT, http_request_method="GET", http_route="/fail",
                 http_response_status_code="500") == 1
    assert delta(before, after, SERVER_COUNT, http_route="/fail") == 1


def test_aiohttp_server_calls_out_in_the_same_trace(aiohttp_service, sink, downstream):
    service = aiohttp_service
    trace_id, _, header = traceparent()
    before = service.metrics()
    status, body, _ = service.get("/call" + _query(downstream.url("/from-aiohttp")), {"traceparent": header})
    assert status == 200, body
    spans = sink.wait_trace(trace_id, lambda s: any(x.kind == SERVER_KIND for x in s)
                            and any(x.kind == CLIENT_KIND for x in s))
    server = next(s for s in spans if s.kind == SERVER_KIND)
    client = next(s for s in spans if s.kind == CLIENT_KIND)
    assert client.parent_span_id == server.span_id
    assert client.scope == SCOPE + "aiohttp_client"
    assert downstream.traceparents(trace_id) == [f"00-{trace_id}-{client.span_id}-01"]
    assert delta(before, service.metrics(), CLIENT_COUNT, http_request_method="GET", server_address="127.0.0.1",
                 http_response_status_code="200") == 1
