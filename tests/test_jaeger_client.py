"""jaeger-client services beside meshlens services, over real HTTP on loopback.

- a jaeger-client service (unchanged code: Config(...).initialize_tracer(), OpenTracing spans,
  headers injected by hand) with `import meshlens.auto` added: its spans reach the OTLP sink
  with meshlens's, in one trace, whichever service calls the other;
- the same service without meshlens (the real Jaeger tracer, reporting to a UDP socket the test
  reads): what it sends meshlens continues, and what meshlens sends it continues, sampling and
  debug flags included.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import pytest

from harness import EchoServer, base_env, bin_path, echo_server, free_port, running, started_sink

pytest.importorskip("jaeger_client")
pytest.importorskip("opentelemetry.shim.opentracing_shim")

pytestmark = pytest.mark.slow

SERVER_KIND, CLIENT_KIND = 2, 3
STATUS_ERROR = 2
SHIM_SCOPE = "opentelemetry.shim.opentracing_shim"
W3C_SPAN = "00f067aa0ba902b7"


# --- a Jaeger agent's UDP port that keeps what jaeger-client reports -------------------------

@dataclass
class AgentSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    flags: int
    tags: dict[str, object]


@dataclass
class JaegerAgent:
    """A UDP socket on loopback decoding jaeger-client's emitBatch (Thrift compact) packets."""

    sock: socket.socket
    spans: list[AgentSpan] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def receive(self) -> None:
        from jaeger_client.thrift_gen.agent.Agent import emitBatch_args
        from thrift.protocol.TCompactProtocol import TCompactProtocol
        from thrift.transport.TTransport import TMemoryBuffer

        while True:
            try:
                data = self.sock.recv(65535)
            except OSError:
                return
            protocol = TCompactProtocol(TMemoryBuffer(data))
            protocol.readMessageBegin()
            args = emitBatch_args()
            args.read(protocol)
            for span in args.batch.spans:
                tags = {tag.key: next((v for v in (tag.vStr, tag.vLong, tag.vBool, tag.vDouble) if v is not None), None)
                        for tag in span.tags or ()}
                self.spans.append(AgentSpan(
                    trace_id=f"{(span.traceIdHigh or 0) & (2**64 - 1):016x}{span.traceIdLow & (2**64 - 1):016x}",
                    span_id=f"{span.spanId & (2**64 - 1):016x}", parent_id=f"{span.parentSpanId & (2**64 - 1):016x}",
                    name=span.operationName, flags=span.flags, tags=tags))

    def wait(self, trace_id: str, name: str, timeout: float = 15.0) -> AgentSpan:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [s for s in self.spans if s.trace_id == trace_id and s.name == name]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"jaeger-client reported no {name} span of {trace_id}: {self.spans}")


@pytest.fixture(scope="module")
def agent() -> Iterator[JaegerAgent]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    state = JaegerAgent(sock)
    threading.Thread(target=state.receive, daemon=True).start()
    try:
        yield state
    finally:
        sock.close()


# --- services --------------------------------------------------------------------------------

sink = pytest.fixture(scope="module")(started_sink)


@pytest.fixture(scope="module")
def downstream() -> Iterator[EchoServer]:
    with echo_server() as server:
        yield server


