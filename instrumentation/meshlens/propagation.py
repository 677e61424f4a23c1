"""One propagator for a mixed fleet: W3C Trace Context and Baggage, B3 (single and multi), Jaeger.

Extract precedence, when a request carries several trace formats: W3C ``traceparent``, then
B3 single (``b3``), then B3 multi (``X-B3-*``), then Jaeger (``uber-trace-id``). The first
format whose header is valid wins; a malformed header of a higher format falls through to
the next. (OpenTelemetry's ``CompositePropagator`` lets the last format that parsed win, so
a stale header from an old client could override a sidecar's W3C context.) Propagators
from other entry points named in ``OTEL_PROPAGATORS`` run after these, and their trace
context is used only when none of meshlens's formats gave one.

Baggage: Jaeger's ``jaeger-baggage`` header (``k1=v1, k2=v2``, what jaeger-client accepts from
a caller at the edge), its ``uberctx-*`` headers and W3C ``baggage`` are merged, later ones
winning on a key clash: W3C wins, as it does for the trace context. W3C baggage properties
(``key=value;prop=1``) cannot be held by OpenTelemetry's Python baggage API, which has no
metadata: meshlens keeps them beside it in the context (:func:`baggage_properties`) and writes
them again on the outgoing ``baggage`` header while the entry's value is unchanged.

Jaeger's debug requests: an ``uber-trace-id`` with the debug flag (``0x02``) keeps that flag on
the outgoing ``uber-trace-id`` of the calls made while handling it. A ``jaeger-debug-id``
header without any trace context starts a new trace that is always sampled (whatever the
sampler says), with the id recorded on its root span as the ``jaeger-debug-id`` attribute, the
tag jaeger-client records, so Jaeger's search by that tag finds both (see
:class:`JaegerDebugSampler`). Beside a valid trace context the debug id is ignored, as
jaeger-client ignores it.

Istio's ``x-request-id`` is kept in the context and written again on the outgoing calls
made while handling the request, so Envoy's access logs of every hop line up.

Every header is bounded (values over 8 KiB are ignored) and parsed with linear-time
checks; a malformed or hostile header costs its context, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

from opentelemetry import baggage, trace
from opentelemetry.context import Context, create_key, get_value, set_value
from opentelemetry.propagators.b3 import B3MultiFormat, B3SingleFormat
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.util.types import Attributes

from meshlens._once import WarnOnce

# The names OTEL_PROPAGATORS uses for the formats meshlens implements itself.
TRACECONTEXT, BAGGAGE, B3, B3MULTI, JAEGER = "tracecontext", "baggage", "b3", "b3multi", "jaeger"
FORMATS = (TRACECONTEXT, BAGGAGE, B3, B3MULTI, JAEGER)

# Counted in characters: servers decode header bytes as latin-1, one character per byte.
MAX_HEADER_BYTES = 8192
# W3C Trace Context level 1: "there can be a maximum of 32 list-members".
MAX_TRACESTATE_MEMBERS = 32
# When truncating, the spec says to drop members longer than this first.
_TRACESTATE_LONG_MEMBER = 128
# W3C Baggage limits (the same that OpenTelemetry's baggage propagator uses).
MAX_BAGGAGE_ENTRIES = 180
MAX_REQUEST_ID_CHARS = 256

TRACEPARENT_HEADER = "traceparent"
TRACESTATE_HEADER = "tracestate"
BAGGAGE_HEADER = "baggage"
B3_SINGLE_HEADER = B3MultiFormat.SINGLE_HEADER_KEY
B3_MULTI_HEADERS = (
    B3MultiFormat.TRACE_ID_KEY, B3MultiFormat.SPAN_ID_KEY, B3MultiFormat.SAMPLED_KEY, B3MultiFormat.FLAGS_KEY
)
JAEGER_HEADER = "uber-trace-id"
JAEGER_BAGGAGE_PREFIX = "uberctx-"
JAEGER_BAGGAGE_HEADER = "jaeger-baggage"
JAEGER_DEBUG_ID_HEADER = "jaeger-debug-id"
# The span attribute naming a debug request's id: jaeger-client's tag, so one Jaeger search finds both.
JAEGER_DEBUG_ID_ATTRIBUTE = "jaeger-debug-id"
# OpenTracing's tag asking to sample a span (jaeger-client honours a value above 0 at start).
SAMPLING_PRIORITY_ATTRIBUTE = "sampling.priority"
_JAEGER_DEBUG_FLAG = 0x02
REQUEST_ID_HEADER = "x-request-id"

REQUEST_ID_KEY = create_key("meshlens-request-id")
# A Jaeger debug request: the debug id (str), or "" when only the uber-trace-id debug flag came.
JAEGER_DEBUG_KEY = create_key("meshlens-jaeger-debug")
# W3C baggage properties, {key: (value, properties)}: kept only while the value is unchanged.
BAGGAGE_PROPERTIES_KEY = create_key("meshlens-baggage-properties")
# Baggage held by the active span itself rather than by the context (an OpenTracing span's
# set_baggage_item after it was activated): a Mapping, read at inject time, winning on a clash.
SPAN_BAGGAGE_KEY = create_key("meshlens-span-baggage")

# A getter's bound ``get``: taken once per request, as a local, on the hot path.
_Get = Callable[[Any, str], "list[str] | None"]

# Every pattern below is a run of single character classes with bounded repeats, matched
# against a length-checked value: no nested quantifier, so no backtracking blow-up.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_CHARS = 55
_TS_KEY = re.compile(r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}")
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
# jaeger-client drops leading zeros, and Go clients write upper case: both are accepted.
_JAEGER = re.compile(r"([0-9a-fA-F]{1,32}):([0-9a-fA-F]{1,16}):([0-9a-fA-F]{1,16}):([0-9a-fA-F]{1,2})")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")  # an HTTP header-name token (RFC 9110)
_BAGGAGE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{0,4096}")
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}")
# A debug id is an operator's free text (jaeger-client takes any value): printable ASCII, bounded.
MAX_DEBUG_ID_CHARS = 256
_DEBUG_ID = re.compile(rf"[\x20-\x7e]{{1,{MAX_DEBUG_ID_CHARS}}}")

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)

# B3 is written with opentelemetry-propagator-b3's injectors. Its extract is not used: it
# accepts all-zero ids (an invalid parent in the context), does not fall back to the multi
# headers when the single one is malformed, and costs about twice meshlens's whole W3C path
# (it builds a context, a span and a trace state that would be rebuilt here), which every
# request from an Envoy sidecar would pay. Its id patterns and sampling values are kept.
_B3_TRACE_ID = re.compile(r"[0-9a-fA-F]{16}|[0-9a-fA-F]{32}")
_B3_SPAN_ID = re.compile(r"[0-9a-fA-F]{16}")
_B3_SAMPLED = frozenset({"1", "True", "true", "d"})
_B3_INJECTORS = {B3: B3SingleFormat(), B3MULTI: B3MultiFormat()}


def _one(values: Iterable[str] | None) -> str | None:
    """The header's single value; None when absent, repeated, too long or not text."""
    if not values:
        return None
    if isinstance(values, str):  # a getter that returns the bare value
        value: object = values
    else:
        items = list(values) if not isinstance(values, list) else values
        if len(items) != 1:
            return None
        value = items[0]
    if not isinstance(value, str) or len(value) > MAX_HEADER_BYTES:
        return None
    return value


