"""gRPC servers and clients (grpcio, blocking and asyncio) in a service with only the
import line. No generated code: generic handlers with bytes in and out.

The test process calls the servers with an uninstrumented client carrying a
traceparent; the service's /call endpoints make the service itself the client.
"""

from __future__ import annotations

import json
import secrets
import sys

import grpc
import pytest
from library_checks import (
    CLIENT_KIND,
    INSTRUMENTATION_FAILED,
    SERVER_KIND,
    delta,
    exemplar_trace_ids,
    traceparent,
)

from harness import base_env, free_port, running, started_sink

pytestmark = pytest.mark.slow

SCOPE = "opentelemetry.instrumentation.grpc"
SYNC_SERVICE = "meshlens.test.Echo"
AIO_SERVICE = "meshlens.test.AsyncEcho"
SERVER_COUNT = "rpc_server_duration_seconds_count"
CLIENT_COUNT = "rpc_client_duration_seconds_count"
OK, UNKNOWN, NOT_FOUND = 0, 2, 5


sink = pytest.fixture(scope="module")(started_sink)

@pytest.fixture(scope="module")
def service(sink, tmp_path_factory):
    port, grpc_port, aio_port = free_port(), free_port(), free_port()
    env = base_env(sink, free_port(), OTEL_SERVICE_NAME="grpc-app", PORT=str(port), GRPC_PORT=str(grpc_port),
                   GRPC_AIO_PORT=str(aio_port), MESHLENS_BAGGAGE_TO_ATTRIBUTES="saga.id")
    argv = [sys.executable, "grpc_app.py"]
    with running(argv, port, env, tmp_path_factory.mktemp("grpc") / "service.log") as service:
        service.grpc_ports = {SYNC_SERVICE: grpc_port, AIO_SERVICE: aio_port}
        yield service


