"""Celery with the Redis broker: a web process publishes a task, a real worker runs it;
both have only the import line. The publish and the execution are one trace."""

from __future__ import annotations

import secrets
import time

import pytest
import redis
from library_checks import (
    CLIENT_KIND,
    CONSUMER_KIND,
    INSTRUMENTATION_FAILED,
    PRODUCER_KIND,
    SERVER_KIND,
    delta,
    descends_from,
    traceparent,
)

from harness import base_env, bin_path, free_port, running, started_sink

pytestmark = pytest.mark.slow

BROKER = "redis://127.0.0.1:6379/0"
CELERY_SCOPE = "opentelemetry.instrumentation.celery"
REDIS_SCOPE = "opentelemetry.instrumentation.redis"
TASK = "meshlens_test.add"
DB_COUNT = "db_client_operation_duration_seconds_count"


sink = pytest.fixture(scope="module")(started_sink)

@pytest.fixture(scope="module")
def queue():
    name = f"meshlens-test-{secrets.token_hex(4)}"
    yield name
    client = redis.Redis.from_url(BROKER, socket_timeout=5)
    client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    client.close()


def _wait_for_log(service, text, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in service.log():
            return
        if service.process.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the log within {timeout}s:\n{service.log()}")


@pytest.fixture(scope="module", params=["prefork", "prefork-multiproc"])
def worker(request, sink, queue, tmp_path_factory):
    """A real worker with the default prefork pool; "prefork-multiproc" also sets
    MESHLENS_MULTIPROC_DIR, so that /metrics (served by the main process) includes what
    the pool's child processes measured."""
    metrics_port = free_port()
    extra = {}
    if request.param == "prefork-multiproc":
        extra["MESHLENS_MULTIPROC_DIR"] = str(tmp_path_factory.mktemp("multiproc"))
    name = f"celery-worker-{request.param}"
    env = base_env(sink, metrics_port, OTEL_SERVICE_NAME=name, BROKER_URL=BROKER, CELERY_QUEUE=queue, **extra)
    argv = [bin_path("celery"), "-A", "celery_app", "worker", "--pool", "prefork", "--concurrency", "1",
            "--queues", queue, "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "INFO", "--hostname", f"{request.param}-{queue}@127.0.0.1"]
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with running(argv, metrics_port, env, log, ready_path="/metrics") as service:
        _wait_for_log(service, "ready.")
        service.variant, service.resource = request.param, name
        yield service


@pytest.fixture(scope="module")
def web(sink, queue, tmp_path_factory):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="celery-web", BROKER_URL=BROKER, CELERY_QUEUE=queue)
    argv = [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", "celery_app:web"]
    with running(argv, port, env, tmp_path_factory.mktemp("web") / "web.log") as service:
        yield service


def test_publish_and_execution_are_one_trace(web, worker, sink):
    key = f"meshlens-test:{secrets.token_hex(8)}"
    trace_id, parent_span_id, header = traceparent()
    web_before = web.metrics()
    status, body, _ = web.get(f"/enqueue?x=2&y=3&key={key}", {"traceparent": header})
    assert status == 200, body

    def complete(spans):
        return (any(s.kind == SERVER_KIND for s in spans) and any(s.kind == CONSUMER_KIND for s in spans)
                and any(s.kind == CLIENT_KIND and s.resource["service.name"] == worker.resource for s in spans))

    spans = sink.wait_trace(trace_id, complete, timeout=30)
    server = next(s for s in spans if s.kind == SERVER_KIND)
    publish = next(s for s in spans if s.kind == PRODUCER_KIND)
    run = next(s for s in spans if s.kind == CONSUMER_KIND)
    assert server.parent_span_id == parent_span_id
    assert server.resource["service.name"] == "celery-web"
    # The web request publishes; the worker's execution is the child of the publish.
    assert publish.scope == run.scope == CELERY_SCOPE
    assert publish.name == f"apply_async/{TASK}"
    assert run.name == f"run/{TASK}"
    assert descends_from(publish, server, spans)
    assert run.parent_span_id == publish.span_id
    assert run.resource["service.name"] == worker.resource
    assert run.attributes["celery.task_name"] == TASK
    assert run.attributes["celery.state"] == "SUCCESS"
    assert publish.attributes["messaging.message.id"] == run.attributes["messaging.message.id"]
    # The task's own Redis call is a child of its execution.
    task_set = next(s for s in spans if s.kind == CLIENT_KIND and s.resource["service.name"] == worker.resource
                    and s.name == "SET")
    assert task_set.scope == REDIS_SCOPE
    assert task_set.parent_span_id == run.span_id
    client = redis.Redis.from_url(BROKER, socket_timeout=5)
    assert client.get(key) == b"5"
    client.close()

    # Metrics: the publish's Redis call in the web process.
    web_after = web.metrics()
    assert delta(web_before, web_after, "http_server_request_duration_seconds_count", http_route="/enqueue",
                 http_response_status_code="200") == 1
    assert delta(web_before, web_after, DB_COUNT, db_system_name="redis", db_operation_name="LPUSH") == 1


def test_task_metrics_reach_the_worker_metrics_endpoint(web, worker, sink):
    """The task ran in a pool child; the worker's /metrics is served by the main process."""
    before = worker.metrics()
    key = f"meshlens-test:{secrets.token_hex(8)}"
    assert web.get(f"/enqueue?x=1&y=1&key={key}")[0] == 200
    client = redis.Redis.from_url(BROKER, socket_timeout=5)
    deadline = time.monotonic() + 20
    while client.get(key) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    client.close()
    assert time.monotonic() < deadline, "the task did not run"
    time.sleep(0.5)  # the span ends (and is measured) just after the Redis call returns
    assert delta(before, worker.metrics(), DB_COUNT, db_system_name="redis", db_operation_name="SET") == 1


def test_no_instrumentation_failed(web, worker):
    for service in (web, worker):
        assert INSTRUMENTATION_FAILED not in service.log(), service.log()