def _joined(values: Iterable[str] | None) -> str | None:
    """A list-valued header (tracestate, baggage): repeated headers are one comma-separated list."""
    if not values:
        return None
    if isinstance(values, str):
        joined = values
    else:
        parts = list(values)
        if not all(isinstance(part, str) for part in parts):
            return None
        joined = ",".join(parts)
    return joined if len(joined) <= MAX_HEADER_BYTES else None


def _remote(trace_id: int, span_id: int, sampled: bool, state: TraceState | None = None) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=_SAMPLED if sampled else _NOT_SAMPLED,
                       trace_state=state)


def parse_traceparent(value: str) -> tuple[int, int, bool] | None:
    """W3C ``traceparent``: trace id, parent span id and sampled flag, or None when invalid.

    Version ``00`` must be exactly 55 characters. A higher version is parsed as 00 is, and may
    carry more fields after a ``-`` (the spec's forward compatibility); ``ff`` is invalid.
    Upper-case hex and all-zero ids are invalid.
    """
    value = value.strip(" \t")
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex = match.groups()
    if version == "00":
        if len(value) != _TRACEPARENT_CHARS:
            return None
    elif version == "ff" or (len(value) > _TRACEPARENT_CHARS and value[_TRACEPARENT_CHARS] != "-"):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(int(flags_hex, 16) & TraceFlags.SAMPLED)


