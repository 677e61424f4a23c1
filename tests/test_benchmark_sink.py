"""The overhead benchmark's OTLP sink counts every span it receives, over real HTTP."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from harness import free_port
from meshlens import otlp

SINK = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead" / "sink.py"


def _trace_request(count: int) -> bytes:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "bench"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for n in range(count):
        provider.get_tracer("t").start_span(f"span {n}").end()
    return otlp.encode_spans(exporter.get_finished_spans())


def test_spans_sent_in_batches_are_all_counted_when_asked_for():
    port = free_port()
    sink = subprocess.Popen([sys.executable, str(SINK), "--port", str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.connect()
                break
            except OSError:
                assert time.monotonic() < deadline, "the sink did not start"
                time.sleep(0.05)
        for count in (3, 128, 7):  # over one kept-alive connection, as an exporter sends
            connection.request("POST", "/v1/traces", body=_trace_request(count),
                               headers={"Content-Type": "application/x-protobuf"})
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b""
        connection.request("POST", "/v1/traces", body=b"\xff not protobuf")
        assert connection.getresponse().read() == b""
        connection.request("GET", "/stats")
        stats = json.loads(connection.getresponse().read())
        assert stats["spans"] == 138
        assert stats["requests"] == {"/v1/traces": 4} and stats["decode_errors"] == 1
        connection.close()
    finally:
        sink.terminate()
        sink.wait(10)
