"""HTTP server spans and RED metrics for WSGI and ASGI apps, in one lean middleware each.

Why meshlens does this itself instead of using the contrib middlewares: measured in-process
on a hello-world Flask app, the contrib Flask instrumentation (over the contrib WSGI
middleware) adds about 230 µs to every request, unsampled ones included, twice the cost of
the request itself: it reads environment variables, walks werkzeug's proxies and sends every
attribute through the SDK's validation on each request. The middlewares here do the same
job in one pass: one SERVER span per request with the stable HTTP semantic-convention
attributes, the incoming context extracted with the global propagator, the request-duration
histogram with the trace as exemplar, and the in-flight gauge.

- The span is started by :class:`meshlens.tracing.ServerSpanStarter`: the configured sampler
  decides, as in the SDK's ``start_span``. An unsampled request gets a non-recording span,
  which carries the context downstream and costs almost nothing; its metrics are recorded
  here, from the middleware's own clock, so the sampler is not asked to record it.
- A recording request gets a :class:`meshlens.tracing.ServerSpan`: an SDK span whose
  attributes are built once, as a plain dict of values known to be clean, that span
  processors see start and end, and that is encoded for export as it ends.

``MESHLENS_HTTP_SERVER_SPANS=contrib`` goes back to the contrib instrumentations, for their
request and response hooks and captured headers.

Where the middlewares go: Flask's ``Flask.wsgi_app`` (the route is werkzeug's matched rule),
Starlette's and so FastAPI's ``Starlette.__call__`` (the route is the one Starlette's router
puts in the scope; FastAPI's native telemetry is turned off so that a request is traced
once), and bare WSGI/ASGI apps under gunicorn and uvicorn (:mod:`meshlens.servers`).
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from types import ModuleType
from typing import Any, NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS, CLIENT_PORT
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
)
from opentelemetry.semconv.attributes.network_attributes import NETWORK_PROTOCOL_VERSION
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import URL_PATH, URL_QUERY, URL_SCHEME
from opentelemetry.semconv.attributes.user_agent_attributes import USER_AGENT_ORIGINAL
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace import propagation as trace_propagation

from meshlens import catalogue
from meshlens._hooks import after_import
from meshlens._once import WarnOnce
from meshlens._version import __version__
from meshlens.instruments import GuardedMetric, Instruments
from meshlens.propagation import MeshlensPropagator
from meshlens.red import KNOWN_METHODS
from meshlens.tracing import ServerSpan, ServerSpanStarter

_logger = logging.getLogger("meshlens")

SCOPE_NAME = "meshlens.http.server"
"""The instrumentation scope of the server spans made here (the RED processor skips them:
their metrics are recorded by the middleware)."""
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
_OTHER = "_OTHER"
_TRACED = "meshlens.traced"  # marks an ASGI scope or WSGI environ already traced further out

Environ = MutableMapping[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]
Scope = MutableMapping[str, Any]
AsgiApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
AsgiCall = Callable[[Any, Scope, Any, Any], Awaitable[None]]


_log_failure_once = WarnOnce(
    "meshlens: HTTP server telemetry failed for a request; the request went on (logged once)"
)


def _host_and_port(host: str, default_port: int | None) -> tuple[str, int | None]:
    """``server.address`` and ``server.port`` from a Host header (``[::1]:8000``, ``a.b``)."""
    if host.startswith("["):
        end = host.find("]")
        port = host[end + 2 :] if end > 0 and host[end + 1 : end + 2] == ":" else ""
        address = host[1:end] if end > 0 else host
    else:
        address, _, port = host.partition(":")
    return address, int(port) if port.isdigit() else default_port


class _EnvironGetter(Getter[Environ]):
    """Reads propagation headers from a WSGI environ (``traceparent`` is ``HTTP_TRACEPARENT``)."""

    def __init__(self) -> None:
        self._keys: dict[str, str] = {}

    def get(self, carrier: Environ, key: str) -> list[str] | None:
        name = self._keys.get(key)
        if name is None:
            name = self._keys[key] = _environ_key(key)
        value = carrier.get(name)
        return [value] if value is not None else None

    def keys(self, carrier: Environ) -> list[str]:
        return [key[5:].lower().replace("_", "-") for key in carrier if key.startswith("HTTP_")]


class _AsgiHeaders:
    """An ASGI scope's headers as a dict, built on the first lookup (most requests carry no
    propagation header, and then nothing is decoded)."""

    __slots__ = ("_by_name", "scope")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self._by_name: dict[str, list[str]] | None = None

    def by_name(self) -> dict[str, list[str]]:
        if self._by_name is None:
            by_name: dict[str, list[str]] = {}
            for name, value in self.scope.get("headers") or ():
                by_name.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
            self._by_name = by_name
        return self._by_name


class _AsgiGetter(Getter[_AsgiHeaders]):
    def get(self, carrier: _AsgiHeaders, key: str) -> list[str] | None:
        return carrier.by_name().get(key)

    def keys(self, carrier: _AsgiHeaders) -> list[str]:
        return list(carrier.by_name())


_ENVIRON_GETTER = _EnvironGetter()
_ASGI_GETTER = _AsgiGetter()
_NO_PARENT = Context()  # what extraction returns for a request without propagation headers


class _ContextSwitch(NamedTuple):
    """How a request's context is made current, read and left."""

    enter: Callable[[Context], object]
    leave: Callable[[Any], None]
    current: Callable[[], Context]
    direct: bool
    """Whether these are the ``ContextVar``'s own methods (a token of another task's context
    then raises instead of being logged)."""