def parse_tracestate(value: str) -> TraceState:
    """W3C ``tracestate``, keeping the valid members and dropping the invalid ones.

    (OpenTelemetry's own parser drops the whole header when one member is bad.) Empty
    members are skipped, a duplicated key keeps its first member, and past 32 members the
    ones over 128 characters go first (from the end, only as many as needed), then members from
    the end, as the spec's truncation rule says.
    """
    members: dict[str, str] = {}
    lengths: dict[str, int] = {}
    for raw in value.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        key, sep, item = member.partition("=")
        if not sep or key in members or _TS_KEY.fullmatch(key) is None or _TS_VALUE.fullmatch(item) is None:
            continue
        members[key] = item
        lengths[key] = len(member)
    excess = len(members) - MAX_TRACESTATE_MEMBERS
    if excess > 0:
        long = [key for key in members if lengths[key] > _TRACESTATE_LONG_MEMBER]
        for key in long[::-1][:excess]:
            del members[key]
    return TraceState(list(members.items())[:MAX_TRACESTATE_MEMBERS])


def parse_uber_trace_id(value: str) -> tuple[int, int, bool] | None:
    """Jaeger ``{trace-id}:{span-id}:{parent-span-id}:{flags}``, also URL-encoded (``%3A``).

    A 64-bit trace id is the same trace as its zero-padded 128-bit form, so it is read as an
    integer. Written here rather than taken from opentelemetry-propagator-jaeger, whose parser
    (``int(field, 16)``) accepts ``0x``, ``+``, ``_`` and ids longer than 128 bits, and does
    not decode the URL-encoded form that jaeger-client accepts.
    """
    parsed = _parse_uber_trace_id(value)
    return None if parsed is None else (parsed[0], parsed[1], bool(parsed[2] & TraceFlags.SAMPLED))


def _parse_uber_trace_id(value: str) -> tuple[int, int, int] | None:
    """Trace id, span id and the flags as an integer (Jaeger's debug bit is 0x02)."""
    if ":" not in value and "%" in value:
        value = unquote(value)
    match = _JAEGER.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    trace_hex, span_hex, _parent, flags_hex = match.groups()
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags_hex, 16)


def parse_baggage(value: str) -> list[tuple[str, str]]:
    """W3C ``baggage``: the valid ``key=value`` members, percent-decoded (properties left out;
    :func:`parse_baggage_members` has them)."""
    return [(key, item) for key, item, _properties in parse_baggage_members(value)]


def parse_baggage_members(value: str) -> list[tuple[str, str, str]]:
    """W3C ``baggage``: ``(key, value, properties)`` of each valid member, the value
    percent-decoded, the properties the member's valid ``;``-separated properties re-joined
    (``""`` when none). An invalid property is dropped, not the member.

    Written here rather than taken from OpenTelemetry's baggage propagator: its split pattern
    is quadratic on a run of blanks (over 100 ms on 8 KiB of spaces) and it logs the whole
    header at warning level on every oversized request.
    """
    members: list[tuple[str, str, str]] = []
    for raw in value.split(","):
        if len(members) >= MAX_BAGGAGE_ENTRIES:
            break
        pair, has_properties, properties = raw.partition(";")
        key, sep, item = pair.partition("=")
        key, item = key.strip(" \t"), item.strip(" \t")
        if sep and _TOKEN.fullmatch(key) is not None and _BAGGAGE_VALUE.fullmatch(item) is not None:
            members.append((key, unquote(item), _baggage_properties(properties) if has_properties else ""))
    return members