def _call(port: int, service_name: str, message: bytes, traceparent_header: str | None = None,
          metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    if traceparent_header is not None:
        metadata = (("traceparent", traceparent_header), *metadata)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        say = channel.unary_unary(f"/{service_name}/Say")
        try:
            assert say(message, timeout=5, metadata=metadata) == b"echo:" + message
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()


def _labels(service_name: str, code: int) -> dict[str, str]:
    return {"rpc_system": "grpc", "rpc_service": service_name, "rpc_method": "Say",
            "rpc_grpc_status_code": str(code)}


@pytest.mark.parametrize("service_name", [SYNC_SERVICE, AIO_SERVICE])
def test_server_calls_continue_the_trace_and_are_counted(service_name, service, sink):
    port = service.grpc_ports[service_name]
    before = service.metrics()
    outcomes = {}
    for message, expected in ((b"hello", OK), (b"again", OK), (b"missing", NOT_FOUND), (b"boom", UNKNOWN)):
        trace_id, parent_span_id, header = traceparent()
        outcomes[message] = (trace_id, parent_span_id, expected)
        assert _call(port, service_name, message, header).value[0] == expected

    for message, (trace_id, parent_span_id, expected) in outcomes.items():
        spans = sink.wait_trace(trace_id, lambda s: any(x.kind == SERVER_KIND for x in s))
        assert len(spans) == 1, [(s.name, s.kind) for s in spans]
        server = spans[0]
        assert server.parent_span_id == parent_span_id, message
        assert server.scope == SCOPE
        assert server.name == f"/{service_name}/Say"
        assert server.attributes["rpc.system"] == "grpc"
        assert server.attributes["rpc.service"] == service_name
        assert server.attributes["rpc.method"] == "Say"
        if message == b"boom":
            # The span records the exception but keeps the OK grpcio's instrumentation set
            # when the call began (contrib 0.66b1); the metric below says UNKNOWN.
            assert "exception" in server.events
        else:
            assert server.attributes["rpc.grpc.status_code"] == expected, message

    after = service.metrics()
    assert delta(before, after, SERVER_COUNT, **_labels(service_name, OK)) == 2
    assert delta(before, after, SERVER_COUNT, **_labels(service_name, NOT_FOUND)) == 1
    assert delta(before, after, SERVER_COUNT, **_labels(service_name, UNKNOWN)) == 1
    assert delta(before, after, SERVER_COUNT) == 4
    # gRPC calls are not HTTP requests, and the service made no client call.
    assert delta(before, after, "http_server_request_duration_seconds_count") == 0
    assert delta(before, after, CLIENT_COUNT) == 0
    trace_ids = {trace_id for trace_id, _, _ in outcomes.values()}
    assert trace_ids & exemplar_trace_ids(service.metrics(openmetrics=True), "rpc_server_duration_seconds",
                                          rpc_service=service_name)


@pytest.mark.parametrize(("client", "target"), [("sync", AIO_SERVICE), ("aio", SYNC_SERVICE)])
def test_client_calls_are_child_spans_in_one_trace(client, target, service, sink):
    before = service.metrics()
    traces = {}
    for message, expected in (("hello", "echo:hello"), ("missing", "NOT_FOUND")):
        trace_id, _, header = traceparent()
        status, body, _ = service.get(f"/call/{client}?message={message}", {"traceparent": header})
        assert status == 200, body
        assert expected.encode() in body, body
        traces[message] = trace_id

    for message, trace_id in traces.items():
        spans = sink.wait_trace(trace_id, lambda s: sum(x.scope == SCOPE for x in s) >= 2
                                and any(x.scope != SCOPE and x.kind == SERVER_KIND for x in s))
        http_server = next(s for s in spans if s.kind == SERVER_KIND and s.scope != SCOPE)
        grpc_client = next(s for s in spans if s.kind == CLIENT_KIND and s.scope == SCOPE)
        grpc_server = next(s for s in spans if s.kind == SERVER_KIND and s.scope == SCOPE)
        # HTTP request -> gRPC client call -> gRPC server call, one trace.
        assert grpc_client.parent_span_id == http_server.span_id
        assert grpc_server.parent_span_id == grpc_client.span_id
        assert grpc_client.attributes["rpc.service"] == target
        assert grpc_client.attributes["rpc.method"] == "Say"
        code = OK if message == "hello" else NOT_FOUND
        assert grpc_client.attributes["rpc.grpc.status_code"] == code

    after = service.metrics()
    assert delta(before, after, CLIENT_COUNT, **_labels(target, OK)) == 1
    assert delta(before, after, CLIENT_COUNT, **_labels(target, NOT_FOUND)) == 1
    assert delta(before, after, CLIENT_COUNT) == 2
    assert delta(before, after, SERVER_COUNT, **_labels(target, OK)) == 1
    assert delta(before, after, SERVER_COUNT, **_labels(target, NOT_FOUND)) == 1
    # The HTTP requests that drove the calls are counted as HTTP, not as RPCs.
    assert delta(before, after, "http_server_request_duration_seconds_count", http_route="/call/{client}",
                 http_response_status_code="200") == 2
    assert delta(before, after, "http_client_request_duration_seconds_count") == 0


# What peers that are not OpenTelemetry send in gRPC metadata (lower-case keys, as
# HTTP/2 requires): an Envoy sidecar's B3, single or multi, and jaeger-client's header.
def _b3_single(trace_id: str, span_id: str) -> tuple[tuple[str, str], ...]:
    return (("b3", f"{trace_id}-{span_id}-1"),)


def _b3_multi(trace_id: str, span_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-b3-traceid", trace_id), ("x-b3-spanid", span_id), ("x-b3-sampled", "1"))


def _jaeger(trace_id: str, span_id: str) -> tuple[tuple[str, str], ...]:
    return (("uber-trace-id", f"{trace_id}:{span_id}:0:1"),)


@pytest.mark.parametrize("service_name", [SYNC_SERVICE, AIO_SERVICE])
@pytest.mark.parametrize("metadata", [_b3_single, _b3_multi, _jaeger], ids=["b3", "b3multi", "jaeger"])
def test_server_continues_b3_and_jaeger_traces(service_name, metadata, service, sink):
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    assert _call(service.grpc_ports[service_name], service_name, b"hello", metadata=metadata(trace_id, span_id)) \
        == grpc.StatusCode.OK
    spans = sink.wait_trace(trace_id, lambda s: any(x.kind == SERVER_KIND for x in s))
    assert [(s.kind, s.parent_span_id) for s in spans] == [(SERVER_KIND, span_id)]


@pytest.mark.parametrize(("client", "target"), [("sync", AIO_SERVICE), ("aio", SYNC_SERVICE)])
def test_client_sends_every_format_in_metadata(client, target, service, sink):
    """The service's own gRPC calls carry W3C, B3 and Jaeger context, so a sidecar or a
    jaeger-client service on the other end continues the trace too."""
    trace_id, _, header = traceparent()
    status, body, _ = service.get(f"/call/{client}?message=metadata",
                                  {"traceparent": header, "baggage": "saga.id=s1", "x-request-id": "r-1"})
    assert status == 200, body
    received = json.loads(json.loads(body)["result"])
    assert received["baggage"] == "saga.id=s1", received
    assert received["x-request-id"] == "r-1", received
    spans = sink.wait_trace(trace_id, lambda s: any(x.kind == CLIENT_KIND and x.scope == SCOPE for x in s))
    grpc_client = next(s for s in spans if s.kind == CLIENT_KIND and s.scope == SCOPE)
    assert received["traceparent"] == f"00-{trace_id}-{grpc_client.span_id}-01"
    assert (received["x-b3-traceid"], received["x-b3-spanid"], received["x-b3-sampled"]) == \
        (trace_id, grpc_client.span_id, "1")
    jaeger_trace, jaeger_span, _, jaeger_flags = received["uber-trace-id"].split(":")
    assert (jaeger_trace.rjust(32, "0"), jaeger_span.rjust(16, "0"), int(jaeger_flags, 16)) == \
        (trace_id, grpc_client.span_id, 1)


@pytest.mark.parametrize(("client", "target"), [("sync", AIO_SERVICE), ("aio", SYNC_SERVICE)])
def test_listed_baggage_lands_on_every_span_and_log_record(client, target, service, sink):
    """MESHLENS_BAGGAGE_TO_ATTRIBUTES=saga.id: the saga id of the incoming baggage is on the
    HTTP span, the gRPC client span and, across the gRPC hop, the gRPC server span and
    its log line; other baggage keys are not copied."""
    trace_id, _, header = traceparent()
    saga = f"saga-{secrets.token_hex(4)}"
    status, body, _ = service.get(f"/call/{client}?message=hello",
                                  {"traceparent": header, "baggage": f"saga.id={saga},card=4111"})
    assert status == 200, body
    spans = sink.wait_trace(trace_id, lambda s: sum(x.scope == SCOPE for x in s) >= 2
                            and any(x.scope != SCOPE and x.kind == SERVER_KIND for x in s))
    assert len(spans) == 3
    for span in spans:
        assert span.attributes.get("saga.id") == saga, (span.name, span.kind, span.scope)
        assert "card" not in span.attributes
    server_side = "aio" if target == AIO_SERVICE else "sync"
    assert f"said trace_id={trace_id} saga={saga} {server_side} hello" in service.log()
    # Outside a request the field is empty, and the format naming it still works.
    assert "said trace_id=0 saga= serving" in service.log()
    assert "--- Logging error ---" not in service.log()


def test_no_instrumentation_failed(service):
    assert INSTRUMENTATION_FAILED not in service.log(), service.log()
