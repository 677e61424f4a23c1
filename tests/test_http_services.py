"""Flask, FastAPI and Django services with only the import line, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import re
import signal
import time

import pytest

from harness import OtlpSink, base_env, bin_path, families, free_port, running, sample_value, started_sink

pytestmark = pytest.mark.slow

SERVER_KIND = 2  # OTLP SpanKind SERVER
CLIENT_KIND = 3
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


def _flask(port: int) -> list[str]:
    return [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", "flask_app:app"]


def _fastapi(port: int) -> list[str]:
    return [bin_path("uvicorn"), "--host", "127.0.0.1", "--port", str(port), "fastapi_app:app"]


def _django(port: int) -> list[str]:
    return [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", "django_app:application"]


FLAVOURS = {
    "flask": (_flask, "/items/<int:item_id>"),
    "fastapi": (_fastapi, "/items/{item_id}"),
    "django": (_django, "items/<int:item_id>"),
}


sink = pytest.fixture(started_sink)

@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_request_becomes_span_metric_exemplar_and_log(flavour, sink, tmp_path):
    argv, route = FLAVOURS[flavour]
    port, metrics_port = free_port(), free_port()
    env = base_env(sink, metrics_port, OTEL_SERVICE_NAME=f"svc-{flavour}",
                   K8S_POD_NAME="pod-7", POD_NAMESPACE="shop", NODE_NAME="node-a")
    with running(argv(port), port, env, tmp_path / "service.log") as service:
        traceparent = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
        status, body, _ = service.get("/items/42", {"traceparent": traceparent})
        assert status == 200, body
        for item in range(5):
            assert service.get(f"/items/{item}")[0] == 200

        spans = sink.wait_for(lambda s: sum(x.kind == SERVER_KIND and "42" in str(x.attributes) for x in s) >= 1
                              and sum(x.kind == SERVER_KIND for x in s) >= 6)
        server_spans = [s for s in spans if s.kind == SERVER_KIND and s.attributes.get("http.route") == route]
        assert len(server_spans) == 6
        continued = [s for s in server_spans if s.trace_id == PARENT_TRACE]
        assert len(continued) == 1, "the incoming traceparent must be continued"
        assert continued[0].parent_span_id == PARENT_SPAN
        resource = continued[0].resource
        assert resource["service.name"] == f"svc-{flavour}"
        assert resource["k8s.pod.name"] == "pod-7"
        assert resource["k8s.namespace.name"] == "shop"
        assert resource["k8s.node.name"] == "node-a"
        assert continued[0].attributes["http.request.method"] == "GET"
        assert continued[0].attributes["http.response.status_code"] == 200

        text = service.metrics()
        labels = {"http_request_method": "GET", "http_route": route, "http_response_status_code": "200"}
        assert sample_value(text, "http_server_request_duration_seconds_count", **labels) == 6
        assert sample_value(text, "process_memory_usage_bytes") > 10_000_000
        assert sample_value(text, "meshlens_spans_dropped_total", reason="queue_full") == 0

        # OpenMetrics carries exemplars, each a trace that reached the collector.
        openmetrics = service.metrics(openmetrics=True)
        histogram = families(openmetrics, openmetrics=True)["http_server_request_duration_seconds"]
        exemplars = [s.exemplar for s in histogram.samples if s.exemplar is not None]
        assert exemplars, "latency buckets carry exemplars"
        known = {s.trace_id for s in sink.spans}
        assert all(e.labels["trace_id"] in known for e in exemplars)

        log = service.log()
        assert re.search(rf"trace_id={PARENT_TRACE} span_id={continued[0].span_id}.*fetched item 42", log), log
        # Framework-internal spans (ASGI send/receive, FastAPI operation spans) are off by default.
        assert {s.trace_id for s in spans if s.kind == 1 and s.trace_id == PARENT_TRACE} == set()


@pytest.mark.parametrize("flavour", ["flask", "fastapi"])
def test_outgoing_call_carries_the_trace(flavour, sink, tmp_path):
    argv, _ = FLAVOURS[flavour]
    downstream_port, upstream_port = free_port(), free_port()
    env_down = base_env(sink, free_port(), OTEL_SERVICE_NAME="downstream")
    env_up = base_env(sink, free_port(), OTEL_SERVICE_NAME="upstream")
    with running(_flask(downstream_port), downstream_port, env_down, tmp_path / "down.log"), \
            running(argv(upstream_port), upstream_port, env_up, tmp_path / "up.log") as upstream:
        target = f"http://127.0.0.1:{downstream_port}/items/7"
        status, body, _ = upstream.get(f"/call?url={target}")
        assert status == 200, body
        def routed(spans, service, route):
            return [x for x in spans if x.kind == SERVER_KIND and x.resource["service.name"] == service
                    and x.attributes.get("http.route") == route]

        spans = sink.wait_for(
            lambda s: routed(s, "upstream", "/call") and routed(s, "downstream", "/items/<int:item_id>")
            and any(x.kind == CLIENT_KIND for x in s))
        up = routed(spans, "upstream", "/call")[0]
        down = routed(spans, "downstream", "/items/<int:item_id>")[0]
        client = next(s for s in spans if s.kind == CLIENT_KIND and s.trace_id == up.trace_id)
        assert down.trace_id == up.trace_id
        assert client.parent_span_id == up.span_id
        assert down.parent_span_id == client.span_id
        metrics = upstream.metrics()
        assert sample_value(metrics, "http_client_request_duration_seconds_count",
                            server_address="127.0.0.1", http_response_status_code="200") == 1


def test_uvicorn_sigterm_flushes_every_buffered_span(sink, tmp_path):
    """uvicorn re-raises SIGTERM after its graceful stop and skips exit handlers;
    meshlens still delivers what was buffered."""
    port = free_port()
    # A long schedule delay and batches larger than the load: nothing is exported before the stop.
    env = base_env(sink, free_port(), OTEL_BSP_SCHEDULE_DELAY="600000",
                   OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2048")  # nothing leaves before the stop
    with running(_fastapi(port), port, env, tmp_path / "service.log") as service:
        for item in range(25):
            assert service.get(f"/items/{item}")[0] == 200
        assert not [s for s in sink.spans if s.kind == SERVER_KIND and "/items" in str(s.attributes)]
        returncode = service.stop(signal.SIGTERM)
    assert returncode in (0, -signal.SIGTERM), service.log()
    spans = sink.wait_for(lambda s: len([x for x in s if x.kind == SERVER_KIND]) >= 26, timeout=5)
    assert len([s for s in spans if s.attributes.get("http.route") == "/items/{item_id}"]) == 25


def test_gunicorn_sigterm_flushes_every_buffered_span(sink, tmp_path):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_BSP_SCHEDULE_DELAY="600000",
                   OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2048")  # nothing leaves before the stop
    with running(_flask(port), port, env, tmp_path / "service.log") as service:
        for item in range(25):
            assert service.get(f"/items/{item}")[0] == 200
        service.stop(signal.SIGTERM)
    spans = sink.wait_for(lambda s: len([x for x in s if x.kind == SERVER_KIND]) >= 26, timeout=5)
    assert len([s for s in spans if s.attributes.get("http.route") == "/items/<int:item_id>"]) == 25


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_a_hung_collector_costs_a_stop_its_deadline_and_every_unsent_span_is_counted(server, tmp_path):
    """The collector accepts the first batch and never answers: the graceful stop still ends
    within MESHLENS_SHUTDOWN_TIMEOUT, and the warning counts every span not delivered, the
    batch being sent included."""
    hung = OtlpSink(mode="slow", delay=120.0).start()
    port = free_port()
    env = base_env(hung, free_port(), OTEL_BSP_SCHEDULE_DELAY="100", OTEL_EXPORTER_OTLP_TIMEOUT="120000",
                   OTEL_PYTHON_EXCLUDED_URLS="health", MESHLENS_SHUTDOWN_TIMEOUT="1")
    argv = _flask(port) if server == "gunicorn" else _fastapi(port)
    try:
        with running(argv, port, env, tmp_path / "service.log") as service:
            for item in range(5):
                assert service.get(f"/items/{item}")[0] == 200
            deadline = time.monotonic() + 10
            while hung.requests == 0 and time.monotonic() < deadline:  # the first batch is on its way
                time.sleep(0.05)
            assert hung.requests == 1
            for item in range(5, 12):
                assert service.get(f"/items/{item}")[0] == 200
            started = time.monotonic()
            returncode = service.stop(signal.SIGTERM)
            stopped_in = time.monotonic() - started
            log = service.log()
    finally:
        hung.stop()
    assert returncode in (0, -signal.SIGTERM), log
    assert stopped_in < 5, (stopped_in, log)
    assert "meshlens: 12 spans not flushed within 1.0 s at exit (queued or being sent); dropped" in log, log


def test_errors_are_counted_and_marked(sink, tmp_path):
    port = free_port()
    with running(_flask(port), port, base_env(sink, free_port()), tmp_path / "service.log") as service:
        assert service.get("/fail")[0] == 500
        spans = sink.wait_for(lambda s: any(x.attributes.get("http.route") == "/fail" for x in s))
        failed = next(s for s in spans if s.attributes.get("http.route") == "/fail")
        assert failed.status_code == 2  # STATUS_CODE_ERROR
        assert "exception" in failed.events
        assert sample_value(service.metrics(), "http_server_request_duration_seconds_count",
                            http_route="/fail", http_response_status_code="500") == 1


def test_event_loop_lag_is_measured(sink, tmp_path):
    port = free_port()
    with running(_fastapi(port), port, base_env(sink, free_port()), tmp_path / "service.log") as service:
        assert service.get("/items/1")[0] == 200  # the first request starts the probe on the loop
        assert service.get("/block/600")[0] == 200
        text = service.metrics()
        assert sample_value(text, "python_asyncio_event_loop_lag_seconds_count") >= 1
        # The 600 ms block delayed a probe by at least 250 ms.
        slow = sample_value(text, "python_asyncio_event_loop_lag_seconds_count") - sample_value(
            text, "python_asyncio_event_loop_lag_seconds_bucket", le="0.25")
        assert slow >= 1


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (lambda port: [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", "plain_wsgi:app"], "wsgi"),
        (lambda port: [bin_path("uvicorn"), "--host", "127.0.0.1", "--port", str(port), "plain_asgi:app"], "asgi"),
        (lambda port: [bin_path("gunicorn"), "-w", "1", "-k", "uvicorn.workers.UvicornWorker",
                       "-b", f"127.0.0.1:{port}", "plain_asgi:app"], "asgi"),
    ],
    ids=["wsgi-gunicorn", "asgi-uvicorn", "asgi-gunicorn-uvicorn-worker"],
)
def test_a_plain_wsgi_or_asgi_app_is_traced_and_measured(argv, module, sink, tmp_path):
    port = free_port()
    with running(argv(port), port, base_env(sink, free_port()), tmp_path / "service.log") as service:
        for _ in range(3):
            assert service.get("/anything/7")[0] == 200
        spans = sink.wait_for(lambda s: sum(x.kind == SERVER_KIND and x.attributes.get("url.path") == "/anything/7"
                                            for x in s) == 3)
        text = service.metrics()
    server = next(s for s in spans if s.attributes.get("url.path") == "/anything/7")
    assert server.attributes["http.request.method"] == "GET"
    assert "http send" not in {s.name for s in spans}, "ASGI send/receive spans are off by default"
    # No route template without a framework: the path is never used as a label.
    assert sample_value(text, "http_server_request_duration_seconds_count", http_route="",
                        http_response_status_code="200") >= 3
    assert "/anything/7" not in text


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_framework_apps_get_exactly_one_server_span(flavour, sink, tmp_path):
    argv, route = FLAVOURS[flavour]
    port = free_port()
    with running(argv(port), port, base_env(sink, free_port()), tmp_path / "service.log") as service:
        assert service.get("/items/3")[0] == 200
        spans = sink.wait_for(lambda s: any(x.attributes.get("http.route") == route for x in s))
        time.sleep(0.5)  # a second, outer server span would arrive in the same batch or the next
        trace_id = next(s for s in spans if s.attributes.get("http.route") == route).trace_id
        in_trace = [s for s in sink.snapshot() if s.trace_id == trace_id]
    assert [s.kind for s in in_trace] == [SERVER_KIND], [(s.name, s.kind) for s in in_trace]


@pytest.mark.parametrize("flavour", ["flask", "fastapi"])
def test_contrib_server_spans_when_asked(flavour, sink, tmp_path):
    """MESHLENS_HTTP_SERVER_SPANS=contrib: the contrib instrumentation (FastAPI's native
    telemetry where FastAPI has it) traces requests instead of meshlens's middleware, once."""
    argv, route = FLAVOURS[flavour]
    port = free_port()
    env = base_env(sink, free_port(), MESHLENS_HTTP_SERVER_SPANS="contrib")
    with running(argv(port), port, env, tmp_path / "service.log") as service:
        status, body, _ = service.get("/items/42", {"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"})
        assert status == 200, body
        spans = sink.wait_trace(PARENT_TRACE, lambda s: any(x.kind == SERVER_KIND for x in s))
        time.sleep(0.5)  # a second server span would arrive in the same batch or the next
        server_spans = [s for s in sink.snapshot() if s.trace_id == PARENT_TRACE and s.kind == SERVER_KIND]
        assert len(server_spans) == 1, [(s.name, s.scope) for s in server_spans]
        assert server_spans[0].attributes.get("http.route") == route
        assert server_spans[0].scope != "meshlens.http.server", spans
        assert sample_value(service.metrics(), "http_server_request_duration_seconds_count",
                            http_route=route, http_response_status_code="200") == 1


def test_finished_requests_leave_no_span_behind_under_uvicorn(sink, tmp_path):
    """uvicorn arms a keep-alive timer as each response on a kept-alive connection completes
    and cancels it when the next request comes; cancelled timers stay queued in the loop
    until it purges them. The last message is sent outside the request's context, so those
    timers do not hold on to the requests' spans (before, dozens were held at any time)."""
    port = free_port()
    with running(_fastapi(port), port, base_env(sink, free_port()), tmp_path / "service.log"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for item in range(150):
                connection.request("GET", f"/items/{item}")
                response = connection.getresponse()
                assert response.status == 200, response.read()
                response.read()
            connection.request("GET", "/spans-alive")
            alive = int(connection.getresponse().read())
        finally:
            connection.close()
        assert alive <= 3, f"{alive} spans still alive after 150 finished requests"