def _baggage_properties(value: str) -> str:
    """The valid properties (``key`` or ``key=value``, W3C Baggage) of one member, normalized."""
    kept: list[str] = []
    for raw in value.split(";"):
        key, sep, item = raw.partition("=")
        key, item = key.strip(" \t"), item.strip(" \t")
        if _TOKEN.fullmatch(key) is None:
            continue
        if not sep:
            kept.append(key)
        elif _BAGGAGE_VALUE.fullmatch(item) is not None:
            kept.append(f"{key}={item}")
    return ";".join(kept)


def parse_jaeger_baggage(value: str) -> list[tuple[str, str]]:
    """jaeger-client's ``jaeger-baggage`` header: ``k1=v1, k2=v2``, members with exactly one
    ``=`` (as jaeger-client reads them), keys as sent, values percent-decoded. At most
    :data:`MAX_BAGGAGE_ENTRIES` members are kept."""
    pairs: list[tuple[str, str]] = []
    for raw in value.split(","):
        if len(pairs) >= MAX_BAGGAGE_ENTRIES:
            break
        key, sep, item = raw.partition("=")
        key, item = key.strip(" \t"), item.strip(" \t")
        if not sep or "=" in item or _TOKEN.fullmatch(key) is None:
            continue
        item = unquote(item)
        if item.isprintable():
            pairs.append((key, item))
    return pairs


class _Formats:
    """Which formats a propagator reads and writes (resolved once, not per request)."""

    def __init__(self, names: Sequence[str]) -> None:
        chosen = set(names)
        self.tracecontext = TRACECONTEXT in chosen
        self.baggage = BAGGAGE in chosen
        # Either B3 name reads both B3 forms, as opentelemetry-propagator-b3 does; it writes only its own.
        self.b3 = bool({B3, B3MULTI} & chosen)
        self.b3_injectors = [_B3_INJECTORS[name] for name in (B3, B3MULTI) if name in chosen]
        self.jaeger = JAEGER in chosen
        self.any = bool(chosen & set(FORMATS))


