"""Helpers for the library tests (databases, HTTP clients, gRPC, Celery): spans by trace,
parent/child links, metric deltas between two scrapes. Built on harness.py, over real sockets."""

from __future__ import annotations

import gzip
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from harness import free_port

INTERNAL_KIND, SERVER_KIND, CLIENT_KIND, PRODUCER_KIND, CONSUMER_KIND = 1, 2, 3, 4, 5
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2
INSTRUMENTATION_FAILED = "could not instrument"


@dataclass
class ScopedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    scope: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int
    events: list[str]
    links: list[tuple[str, str]]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


def _decode(request: ExportTraceServiceRequest) -> list[ScopedSpan]:
    received = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(ScopedSpan(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    kind=span.kind,
                    scope=scope_spans.scope.name,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=_attributes(span.attributes),
                    resource=resource,
                    status_code=span.status.code,
                    events=[event.name for event in span.events],
                    links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                ))
    return received


@dataclass
class ScopedSink:
    """An OTLP/HTTP trace receiver on loopback that keeps each span's instrumentation scope."""

    port: int = field(default_factory=free_port)
    spans: list[ScopedSpan] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ScopedSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path.endswith("/v1/traces"):
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    spans = _decode(request)
                    with sink._lock:
                        sink.spans.extend(spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="scoped-sink", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def snapshot(self) -> list[ScopedSpan]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ScopedSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def wait_for(self, predicate: Callable[[list[ScopedSpan]], bool], timeout: float = 15.0) -> list[ScopedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snapshot = self.snapshot()
            if predicate(snapshot):
                return snapshot
            time.sleep(0.05)
        raise AssertionError(f"condition not met in {timeout}s; {len(self.snapshot())} spans received")

    def wait_trace(
        self, trace_id: str, predicate: Callable[[list[ScopedSpan]], bool], timeout: float = 15.0
    ) -> list[ScopedSpan]:
        """The spans of one trace, once ``predicate`` holds for them."""
        try:
            self.wait_for(lambda spans: predicate([s for s in spans if s.trace_id == trace_id]), timeout)
        except AssertionError:
            got = [(s.name, s.kind, s.scope) for s in self.trace(trace_id)]
            raise AssertionError(f"trace {trace_id} incomplete after {timeout}s; has {got}") from None
        return self.trace(trace_id)


def traceparent() -> tuple[str, str, str]:
    """A new sampled trace to continue: (trace id, parent span id, traceparent header)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def descends_from(span: ScopedSpan, ancestor: ScopedSpan, spans: list[ScopedSpan]) -> bool:
    """Whether ``ancestor`` is on the span's parent chain (within the received spans)."""
    by_id = {s.span_id: s for s in spans}
    current: ScopedSpan | None = span
    for _ in range(50):
        if current is None or not current.parent_span_id:
            return False
        if current.parent_span_id == ancestor.span_id:
            return True
        current = by_id.get(current.parent_span_id)
    return False


def count(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``; 0 when there is none."""
    total = 0.0
    for family in parse_text(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return count(after, name, **labels) - count(before, name, **labels)


def label_values(text: str, name: str, label: str, **labels: str) -> set[str]:
    """The values ``label`` takes among the samples called ``name`` that match ``labels``."""
    values = set()
    for family in parse_text(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                values.add(sample.labels.get(label, ""))
    return values


def exemplar_trace_ids(openmetrics: str, family_name: str, **labels: str) -> set[str]:
    ids = set()
    for family in parse_openmetrics(openmetrics):
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.exemplar is not None and all(sample.labels.get(k) == v for k, v in labels.items()):
                ids.add(sample.exemplar.labels["trace_id"])
    return ids
