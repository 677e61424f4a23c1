"""meshlens's server span (meshlens.tracing.ServerSpan): an SDK span to everything that uses
it, sampled exactly as the configured sampler says, seen by every span processor, and encoded
byte-for-byte as the stock encoder encodes it. Plus the kept-alive export transport."""

from __future__ import annotations

import http.server
import io
import socket
import sys
import threading
from typing import ClassVar

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode_spans
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from meshlens import httpserver, otlp
from meshlens.instruments import Instruments
from meshlens.red import RedMetricsProcessor
from meshlens.settings import load_settings
from meshlens.tracing import ServerSpan, build_sampler

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


class Recording(SpanProcessor):
    """A user's processor: notes what it sees and sets an attribute at start (as a
    baggage-to-attributes processor does)."""

    def __init__(self) -> None:
        self.started: list[tuple[dict, object]] = []
        self.ended: list[ReadableSpan] = []

    def on_start(self, span, parent_context=None) -> None:
        self.started.append((dict(span.attributes), parent_context))
        span.set_attribute("from.on_start", "yes")

    def on_end(self, span) -> None:
        self.ended.append(span)


def _telemetry(ratio: str = "1.0", limits: SpanLimits | None = None, id_generator: IdGenerator | None = None):
    settings = load_settings({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": ratio})
    instruments = Instruments(100)
    provider = TracerProvider(sampler=build_sampler(settings), span_limits=limits, id_generator=id_generator)
    provider.add_span_processor(
        RedMetricsProcessor(instruments, self_measured_scopes=frozenset({httpserver.SCOPE_NAME})))
    exported = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider, exported, httpserver.HttpServerTelemetry(provider, instruments)


def _environ(**extra) -> dict:
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/items/7", "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "svc", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "HTTP_HOST": "shop.example",
            "REMOTE_ADDR": "10.0.0.9", "REMOTE_PORT": "5555"}
    base.update(extra)
    return base


def _call(app, environ: dict) -> None:
    body = app(environ, lambda status, headers, exc_info=None: None)
    try:
        b"".join(body)
    finally:
        body.close()


def test_user_code_sees_an_sdk_span_and_its_calls_behave_as_on_the_sdk_span():
    provider, exported, server = _telemetry()
    seen = {}

    user_attributes = {"order.id": 42, "odd": object(), "mixed": [1, "a"], "nested": {"a": 1}, "tags": ["a", "b"]}

    def set_user_attributes(span) -> None:
        span.set_attribute("order.id", 42)
        span.set_attribute("odd", user_attributes["odd"])
        span.set_attributes({key: user_attributes[key] for key in ("mixed", "nested", "tags")})

    def app(environ, start_response):
        span = trace.get_current_span()
        seen["span"] = span
        set_user_attributes(span)
        span.add_event("cache miss", {"key": "item:1"})
        with provider.get_tracer("user").start_as_current_span("child") as child:
            seen["child_parent"] = child.parent
        start_response("200 OK", [])
        return [b"ok"]

    _call(server.wsgi(app, lambda env: "/items/{id}"), _environ())
    span = seen["span"]
    assert isinstance(span, ServerSpan) and isinstance(span, SdkSpan)
    assert seen["child_parent"].span_id == span.get_span_context().span_id
    server_span = next(s for s in exported.get_finished_spans() if s.kind is trace.SpanKind.SERVER)
    with TracerProvider().get_tracer("stock").start_as_current_span("stock") as stock:
        set_user_attributes(stock)  # what the SDK's own span keeps of the same values
    assert {key: server_span.attributes[key] for key in user_attributes} == dict(stock.attributes)
    assert server_span.attributes["http.route"] == "/items/{id}"
    assert [event.name for event in server_span.events] == ["cache miss"]
    assert server_span.name == "GET /items/{id}"
    span.set_attribute("late", 1)  # after the end: ignored, as on the SDK's span
    assert "late" not in server_span.attributes


def test_an_exception_is_recorded_as_an_event_with_an_error_status():
    _provider, exported, server = _telemetry()

    def app(environ, start_response):
        raise ValueError("no such item")

    with pytest.raises(ValueError):
        _call(server.wsgi(app), _environ())
    (span,) = exported.get_finished_spans()
    assert span.status.status_code is trace.StatusCode.ERROR
    assert span.events[0].name == "exception" and span.events[0].attributes["exception.type"] == "ValueError"
    assert span.attributes["error.type"] == "ValueError"


def test_processors_see_start_with_the_request_attributes_and_end_with_a_readable_span():
    provider, _exported, server = _telemetry()
    recording = Recording()
    provider.add_span_processor(recording)  # added after set-up: the span's processors follow
    _call(server.wsgi(lambda env, sr: (sr("200 OK", []), [b""])[1]), _environ(HTTP_TRACEPARENT=TRACEPARENT))
    ((attributes, parent_context),) = recording.started
    assert attributes["http.request.method"] == "GET" and attributes["url.path"] == "/items/7"
    parent = trace.get_current_span(parent_context).get_span_context()
    assert format(parent.span_id, "016x") == TRACEPARENT.split("-")[2]
    (ended,) = recording.ended
    assert isinstance(ended, ReadableSpan) and not isinstance(ended, ServerSpan)
    assert ended.attributes["from.on_start"] == "yes"
    assert ended.attributes["http.response.status_code"] == 200


def test_span_limits_apply_to_the_middleware_attributes_too():
    _provider, exported, server = _telemetry(limits=SpanLimits(max_span_attributes=4, max_span_attribute_length=3))
    _call(server.wsgi(lambda env, sr: (sr("200 OK", []), [b""])[1]), _environ())
    (span,) = exported.get_finished_spans()
    assert len(span.attributes) == 4 and span.dropped_attributes > 0
    assert all(len(value) <= 3 for value in span.attributes.values() if isinstance(value, str))


class _FixedIds(IdGenerator):
    def __init__(self, trace_ids: list[int]) -> None:
        self.trace_ids = trace_ids

    def generate_span_id(self) -> int:
        return 0x1111111111111111

    def generate_trace_id(self) -> int:
        return self.trace_ids.pop(0)


@pytest.mark.parametrize("ratio", ["0", "0.25", "0.5", "1.0"])
def test_sampling_follows_the_configured_sampler_exactly(ratio):
    trace_ids = [(n * 0x9E3779B97F4A7C15_F39CC0605CEDC834) % (1 << 128) or 1 for n in range(1, 201)]
    _provider, _exported, server = _telemetry(ratio, id_generator=_FixedIds(list(trace_ids)))
    reference = ParentBased(TraceIdRatioBased(float(ratio)))
    decisions = []

    def app(environ, start_response):
        decisions.append(trace.get_current_span().get_span_context().trace_flags.sampled)
        start_response("200 OK", [])
        return [b""]

    traced = server.wsgi(app)
    for _ in trace_ids:
        _call(traced, _environ())
    expected = [reference.should_sample(None, trace_id, "GET").decision.is_sampled() for trace_id in trace_ids]
    assert decisions == expected
    decisions.clear()
    for header in (TRACEPARENT, UNSAMPLED_PARENT):  # a remote parent's decision wins, whatever the ratio
        _call(traced, _environ(HTTP_TRACEPARENT=header))
    assert decisions == [True, False]


def test_the_server_span_encodes_to_the_stock_encoders_bytes():
    _provider, exported, server = _telemetry()

    def app(environ, start_response):
        span = trace.get_current_span()
        span.add_event("step", {"n": 1})
        span.set_attribute("ratio", 0.5)
        start_response("503 Service Unavailable", [])
        return [b""]

    _call(server.wsgi(app, lambda env: "/items/{id}"), _environ(HTTP_TRACEPARENT=TRACEPARENT, QUERY_STRING="q=1"))
    spans = exported.get_finished_spans()
    assert otlp.encode_spans(spans) == stock_encode_spans(spans).SerializePartialToString()


# -- the kept-alive transport ---------------------------------------------------------------


class _Collector(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        return None


@pytest.fixture
def collector():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Collector.bodies = []
    yield server
    server.shutdown()
    server.server_close()


def test_the_transport_keeps_one_connection_and_reconnects_when_it_is_closed(collector):
    url = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    transport = otlp.keep_alive_transport(url)
    assert transport is not None
    first = transport.request("POST", url, data=b"one", timeout=5)
    sock = transport._sock
    assert first.status_code == 200 and first.error is None
    assert transport.request("POST", url, data=b"two", timeout=5).status_code == 200
    assert transport._sock is sock  # kept alive
    sock.shutdown(socket.SHUT_RDWR)  # the connection dies while idle
    failed = transport.request("POST", url, data=b"three", timeout=5)
    assert failed.error is not None and transport.is_connection_error(failed.error)  # retried by the client
    assert transport.request("POST", url, data=b"three", timeout=5).status_code == 200
    assert _Collector.bodies == [b"one", b"two", b"three"]
    transport.close()


def test_a_refused_connection_is_a_connection_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/traces"
    transport = otlp.keep_alive_transport(url)
    result = transport.request("POST", url, data=b"x", timeout=2)
    assert result.status_code is None and transport.is_connection_error(result.error)


class _CannedCollector:
    """A TCP server on loopback that reads each request (head and Content-Length body) and
    answers with the next canned bytes; ``None`` closes the connection instead, and
    ``(bytes, "close")`` closes it after the bytes."""

    def __init__(self, answers: list[bytes | tuple[bytes, str] | None]) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.heads: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1/traces"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while self.answers:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if b"\r\n\r\n" not in data:
                        break
                    head, _, data = data.partition(b"\r\n\r\n")
                    self.heads.append(head)
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(data) < length:
                        data += conn.recv(65536)
                    self.requests.append(data[:length])
                    data = data[length:]
                    answer = self.answers.pop(0)
                    if answer is None:
                        break
                    if isinstance(answer, tuple):
                        conn.sendall(answer[0])
                        break
                    conn.sendall(answer)
                    lowered = answer.lower()
                    if b"connection: close" in lowered or (b"content-length" not in lowered and b"chunked" not in lowered):
                        break  # the client reads such an answer up to the close

    def close(self) -> None:
        self._listener.close()


def test_the_transport_reads_every_shape_of_answer_over_one_connection_where_it_can():
    collector = _CannedCollector([
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the close",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ])  # fmt: skip
    transport = otlp.keep_alive_transport(collector.url)
    try:
        results = [transport.request("POST", collector.url, data=b"%d" % n, timeout=5) for n in range(5)]
    finally:
        transport.close()
        collector.close()
    assert [(r.status_code, r.content(), r.error) for r in results] == [
        (200, b"ok", None), (200, b"abcde", None), (503, b"", None), (200, b"until the close", None), (204, b"", None),
    ]  # fmt: skip
    assert results[2].headers().get("retry-after") == "7" and results[2].headers()["RETRY-AFTER"] == "7"
    assert collector.requests == [b"0", b"1", b"2", b"3", b"4"]
    host = collector.url.split("/")[2].encode()
    assert collector.heads[0].splitlines()[:3] == [b"POST /v1/traces HTTP/1.1", b"Host: " + host,
                                                   b"Accept-Encoding: identity"]
    assert collector.connections == 3, "kept alive, except after 'Connection: close' and an answer read to the close"


@pytest.mark.parametrize(
    ("answer", "connection_error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False),  # something else listens on the port
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n", False),  # larger than any OTLP answer
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", False),
        ((b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "close"), True),  # closed mid-answer: retried
        (None, True),  # closed without an answer (an idle connection the collector dropped): retried
    ],
    ids=["not-http", "too-large", "negative-length", "cut-short", "closed"],
)
def test_a_bad_answer_is_an_error_result_and_the_connection_is_dropped(answer, connection_error):
    collector = _CannedCollector([answer, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    transport = otlp.keep_alive_transport(collector.url)
    try:
        failed = transport.request("POST", collector.url, data=b"x", timeout=5)
        assert failed.status_code is None and failed.error is not None
        assert transport.is_connection_error(failed.error) is connection_error
        assert transport._sock is None
        assert transport.request("POST", collector.url, data=b"y", timeout=5).status_code == 200
    finally:
        transport.close()
        collector.close()


def test_a_header_with_a_line_break_is_refused_not_sent():
    collector = _CannedCollector([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    transport = otlp.keep_alive_transport(collector.url)
    try:
        result = transport.request("POST", collector.url, headers={"x-tenant": "a\r\nInjected: 1"}, data=b"x")
        assert isinstance(result.error, ValueError) and collector.requests == []
        given = transport.request("POST", collector.url, headers={"Host": "collector.example"}, data=b"y")
        assert given.status_code == 200
        assert [line for line in collector.heads[0].splitlines() if line.lower().startswith(b"host")] == [
            b"Host: collector.example"]  # the caller's, not a second one
    finally:
        transport.close()
        collector.close()


def test_https_proxies_and_netrc_keep_the_stock_transport(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert otlp.keep_alive_transport("https://collector:4318/v1/traces") is None
    assert otlp.keep_alive_transport("http://collector:4318/v1/traces") is not None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert otlp.keep_alive_transport("http://collector:4318/v1/traces") is None
    monkeypatch.delenv("HTTP_PROXY")
    (tmp_path / ".netrc").write_text("machine collector login a password b\n")
    assert otlp.keep_alive_transport("http://collector:4318/v1/traces") is None


def test_an_sdk_span_with_fields_server_span_does_not_know_turns_it_off(monkeypatch):
    from meshlens import tracing

    monkeypatch.setattr(tracing, "_SERVER_SPAN_FIELDS", tracing._SERVER_SPAN_FIELDS - {"_lock"})
    _provider, exported, server = _telemetry()
    seen = []

    def app(environ, start_response):
        seen.append(trace.get_current_span())
        start_response("200 OK", [])
        return [b""]

    _call(server.wsgi(app, lambda env: "/items/{id}"), _environ())
    assert isinstance(seen[0], SdkSpan) and not isinstance(seen[0], ServerSpan)  # the tracer's own span
    (span,) = exported.get_finished_spans()
    assert span.name == "GET /items/{id}" and span.attributes["http.response.status_code"] == 200
