"""OTLP/HTTP span export with a fast encoder.

The OpenTelemetry exporter encodes spans by building a protobuf object per span, per
attribute and per value, then serialising the tree: about 70 µs per span here, on the
export thread, which shares the service's GIL. That was the largest single cost meshlens
added to a request at full sampling. This module writes the same bytes directly, in the
protobuf wire format (`ExportTraceServiceRequest` of opentelemetry-proto): the output is
byte-for-byte what the stock encoder serialises (a test compares them on every kind of
span; the one difference: a link's trace state, which the stock encoder leaves out, is
carried), at a fraction of the cost, mostly because resources, scopes and repeated attribute
values (method, route, status) are encoded once and reused.

The rest of the export (retries, backoff, compression, size limit, the SDK's own exporter
metrics) stays the stock exporter's: :class:`FastOTLPSpanExporter` only swaps the encoding
step, and falls back to the stock path if the exporter's internals ever change. For a
plain-HTTP endpoint reached without a proxy, the batches are sent over one kept-alive
connection (:class:`KeepAliveHTTPTransport`) instead of through requests, about a twentieth
of the CPU per batch; https endpoints, proxies and netrc users keep requests.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState

try:  # the exporters' pluggable HTTP transport (opentelemetry-exporter-otlp-proto-http 1.45+)
    from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
except ImportError:  # an older exporter: it sends through requests, as it always did
    BaseHTTPResult = BaseHTTPTransport = None  # type: ignore[assignment,misc]

_logger = logging.getLogger("meshlens")

# Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32. A tag is
# (field number << 3) | wire type, one byte for the field numbers below 16.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_SPAN_FLAGS_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_SPAN_FLAGS_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_KIND = {  # SpanKind -> opentelemetry-proto's Span.SpanKind (the API's value + 1)
    SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5,
}  # fmt: skip
_MISSING = object()
_VARINT_TABLE = tuple(bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(1 << 14))
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack
_pack_double = struct.Struct("<d").pack
_KIND_FIELD = {kind: b"\x30" + _VARINT_TABLE[value] for kind, value in _KIND.items()}
_SERVER_KIND_FIELD = _KIND_FIELD[SpanKind.SERVER]
_FLAGS_LOCAL_PARENT = b"\x85\x01" + _pack_fixed32(_SPAN_FLAGS_HAS_IS_REMOTE)  # field 16, fixed32
_FLAGS_REMOTE_PARENT = b"\x85\x01" + _pack_fixed32(_SPAN_FLAGS_HAS_IS_REMOTE | _SPAN_FLAGS_IS_REMOTE)

# Encoded key-values of string and integer attributes, which repeat from span to span, one
# dict per field tag, keyed by (key, value): a str never equals an int, and bools (equal to
# 0 and 1) never look it up. Bounded: a value with unbounded cardinality (a URL path) passes
# through, a dict is cleared when full and refills with what repeats.
_REPEATED_ATTRIBUTE_CACHE_SIZE = 4096
_repeated_attributes: dict[int, dict[tuple[str, str | int], bytes]] = {}

# Members of the API's enums, read once: reading ``SpanKind.SERVER`` runs Python code of the
# enum class on every access (about 100 ns), and hashing a member runs more.
_SERVER = SpanKind.SERVER
_UNSET_CODE, _OK_CODE = StatusCode.UNSET, StatusCode.OK

UNSET_STATUS = Status(_UNSET_CODE)
"""One shared unset status: a span holding this object (meshlens's server spans start with
it) has its status encoded without a look inside."""

SPAN_CONTEXT_BY_POSITION = tuple(SpanContext(1, 2, True, None, None)) == (1, 2, True, 0, TraceState(), True)
"""Whether SpanContext is the tuple ``(trace_id, span_id, is_remote, trace_flags, trace_state,
is_valid)``, as in every API release so far: its properties are Python calls, and the hot
paths read it by position where this holds."""


def _varint(value: int) -> bytes:
    if 0 <= value < 1 << 14:
        return _VARINT_TABLE[value]
    if value < 0:
        value += 1 << 64  # int64 as protobuf writes it: ten bytes of two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (tag already shifted, wire type 2)."""
    return _VARINT_TABLE[tag] + _varint(len(payload)) + payload


def _string(tag: int, text: str) -> bytes:
    return _field(tag, text.encode("utf-8")) if text else b""