class MeshlensPropagator(TextMapPropagator):
    """The formats named in ``names`` (see :data:`FORMATS`) with meshlens's precedence, plus
    ``others`` (propagators loaded from other entry points), which come after them."""

    def __init__(self, names: Sequence[str], others: Sequence[TextMapPropagator] = ()) -> None:
        self.names = tuple(name for name in names if name in FORMATS)
        self._formats = _Formats(self.names)
        self._others = tuple(others)
        self._log_failure_once = WarnOnce(
            "meshlens: context propagation failed on a header; the request goes on without it"
        )

    # --- extract ---------------------------------------------------------------

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        if context is None:
            context = Context()
        try:
            context = self._extract(carrier, context, getter)
        except Exception:
            # A getter or header meshlens did not foresee costs the incoming context, never the request.
            self._log_failure_once()
        for other in self._others:
            context = self._extract_other(other, carrier, context, getter)
        return context

    def _extract(self, carrier: CarrierT, context: Context, getter: Getter[CarrierT]) -> Context:
        formats = self._formats
        if not formats.any:
            return context
        get = getter.get
        found: SpanContext | None = None
        # Hot path: a request with no propagation header costs one lookup per header name and
        # no further call, so each parser is called only once its header is present.
        if formats.tracecontext:
            header = get(carrier, TRACEPARENT_HEADER)
            if header:
                found = self._w3c(header, carrier, get)
        if found is None and formats.b3:
            single = get(carrier, B3_SINGLE_HEADER)
            multi = get(carrier, B3MultiFormat.TRACE_ID_KEY)
            if single or multi:
                found = self._b3(single, multi, carrier, get)
        uber = get(carrier, JAEGER_HEADER) if formats.jaeger else None
        if found is None and uber:
            value = _one(uber)
            parsed = _parse_uber_trace_id(value) if value is not None else None
            if parsed is not None:
                trace_id, span_id, flags = parsed
                found = _remote(trace_id, span_id, bool(flags & TraceFlags.SAMPLED))
                if flags & _JAEGER_DEBUG_FLAG:
                    context = set_value(JAEGER_DEBUG_KEY, "", context)
        if found is not None:
            context = trace.set_span_in_context(NonRecordingSpan(found), context)
        if formats.jaeger:
            if found is None:
                debug_id = _one(get(carrier, JAEGER_DEBUG_ID_HEADER))
                if debug_id is not None and _DEBUG_ID.fullmatch(debug_id) is not None:
                    context = set_value(JAEGER_DEBUG_KEY, debug_id, context)
            header = get(carrier, JAEGER_BAGGAGE_HEADER)
            value = _joined(header) if header else None
            if value:
                context = _with_baggage(context, parse_jaeger_baggage(value))
        # jaeger-client sends uberctx-* only beside uber-trace-id: the key scan runs only then.
        if uber:
            context = self._jaeger_baggage(carrier, getter, context)
        if formats.baggage:
            header = get(carrier, BAGGAGE_HEADER)
            value = _joined(header) if header else None
            if value:
                members = parse_baggage_members(value)
                context = _with_baggage(context, [(key, item) for key, item, _ in members])
                properties = {key: (item, props) for key, item, props in members if props}
                if properties:
                    context = set_value(BAGGAGE_PROPERTIES_KEY, properties, context)
        request_id = get(carrier, REQUEST_ID_HEADER)
        if request_id:
            value = _one(request_id)
            if value is not None and _REQUEST_ID.fullmatch(value) is not None:
                context = set_value(REQUEST_ID_KEY, value, context)
        return context

    @staticmethod
    def _w3c(header: Iterable[str], carrier: CarrierT, get: _Get) -> SpanContext | None:
        value = _one(header)
        parsed = parse_traceparent(value) if value is not None else None
        if parsed is None:
            return None  # the spec: no valid traceparent, no tracestate either
        state = _joined(get(carrier, TRACESTATE_HEADER))
        return _remote(*parsed, parse_tracestate(state) if state else None)

    @staticmethod
    def _b3(
        single: Iterable[str] | None, trace_id: Iterable[str] | None, carrier: CarrierT, get: _Get
    ) -> SpanContext | None:
        value = _one(single) if single else None
        found = parse_b3_single(value) if value is not None else None
        if found is not None:
            return found
        trace_hex = _one(trace_id) if trace_id else None
        if trace_hex is None:
            return None
        span_hex, sampled, flags = (_one(get(carrier, name)) for name in B3_MULTI_HEADERS[1:])
        if span_hex is None:
            return None
        return _b3_ids(trace_hex.strip(" \t"), span_hex.strip(" \t"), sampled in _B3_SAMPLED or flags == "1")

    def _jaeger_baggage(self, carrier: CarrierT, getter: Getter[CarrierT], context: Context) -> Context:
        pairs: list[tuple[str, str]] = []
        total = 0
        for name in getter.keys(carrier):
            # The same bounds as W3C baggage: what a peer sends beyond them is not kept.
            if len(pairs) >= MAX_BAGGAGE_ENTRIES or total > MAX_HEADER_BYTES:
                break
            if not isinstance(name, str) or not name.lower().startswith(JAEGER_BAGGAGE_PREFIX):
                continue
            key = name[len(JAEGER_BAGGAGE_PREFIX):].lower()
            value = _one(getter.get(carrier, name))
            if value is None or _TOKEN.fullmatch(key) is None:
                continue
            item = unquote(value).strip(" \t")
            total += len(key) + len(item)
            if item.isprintable() and total <= MAX_HEADER_BYTES:
                pairs.append((key, item))
        return _with_baggage(context, pairs)

    def _extract_other(
        self, other: TextMapPropagator, carrier: CarrierT, context: Context, getter: Getter[CarrierT]
    ) -> Context:
        ours = trace.get_current_span(context).get_span_context()
        try:
            extracted = other.extract(carrier, context, getter)
        except Exception:
            self._log_failure_once()
            return context
        if ours.is_valid and trace.get_current_span(extracted).get_span_context() != ours:
            # meshlens's formats come first: another format keeps its baggage or values, not the parent.
            extracted = trace.set_span_in_context(NonRecordingSpan(ours), extracted)
        return extracted

    # --- inject ----------------------------------------------------------------

    def inject(
        self, carrier: CarrierT, context: Context | None = None, setter: Setter[CarrierT] = default_setter
    ) -> None:
        try:
            self._inject(carrier, context, setter)
        except Exception:
            self._log_failure_once()
        for other in self._others:
            try:
                other.inject(carrier, context, setter)
            except Exception:
                self._log_failure_once()

    def _inject(self, carrier: CarrierT, context: Context | None, setter: Setter[CarrierT]) -> None:
        formats = self._formats
        if not formats.any:
            return
        span_context = trace.get_current_span(context).get_span_context()
        entries: Mapping[str, object] = {}
        if formats.baggage or formats.jaeger:
            entries = baggage.get_all(context)
            span_baggage = get_value(SPAN_BAGGAGE_KEY, context)
            if isinstance(span_baggage, Mapping) and span_baggage:
                entries = {**entries, **span_baggage}
        if span_context.is_valid:
            sampled = span_context.trace_flags.sampled
            if formats.tracecontext:
                flags = "01" if sampled else "00"
                setter.set(carrier, TRACEPARENT_HEADER,
                           f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags}")
                if span_context.trace_state:
                    setter.set(carrier, TRACESTATE_HEADER, span_context.trace_state.to_header())
            for injector in formats.b3_injectors:
                injector.inject(carrier, trace.set_span_in_context(NonRecordingSpan(span_context)), setter)
            if formats.jaeger:
                # Not opentelemetry-propagator-jaeger's inject: it sets the debug flag (0x02) on every
                # sampled span, which makes jaeger-client and Jaeger's collector bypass their sampling.
                # The parent-span-id field is deprecated in Jaeger's format; 0 is what clients send.
                # A debug request stays one downstream (jaeger-client sets both bits).
                jaeger_flags = int(sampled) | (_JAEGER_DEBUG_FLAG if sampled and _is_debug(context) else 0)
                setter.set(carrier, JAEGER_HEADER,
                           f"{span_context.trace_id:032x}:{span_context.span_id:016x}:0:{jaeger_flags:02x}")
        if entries:
            pairs = [(key, str(value)) for key, value in entries.items()
                     if isinstance(key, str) and _TOKEN.fullmatch(key) is not None]
            pairs = pairs[:MAX_BAGGAGE_ENTRIES]
            if formats.baggage:
                properties = baggage_properties(context)
                header = ",".join(_baggage_member(key, value, properties.get(key)) for key, value in pairs)
                if len(header) <= MAX_HEADER_BYTES:
                    setter.set(carrier, BAGGAGE_HEADER, header)
            if formats.jaeger:
                for key, value in pairs:
                    setter.set(carrier, JAEGER_BAGGAGE_PREFIX + key, quote(value, safe=""))
        request_id = get_value(REQUEST_ID_KEY, context)
        if isinstance(request_id, str):
            setter.set(carrier, REQUEST_ID_HEADER, request_id)

    @property
    def fields(self) -> set[str]:
        formats = self._formats
        names: set[str] = set()
        if formats.tracecontext:
            names |= {TRACEPARENT_HEADER, TRACESTATE_HEADER}
        if formats.baggage:
            names.add(BAGGAGE_HEADER)
        for injector in formats.b3_injectors:
            names |= injector.fields
        if formats.jaeger:
            names.add(JAEGER_HEADER)
        if formats.any:
            names.add(REQUEST_ID_HEADER)
        for other in self._others:
            names |= other.fields
        return names

    def headers_read(self) -> frozenset[str] | None:
        """The headers whose absence means ``extract`` returns the context it was given: those
        read on every call (the others, such as ``tracestate`` or ``uberctx-*``, only beside
        one of these). A server skips extraction for a request that carries none of them.
        None when propagators of other entry points are configured: what they read is unknown."""
        if self._others:
            return None
        formats = self._formats
        if not formats.any:
            return frozenset()
        names = {REQUEST_ID_HEADER}
        if formats.tracecontext:
            names.add(TRACEPARENT_HEADER)
        if formats.b3:
            names |= {B3_SINGLE_HEADER, B3MultiFormat.TRACE_ID_KEY}
        if formats.jaeger:
            names |= {JAEGER_HEADER, JAEGER_DEBUG_ID_HEADER, JAEGER_BAGGAGE_HEADER}
        if formats.baggage:
            names.add(BAGGAGE_HEADER)
        return frozenset(names)



