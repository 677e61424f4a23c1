"""An OpenTracing tracer on OpenTelemetry: what ``jaeger_client.Config`` returns under meshlens.

Built on opentelemetry-opentracing-shim, with what a jaeger-client service needs on top:

- one context with the auto-instrumented spans, both ways: an OpenTracing span started while
  a Flask request (or any OpenTelemetry span) is current is its child, and a ``requests`` call
  made under an active OpenTracing scope is the OpenTracing span's child. (The shim's scope
  manager sees only the scopes it activated itself, so an OpenTracing span started by
  ``start_span`` inside an auto-instrumented request began a new trace.)
- the usual server pattern ``start_span(child_of=tracer.extract(HTTP_HEADERS, headers))``,
  inside a request that meshlens already traces, nests under meshlens's server span instead
  of beside it: both would otherwise be children of the caller's span.
- inject and extract go through meshlens's global propagator, so ``uber-trace-id``, W3C and B3
  are all written, and whatever meshlens reads is read; header names are matched whatever
  their case, as jaeger-client matches them. Extract returns None when the carrier holds no
  context, as jaeger-client does.
- OpenTracing baggage (``set_baggage_item``) goes out on the calls made under the span,
  auto-instrumented ones included, and children inherit their parent's baggage.
- tags become attributes (values OpenTelemetry cannot hold are written as text, strings cut
  at jaeger-client's ``max_tag_value_length``); ``error`` set to true gives the span status
  ERROR; ``log_kv`` becomes an event, and a log with ``error.object`` (what a ``with`` block
  logs when it raises) becomes an ``exception`` event with the type, message and stack trace,
  and status ERROR. ``span.kind`` sets the span's kind (a ``server`` span under a local parent
  stays internal: it is not a second server hop).
- a span that OpenTracing code did not start (``tracer.active_span`` inside a Flask request is
  meshlens's server span) can be tagged and logged, but ``finish()`` and closing its scope
  leave it alone: it belongs to the code that started it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import traceback
from collections.abc import Mapping
from concurrent.futures import Future
from contextvars import Token
from types import TracebackType
from typing import Any

import opentracing
from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, create_key, detach, get_current, get_value, set_value
from opentelemetry.propagate import get_global_textmap
from opentelemetry.shim.opentracing_shim import SpanContextShim, SpanShim, TracerShim, util
from opentelemetry.trace import INVALID_SPAN_CONTEXT, Link, NonRecordingSpan, SpanKind, Status, StatusCode
from opentelemetry.trace import SpanContext as OtelSpanContext
from opentracing import Format, InvalidCarrierException, Scope, ScopeManager, UnsupportedFormatException
from opentracing.ext import tags as ot_tags
from opentracing.logs import ERROR_KIND, ERROR_OBJECT, EVENT, MESSAGE, STACK

from meshlens import propagation

_logger = logging.getLogger("meshlens")

# jaeger-client's default for Config's max_tag_value_length.
DEFAULT_MAX_TAG_VALUE_CHARS = 1024
# A carrier is a request's headers: more items than this are not read.
MAX_CARRIER_ITEMS = 1024
_SUPPORTED_FORMATS = (Format.TEXT_MAP, Format.HTTP_HEADERS)
_SCOPE_KEY = create_key("meshlens-opentracing-scope")
_KINDS = {
    ot_tags.SPAN_KIND_RPC_SERVER: SpanKind.SERVER,
    ot_tags.SPAN_KIND_RPC_CLIENT: SpanKind.CLIENT,
    ot_tags.SPAN_KIND_PRODUCER: SpanKind.PRODUCER,
    ot_tags.SPAN_KIND_CONSUMER: SpanKind.CONSUMER,
}
_PRIMITIVES = (bool, int, float, str)


class _Overflow:
    """Counts the baggage items a full span refused; the first one is logged."""

    def __init__(self) -> None:
        self.count = 0

    def note(self) -> None:
        self.count += 1
        if self.count == 1:
            _logger.warning("meshlens: an OpenTracing span's baggage reached %d items; further ones are "
                            "not kept (counted in opentracing_bridge.baggage_items_dropped())",
                            propagation.MAX_BAGGAGE_ENTRIES)


_baggage_overflow = _Overflow()


def baggage_items_dropped() -> int:
    """How many OpenTracing baggage items were refused because their span's baggage was full."""
    return _baggage_overflow.count