def encode_value(value: Any) -> bytes:
    """An AnyValue message. Raises ValueError/TypeError for what OTLP cannot carry."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(0x0A, value.encode("utf-8"))
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"integer {value} does not fit in int64")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, encode_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(0x32, b"".join(_field(0x0A, _key_value(str(k), v)) for k, v in value.items()))
    if value is None:
        return b""
    raise TypeError(f"invalid type {type(value).__name__} of value {value!r}")


def _key_value(key: str, value: Any) -> bytes:
    return _string(0x0A, key) + _field(0x12, encode_value(value))


def encode_attributes(tag: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Repeated KeyValue under ``tag``; an attribute OTLP cannot carry is logged and left out,
    as the stock encoder does."""
    if not attributes:
        return b""
    # BoundedAttributes iterates through the Mapping mixins, a Python call per item; its
    # plain dict is read directly when it has one.
    items = (attributes if type(attributes) is dict else getattr(attributes, "_dict", attributes)).items()
    parts = []
    cache = _repeated_attributes.get(tag)
    if cache is None:
        cache = _repeated_attributes.setdefault(tag, {})
    for key, value in items:
        value_type = type(value)
        if value_type is str or value_type is int:  # never bool: True == 1 would share an entry
            cache_key = (key, value)
            cached = cache.get(cache_key)
            if cached is None:
                if len(cache) >= _REPEATED_ATTRIBUTE_CACHE_SIZE:
                    cache.clear()
                try:
                    cached = cache[cache_key] = _field(tag, _key_value(key, value))
                except ValueError as error:  # an int beyond int64
                    _logger.exception("Failed to encode key %s: %s", key, error)
                    continue
            parts.append(cached)
            continue
        try:
            parts.append(_field(tag, _key_value(key, value)))
        except Exception as error:
            _logger.exception("Failed to encode key %s: %s", key, error)
    return b"".join(parts)


def _trace_state(trace_state: TraceState | None) -> str:
    if not trace_state:
        return ""
    return ",".join(f"{key}={value}" for key, value in trace_state.items())


def _flags(parent: SpanContext | None) -> bytes:
    flags = _SPAN_FLAGS_HAS_IS_REMOTE
    if parent is not None and parent.is_remote:
        flags |= _SPAN_FLAGS_IS_REMOTE
    return _pack_fixed32(flags)


def _uint32(tag: int, value: int | None) -> bytes:
    return _VARINT_TABLE[tag] + _varint(value) if value else b""


def _event(event: Event) -> bytes:
    return b"".join((
        b"\x09" + _pack_fixed64(event.timestamp) if event.timestamp else b"",
        _string(0x12, event.name),
        encode_attributes(0x1A, event.attributes),
        _uint32(0x20, event.dropped_attributes),
    ))  # fmt: skip


def _link(link: Link) -> bytes:
    context = link.context
    return b"".join((
        b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        _string(0x1A, _trace_state(context.trace_state)),
        encode_attributes(0x22, link.attributes),
        _uint32(0x28, link.dropped_attributes),
        b"\x35" + _flags(context),
    ))  # fmt: skip


def _status(status: Status) -> bytes:
    """The Span.status field; the common ones (unset, ok, error without message) are constants."""
    if status is UNSET_STATUS:
        return _STATUS_UNSET
    code = status.status_code
    if status.description:
        body = _string(0x12, status.description) + _uint32(0x18, code.value)
        return b"\x7a" + _varint(len(body)) + body
    # Compared by identity: hashing an enum member runs Python code, on every span.
    if code is _UNSET_CODE:
        return _STATUS_UNSET
    return _STATUS_OK if code is _OK_CODE else _STATUS_ERROR


def _status_without_message(code: StatusCode) -> bytes:
    body = _uint32(0x18, code.value)
    return b"\x7a" + _varint(len(body)) + body


_STATUS_UNSET = _status_without_message(StatusCode.UNSET)
_STATUS_OK = _status_without_message(StatusCode.OK)
_STATUS_ERROR = _status_without_message(StatusCode.ERROR)


def encode_span(span: ReadableSpan) -> bytes:
    """One Span message (without its field header)."""
    # The SDK's span keeps its fields in attributes that its public properties copy or wrap
    # (a tuple of the events, a read-only proxy of the attributes) on every read: read them
    # directly when they are there, through the public interface otherwise.
    attributes = getattr(span, "_attributes", _MISSING)
    if attributes is _MISSING:
        return _encode_fields(
            span.context, span.parent, span.name, span.kind, span.start_time, span.end_time,
            span.attributes, span.dropped_attributes, span.events, span.dropped_events,
            span.links, span.dropped_links, span.status,
        )  # fmt: skip
    events, links = span._events, span._links
    # A plain dict or tuple (a meshlens server span's, until a caller adds to it) drops nothing.
    return _encode_fields(
        span._context, span._parent, span._name, span._kind, span._start_time, span._end_time,
        attributes, 0 if type(attributes) is dict else getattr(attributes, "dropped", 0),
        events, 0 if type(events) is tuple else getattr(events, "dropped", 0),
        links, 0 if type(links) is tuple else getattr(links, "dropped", 0), span._status,
    )  # fmt: skip