@pytest.fixture(scope="module")
def services(sink, agent, tmp_path_factory):
    """meshlens's Flask service, the jaeger-client service with meshlens, and without."""
    logs = tmp_path_factory.mktemp("jaeger")
    mesh_port, hybrid_port, legacy_port = free_port(), free_port(), free_port()
    mesh_argv = [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{mesh_port}", "flask_app:app"]
    hybrid_argv = [bin_path("python"), "jaeger_meshlens_app.py", str(hybrid_port)]
    legacy_argv = [bin_path("python"), "jaeger_legacy_app.py", str(legacy_port)]
    mesh_env = base_env(sink, free_port(), OTEL_SERVICE_NAME="mesh")
    # The jaeger-client Config names the service "legacy-orders"; the process is "orders".
    hybrid_env = base_env(sink, free_port(), OTEL_SERVICE_NAME="orders", JAEGER_AGENT_PORT=str(agent.port))
    legacy_env = base_env(None, free_port(), JAEGER_AGENT_PORT=str(agent.port), JAEGER_SERVICE_NAME="legacy")
    with running(mesh_argv, mesh_port, mesh_env, logs / "mesh.log") as mesh, \
            running(hybrid_argv, hybrid_port, hybrid_env, logs / "hybrid.log") as hybrid, \
            running(legacy_argv, legacy_port, legacy_env, logs / "legacy.log") as legacy:
        yield mesh, hybrid, legacy


def get_json(service, path: str, headers: dict[str, str] | None = None) -> dict:
    status, body, _ = service.get(path, headers)
    assert status == 200, body
    return json.loads(body)


def call(url: str) -> str:
    return quote(url, safe="")


# --- 1. a jaeger-client service with meshlens calls a meshlens service -----------------------

def test_jaeger_client_service_with_meshlens_calls_meshlens_service(services, sink, downstream):
    mesh, hybrid, _ = services
    assert "jaeger.service_name" in hybrid.log()  # the differing name was logged once
    inner = f"{mesh.url}/call?url={call(downstream.url())}"
    result = get_json(hybrid, f"/work?fail=1&next={call(inner)}", {"jaeger-baggage": "caller=edge"})
    assert result["server"]["tracer"] == "meshlens.opentracing_bridge"
    trace_id = result["server"]["trace_id"]
    assert result["baggage"] == "edge"  # jaeger-baggage, read as jaeger-client reads it

    # The server span ends after the response is sent, after the spans inside it: wait for it too.
    spans = sink.wait_trace(trace_id, lambda s: {"handle-work", "risky-step", "call-next"} <= {x.name for x in s}
                            and any(x.service == "mesh" and x.kind == CLIENT_KIND for x in s)
                            and any(x.service == "orders" and x.kind == SERVER_KIND for x in s))
    by_name = {s.name: s for s in spans}
    hybrid_server = next(s for s in spans if s.service == "orders" and s.kind == SERVER_KIND)
    handle, risky, call_next = by_name["handle-work"], by_name["risky-step"], by_name["call-next"]
    assert {handle.service, risky.service, call_next.service} == {"orders"}
    assert handle.scope == SHIM_SCOPE
    # The usual extract-then-child_of server pattern nests under meshlens's own server span.
    assert handle.parent_span_id == hybrid_server.span_id
    assert handle.kind == 1  # internal: meshlens's span is the server hop
    assert risky.parent_span_id == call_next.parent_span_id == handle.span_id
    assert call_next.kind == CLIENT_KIND
    # Tags, logs and errors.
    assert handle.attributes["customer.id"] == 42
    assert handle.attributes["order.lines"] == ["a", "b"]
    assert handle.attributes["component"] == "legacy"
    assert handle.attributes["jaeger.service_name"] == "legacy-orders"
    assert handle.attributes["error"] is True and handle.status_code == STATUS_ERROR
    assert handle.events == ["cache-miss", "exception"]
    assert risky.status_code == STATUS_ERROR and risky.events == ["exception"]
    assert call_next.attributes["http.url"] == inner

    # The auto-instrumented urllib call under the OpenTracing scope is call-next's child, and
    # the meshlens service continues it: one trace, parent to child.
    urllib_span = next(s for s in spans if s.service == "orders" and s.kind == CLIENT_KIND and s.scope != SHIM_SCOPE)
    assert urllib_span.parent_span_id == call_next.span_id
    mesh_server = next(s for s in spans if s.service == "mesh" and s.kind == SERVER_KIND)
    assert mesh_server.parent_span_id == urllib_span.span_id
    # What jaeger-client's inject wrote: every format, naming call-next.
    sent = result["sent"]
    assert sent["uber-trace-id"] == f"{trace_id}:{call_next.span_id}:0:01"
    assert sent["traceparent"] == f"00-{trace_id}-{call_next.span_id}-01"
    assert sent["x-b3-spanid"] == call_next.span_id
    assert sent["uberctx-tenant"] == "acme" and sent["baggage"] == "caller=edge,tenant=acme"
    # Baggage set with set_baggage_item after activation reaches the next hop and the one after.
    echo_headers = downstream.received[-1][1]
    assert echo_headers["uber-trace-id"].startswith(trace_id + ":")
    assert echo_headers["baggage"] == "caller=edge,tenant=acme"


# --- 2. a meshlens service calls the jaeger-client service with meshlens --------------------

def test_meshlens_service_calls_jaeger_client_service_with_meshlens(services, sink):
    mesh, hybrid, _ = services
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    status, body, _ = mesh.get(f"/call?url={call(hybrid.url + '/work')}",
                               {"traceparent": f"00-{trace_id}-{W3C_SPAN}-01"})
    assert status == 200, body
    result = json.loads(json.loads(body)["body"])
    assert result["server"]["trace_id"] == trace_id

    spans = sink.wait_trace(trace_id, lambda s: any(x.name == "handle-work" for x in s)
                            and sum(x.kind == SERVER_KIND for x in s) >= 2)
    mesh_server = next(s for s in spans if s.service == "mesh" and s.kind == SERVER_KIND)
    mesh_client = next(s for s in spans if s.service == "mesh" and s.kind == CLIENT_KIND)
    hybrid_server = next(s for s in spans if s.service == "orders" and s.kind == SERVER_KIND)
    handle = next(s for s in spans if s.name == "handle-work")
    assert mesh_server.parent_span_id == W3C_SPAN
    assert hybrid_server.parent_span_id == mesh_client.span_id
    assert handle.parent_span_id == hybrid_server.span_id
    assert result["server"]["span_id"] == handle.span_id


# --- 3. the legacy service without meshlens, both ways ------------------------------------------

def test_legacy_jaeger_client_calls_meshlens_and_is_continued(services, sink, agent, downstream):
    mesh, _, legacy = services
    result = get_json(legacy, f"/work?next={call(mesh.url + '/call?url=' + call(downstream.url()))}")
    assert result["server"]["tracer"] == "jaeger_client.tracer"
    legacy_trace = result["call"]["trace_id"]  # jaeger-client's 64-bit id, as 128 bits
    assert legacy_trace.startswith("0" * 16)
    assert result["sent"]["uber-trace-id"].split(":")[1] == result["call"]["span_id"].lstrip("0")

    spans = sink.wait_trace(legacy_trace, lambda s: any(x.kind == CLIENT_KIND for x in s))
    mesh_server = next(s for s in spans if s.kind == SERVER_KIND)
    assert mesh_server.service == "mesh"
    assert mesh_server.parent_span_id == result["call"]["span_id"]
    mesh_client = next(s for s in spans if s.kind == CLIENT_KIND)
    assert downstream.received[-1][1]["uber-trace-id"] == f"{legacy_trace}:{mesh_client.span_id}:0:01"
    # jaeger-client really reported its side of the trace, parent to child.
    handle = agent.wait(legacy_trace, "handle-work")
    call_next = agent.wait(legacy_trace, "call-next")
    assert call_next.parent_id == handle.span_id == result["server"]["span_id"]
    assert call_next.span_id == mesh_server.parent_span_id


def test_legacy_jaeger_client_debug_trace_stays_debug_through_meshlens(services, sink, agent, downstream):
    mesh, _, legacy = services
    result = get_json(legacy, f"/work?next={call(mesh.url + '/call?url=' + call(downstream.url()))}",
                      {"jaeger-debug-id": "ticket-4711"})
    assert result["server"]["flags"] == 3  # jaeger-client: sampled + debug
    trace_id = result["server"]["trace_id"]
    assert agent.wait(trace_id, "handle-work").tags["jaeger-debug-id"] == "ticket-4711"
    sink.wait_trace(trace_id, lambda s: any(x.kind == CLIENT_KIND for x in s))
    # meshlens keeps the debug flag on what it sends on.
    assert downstream.received[-1][1]["uber-trace-id"].endswith(":03")


def test_legacy_jaeger_client_unsampled_trace_stays_unsampled_through_meshlens(services, sink, downstream):
    mesh, _, legacy = services
    caller = "6e0c63257de34c92"
    result = get_json(legacy, f"/work?next={call(mesh.url + '/call?url=' + call(downstream.url()))}",
                      {"uber-trace-id": f"{caller}:{caller}:0:0"})
    assert result["server"]["flags"] == 0 and result["call"]["flags"] == 0
    got = downstream.received[-1][1]
    assert got["uber-trace-id"].startswith("0" * 16 + caller + ":") and got["uber-trace-id"].endswith(":00")
    assert got["traceparent"].endswith("-00")
    # Sampled requests after it arrive; this trace never does.
    marker = get_json(legacy, f"/work?next={call(mesh.url + '/call?url=' + call(downstream.url()))}")
    sink.wait_trace(marker["call"]["trace_id"], lambda s: any(x.kind == CLIENT_KIND for x in s))
    assert sink.trace("0" * 16 + caller) == []


def test_meshlens_calls_legacy_jaeger_client_which_continues_the_trace(services, sink, agent):
    mesh, _, legacy = services
    cases = {  # incoming header -> (trace id, jaeger-client's flags)
        "sampled": ({"traceparent": f"00-{'ab' * 16}-{W3C_SPAN}-01"}, "ab" * 16, 1),
        "debug": ({"uber-trace-id": f"{'cd' * 8}:{W3C_SPAN}:0:3"}, "0" * 16 + "cd" * 8, 3),
        "unsampled": ({"traceparent": f"00-{'ef' * 16}-{W3C_SPAN}-00"}, "ef" * 16, 0),
    }
    for name, (headers, trace_id, flags) in cases.items():
        status, body, _ = mesh.get(f"/call?url={call(legacy.url + '/work')}", headers)
        assert status == 200, (name, body)
        result = json.loads(json.loads(body)["body"])["server"]
        assert result["tracer"] == "jaeger_client.tracer"
        assert result["trace_id"] == trace_id, name
        assert result["flags"] == flags, name
        if flags:
            mesh_client = next(s for s in sink.wait_trace(trace_id, lambda s: any(x.kind == CLIENT_KIND for x in s))
                               if s.kind == CLIENT_KIND)
            # jaeger-client's span is the child of meshlens's client span, and says so to its agent.
            assert result["parent_id"] == mesh_client.span_id, name
            assert agent.wait(trace_id, "handle-work").parent_id == mesh_client.span_id, name



# --- the OpenTracing tracer in process: what the wire tests above do not isolate -------------

@pytest.fixture
def bridge():
    from opentelemetry import propagate
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from meshlens.opentracing_bridge import BridgeTracer
    from meshlens.propagation import FORMATS, JaegerDebugSampler, MeshlensPropagator

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.sampler = JaegerDebugSampler(provider.sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(MeshlensPropagator(FORMATS))
    tracer = BridgeTracer(provider.get_tracer(SHIM_SCOPE), provider, "legacy", max_tag_value_length=16)
    try:
        yield tracer, provider.get_tracer("auto"), exporter
    finally:
        propagate.set_global_textmap(before)


def finished(exporter, name):
    return next(s for s in exporter.get_finished_spans() if s.name == name)


def test_active_span_is_shared_with_opentelemetry_both_ways(bridge):
    from opentelemetry import propagate

    tracer, auto, exporter = bridge
    with auto.start_as_current_span("request") as request:
        assert tracer.active_span.unwrap() is request
        plain = tracer.start_span("plain-start-span")  # not activated: still the request's child
        plain.finish()
        with tracer.start_active_span("ot-work") as scope:
            scope.span.set_baggage_item("tenant", "acme")  # after activation
            with auto.start_as_current_span("auto-call"):
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
        # Finishing or closing what OpenTracing did not start leaves it alone.
        tracer.active_span.finish()
        tracer.scope_manager.active.close()
        assert request.is_recording()
    assert tracer.active_span is None
    request_span, work = finished(exporter, "request"), finished(exporter, "ot-work")
    assert finished(exporter, "plain-start-span").parent.span_id == request_span.context.span_id
    assert work.parent.span_id == request_span.context.span_id
    assert finished(exporter, "auto-call").parent.span_id == work.context.span_id
    assert carrier["uberctx-tenant"] == "acme" and carrier["baggage"] == "tenant=acme"


def test_extract_reads_any_header_case_and_returns_none_without_context(bridge):
    from opentracing import Format, InvalidCarrierException, UnsupportedFormatException

    tracer, _, _ = bridge
    found = tracer.extract(Format.HTTP_HEADERS, {"Uber-Trace-Id": "1a2b:3c4d:0:1", "UberCtx-Tenant": "acme"})
    assert (found.trace_id, found.span_id, found.is_sampled, found.baggage) == (0x1A2B, 0x3C4D, True, {"tenant": "acme"})
    assert tracer.extract(Format.TEXT_MAP, {"x-other": "1"}) is None
    assert tracer.extract(Format.HTTP_HEADERS, {"uber-trace-id": "garbage"}) is None
    debug = tracer.extract(Format.HTTP_HEADERS, {"Jaeger-Debug-Id": "t-9"})
    assert debug.debug == "t-9" and debug.trace_id == 0
    with pytest.raises(UnsupportedFormatException):
        tracer.extract(Format.BINARY, bytearray())
    with pytest.raises(InvalidCarrierException):
        tracer.extract(Format.HTTP_HEADERS, "uber-trace-id: 1:2:0:1")


def test_debug_only_context_starts_a_sampled_debug_trace(bridge):
    from opentracing import Format

    tracer, _, exporter = bridge
    debug = tracer.extract(Format.HTTP_HEADERS, {"jaeger-debug-id": "t-9"})
    with tracer.start_active_span("debug-root", child_of=debug) as scope:
        carrier: dict[str, str] = {}
        tracer.inject(scope.span, Format.HTTP_HEADERS, carrier)  # a Span is accepted, as jaeger-client accepts it
    root = finished(exporter, "debug-root")
    assert root.parent is None and root.attributes["jaeger-debug-id"] == "t-9"
    assert carrier["uber-trace-id"] == f"{root.context.trace_id:032x}:{root.context.span_id:016x}:0:03"


def test_tags_and_logs_become_attributes_events_and_status(bridge):
    from opentelemetry.trace import SpanKind, StatusCode

    tracer, _, exporter = bridge
    span = tracer.start_span("tagged", tags={"span.kind": "client", "error": "true", "none": None})
    span.set_tag("long", "x" * 100)  # cut at max_tag_value_length, as jaeger-client cuts it
    span.set_tag("mapping", {"a": 1})
    span.set_tag("mixed", [1, "a"])
    span.log_kv({"event": "retry", "attempt": 2, "kind": ValueError})
    span.finish()
    tagged = finished(exporter, "tagged")
    assert tagged.kind is SpanKind.CLIENT and "span.kind" not in tagged.attributes
    assert tagged.status.status_code is StatusCode.ERROR
    assert tagged.attributes["none"] == "None" and tagged.attributes["long"] == "x" * 16
    assert tagged.attributes["mapping"] == "{'a': 1}" and tagged.attributes["mixed"] == "[1, 'a']"
    assert [(e.name, dict(e.attributes)) for e in tagged.events] == [
        ("retry", {"event": "retry", "attempt": 2, "kind": "ValueError"})]

    with pytest.raises(KeyError), tracer.start_active_span("raises"):
        raise KeyError("missing")
    raised = finished(exporter, "raises")
    assert raised.status.status_code is StatusCode.ERROR
    exception = next(e for e in raised.events if e.name == "exception")
    assert exception.attributes["exception.type"] == "KeyError"
    assert "raise KeyError" in exception.attributes["exception.stacktrace"]

    logged = tracer.start_span("logged-error")
    logged.log_kv({"event": "error", "message": "upstream timed out"})
    logged.finish()
    assert finished(exporter, "logged-error").status.description == "upstream timed out"


def test_references_ignore_active_span_and_close(bridge):
    from opentracing import follows_from

    tracer, auto, exporter = bridge
    with auto.start_as_current_span("outer") as outer:
        cause = tracer.start_span("cause", ignore_active_span=True)
        assert cause.context.trace_id != outer.get_span_context().trace_id  # a new trace
        effect = tracer.start_span("effect", references=[follows_from(cause.context)])
        cause.finish()
        effect.finish()
    linked = finished(exporter, "effect")
    assert linked.parent.span_id == cause.context.span_id  # jaeger-client: the first reference is the parent
    assert [link.context.span_id for link in linked.links] == [cause.context.span_id]
    assert tracer.close().result(timeout=10) is None


def run_service_snippet(tmp_path, **env: str) -> str:
    import subprocess
    import sys

    script = tmp_path / "snippet.py"
    script.write_text(
        "import meshlens.auto\n"
        "import sys\n"
        "assert 'jaeger_client' not in sys.modules  # meshlens never imports it itself\n"
        "from jaeger_client import Config\n"
        "tracer = Config(config={'sampler': {'type': 'const', 'param': 1}}, service_name='s').new_tracer()\n"
        "print(type(tracer).__module__)\n"
    )
    environment = base_env(None, 0, **env)
    environment["MESHLENS_METRICS_PORT"] = "0"
    done = subprocess.run([sys.executable, str(script)], check=False, env=environment, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_disabled_instrumentations_leave_jaeger_client_alone(tmp_path):
    assert run_service_snippet(tmp_path) == "meshlens.opentracing_bridge"
    assert run_service_snippet(tmp_path, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="jaeger_client") == "jaeger_client.tracer"