class BridgeSpanContext(SpanContextShim):
    """An OpenTracing span context: the OpenTelemetry one, its baggage, and whether it belongs to
    a Jaeger debug request (``debug``: the debug id, ``""`` for the debug flag, None if not)."""

    def __init__(
        self, otel_context: OtelSpanContext, items: Mapping[str, str] | None = None, debug: str | None = None
    ) -> None:
        super().__init__(otel_context)
        self._items: dict[str, str] = dict(items or {})
        self.debug = debug

    @property
    def baggage(self) -> dict[str, str]:  # type: ignore[override]  # jaeger-client's is a dict too
        return self._items

    # jaeger-client's SpanContext fields that services read (to log trace ids, mostly).
    @property
    def trace_id(self) -> int:
        return self.unwrap().trace_id

    @property
    def span_id(self) -> int:
        return self.unwrap().span_id

    @property
    def is_sampled(self) -> bool:
        return self.unwrap().trace_flags.sampled


class BridgeSpan(SpanShim):
    """An OpenTracing span writing to an OpenTelemetry one; see the module's docstring."""

    def __init__(
        self, tracer: BridgeTracer, context: BridgeSpanContext, span: trace.Span, owned: bool = True
    ) -> None:
        super().__init__(tracer, context, span)
        self._owned = owned
        self._max_chars = tracer.max_tag_value_length

    @property
    def context(self) -> BridgeSpanContext:
        return self._context

    def set_tag(self, key: str, value: Any) -> BridgeSpan:
        span = self._otel_span
        if not span.is_recording():
            return self
        if key == ot_tags.ERROR and _truthy(value):
            span.set_status(Status(StatusCode.ERROR))
        span.set_attribute(str(key), _attribute(value, self._max_chars))
        return self

    def log_kv(self, key_values: Any, timestamp: float | None = None) -> BridgeSpan:
        span = self._otel_span
        if not span.is_recording() or not isinstance(key_values, Mapping):
            return self
        when = util.time_seconds_to_ns(timestamp) if timestamp is not None else None
        error = key_values.get(ERROR_OBJECT)
        attributes = {str(key): _attribute(value, self._max_chars) for key, value in key_values.items()
                      if key not in (ERROR_OBJECT, ERROR_KIND, STACK) or not isinstance(error, BaseException)}
        if isinstance(error, BaseException):
            # OpenTelemetry's exception event: type, message and stack trace, as record_exception writes them.
            span.record_exception(error, attributes, when)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            return self
        if key_values.get(EVENT) == ot_tags.ERROR:
            span.set_status(Status(StatusCode.ERROR, str(key_values.get(MESSAGE, "")) or None))
        span.add_event(str(util.event_name_from_kv(key_values)), attributes, when)
        return self

    def set_baggage_item(self, key: str, value: str) -> BridgeSpan:
        items = self.context.baggage
        if key not in items and len(items) >= propagation.MAX_BAGGAGE_ENTRIES:
            _baggage_overflow.note()
            return self
        items[str(key)] = str(value)
        return self

    def get_baggage_item(self, key: str) -> str | None:
        return self.context.baggage.get(key)

    def finish(self, finish_time: float | None = None) -> None:
        if self._owned:
            super().finish(finish_time)


class BridgeScope(Scope):
    """An activated span. Closing detaches it (and finishes it when asked); the base class's
    ``__exit__`` tags and logs an exception that ends the ``with`` block first."""

    def __init__(self, manager: ScopeManager, span: BridgeSpan, finish_on_close: bool) -> None:
        super().__init__(manager, span)
        self._finish_on_close = finish_on_close
        self._token: Token[Context] | None = None
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._token is not None:
            detach(self._token)  # OpenTelemetry logs an out-of-order detach; it never raises
        if self._finish_on_close:
            self.span.finish()


class BridgeScopeManager(ScopeManager):
    """Keeps the active span in OpenTelemetry's context, so both APIs see the same one."""

    def __init__(self, tracer: BridgeTracer) -> None:
        super().__init__()
        self._tracer = tracer

    def activate(self, span: opentracing.Span, finish_on_close: bool) -> Scope:
        if not isinstance(span, BridgeSpan):
            return Scope(self, span)  # a span of another tracer: nothing to make current
        scope = BridgeScope(self, span, finish_on_close)
        scope._token = attach(_span_context(span.unwrap(), span.context, get_current(), scope))
        return scope

    @property
    def active(self) -> Scope | None:
        current = trace.get_current_span()
        if not current.get_span_context().is_valid:
            return None
        scope = get_value(_SCOPE_KEY)
        if isinstance(scope, BridgeScope) and scope.span.unwrap() is current:
            return scope
        # A span started by other code (meshlens's server span, an instrumentation's client span).
        context = BridgeSpanContext(current.get_span_context(), _current_baggage(), _debug_marker(None))
        return BridgeScope(self, BridgeSpan(self._tracer, context, current, owned=False), finish_on_close=False)