def _encode_fields(
    context: SpanContext,
    parent: SpanContext | None,
    name: str,
    kind: SpanKind,
    start_time: int | None,
    end_time: int | None,
    attributes: Mapping[str, Any] | None,
    dropped_attributes: int,
    events: Sequence[Event],
    dropped_events: int,
    links: Sequence[Link],
    dropped_links: int,
    status: Status | None,
) -> bytes:
    """The Span message's fields in field-number order, proto3 defaults left out."""
    if SPAN_CONTEXT_BY_POSITION:
        trace_id, span_id, _, _, trace_state, _ = context
        parent_span_id, parent_is_remote = (parent[1], parent[2]) if parent is not None else (0, False)
    else:
        trace_id, span_id, trace_state = context.trace_id, context.span_id, context.trace_state
        parent_span_id, parent_is_remote = (parent.span_id, parent.is_remote) if parent is not None else (0, False)
    parts = [b"\x0a\x10" + trace_id.to_bytes(16, "big") + b"\x12\x08" + span_id.to_bytes(8, "big")]
    if trace_state is not DEFAULT_TRACE_STATE and trace_state:  # the shared empty one: no len() call
        parts.append(_string(0x1A, _trace_state(trace_state)))
    if parent is not None:
        parts.append(b"\x22\x08" + parent_span_id.to_bytes(8, "big"))
    if name:
        parts.append(_field(0x2A, name.encode("utf-8")))
    parts.append(_SERVER_KIND_FIELD if kind is _SERVER else _KIND_FIELD[kind])  # no enum hash, mostly
    if start_time:
        parts.append(b"\x39" + _pack_fixed64(start_time))
    if end_time:
        parts.append(b"\x41" + _pack_fixed64(end_time))
    if attributes:
        parts.append(encode_attributes(0x4A, attributes))
    if dropped_attributes:
        parts.append(_uint32(0x50, dropped_attributes))
    if events:
        parts.extend(_field(0x5A, _event(event)) for event in events)
    if dropped_events:
        parts.append(_uint32(0x60, dropped_events))
    if links:
        parts.extend(_field(0x6A, _link(link)) for link in links)
    if dropped_links:
        parts.append(_uint32(0x70, dropped_links))
    if status is not None:
        parts.append(_status(status))
    parts.append(_FLAGS_REMOTE_PARENT if parent_is_remote else _FLAGS_LOCAL_PARENT)
    return b"".join(parts)


class _Encoded:
    """Encoded messages of values that never change (resources, scopes), kept per object.

    Keyed by identity: spans of one provider share one resource object and one scope object
    per instrumentation, so the cache holds a handful of entries; it is bounded anyway.
    """

    _LIMIT = 256

    def __init__(self) -> None:
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def resource(self, resource: Resource) -> bytes:
        entry = self._resources.get(id(resource))
        if entry is None or entry[0] is not resource:
            if len(self._resources) >= self._LIMIT:
                self._resources.clear()
            entry = self._resources[id(resource)] = (resource, encode_attributes(0x0A, resource.attributes))
        return entry[1]

    def scope(self, scope: InstrumentationScope | None) -> bytes:
        entry = self._scopes.get(id(scope))
        if entry is None or entry[0] is not scope:
            if len(self._scopes) >= self._LIMIT:
                self._scopes.clear()
            body = b""
            if scope is not None:
                body = b"".join((
                    _string(0x0A, scope.name),
                    _string(0x12, scope.version or ""),
                    encode_attributes(0x1A, scope.attributes),
                ))  # fmt: skip
            entry = self._scopes[id(scope)] = (scope, body)
        return entry[1]


_encoded = _Encoded()


