"""Real parts for the tests: an OTLP/HTTP receiver, service processes on loopback, scrapes.

Everything here talks over real sockets on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from demo.otlp_sink import OtlpSink, decode
from demo.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


APPS = Path(__file__).resolve().parent / "apps"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


# --- OTLP receivers ------------------------------------------------------------
# The HTTP receiver is the demo's local trace sink: one receiver for both.

class OtlpGrpcSink(OtlpSink):
    """The same receiver over OTLP/gRPC."""

    def start(self) -> OtlpGrpcSink:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        sink = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                with sink._lock:
                    sink.requests += 1
                    sink.headers.append(dict(context.invocation_metadata()))
                sink.store(decode(request))
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._grpc)
        self.port = self._grpc.add_insecure_port(f"127.0.0.1:{self.port}")
        self._grpc.start()
        return self

    def stop(self) -> None:
        self._grpc.stop(grace=None)


def started_sink() -> Iterator[OtlpSink]:
    """A running OTLP/HTTP receiver, stopped afterwards: the body of the tests' ``sink`` fixtures."""
    sink = OtlpSink().start()
    try:
        yield sink
    finally:
        sink.stop()


# --- services ------------------------------------------------------------------


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def wait_http(url: str, timeout: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before {url} answered")
        try:
            http_get(url, timeout=2)
            return
        except (OSError, urllib.error.URLError) as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s: {last}")


@dataclass
class Service:
    """A service started as a real process, its HTTP port and its /metrics port."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        return http_get(self.url + path, headers)

    def metrics(self, openmetrics: bool = False) -> str:
        headers = {"Accept": OPENMETRICS} if openmetrics else {}
        status, body, _ = http_get(f"http://127.0.0.1:{self.metrics_port}/metrics", headers)
        assert status == 200, body
        return body.decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def base_env(sink: OtlpSink | None, metrics_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHLENS_", "PROMETHEUS_"))}
    env.update(
        {
            "PYTHONPATH": str(APPS),
            "PYTHONUNBUFFERED": "1",
            "MESHLENS_METRICS_PORT": str(metrics_port),
            "MESHLENS_METRICS_HOST": "127.0.0.1",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_TRACES_EXPORTER": "otlp" if sink else "none",
        }
    )
    if sink is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    env.update(extra)
    return env


def bin_path(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def start_service(
    argv: list[str],
    port: int,
    env: dict[str, str],
    log_path: Path,
    ready_path: str = "/health",
    metrics_port: int | None = None,
    timeout: float = 40.0,
) -> Service:
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=APPS,
                               start_new_session=True)
    service = Service(process, port, metrics_port or int(env["MESHLENS_METRICS_PORT"]), log_path)
    try:
        wait_http(service.url + ready_path, timeout, process)
    except AssertionError:
        service.stop(signal.SIGKILL)
        raise AssertionError(f"service did not start; log:\n{service.log()}") from None
    return service


@contextlib.contextmanager
def running(*args: Any, **kwargs: Any) -> Iterator[Service]:
    service = start_service(*args, **kwargs)
    try:
        yield service
    finally:
        if service.process.poll() is None:
            service.stop()
        # Whatever a server forked in its own session goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(service.process.pid, signal.SIGKILL)


# --- metrics -------------------------------------------------------------------


def families(text: str, openmetrics: bool = False) -> dict[str, Any]:
    parse = parse_openmetrics if openmetrics else parse_text
    return {family.name: family for family in parse(text)}


def sample_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    found = False
    for family in parse_text(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
                found = True
    if not found:
        raise AssertionError(f"no sample {name}{labels}")
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class EchoServer:
    """A plain HTTP server on loopback, a service's downstream peer: 200, or 404 under
    /missing; keeps each request's path and headers (names lower-cased)."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str = "/echo") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def traceparents(self, trace_id: str) -> list[str]:
        found = (headers.get("traceparent") for _, headers in self.received)
        return [tp for tp in found if tp and tp.split("-")[1] == trace_id]


@contextlib.contextmanager
def echo_server() -> Iterator[EchoServer]:
    state = EchoServer()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            state.received.append((self.path, {name.lower(): value for name, value in self.headers.items()}))
            self.send_response(404 if self.path.startswith("/missing") else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