class BridgeTracer(TracerShim):
    """The OpenTracing tracer a jaeger-client service gets under meshlens."""

    def __init__(
        self,
        otel_tracer: trace.Tracer,
        provider: trace.TracerProvider,
        service_name: str,
        max_tag_value_length: int = DEFAULT_MAX_TAG_VALUE_CHARS,
        span_attributes: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(otel_tracer)
        self._scope_manager = BridgeScopeManager(self)
        self._provider = provider
        self.service_name = service_name
        self.max_tag_value_length = max_tag_value_length
        self._span_attributes = dict(span_attributes or {})

    def start_active_span(
        self,
        operation_name: str,
        child_of: opentracing.Span | opentracing.SpanContext | None = None,
        references: list[opentracing.Reference] | None = None,
        tags: Mapping[str, Any] | None = None,
        start_time: float | None = None,
        ignore_active_span: bool = False,
        finish_on_close: bool = True,
    ) -> Scope:
        span = self.start_span(operation_name, child_of, references, tags, start_time, ignore_active_span)
        return self._scope_manager.activate(span, finish_on_close)

    def start_span(
        self,
        operation_name: str | None = None,
        child_of: opentracing.Span | opentracing.SpanContext | None = None,
        references: list[opentracing.Reference] | opentracing.Reference | None = None,
        tags: Mapping[str, Any] | None = None,
        start_time: float | None = None,
        ignore_active_span: bool = False,
    ) -> BridgeSpan:
        if isinstance(child_of, opentracing.Span):
            child_of = child_of.context
        if references is not None and not isinstance(references, list):
            references = [references]
        linked = [ref.referenced_context for ref in references or ()
                  if isinstance(ref.referenced_context, SpanContextShim) and ref.referenced_context.unwrap().is_valid]
        links = [Link(context.unwrap()) for context in linked]
        if child_of is None and linked:
            child_of = linked[0]  # jaeger-client's rule: the first valid reference is the parent

        current = trace.get_current_span()
        parent = child_of.unwrap() if isinstance(child_of, SpanContextShim) else INVALID_SPAN_CONTEXT
        items: dict[str, str] = {}
        debug: str | None = None
        local_parent = False
        if not parent.is_valid and not ignore_active_span and current.get_span_context().is_valid:
            # The active span, whichever API started it. A context with baggage or a debug id but
            # no trace (extracted from a request meshlens already traces) joins it too, where
            # jaeger-client would start a trace of its own: it is the same request.
            context: Context = get_current()
            items, debug, local_parent = _current_baggage(), _debug_marker(context), True
            if isinstance(child_of, BridgeSpanContext):
                items.update(child_of.baggage)
        else:
            if isinstance(child_of, BridgeSpanContext):
                items, debug = dict(child_of.baggage), child_of.debug
            if parent.is_valid and not ignore_active_span and _continues(current, parent):
                context, local_parent = get_current(), True
            elif parent.is_valid:
                context = trace.set_span_in_context(NonRecordingSpan(parent), get_current())
                local_parent = not parent.is_remote
            else:
                context = Context()  # a new trace: ignore_active_span, or a baggage- or debug-only context
            if debug is not None:
                context = set_value(propagation.JAEGER_DEBUG_KEY, debug, context)

        attributes: dict[str, Any] = dict(self._span_attributes)
        kind = SpanKind.INTERNAL
        for key, value in (tags or {}).items():
            if key == ot_tags.SPAN_KIND and value in _KINDS and not (local_parent and _KINDS[value] is SpanKind.SERVER):
                kind = _KINDS[value]
                continue
            attributes[str(key)] = _attribute(value, self.max_tag_value_length)
        span = self._otel_tracer.start_span(
            operation_name or "", context=context, kind=kind, links=links, attributes=attributes,
            start_time=util.time_seconds_to_ns(start_time) if start_time is not None else None,
        )
        if tags and _truthy(tags.get(ot_tags.ERROR)):
            span.set_status(Status(StatusCode.ERROR))
        return BridgeSpan(self, BridgeSpanContext(span.get_span_context(), items, debug), span)

    def inject(self, span_context: opentracing.SpanContext | opentracing.Span, format: object, carrier: Any) -> None:
        if format not in _SUPPORTED_FORMATS:
            raise UnsupportedFormatException(format)
        if not hasattr(carrier, "__setitem__"):
            raise InvalidCarrierException("carrier not a collection")
        if isinstance(span_context, opentracing.Span):
            span_context = span_context.context
        parent = span_context.unwrap() if isinstance(span_context, SpanContextShim) else INVALID_SPAN_CONTEXT
        context = trace.set_span_in_context(NonRecordingSpan(parent), get_current())
        if isinstance(span_context, BridgeSpanContext):
            context = set_value(propagation.SPAN_BAGGAGE_KEY, span_context.baggage, context)
            if span_context.debug is not None:
                context = set_value(propagation.JAEGER_DEBUG_KEY, span_context.debug, context)
        get_global_textmap().inject(carrier, context)

    def extract(self, format: object, carrier: Any) -> BridgeSpanContext | None:
        if format not in _SUPPORTED_FORMATS:
            raise UnsupportedFormatException(format)
        if not hasattr(carrier, "items"):
            raise InvalidCarrierException("carrier not a collection")
        # jaeger-client matches header names whatever their case; OpenTelemetry's getter does not.
        headers = {key.lower(): value for key, value in itertools.islice(carrier.items(), MAX_CARRIER_ITEMS)
                   if isinstance(key, str)}
        context = get_global_textmap().extract(headers)
        found = trace.get_current_span(context).get_span_context()
        items = {key: str(value) for key, value in baggage.get_all(context).items()}
        debug = _debug_marker(context)
        if not found.is_valid and not items and debug is None:
            return None
        return BridgeSpanContext(found, items, debug)

    def close(self) -> Future[None]:
        """Sends what is buffered, as jaeger-client's ``close()`` does; the future is done once sent."""
        done: Future[None] = Future()

        def flush() -> None:
            try:
                force_flush = getattr(self._provider, "force_flush", None)
                if force_flush is not None:
                    force_flush()
            except Exception:
                _logger.debug("meshlens: flushing spans for tracer.close() failed", exc_info=True)
            done.set_result(None)

        threading.Thread(target=flush, name="meshlens-opentracing-close", daemon=True).start()
        return done


def _span_context(span: trace.Span, context: BridgeSpanContext, base: Context, scope: BridgeScope) -> Context:
    """The context while ``span`` is active: the span, its baggage for OpenTelemetry readers, and
    the live baggage mapping, so items set after activation still go out on calls."""
    active = trace.set_span_in_context(span, base)
    for key, value in context.baggage.items():
        active = baggage.set_baggage(key, value, active)
    active = set_value(propagation.SPAN_BAGGAGE_KEY, context.baggage, active)
    if context.debug is not None:
        active = set_value(propagation.JAEGER_DEBUG_KEY, context.debug, active)
    return set_value(_SCOPE_KEY, scope, active)


def _continues(current: trace.Span, remote: OtelSpanContext) -> bool:
    """Whether the current span is this service's span for the request ``remote`` made."""
    mine = current.get_span_context()
    parent = getattr(current, "parent", None)  # SDK spans know their parent
    return (mine.is_valid and remote.is_remote and mine.trace_id == remote.trace_id
            and isinstance(parent, OtelSpanContext) and parent.span_id == remote.span_id)


def _current_baggage(context: Context | None = None) -> dict[str, str]:
    items = {key: str(value) for key, value in baggage.get_all(context).items()}
    live = get_value(propagation.SPAN_BAGGAGE_KEY, context)
    if isinstance(live, Mapping):
        items.update(live)
    return items


def _debug_marker(context: Context | None) -> str | None:
    value = get_value(propagation.JAEGER_DEBUG_KEY, context)
    return value if isinstance(value, str) else None


def _truthy(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true") or value == 1


def _attribute(value: Any, max_chars: int) -> Any:
    """A tag or log value as an OpenTelemetry attribute value; text where it cannot be one."""
    if isinstance(value, _PRIMITIVES):
        return value[:max_chars] if isinstance(value, str) else value
    if isinstance(value, (list, tuple)) and value and len({type(item) for item in value}) == 1 \
            and isinstance(value[0], _PRIMITIVES):
        return [item[:max_chars] if isinstance(item, str) else item for item in value]
    if isinstance(value, type):
        return value.__qualname__
    if isinstance(value, TracebackType):
        return "".join(traceback.format_tb(value))[-max_chars:]
    try:
        text = str(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text[:max_chars]