class EncodedSpan:
    """A span already encoded, waiting in the export queue: its bytes (framed as an entry of
    ScopeSpans.spans) and the resource and scope it is grouped under.

    Encoding when the span ends, on the thread that ended it, costs the same CPU as encoding
    on the export thread, but it comes in small, even pieces: the export thread, which holds
    the interpreter lock while it works, then only frames and sends bytes, and no request
    waits behind the encoding of a whole batch. The queue holds bytes, not span objects with
    their attribute dicts, locks and events, which the garbage collector would walk.
    """

    __slots__ = ("payload", "resource", "scope")

    def __init__(self, span: ReadableSpan) -> None:
        encoded = encode_span(span)
        self.payload = b"\x12" + _varint(len(encoded)) + encoded
        # The SDK span's fields, read directly as in encode_span (its properties are Python calls).
        self.resource = getattr(span, "_resource", None) or span.resource
        scope = getattr(span, "_instrumentation_scope", _MISSING)
        self.scope = (span.instrumentation_scope if scope is _MISSING else scope) or None


_Groups = list[tuple[Resource, list[tuple[InstrumentationScope | None, list[bytes]]]]]


def encode_spans(spans: Sequence[ReadableSpan | EncodedSpan]) -> bytes:
    """An ExportTraceServiceRequest holding ``spans`` (ended spans or :class:`EncodedSpan`),
    grouped by resource, then scope."""
    out = []
    for resource, scopes in _one_group(spans) or _groups(spans):
        body = [_field(0x0A, _encoded.resource(resource))]
        for scope, encoded_spans in scopes:
            scope_body = [_field(0x0A, _encoded.scope(scope)), *encoded_spans]
            if scope is not None and scope.schema_url:
                scope_body.append(_string(0x1A, scope.schema_url))
            body.append(_field(0x12, b"".join(scope_body)))
        if resource.schema_url:
            body.append(_string(0x1A, resource.schema_url))
        out.append(_field(0x0A, b"".join(body)))
    return b"".join(out)


def _one_group(spans: Sequence[ReadableSpan | EncodedSpan]) -> _Groups | None:
    """The usual batch: spans encoded as they ended, all of one resource and one scope (the
    middleware's). One pass, no grouping; None for any other batch."""
    first = spans[0] if spans else None
    if type(first) is not EncodedSpan:
        return None
    resource, scope = first.resource, first.scope
    payloads = []
    append = payloads.append
    for item in spans:
        if type(item) is not EncodedSpan or item.resource is not resource or item.scope is not scope:
            return None
        append(item.payload)
    return [(resource, [(scope, payloads)])]


def _groups(spans: Sequence[ReadableSpan | EncodedSpan]) -> _Groups:
    grouped: dict[int, tuple[Resource, dict[int, tuple[InstrumentationScope | None, list[bytes]]]]] = {}
    for span in spans:
        item = span if isinstance(span, EncodedSpan) else EncodedSpan(span)
        resource = item.resource
        scope = item.scope
        scopes = grouped.get(id(resource))
        if scopes is None:
            scopes = grouped[id(resource)] = (resource, {})
        entry = scopes[1].get(id(scope))
        if entry is None:
            entry = scopes[1][id(scope)] = (scope, [])
        entry[1].append(item.payload)
    return [(resource, list(scopes.values())) for resource, scopes in grouped.values()]


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The stock OTLP/HTTP span exporter with :func:`encode_spans` as its encoder; it takes
    :class:`EncodedSpan` items as well as spans."""

    accepts_encoded_spans = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The parts of the stock exporter this one reuses; without them (another SDK
        # release), the stock export path runs instead.
        self._fast = all(hasattr(self, name) for name in ("_client", "_metrics", "_max_request_size"))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:  # or EncodedSpan items
        if self._shutdown:
            return super().export(spans)
        if not self._fast:
            return super().export([span for span in spans if not isinstance(span, EncodedSpan)])
        with self._metrics.export_operation(len(spans)) as result:
            try:
                data = encode_spans(spans)
            except Exception as error:
                _logger.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE
            if 0 < self._max_request_size < len(data):  # the stock check: 0 turns it off
                _logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size %d bytes.",
                    len(data), self._max_request_size,
                )  # fmt: skip
                return SpanExportResult.FAILURE
            export_result = self._client.export(data)
            if not export_result.success:
                result.error = export_result.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


# -- transport ---------------------------------------------------------------------------

_PROXY_VARIABLES = ("http_proxy", "all_proxy")


class ExportConnectionError(ConnectionError):
    """The collector could not be reached (refused, unreachable, name not resolved, connect
    timeout): what the OTLP client retries, as it retries requests' ConnectionError."""