def _context_switch() -> _ContextSwitch:
    """With the ``ContextVar`` behind the API's default runtime context, directly (the API's
    ``attach``/``detach`` and ``set_span_in_context`` are six Python calls a request); with
    the API for any other runtime context (``OTEL_PYTHON_CONTEXT``)."""
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    if type(runtime) is ContextVarsRuntimeContext and isinstance(variable, contextvars.ContextVar):
        return _ContextSwitch(variable.set, variable.reset, variable.get, True)
    return _ContextSwitch(otel_context.attach, otel_context.detach, otel_context.get_current, False)


def _span_setter() -> Callable[[Any, Context], Context]:
    """``trace.set_span_in_context`` without its two calls, when the API keeps the span under
    the key this module reads (its private ``_SPAN_KEY``); else the API's own."""
    key = getattr(trace_propagation, "_SPAN_KEY", None)
    probe = trace.NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)
    if not isinstance(key, str) or trace.get_current_span(Context({key: probe})) is not probe:
        return trace.set_span_in_context

    def with_span(span: Any, parent: Context) -> Context:
        return Context({**parent, key: span})

    return with_span


_with_span = _span_setter()


class _PropagationHeaders:
    """The headers a propagator reads, as a WSGI environ and an ASGI scope carry their names;
    None where the propagator does not say (then every request goes through its extract)."""

    __slots__ = ("asgi_names", "environ_keys", "propagator")

    def __init__(self, propagator: TextMapPropagator) -> None:
        self.propagator = propagator
        names = propagator.headers_read() if isinstance(propagator, MeshlensPropagator) else None
        self.environ_keys = None if names is None else frozenset(_environ_key(name) for name in names)
        # headers_read() names are lower case, as ASGI servers pass header names.
        self.asgi_names = None if names is None else frozenset(name.encode("latin-1") for name in names)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class Exchange:
    """One request in flight: its span, its clock and its labels."""

    __slots__ = ("_active", "_context_token", "_done", "_method", "_started", "_telemetry", "context", "span")

    def __init__(
        self,
        telemetry: HttpServerTelemetry,
        span: Any,
        method: str,
        active: Callable[[float], None],
        context: Context,
        token: object,
    ) -> None:
        self._telemetry = telemetry
        self.span = span
        self._method = method
        self._active = active
        self.context = context
        self._context_token = token
        self._started = time.perf_counter()
        self._done = False

    def detach(self) -> None:
        """Leaves the request's context (the app has returned; the body may still be sent)."""
        token, self._context_token = self._context_token, None
        if token is not None:
            try:
                self._telemetry.leave_context(token)
            except Exception:  # a token of another context: logged, as the API's detach does
                _log_failure_once()

    def finish(self, status: int, route: str, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        duration = time.perf_counter() - self._started
        # One method, not a guarded call to a second one: this runs for every request.
        try:
            self._active(-1)
            if error is not None and not status:
                status = 500  # the server answers 500 for an exception that escapes the app
            span = self.span
            context = span.get_span_context()
            sampled = context.trace_flags.sampled
            labels = (self._method, route, str(status) if status else "")
            self._telemetry.duration.observe(
                labels, duration, context.trace_id if sampled else 0, context.span_id if sampled else 0
            )
            if not span.is_recording():
                return
            attributes: dict[str, Any] = {}
            if status:
                attributes[HTTP_RESPONSE_STATUS_CODE] = status
            name = ""
            if route:
                attributes[HTTP_ROUTE] = route
                name = f"{self._method} {route}" if self._method != _OTHER else f"HTTP {route}"
            if error is not None:
                attributes[ERROR_TYPE] = type(error).__qualname__
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            elif status >= 500:
                attributes[ERROR_TYPE] = str(status)
                span.set_status(Status(StatusCode.ERROR))
            if type(span) is ServerSpan:
                span.end_request(name, attributes)
            else:  # a span of the tracer's own (see ServerSpanStarter)
                if name:
                    span.update_name(name)
                span.set_attributes(attributes)
                span.end()
        except Exception:  # telemetry never costs the request
            _log_failure_once()


class HttpServerTelemetry:
    """Starts and finishes the server side of requests, for both middlewares."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        instruments: Instruments,
        on_request: Callable[[], None] | None = None,
        excluded: Callable[[str], bool] | None = None,
    ) -> None:
        self._spans = ServerSpanStarter(
            tracer_provider.get_tracer(SCOPE_NAME, __version__, schema_url=SCHEMA_URL), SCOPE_NAME
        )
        self.duration: GuardedMetric = instruments[catalogue.HTTP_SERVER_REQUEST_DURATION]
        self._active = instruments[catalogue.HTTP_SERVER_ACTIVE_REQUESTS]
        self._on_request = on_request
        self.excluded = excluded
        self._headers = _PropagationHeaders(propagate.get_global_textmap())
        self.enter_context, self.leave_context, self.current_context, self.direct_context = _context_switch()

    def propagation_headers(self) -> _PropagationHeaders:
        """What the global propagator reads (it may be replaced after set-up)."""
        propagator = propagate.get_global_textmap()
        headers = self._headers
        if headers.propagator is not propagator:
            headers = self._headers = _PropagationHeaders(propagator)
        return headers

    def wsgi_parent(self, environ: Environ) -> Context:
        """The incoming context of a WSGI request."""
        headers = self.propagation_headers()
        if headers.environ_keys is not None and headers.environ_keys.isdisjoint(environ):
            return _NO_PARENT
        return headers.propagator.extract(environ, getter=_ENVIRON_GETTER)

    def asgi_parent(self, scope: Scope) -> Context:
        """The incoming context of an ASGI request."""
        headers = self.propagation_headers()
        if headers.asgi_names is not None and headers.asgi_names.isdisjoint(dict(scope.get("headers") or ())):
            return _NO_PARENT
        return headers.propagator.extract(_AsgiHeaders(scope), getter=_ASGI_GETTER)

    def start(
        self,
        method: str,
        scheme: str,
        parent: Context,
        attributes_of: Callable[[Any], dict[str, Any]],
        carrier: Any,
        exchange_class: type[Exchange] = Exchange,
    ) -> Exchange:
        known = method if method in KNOWN_METHODS else _OTHER
        active = self._active.adder(known, scheme)
        active(1)
        if self._on_request is not None:
            self._on_request()
        span = self._spans.start(known if known != _OTHER else "HTTP", parent, attributes_of, carrier)
        context = _with_span(span, parent)
        return exchange_class(self, span, known, active, context, self.enter_context(context))

    # -- WSGI ---------------------------------------------------------------

    def wsgi(self, app: WsgiApp, route_of: Callable[[Environ], str] | None = None) -> WsgiApp:
        """``app`` with a server span and metrics per request."""

        @functools.wraps(app)
        def traced(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
            return self.call_wsgi(app, environ, start_response, route_of)

        return traced

    def call_wsgi(
        self,
        app: WsgiApp,
        environ: Environ,
        start_response: StartResponse,
        route_of: Callable[[Environ], str] | None = None,
    ) -> Iterable[bytes]:
        if environ.get(_TRACED) or (self.excluded is not None and self.excluded(_wsgi_url(environ))):
            return app(environ, start_response)
        environ[_TRACED] = True
        try:
            exchange: Any = self.start(
                environ.get("REQUEST_METHOD", ""), environ.get("wsgi.url_scheme", "http"), self.wsgi_parent(environ),
                _WSGI_REQUEST_ATTRIBUTES, environ, _WsgiExchange,
            )  # fmt: skip
        except Exception:  # telemetry never costs the request
            _log_failure_once()
            return app(environ, start_response)
        # One object per request: it observes the status, reads the route, and is the body
        # the server closes (no closures, no wrapper objects on the way).
        exchange.environ = environ
        exchange.respond = start_response
        exchange.route_of = route_of
        exchange.status = 0
        exchange.body = ()
        try:
            body = app(environ, exchange.start_response)
        except BaseException as error:
            exchange.detach()
            exchange.finish(exchange.status, exchange.route(), error)
            raise
        exchange.detach()
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            # Wrapping it would cost the server its sendfile(): finish now, before the body is sent.
            exchange.finish(exchange.status, exchange.route())
            return body
        exchange.body = body
        return exchange  # type: ignore[no-any-return]

    # -- ASGI ---------------------------------------------------------------

    def asgi(self, app: AsgiApp) -> AsgiApp:
        """``app`` with a server span and metrics per HTTP request."""
        call = self.asgi_call(_call_app)

        @functools.wraps(app)
        async def traced(scope: Scope, receive: Any, send: Any) -> None:
            await call(app, scope, receive, send)

        return traced

    def asgi_call(self, original: AsgiCall) -> AsgiCall:
        """``original``, an ASGI app class's ``__call__``, with a server span and metrics per
        HTTP request. The request runs in the one coroutine this returns, the app's own aside:
        no wrapper coroutine, partial or closure (with its cells) is made per request."""
        telemetry = self

        async def __call__(owner: Any, scope: Scope, receive: Any, send: Any) -> None:
            exchange = telemetry.start_asgi(scope, send)
            if exchange is None:
                await original(owner, scope, receive, send)
                return
            try:
                await original(owner, scope, receive, exchange)
            except BaseException as error:
                exchange.finish(exchange.status, _asgi_route(scope, exchange.root_path), error)
                raise
            else:
                exchange.finish(exchange.status, _asgi_route(scope, exchange.root_path))
            finally:
                exchange.detach()

        return __call__

    def start_asgi(self, scope: Scope, send: Any) -> _AsgiExchange | None:
        """The exchange of an HTTP request to trace; None for anything else (lifespan,
        websocket, a request traced further out or excluded) or if telemetry fails."""
        if scope.get("type") != "http" or scope.get(_TRACED) or (
            self.excluded is not None and self.excluded(_asgi_url(scope))
        ):
            return None
        scope[_TRACED] = True
        try:
            exchange: Any = self.start(
                scope.get("method", ""), scope.get("scheme", "http"), self.asgi_parent(scope),
                _ASGI_REQUEST_ATTRIBUTES, scope, _AsgiExchange,
            )  # fmt: skip
        except Exception:  # telemetry never costs the request
            _log_failure_once()
            return None
        exchange.send = send
        exchange.root_path = scope.get("root_path", "")
        exchange.status = 0
        return exchange  # type: ignore[no-any-return]


class _WsgiExchange(Exchange):
    """A WSGI request in flight, which is also the response body the server iterates and
    closes: the request finishes when the server closes the body."""

    __slots__ = ("body", "environ", "respond", "route_of", "status")

    # Exchange's own __init__ (one frame per request); call_wsgi sets these.
    body: Iterable[bytes]
    environ: Environ
    respond: StartResponse
    route_of: Callable[[Environ], str] | None
    status: int

    def start_response(self, status_line: str, headers: Any, exc_info: Any = None) -> Any:
        try:
            self.status = int(status_line[:3])
        except ValueError:
            self.status = 0
        return self.respond(status_line, headers, exc_info)

    def route(self) -> str:
        route_of = self.route_of
        if route_of is _environ_route:  # Flask's: read here, a call less per request
            return self.environ.get(_ROUTE, "")  # type: ignore[no-any-return]
        if route_of is None:
            return ""
        try:
            return route_of(self.environ)
        except Exception:
            return ""

    def __iter__(self) -> Iterator[bytes]:
        # The body's own iterator, not a generator around it: no frame per chunk. An error
        # while the body is sent comes after the status line; close() still ends the span.
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.finish(self.status, self.route())


class _AsgiExchange(Exchange):
    """An ASGI request in flight, which is also the ``send`` callable the app is given: it
    notes the response status on the way (one object per request, no closure)."""

    __slots__ = ("root_path", "send", "status")

    # Exchange's own __init__ (one frame per request); start_asgi sets these three.
    root_path: str
    send: Callable[[Any], Awaitable[None]]
    status: int

    async def __call__(self, message: Any) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            self.status = int(message.get("status", 0))
        elif kind in _LAST_MESSAGE_TYPES and not message.get("more_body") and self._telemetry.direct_context:
            await self._send_last(message)
            return
        await self.send(message)

    async def _send_last(self, message: Any) -> None:
        """Sends the response's last message with the request's context left, when the app
        has not entered one of its own on top: what the server does as the response completes
        (uvicorn arms its keep-alive timer, 5 s by default) is the server's, not the request's.
        A timer armed in the request's context keeps its span and context alive until it fires
        or the loop purges it: about a hundred requests' worth at any time under load. Freed in
        bulk, they made the garbage collector run 4 to 5 times as often as without meshlens
        (hello-world FastAPI under uvicorn at full load; with this, as often as without)."""
        telemetry = self._telemetry
        token = self._context_token
        if token is None or telemetry.current_context() is not self.context:
            await self.send(message)
            return
        try:
            telemetry.leave_context(token)
        except (ValueError, RuntimeError):  # sent from another task than the request's (its token is not valid there)
            await self.send(message)
            return
        self._context_token = None
        try:
            await self.send(message)
        finally:
            self._context_token = telemetry.enter_context(self.context)


_LAST_MESSAGE_TYPES = frozenset({"http.response.body", "http.response.pathsend", "http.response.zerocopysend"})
"""The ASGI messages that can complete a response (the body one, unless ``more_body``)."""


def _call_app(app: Any, scope: Scope, receive: Any, send: Any) -> Awaitable[None]:
    """A bare ASGI app called as :meth:`HttpServerTelemetry.asgi_call` calls a class's ``__call__``."""
    return app(scope, receive, send)  # type: ignore[no-any-return]


# Excluded URLs are matched against the URL without its query, as the contrib
# instrumentations match them (Flask's ``request.base_url``).
def _wsgi_url(environ: Environ) -> str:
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return f"{environ.get('wsgi.url_scheme', 'http')}://{host}{path}"


def _asgi_url(scope: Scope) -> str:
    server = scope.get("server") or ("", None)
    return f"{scope.get('scheme', 'http')}://{server[0]}{scope.get('root_path', '')}{scope.get('path', '')}"


def _request_attributes(
    attributes_of: Callable[[Any], dict[str, Any]], method_of: Callable[[Any], str]
) -> Callable[[Any], dict[str, Any]]:
    """``attributes_of`` with the method attributes added, and an empty dict where it fails
    (an unusual environ or scope costs attributes, not the span). Made once per kind of
    carrier, not per request."""

    def request_attributes(carrier: Any) -> dict[str, Any]:
        try:
            found = attributes_of(carrier)
        except Exception:
            _log_failure_once()
            found = {}
        method = method_of(carrier)
        if method in KNOWN_METHODS:
            found[HTTP_REQUEST_METHOD] = method
        else:
            found[HTTP_REQUEST_METHOD] = _OTHER
            found[HTTP_REQUEST_METHOD_ORIGINAL] = method
        return found

    return request_attributes


def _wsgi_attributes(environ: Environ) -> dict[str, Any]:
    """The request attributes of a sampled span (stable HTTP server conventions)."""
    scheme = environ.get("wsgi.url_scheme", "http")
    attributes: dict[str, Any] = {
        URL_SCHEME: scheme,
        URL_PATH: environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
    }
    query = environ.get("QUERY_STRING")
    if query:
        attributes[URL_QUERY] = query
    server_port = str(environ.get("SERVER_PORT", ""))
    host = environ.get("HTTP_HOST")
    if host:
        address, port = _host_and_port(host, 443 if scheme == "https" else 80)
    else:
        address, port = environ.get("SERVER_NAME", ""), int(server_port) if server_port.isdigit() else None
    if address:
        attributes[SERVER_ADDRESS] = address
    if port is not None:
        attributes[SERVER_PORT] = port
    protocol = environ.get("SERVER_PROTOCOL", "")
    if protocol.startswith("HTTP/"):
        attributes[NETWORK_PROTOCOL_VERSION] = protocol[5:]
    client = environ.get("REMOTE_ADDR")
    if client:
        attributes[CLIENT_ADDRESS] = client
        client_port = str(environ.get("REMOTE_PORT", ""))  # an int under some servers (werkzeug's)
        if client_port.isdigit():
            attributes[CLIENT_PORT] = int(client_port)
    user_agent = environ.get("HTTP_USER_AGENT")
    if user_agent:
        attributes[USER_AGENT_ORIGINAL] = user_agent
    return attributes


def _asgi_attributes(scope: Scope) -> dict[str, Any]:
    scheme = scope.get("scheme", "http")
    attributes: dict[str, Any] = {URL_SCHEME: scheme, URL_PATH: scope.get("root_path", "") + scope.get("path", "")}
    query = scope.get("query_string")
    if query:
        attributes[URL_QUERY] = query.decode("latin-1")
    host = user_agent = b""
    for name, value in scope.get("headers") or ():  # lower case, as ASGI servers pass them
        if name == b"host":
            host = host or value
        elif name == b"user-agent":
            user_agent = user_agent or value
    server = scope.get("server")
    if host:
        address, port = _host_and_port(host.decode("latin-1"), 443 if scheme == "https" else 80)
    elif server:
        address, port = str(server[0]), server[1]
    else:
        address, port = "", None
    if address:
        attributes[SERVER_ADDRESS] = address
    if port is not None:
        attributes[SERVER_PORT] = port
    version = scope.get("http_version")
    if version:
        attributes[NETWORK_PROTOCOL_VERSION] = version
    client = scope.get("client")
    if client:
        attributes[CLIENT_ADDRESS] = str(client[0])
        if client[1] is not None:
            attributes[CLIENT_PORT] = int(client[1])
    if user_agent:
        attributes[USER_AGENT_ORIGINAL] = user_agent.decode("latin-1")
    return attributes


def _wsgi_method(environ: Environ) -> str:
    return environ.get("REQUEST_METHOD", "")  # type: ignore[no-any-return]


def _asgi_method(scope: Scope) -> str:
    return scope.get("method", "")  # type: ignore[no-any-return]


_WSGI_REQUEST_ATTRIBUTES = _request_attributes(_wsgi_attributes, _wsgi_method)
_ASGI_REQUEST_ATTRIBUTES = _request_attributes(_asgi_attributes, _asgi_method)


def _asgi_route(scope: Scope, root_path: str) -> str:
    """The route template Starlette's router matched; a mount's prefix comes from how far
    the mounts moved ``root_path`` on the way in."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return ""
    inner_root = scope.get("root_path", "")
    prefix = inner_root[len(root_path) :] if inner_root.startswith(root_path) else ""
    return prefix + path


_ROUTE = "meshlens.route"  # where a framework hook leaves the matched route in the environ


def _environ_route(environ: Environ) -> str:
    return environ.get(_ROUTE, "")


def url_matcher(patterns: Iterable[str]) -> Callable[[str], bool] | None:
    """A test for excluded URLs: any of the regular expressions found in the URL."""
    patterns = [pattern for pattern in patterns if pattern]
    if not patterns:
        return None
    try:
        search = re.compile("|".join(f"(?:{pattern})" for pattern in patterns)).search
    except re.error as exc:
        _logger.warning("meshlens: OTEL_PYTHON_EXCLUDED_URLS is not a list of regular expressions (%s); "
                        "no URL is excluded", exc)
        return None
    return lambda url: search(url) is not None


# -- frameworks ---------------------------------------------------------------


def _record_flask_exception(_sender: Any, exception: BaseException, **_extra: Any) -> None:
    """Flask turns an exception into a 500 response; the span records what it was."""
    span = trace.get_current_span()
    if span.is_recording() and getattr(span, "instrumentation_scope", None) is not None \
            and span.instrumentation_scope.name == SCOPE_NAME:  # fmt: skip
        span.record_exception(exception)
        span.set_attribute(ERROR_TYPE, type(exception).__qualname__)


def _hook_flask(module: ModuleType, telemetry: HttpServerTelemetry) -> None:
    """``module`` is ``flask.app``."""
    flask = module.Flask
    if getattr(flask.wsgi_app, "_meshlens", False):
        return
    original = flask.wsgi_app

    def wsgi_app(self: Any, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # A bound method: the app called the way Flask calls it, cheaper to make than a partial.
        return telemetry.call_wsgi(original.__get__(self), environ, start_response, _environ_route)

    wsgi_app._meshlens = True  # type: ignore[attr-defined]
    functools.update_wrapper(wsgi_app, original)
    flask.wsgi_app = wsgi_app

    # The route is read where Flask matches it: when the response is closed, Flask has
    # already popped the request context and cleared the request from the environ.
    from flask.ctx import RequestContext

    match_request = RequestContext.match_request

    def match_and_note_route(self: Any) -> None:
        match_request(self)
        rule = getattr(self.request, "url_rule", None)
        if rule is not None:
            self.request.environ[_ROUTE] = rule.rule

    functools.update_wrapper(match_and_note_route, match_request)
    RequestContext.match_request = match_and_note_route
    from flask.signals import got_request_exception

    got_request_exception.connect(_record_flask_exception, weak=False)


def _hook_starlette(module: ModuleType, telemetry: HttpServerTelemetry) -> None:
    starlette = module.Starlette
    if getattr(starlette.__call__, "_meshlens", False):
        return
    original = starlette.__call__
    __call__ = telemetry.asgi_call(original)
    __call__._meshlens = True  # type: ignore[attr-defined]
    functools.update_wrapper(__call__, original)
    starlette.__call__ = __call__


def _hook_fastapi(module: ModuleType) -> None:
    """FastAPI's native telemetry off by default: the Starlette middleware traces the request.
    An app's own ``telemetry=`` argument still wins."""
    fastapi = module.FastAPI
    if getattr(fastapi.__init__, "_meshlens", False):
        return
    original = fastapi.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        telemetry = dict(kwargs.get("telemetry") or {})
        for key in ("tracing", "metrics", "logs", "operation_spans"):
            telemetry.setdefault(key, False)
        kwargs["telemetry"] = telemetry
        original(self, *args, **kwargs)

    __init__._meshlens = True  # type: ignore[attr-defined]
    functools.update_wrapper(__init__, original)
    fastapi.__init__ = __init__


FRAMEWORKS = ("flask", "starlette", "fastapi")
"""Entry-point names of the contrib instrumentations these middlewares replace."""


def hook_frameworks(telemetry: HttpServerTelemetry, frameworks: Iterable[str], native_fastapi: bool) -> None:
    """Installs the middlewares into Flask and Starlette (so FastAPI) when they are imported."""
    frameworks = set(frameworks)
    if "flask" in frameworks:
        after_import("flask.app", functools.partial(_hook_flask, telemetry=telemetry))
    if frameworks & {"starlette", "fastapi"}:
        after_import("starlette.applications", functools.partial(_hook_starlette, telemetry=telemetry))
        if native_fastapi:
            after_import("fastapi.applications", _hook_fastapi)

