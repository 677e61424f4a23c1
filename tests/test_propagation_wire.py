"""One trace across a mixed chain over real HTTP on loopback.

An Envoy-like caller sends B3 (or Jaeger, or W3C) headers with Istio's x-request-id into a
meshlens Flask service (WSGI, calls out with requests), which calls a meshlens FastAPI service
(ASGI, calls out with httpx), which calls a plain echo server that records every header.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest

from harness import EchoServer, base_env, bin_path, echo_server, free_port, running, started_sink

pytestmark = pytest.mark.slow

SERVER_KIND = 2
CLIENT_KIND = 3
# One trace id per incoming peer: the sink is shared by the module's tests.
TRACE_128 = "80f198ee56343ba864fe8b2a57d3eff7"
TRACE_SINGLE = "463ac35c9f6413ad48485a3953bb6124"
TRACE_W3C = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "e457b5a2e4d86bd1"
JAEGER_64 = "1a2b3c4d5e6f7a8b"


@pytest.fixture(scope="module")
def downstream() -> Iterator[EchoServer]:
    with echo_server() as server:
        yield server


sink = pytest.fixture(scope="module")(started_sink)


@pytest.fixture(scope="module")
def chain(sink, tmp_path_factory):
    logs = tmp_path_factory.mktemp("chain")
    front_port, back_port = free_port(), free_port()
    front_argv = [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{front_port}", "flask_app:app"]
    back_argv = [bin_path("uvicorn"), "--host", "127.0.0.1", "--port", str(back_port), "fastapi_app:app"]
    # No OTEL_PROPAGATORS: the chain runs on meshlens's default formats.
    front_env = base_env(sink, free_port(), OTEL_SERVICE_NAME="front")
    back_env = base_env(sink, free_port(), OTEL_SERVICE_NAME="back")
    with running(back_argv, back_port, back_env, logs / "back.log") as back, \
            running(front_argv, front_port, front_env, logs / "front.log") as front:
        yield front, back


# Headers as the peers send them: Envoy with B3 multi or single and x-request-id,
# jaeger-client with a 64-bit trace id, a W3C peer with tracestate (the spec's example).
INCOMING = {
    "envoy-b3-multi": ({"x-b3-traceid": TRACE_128, "x-b3-spanid": SPAN, "x-b3-parentspanid": "05e3ac9a4f6e3b90",
                        "x-b3-sampled": "1", "x-request-id": "6e4d8f0a-2c1b-4a3f-9e8d-7c6b5a4f3e2d"},
                       TRACE_128),
    "envoy-b3-single": ({"b3": f"{TRACE_SINGLE}-{SPAN}-1", "x-request-id": "0b6f3c2a-9d8e-4f1a-b2c3-d4e5f6a7b8c9"},
                        TRACE_SINGLE),
    "jaeger-client": ({"uber-trace-id": f"{JAEGER_64}:{JAEGER_64}:0:1", "uberctx-tenant": "acme"},
                      "0" * 16 + JAEGER_64),
    "w3c": ({"traceparent": f"00-{TRACE_W3C}-{SPAN}-01", "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"},
            TRACE_W3C),
}


@pytest.mark.parametrize("peer", list(INCOMING))
def test_one_trace_through_three_hops_in_every_format(peer, chain, sink, downstream):
    front, back = chain
    headers, trace_id = INCOMING[peer]
    inner = f"{back.url}/call?url={quote(downstream.url(), safe='')}"
    before = len(downstream.received)
    status, body, _ = front.get(f"/call?url={quote(inner, safe='')}", headers)
    assert status == 200, body
    assert len(downstream.received) == before + 1
    got = downstream.received[-1][1]

    spans = sink.wait_trace(trace_id, lambda s: sum(x.kind == SERVER_KIND for x in s) >= 2
                            and sum(x.kind == CLIENT_KIND for x in s) >= 2)
    servers = {s.service: s for s in spans if s.kind == SERVER_KIND}
    assert set(servers) == {"front", "back"}
    # The front continues the caller's span; nothing in the chain started a new trace.
    assert servers["front"].parent_span_id == (JAEGER_64 if peer == "jaeger-client" else SPAN)
    calling = next(s for s in spans if s.kind == CLIENT_KIND and s.service == "back")
    assert servers["back"].parent_span_id in {s.span_id for s in spans if s.service == "front"}

    # Every format the downstream receives names the same trace and back's client span.
    assert got["traceparent"] == f"00-{trace_id}-{calling.span_id}-01"
    assert got["x-b3-traceid"] == trace_id
    assert got["x-b3-spanid"] == calling.span_id
    assert got["x-b3-sampled"] == "1"
    assert got["uber-trace-id"] == f"{trace_id}:{calling.span_id}:0:01"
    if "x-request-id" in headers:
        assert got["x-request-id"] == headers["x-request-id"]
    else:
        assert "x-request-id" not in got
    if peer == "w3c":
        assert got["tracestate"] == headers["tracestate"]
    if peer == "jaeger-client":
        assert got["baggage"] == "tenant=acme"
        assert got["uberctx-tenant"] == "acme"


def test_precedence_over_the_wire(chain, sink, downstream):
    front, _ = chain
    headers = {**INCOMING["jaeger-client"][0], **INCOMING["envoy-b3-multi"][0],
               "traceparent": f"00-{'c' * 32}-{'d' * 16}-01"}
    status, body, _ = front.get(f"/call?url={quote(downstream.url(), safe='')}", headers)
    assert status == 200, body
    got = downstream.received[-1][1]
    assert got["traceparent"].split("-")[1] == "c" * 32
    assert got["x-b3-traceid"] == "c" * 32
    assert got["uber-trace-id"].startswith("c" * 32 + ":")
    spans = sink.wait_trace("c" * 32, lambda s: any(x.kind == SERVER_KIND for x in s))
    assert next(s for s in spans if s.kind == SERVER_KIND).parent_span_id == "d" * 16


def test_hostile_headers_cost_the_context_not_the_request(chain, downstream):
    front, _ = chain
    hostile = {"traceparent": "00-" + "0" * 4000, "b3": "-" * 4000, "uber-trace-id": "%3A" * 1300,
               "baggage": " " * 4000 + "," * 2, "tracestate": "a=" * 2000, "x-request-id": "\t" * 100}
    status, body, _ = front.get(f"/call?url={quote(downstream.url(), safe='')}", hostile)
    assert status == 200, body
    got = downstream.received[-1][1]
    assert got["traceparent"].split("-")[1] != "0" * 32  # a new, valid trace
    assert "baggage" not in got and "x-request-id" not in got
