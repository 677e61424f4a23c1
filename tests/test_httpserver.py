"""meshlens's HTTP server middlewares, in-process: spans, metrics and never breaking the app.

The over-the-wire cases (Flask and FastAPI under gunicorn and uvicorn, bare apps) are in
test_http_services.py; these pin the edge cases with an injected provider and instruments.
"""

from __future__ import annotations

import asyncio
import io
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshlens import catalogue, httpserver
from meshlens.instruments import Instruments
from meshlens.red import RedMetricsProcessor
from meshlens.settings import load_settings
from meshlens.tracing import build_sampler

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Telemetry:
    def __init__(self, sampler_arg: str = "1.0", excluded: tuple[str, ...] = ()) -> None:
        settings = load_settings({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                  "OTEL_TRACES_SAMPLER_ARG": sampler_arg})
        self.instruments = Instruments(100)
        self.provider = TracerProvider(sampler=build_sampler(settings))
        # As meshlens sets it up: the RED processor skips the middleware's own server spans.
        self.provider.add_span_processor(
            RedMetricsProcessor(self.instruments, self_measured_scopes=frozenset({httpserver.SCOPE_NAME})))
        self.exported = InMemorySpanExporter()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exported))
        self.server = httpserver.HttpServerTelemetry(
            self.provider, self.instruments, excluded=httpserver.url_matcher(excluded))

    def count(self, method: str, route: str, status: str) -> float:
        spec = catalogue.HTTP_SERVER_REQUEST_DURATION
        for family in self.instruments[spec].collect():
            for sample in family.samples:
                if sample.name.endswith("_count") and (sample.labels[catalogue.HTTP_REQUEST_METHOD],
                                                       sample.labels[catalogue.HTTP_ROUTE],
                                                       sample.labels[catalogue.HTTP_RESPONSE_STATUS_CODE]) == (
                        method, route, status):
                    return sample.value
        return 0.0

    def active(self) -> float:
        spec = catalogue.HTTP_SERVER_ACTIVE_REQUESTS
        return sum(s.value for f in self.instruments[spec].collect() for s in f.samples)

    def spans(self):
        return self.exported.get_finished_spans()


def environ(method: str = "GET", path: str = "/items/7", **extra) -> dict:
    base = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "q=1",
            "SERVER_NAME": "svc", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "HTTP_HOST": "shop.example:8080",
            "REMOTE_ADDR": "10.0.0.9", "REMOTE_PORT": "5555", "HTTP_USER_AGENT": "curl/8"}
    base.update(extra)
    return base


def call(app, env: dict) -> tuple[str, bytes]:
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"] = status

    body = app(env, start_response)
    try:
        data = b"".join(body)
    finally:
        if hasattr(body, "close"):
            body.close()
    return seen.get("status", ""), data