def keep_alive_transport(endpoint: str) -> Any:
    """A :class:`KeepAliveHTTPTransport` for ``endpoint``, or None where the stock
    transport (requests) must stay: an https endpoint (requests' certificate bundle and TLS
    settings), a proxy set in the environment, a netrc file (requests reads credentials from
    it), or an exporter without pluggable transports."""
    if BaseHTTPTransport is None:
        return None
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or not parts.hostname:
        return None
    environ = {key.lower() for key, value in os.environ.items() if value}
    if environ & {*_PROXY_VARIABLES} or "netrc" in environ or os.path.exists(os.path.expanduser("~/.netrc")):
        return None
    return KeepAliveHTTPTransport()


_MAX_RESPONSE_HEAD = 64 * 1024
_MAX_RESPONSE_BODY = 4 * 1024 * 1024
"""An OTLP answer is a few bytes (a partial-success message at most); these bound what is read
from something else answering on the collector's port."""


class _ResponseHeaders(dict):  # type: ignore[type-arg]
    """A response's headers, names lower case and looked up case-insensitively (as the
    transport interface requires); a repeated header's values joined with commas."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name.lower() if isinstance(name, str) else name)

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class _ResponseReader:
    """Reads one HTTP/1.1 response from a socket: the head, then the body by Content-Length,
    in chunks, or up to the close; bounded in size."""

    __slots__ = ("_buffered", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffered = b""

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("the collector closed the connection before answering in full")
        self._buffered += chunk

    def _until(self, delimiter: bytes, limit: int) -> bytes:
        while True:
            end = self._buffered.find(delimiter)
            if end >= 0:
                found, self._buffered = self._buffered[:end], self._buffered[end + len(delimiter) :]
                return found
            if len(self._buffered) > limit:
                raise ValueError("the collector's answer has a head or chunk line too long")
            self._fill()

    def _exactly(self, size: int) -> bytes:
        if size < 0:
            raise ValueError(f"the collector's answer has a negative length ({size})")
        if size > _MAX_RESPONSE_BODY:
            raise ValueError(f"the collector's answer is too large ({size} bytes)")
        while len(self._buffered) < size:
            self._fill()
        found, self._buffered = self._buffered[:size], self._buffered[size:]
        return found

    def response(self) -> tuple[int, str, _ResponseHeaders, bytes, bool]:
        """Status, reason, headers, body, and whether the connection can carry another request."""
        while True:
            status_line, *lines = self._until(b"\r\n\r\n", _MAX_RESPONSE_HEAD).split(b"\r\n")
            version, _, rest = status_line.partition(b" ")
            code, _, reason = rest.partition(b" ")
            if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
                raise ValueError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
            status = int(code)
            headers = _ResponseHeaders()
            for line in lines:
                name, colon, value = line.partition(b":")
                if colon:
                    key, text = name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
            if not 100 <= status < 200 or status == 101:
                break  # an interim answer (100 Continue, 103 Early Hints) is followed by the final one
        keep_alive = version == b"HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in headers:
            body = self._exactly(int(headers["content-length"]))
        else:
            body = self._until_close()
            keep_alive = False
        if self._buffered:  # more than one answer to one request: the connection is not trusted again
            keep_alive = False
        return status, reason.decode("latin-1"), headers, body, keep_alive

    def _chunked(self) -> bytes:
        parts = []
        total = 0
        while True:
            size = int(self._until(b"\r\n", 1024).partition(b";")[0].strip(), 16)
            if size == 0:
                while self._until(b"\r\n", _MAX_RESPONSE_HEAD):  # trailers, up to an empty line
                    pass
                return b"".join(parts)
            total += size
            if total > _MAX_RESPONSE_BODY:
                raise ValueError(f"the collector's answer is too large (over {total} bytes)")
            parts.append(self._exactly(size))
            if self._until(b"\r\n", 2):
                raise ValueError("a chunk of the collector's answer is longer than its size")

    def _until_close(self) -> bytes:
        while True:
            chunk = self._sock.recv(65536)
            if not chunk:
                found, self._buffered = self._buffered, b""
                return found
            self._buffered += chunk
            if len(self._buffered) > _MAX_RESPONSE_BODY:
                raise ValueError("the collector's answer is too large")


if BaseHTTPTransport is not None:

    @dataclass(frozen=True, slots=True)
    class _Result(BaseHTTPResult):  # type: ignore[misc,valid-type]
        body: bytes = b""
        response_headers: Mapping[str, str] | None = None

        def content(self) -> bytes:
            return self.body

        def headers(self) -> Mapping[str, str]:
            return self.response_headers if self.response_headers is not None else _ResponseHeaders()

    class KeepAliveHTTPTransport(BaseHTTPTransport):  # type: ignore[misc,valid-type]
        """OTLP/HTTP requests over one kept-alive connection, for a plain-HTTP endpoint
        reached without a proxy.

        Why not requests (the stock transport): per request it reads the whole environment
        twice for proxy settings, looks for a netrc file, merges session settings, runs
        hooks and passes through requests' and urllib3's instrumentations (suppressed, not
        skipped). That costs about 1 ms per batch on the export thread. Why not
        ``http.client``: building the request header by header and parsing the answer's
        headers with the email package cost 60 µs a batch with warm caches and 200 µs and
        more in a busy worker, where the export thread shares the CPU with the requests and
        holds the interpreter lock meanwhile. Here a request is written with one send and
        the answer read by :class:`_ResponseReader` (HTTP/1.1: Content-Length, chunked or
        up to the close; interim answers skipped; sizes bounded): 40 µs a batch. The retries,
        backoff, compression and headers stay the OTLP client's; only the sending changes.
        """

        def __init__(self) -> None:
            self._lock = threading.Lock()  # one request at a time on the one connection
            self._sock: socket.socket | None = None
            self._target: tuple[str, int, bytes, bytes] | None = None  # host, port, " path HTTP/1.1", Host
            self._url = ""
            # A forked worker must not write to its parent's connection, nor wait for a lock
            # the parent's export thread held at the fork: it starts afresh.
            reference = weakref.ref(self)

            def after_fork_in_child() -> None:
                transport = reference()
                if transport is not None:
                    transport._lock = threading.Lock()
                    transport._sock = None  # the parent's socket: left to the parent

            os.register_at_fork(after_in_child=after_fork_in_child)

        def _connect(self, url: str, timeout: float | None) -> socket.socket:
            if url != self._url:
                self._close()
                parts = urlsplit(url)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                host = parts.netloc.rpartition("@")[2]
                self._target = (parts.hostname or "", parts.port or 80, f" {path} HTTP/1.1".encode(), host.encode())
                self._url = url
            sock = self._sock
            if sock is None:
                assert self._target is not None
                try:
                    sock = socket.create_connection(self._target[:2], timeout)
                except OSError as error:
                    raise ExportConnectionError(str(error) or type(error).__name__) from error
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sock = sock
            else:
                sock.settimeout(timeout)
            return sock

        def request(
            self,
            method: str,
            url: str,
            *,
            headers: dict[str, str] | None = None,
            timeout: float | None = None,
            data: bytes | None = None,
        ) -> Any:
            with self._lock:
                try:
                    sock = self._connect(url, timeout)
                    assert self._target is not None
                    body = data or b""
                    head = [method.encode("ascii") + self._target[2]]
                    given = set()
                    for name, value in (headers or {}).items():
                        line = f"{name}: {value}"
                        if "\r" in line or "\n" in line:
                            raise ValueError(f"invalid header {name!r}: a line break in a name or value")
                        head.append(line.encode("latin-1"))
                        given.add(name.lower())
                    # As http.client adds them, unless the caller gave its own.
                    if "host" not in given:
                        head.append(b"Host: " + self._target[3])
                    if "accept-encoding" not in given:
                        head.append(b"Accept-Encoding: identity")
                    head.append(b"Content-Length: %d\r\n\r\n" % len(body))
                    try:
                        sock.sendall(b"\r\n".join(head) + body)
                        status, reason, response_headers, content, keep_alive = _ResponseReader(sock).response()
                    except ConnectionError as error:  # reset, aborted, or an idle connection closed
                        self._close()
                        # Retried by the OTLP client at once, on a new connection.
                        raise ExportConnectionError(f"connection closed by the collector: {error}") from error
                    if not keep_alive:
                        self._close()
                    return _Result(status_code=status, reason=reason, body=content,
                                   response_headers=response_headers)  # fmt: skip
                except Exception as error:  # reported to the OTLP client, which retries or gives up
                    self._close()
                    return _Result(error=error)

        def is_connection_error(self, exception: Exception | None) -> bool:
            return isinstance(exception, ExportConnectionError)

        def _close(self) -> None:
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()

        def close(self) -> None:
            # Not waiting for a request in flight: at exit, that is a collector that does not
            # answer, and the stop has a deadline. The connection then goes with the process.
            if self._lock.acquire(blocking=False):
                try:
                    self._close()
                finally:
                    self._lock.release()