def _b3_ids(trace_hex: str, span_hex: str, sampled: bool) -> SpanContext | None:
    if _B3_TRACE_ID.fullmatch(trace_hex) is None or _B3_SPAN_ID.fullmatch(span_hex) is None:
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return _remote(trace_id, span_id, sampled)


def parse_b3_single(value: str) -> SpanContext | None:
    """``b3: {trace-id}-{span-id}[-{sampling}[-{parent-span-id}]]``; a lone sampling state is no parent."""
    fields = value.strip(" \t").split("-", 4)
    if not 2 <= len(fields) <= 4:
        return None
    # Ids without a sampling decision are read as sampled, as opentelemetry-propagator-b3 reads them.
    sampled = len(fields) == 2 or fields[2] in _B3_SAMPLED
    return _b3_ids(fields[0], fields[1], sampled)


def _baggage_member(key: str, value: str, properties: str | None) -> str:
    member = f"{key}={quote(value, safe='')}"
    return f"{member};{properties}" if properties else member


def _is_debug(context: Context | None) -> bool:
    return isinstance(get_value(JAEGER_DEBUG_KEY, context), str)


def baggage_properties(context: Context | None = None) -> dict[str, str]:
    """The W3C properties (``prop=1;other``) of the baggage entries that still have the value
    they arrived with; an entry set again since then has none."""
    kept = get_value(BAGGAGE_PROPERTIES_KEY, context)
    if not isinstance(kept, dict):
        return {}
    current = baggage.get_all(context)
    return {key: properties for key, (value, properties) in kept.items() if current.get(key) == value}