def hello(env, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_a_sampled_request_gets_one_server_span_with_the_stable_attributes():
    t = Telemetry()
    app = t.server.wsgi(hello, lambda env: "/items/{id}")
    assert call(app, environ(HTTP_TRACEPARENT=TRACEPARENT)) == ("200 OK", b"hello")
    (span,) = t.spans()
    assert span.kind is SpanKind.SERVER and span.name == "GET /items/{id}"
    assert format(span.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert format(span.parent.span_id, "016x") == TRACEPARENT.split("-")[2]
    assert dict(span.attributes) == {
        "http.request.method": "GET", "url.scheme": "http", "url.path": "/items/7", "url.query": "q=1",
        "server.address": "shop.example", "server.port": 8080, "network.protocol.version": "1.1",
        "client.address": "10.0.0.9", "client.port": 5555, "user_agent.original": "curl/8",
        "http.route": "/items/{id}", "http.response.status_code": 200,
    }
    assert t.count("GET", "/items/{id}", "200") == 1
    assert t.active() == 0


def test_an_unsampled_request_has_no_recording_span_but_counts():
    t = Telemetry(sampler_arg="0")
    seen_spans = []

    def app(env, start_response):
        seen_spans.append(trace.get_current_span())
        return hello(env, start_response)

    for _ in range(20):
        assert call(t.server.wsgi(app, lambda env: "/r"), environ())[0] == "200 OK"
    assert t.spans() == ()
    assert all(not span.is_recording() and span.get_span_context().is_valid for span in seen_spans)
    assert len({span.get_span_context().trace_id for span in seen_spans}) == 20, "each request its own trace"
    assert t.count("GET", "/r", "200") == 20


class _OtherRuntimeContext:
    """A runtime context other than the API's default (as ``OTEL_PYTHON_CONTEXT`` may name)."""

    def __init__(self) -> None:
        import contextvars

        self.calls: list[str] = []
        self._var: contextvars.ContextVar = contextvars.ContextVar("other", default=None)

    def attach(self, context):
        self.calls.append("attach")
        return self._var.set(context)

    def get_current(self):
        from opentelemetry.context import Context

        return self._var.get() or Context()

    def detach(self, token) -> None:
        self.calls.append("detach")
        self._var.reset(token)


@pytest.mark.parametrize("runtime", ["default", "other"])
def test_the_request_span_is_current_in_the_app_and_left_after(runtime, monkeypatch):
    from opentelemetry import context as otel_context

    other = _OtherRuntimeContext()
    if runtime == "other":
        monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", other)
    t = Telemetry()
    seen = []

    def app(env, start_response):
        seen.append(trace.get_current_span())
        return hello(env, start_response)

    before = trace.get_current_span()
    assert call(t.server.wsgi(app, lambda env: "/r"), environ(HTTP_TRACEPARENT=TRACEPARENT))[0] == "200 OK"
    (span,) = t.spans()
    assert seen[0].get_span_context() == span.context
    assert trace.get_current_span() is before
    if runtime == "other":  # the request's context went through it, and was left
        assert other.calls[0] == "attach" and other.calls.count("attach") == other.calls.count("detach")


def test_a_jaeger_debug_request_is_sampled_whatever_the_ratio():
    """A ``jaeger-debug-id`` with no trace context: the server span is sampled under a 0 ratio
    and carries the id, as meshlens's sampler (build_sampler) decides it on the direct path."""
    from opentelemetry import propagate

    from meshlens.propagation import FORMATS, MeshlensPropagator

    t = Telemetry(sampler_arg="0")
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(MeshlensPropagator(FORMATS))
    try:
        app = t.server.wsgi(hello, lambda env: "/r")
        assert call(app, environ(HTTP_JAEGER_DEBUG_ID="ticket-4711"))[0] == "200 OK"
        assert call(app, environ())[0] == "200 OK"
    finally:
        propagate.set_global_textmap(previous)
    (span,) = t.spans()
    assert span.attributes["jaeger-debug-id"] == "ticket-4711"
    assert span.parent is None
    assert t.count("GET", "/r", "200") == 2


def test_child_spans_of_an_unsampled_request_still_feed_the_metrics():
    t = Telemetry(sampler_arg="0")
    tracer = t.provider.get_tracer("db")

    def app(env, start_response):
        with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT,
                                          attributes={"db.system.name": "postgresql", "db.operation.name": "SELECT"}):
            pass
        return hello(env, start_response)

    call(t.server.wsgi(app), environ())
    spec = catalogue.DB_CLIENT_OPERATION_DURATION
    counts = [s.value for f in t.instruments[spec].collect() for s in f.samples if s.name.endswith("_count")]
    assert counts == [1]
    assert t.spans() == ()


def test_an_exception_from_the_app_is_a_500_and_the_error_is_recorded():
    t = Telemetry()

    def broken(env, start_response):
        raise KeyError("item")

    with pytest.raises(KeyError):
        call(t.server.wsgi(broken, lambda env: "/items/{id}"), environ())
    (span,) = t.spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "KeyError"
    assert [event.name for event in span.events] == ["exception"]
    assert t.count("GET", "/items/{id}", "500") == 1
    assert t.active() == 0


def test_a_5xx_answer_is_an_error_a_4xx_is_not():
    t = Telemetry()

    def answer(code):
        def app(env, start_response):
            start_response(code, [])
            return [b""]
        return app

    call(t.server.wsgi(answer("503 Service Unavailable")), environ())
    call(t.server.wsgi(answer("404 Not Found")), environ())
    unavailable, missing = t.spans()
    assert unavailable.status.status_code is StatusCode.ERROR and unavailable.attributes["error.type"] == "503"
    assert missing.status.status_code is StatusCode.UNSET and "error.type" not in missing.attributes


def test_made_up_methods_share_one_label():
    t = Telemetry()
    for method in ("BREW", "WHEN", "GET"):
        call(t.server.wsgi(hello), environ(method=method))
    assert t.count("_OTHER", "", "200") == 2
    brew = t.spans()[0]
    assert brew.attributes["http.request.method"] == "_OTHER"
    assert brew.attributes["http.request.method_original"] == "BREW"
    assert brew.name == "HTTP"


def test_excluded_urls_get_no_span_and_no_metric():
    t = Telemetry(excluded=("healthz", "/ready$"))
    app = t.server.wsgi(hello)
    for path in ("/healthz", "/ready", "/items/1"):
        call(app, environ(path=path))
    assert [span.attributes["url.path"] for span in t.spans()] == ["/items/1"]
    assert t.count("GET", "", "200") == 1


def test_an_odd_environ_costs_attributes_not_the_request():
    # werkzeug's development server passes REMOTE_PORT as an int; other servers omit keys.
    t = Telemetry()
    env = environ(REMOTE_PORT=5555, SERVER_PORT=8000)
    del env["HTTP_HOST"]
    assert call(t.server.wsgi(hello), env) == ("200 OK", b"hello")
    assert t.spans()[0].attributes["client.port"] == 5555
    assert t.spans()[0].attributes["server.address"] == "svc"
    assert call(t.server.wsgi(hello), {"REQUEST_METHOD": "GET"}) == ("200 OK", b"hello")


def test_a_body_is_timed_until_the_server_closes_it():
    t = Telemetry()

    def streaming(env, start_response):
        start_response("200 OK", [])
        yield b"a"
        yield b"b"

    body = t.server.wsgi(streaming)(environ(), lambda *a: None)
    assert list(body) == [b"a", b"b"]
    assert t.spans() == (), "the span ends when the body is closed, not before"
    body.close()
    assert len(t.spans()) == 1


def test_an_already_traced_environ_is_not_traced_twice():
    t = Telemetry()
    inner = t.server.wsgi(hello)
    call(t.server.wsgi(inner), environ())
    assert len(t.spans()) == 1


# -- ASGI --------------------------------------------------------------------


def _asgi_call(app, path: str = "/items/7", headers=(), send=None) -> list[dict]:
    """Calls ``app`` as a server does (asyncio.run runs it in a task, in a copy of the
    context); the messages sent, unless ``send`` takes them."""
    sent: list[dict] = []
    scope = {"type": "http", "method": "GET", "scheme": "http", "path": path, "root_path": "",
             "query_string": b"", "http_version": "1.1", "headers": [(b"host", b"api:9000"), *headers],
             "client": ("10.0.0.1", 4000), "server": ("10.0.0.2", 9000)}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def keep(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send or keep))
    return sent


