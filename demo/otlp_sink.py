"""A local OTLP/HTTP trace receiver: decodes the protobuf, keeps the spans in memory and,
when given a file, appends them to it as JSON lines.

For local use only (the demo and the tests): it stands in for a collector and Jaeger on
one machine. It is not a collector: no auth, no retention, no limits beyond memory and disk.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


@dataclass
class ReceivedSpan:
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

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", "?"))


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


def decode(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    received = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(
                    ReceivedSpan(
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
                    )
                )
    return received


@dataclass
class OtlpSink:
    """An OTLP/HTTP trace receiver on loopback.

    ``mode`` is what it does with a request: ``ok``, ``refuse`` (HTTP 503) or
    ``slow`` (waits ``delay`` seconds, then accepts). ``store_to``: a file that every
    received span is appended to, one JSON object per line.
    """

    port: int = 0
    mode: str = "ok"
    delay: float = 2.0
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    store_to: Path | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpSink:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with sink._lock:
                    sink.requests += 1
                    sink.headers.append({k.lower(): v for k, v in self.headers.items()})
                if sink.mode == "refuse":
                    self.send_response(503)
                    self.end_headers()
                    return
                if sink.mode == "slow":
                    time.sleep(sink.delay)
                if self.path.endswith("/v1/traces"):
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    sink.store(decode(request))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, name="otlp-sink", daemon=True).start()
        return self

    def store(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.spans.extend(spans)
            if self.store_to is not None:
                with open(self.store_to, "a", encoding="utf-8") as out:
                    out.writelines(json.dumps(dataclasses.asdict(span), default=str) + "\n" for span in spans)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]

    def wait_trace(
        self, trace_id: str, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 15.0
    ) -> list[ReceivedSpan]:
        """The spans of one trace, once ``predicate`` holds for them."""
        try:
            self.wait_for(lambda spans: predicate([s for s in spans if s.trace_id == trace_id]), timeout)
        except AssertionError:
            got = [(s.name, s.kind, s.scope) for s in self.trace(trace_id)]
            raise AssertionError(f"trace {trace_id} incomplete after {timeout}s; has {got}") from None
        return self.trace(trace_id)

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 15.0) -> list[ReceivedSpan]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snapshot = self.snapshot()
            if predicate(snapshot):
                return snapshot
            time.sleep(0.05)
        snapshot = self.snapshot()
        raise AssertionError(f"condition not met in {timeout}s; {len(snapshot)} spans received")