def jaeger_debug_id(context: Context | None = None) -> str | None:
    """The ``jaeger-debug-id`` of the request being handled, when it asked for a debug trace."""
    value = get_value(JAEGER_DEBUG_KEY, context)
    return value if isinstance(value, str) and value else None


class JaegerDebugSampler(Sampler):
    """Samples the traces Jaeger's debug requests ask for, and leaves the rest to ``delegate``.

    A root span started in a context that carries a ``jaeger-debug-id`` (see the module's
    docstring) is sampled and gets the id as its ``jaeger-debug-id`` attribute; a span under a
    sampled parent in a debug request (an ``uber-trace-id`` with the debug flag, or a debug
    id), or started with the OpenTracing tag ``sampling.priority`` above 0, is sampled. A
    malicious caller gains nothing it could not get already from a sampled ``traceparent``:
    one sampled trace per request.
    """

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        debug = get_value(JAEGER_DEBUG_KEY, parent_context)
        priority = attributes.get(SAMPLING_PRIORITY_ATTRIBUTE) if attributes else None
        parent = trace.get_current_span(parent_context).get_span_context() if debug is not None else None
        # A debug request's root, or a span under a sampled parent in a debug request (even where
        # the sampler ignores parents); a debug flag on an unsampled parent is not sampled, as in
        # jaeger-client, which reports only spans with the sampled bit.
        forced_debug = isinstance(debug, str) and parent is not None and (
            (debug and not parent.is_valid) or (parent.is_valid and parent.trace_flags.sampled))
        if forced_debug or (isinstance(priority, (int, float)) and priority > 0):
            if parent is None:
                parent = trace.get_current_span(parent_context).get_span_context()
            forced: dict[str, Any] = dict(attributes or {})
            if debug and not parent.is_valid:
                forced[JAEGER_DEBUG_ID_ATTRIBUTE] = debug
            state = parent.trace_state if parent.is_valid else trace_state
            return SamplingResult(Decision.RECORD_AND_SAMPLE, forced, state)
        return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"JaegerDebug{{{self._delegate.get_description()}}}"


def _with_baggage(context: Context, pairs: list[tuple[str, str]]) -> Context:
    for key, value in pairs:
        context = baggage.set_baggage(key, value, context)
    return context


def request_id(context: Context | None = None) -> str | None:
    """Istio's ``x-request-id`` of the request being handled, if it carried one."""
    value = get_value(REQUEST_ID_KEY, context)
    return value if isinstance(value, str) else None