def test_starlette_routes_include_the_mount_prefix():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def item(request):
        return PlainTextResponse("ok")

    t = Telemetry()
    inner = Starlette(routes=[Route("/items/{id}", item)])
    app = Starlette(routes=[Mount("/v1", app=inner), Route("/top/{id}", item)])
    traced = t.server.asgi(app)
    assert _asgi_call(traced, "/v1/items/3")[0]["status"] == 200
    _asgi_call(traced, "/top/3", headers=[(b"traceparent", TRACEPARENT.encode())])
    mounted, top = t.spans()
    assert mounted.attributes["http.route"] == "/v1/items/{id}"
    assert top.attributes["http.route"] == "/top/{id}"
    assert format(top.context.trace_id, "032x") == TRACEPARENT.split("-")[1]
    assert top.attributes["server.address"] == "api" and top.attributes["server.port"] == 9000
    assert t.count("GET", "/v1/items/{id}", "200") == 1


def test_an_asgi_exception_is_a_500_and_is_raised():
    t = Telemetry()

    async def broken(scope, receive, send):
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        _asgi_call(t.server.asgi(broken))
    assert t.count("GET", "", "500") == 1
    assert t.spans()[0].attributes["error.type"] == "RuntimeError"


def test_websockets_and_lifespan_pass_through():
    t = Telemetry()
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(t.server.asgi(app)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"] and t.spans() == ()


def _completing_app(events: list, spawn: bool = False, own_span: trace.Tracer | None = None):
    """An ASGI app that notes the current span where it sends each message (with ``spawn``,
    it sends the last one from a task of its own; with ``own_span``, inside a span of its own)."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        if spawn:
            await asyncio.get_running_loop().create_task(send({"type": "http.response.body", "body": b"b"}))
        elif own_span is not None:
            with own_span.start_as_current_span("own") as span:
                events.append(("app-span", span))
                await send({"type": "http.response.body", "body": b"b"})
                events.append(("after-own", trace.get_current_span()))
        else:
            await send({"type": "http.response.body", "body": b"b"})
        events.append(("after", trace.get_current_span()))

    return app


def _noting_send(events: list):
    async def send(message):
        events.append((message["type"] + ("+more" if message.get("more_body") else ""), trace.get_current_span()))

    return send


def test_the_server_completes_the_response_outside_the_request_context():
    """The last message is sent with the request's context left: a timer the server arms as
    the response completes (uvicorn's keep-alive) does not keep the request's span alive.
    The status line (where uvicorn writes its access log) and the app's code after it
    still see the request's span."""
    t = Telemetry()
    events: list = []
    _asgi_call(t.server.asgi(_completing_app(events)), send=_noting_send(events))
    (span,) = t.spans()
    current = {name: seen.get_span_context() for name, seen in events}
    assert current["http.response.start"] == span.context
    assert current["http.response.body+more"] == span.context
    assert current["http.response.body"] is trace.INVALID_SPAN_CONTEXT
    assert current["after"] == span.context, "the request's context is back once the message is sent"
    assert span.attributes["http.response.status_code"] == 200


def test_a_context_the_app_entered_is_kept_while_it_sends():
    t = Telemetry()
    events: list = []
    _asgi_call(t.server.asgi(_completing_app(events, own_span=t.provider.get_tracer("app"))), send=_noting_send(events))
    own = dict(events)["app-span"]
    current = {name: seen for name, seen in events}
    assert current["http.response.body"] is own
    assert current["after-own"] is own
    assert len(t.spans()) == 2


def test_a_last_message_sent_from_another_task_completes_the_request():
    t = Telemetry()
    events: list = []
    _asgi_call(t.server.asgi(_completing_app(events, spawn=True)), send=_noting_send(events))
    (span, *_) = [s for s in t.spans() if s.name.startswith("GET")]
    current = {name: seen.get_span_context() for name, seen in events}
    assert current["http.response.body"] == span.context  # its task's copy: nothing to leave there
    assert current["after"] == span.context
    assert t.count("GET", "", "200") == 1 and t.active() == 0
