"""`make demo`: two services with only the import line, their trace and their metrics.

Starts a local trace sink, an inventory service (Flask on gunicorn) and a storefront
(FastAPI on uvicorn) that calls it, drives traffic, then prints what an engineer looks
at: the waterfall of one request across both services, the RED summary of each service
read back from /metrics, and an exemplar that links a slow latency bucket to its trace.
Everything runs on loopback and stops when the demo ends, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from demo.otlp_sink import OtlpSink, ReceivedSpan  # noqa: E402
from meshlens import catalogue  # noqa: E402
from meshlens.instruments import EXEMPLAR_TRACE_ID  # noqa: E402

REQUESTS = int(os.environ.get("DEMO_REQUESTS", "300"))
SERVER, CLIENT = 2, 3
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str, accept: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a service exited during start-up (code {process.returncode})")
        with contextlib.suppress(OSError):
            if get(url)[0] == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def service(name: str, argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, env=env, cwd=HERE / "apps", stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def waterfall(spans: list[ReceivedSpan], trace_id: str) -> list[str]:
    trace = sorted((s for s in spans if s.trace_id == trace_id), key=lambda s: s.start_ns)
    by_parent: dict[str, list[ReceivedSpan]] = {}
    for span in trace:
        by_parent.setdefault(span.parent_span_id, []).append(span)
    ids = {s.span_id for s in trace}
    roots = [s for s in trace if s.parent_span_id not in ids]
    start = min(s.start_ns for s in trace)
    total = max(s.end_ns for s in trace) - start or 1
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        offset = int(40 * (span.start_ns - start) / total)
        width = max(1, int(40 * (span.end_ns - span.start_ns) / total))
        bar = " " * offset + "█" * width
        label = f"{'  ' * depth}{span.service}: {span.name}"
        lines.append(f"  {label:<52} {bar:<41} {(span.end_ns - span.start_ns) / 1e6:7.1f} ms")
        for child in by_parent.get(span.span_id, []):
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return lines


def quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Linear interpolation inside cumulative buckets, as PromQL's histogram_quantile does."""
    total = buckets[-1][1]
    if total == 0:
        return float("nan")
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-9)
        lower_bound, lower_count = bound, count
    return lower_bound


def red_summary(name: str, metrics_url: str) -> tuple[list[str], tuple[str, float, str] | None]:
    _, text = get(metrics_url, OPENMETRICS)
    spec = catalogue.HTTP_SERVER_REQUEST_DURATION
    family = next(f for f in text_string_to_metric_families(text) if f.name == spec.name)
    routes: dict[str, dict[str, list[tuple[float, float]]]] = {}
    slowest_exemplar: tuple[str, float, str] | None = None
    for sample in family.samples:
        if not sample.name.endswith("_bucket"):
            continue
        route = sample.labels.get(catalogue.HTTP_ROUTE, "")
        status = sample.labels.get(catalogue.HTTP_RESPONSE_STATUS_CODE, "")
        routes.setdefault(route, {}).setdefault(status, []).append((float(sample.labels["le"]), sample.value))
        if sample.exemplar and (slowest_exemplar is None or sample.exemplar.value > slowest_exemplar[1]):
            slowest_exemplar = (sample.labels["le"], sample.exemplar.value, sample.exemplar.labels[EXEMPLAR_TRACE_ID])
    lines = []
    for route, by_status in sorted(routes.items()):
        if route in ("/health", ""):
            continue
        merged: dict[float, float] = {}
        errors = 0.0
        for status, buckets in by_status.items():
            for bound, count in buckets:
                merged[bound] = merged.get(bound, 0.0) + count
            if status.startswith("5"):
                errors += max(count for _, count in buckets)
        buckets = sorted(merged.items())
        total = buckets[-1][1]
        p50, p95, p99 = (quantile(buckets, q) * 1000 for q in (0.5, 0.95, 0.99))
        lines.append(f"  {name:<11} {route:<26} {total:>6.0f} {100 * errors / total:>7.1f}% "
                     f"{p50:>8.1f} {p95:>8.1f} {p99:>8.1f}")
    return lines, slowest_exemplar


def main() -> int:
    sink = OtlpSink().start()
    bin_dir = Path(sys.executable).parent
    inventory_port, storefront_port = free_port(), free_port()
    inventory_metrics, storefront_metrics = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHLENS_"))}
    base.update({"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200",
                 "MESHLENS_METRICS_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    logs = Path(os.environ.get("DEMO_LOGS", "/tmp/meshlens-demo"))
    logs.mkdir(parents=True, exist_ok=True)
    print(f"meshlens demo: trace sink on {sink.endpoint} (local use only), logs in {logs}/")
    inventory_env = {**base, "OTEL_SERVICE_NAME": "inventory", "MESHLENS_METRICS_PORT": str(inventory_metrics)}
    storefront_env = {**base, "OTEL_SERVICE_NAME": "storefront", "MESHLENS_METRICS_PORT": str(storefront_metrics),
                      "INVENTORY_URL": f"http://127.0.0.1:{inventory_port}"}
    inventory_argv = [str(bin_dir / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{inventory_port}", "inventory:app"]
    storefront_argv = [str(bin_dir / "uvicorn"), "--host", "127.0.0.1", "--port", str(storefront_port),
                       "--log-level", "warning", "storefront:app"]
    try:
        with service("inventory", inventory_argv, inventory_env, logs / "inventory.log") as inventory, \
                service("storefront", storefront_argv, storefront_env, logs / "storefront.log") as storefront:
            wait_ready(f"http://127.0.0.1:{inventory_port}/health", inventory)
            wait_ready(f"http://127.0.0.1:{storefront_port}/health", storefront)
            print(f"started inventory (gunicorn, 2 workers) and storefront (uvicorn); sending {REQUESTS} requests")
            statuses: dict[int, int] = {}
            for number in range(1, REQUESTS + 1):
                status, _ = get(f"http://127.0.0.1:{storefront_port}/products/{number}")
                statuses[status] = statuses.get(status, 0) + 1
                if number % 25 == 0 or number == REQUESTS:
                    done = int(30 * number / REQUESTS)
                    print(f"\r  [{'#' * done}{'.' * (30 - done)}] {number}/{REQUESTS}", end="", flush=True)
            print(f"\n  responses: {', '.join(f'{code}: {count}' for code, count in sorted(statuses.items()))}")

            spans = sink.wait_for(lambda s: sum(x.kind == SERVER and x.service == "storefront"
                                                and "/products" in str(x.attributes.get("http.route")) for x in s)
                                  >= REQUESTS, timeout=20)
            print("\nOne request, as Jaeger would show it (storefront -> inventory):")
            sample = next(s for s in spans if s.service == "storefront" and s.kind == SERVER
                          and "/products" in str(s.attributes.get("http.route"))
                          and s.attributes.get("http.response.status_code") == 200)
            print("\n".join(waterfall(spans, sample.trace_id)))
            print(f"  trace id {sample.trace_id}")

            print("\nRED summary read back from /metrics (http_server_request_duration_seconds):")
            header = ("service", "route", "count", "errors", "p50 ms", "p95 ms", "p99 ms")
            print("  {:<11} {:<26} {:>6} {:>8} {:>8} {:>8} {:>8}".format(*header))
            exemplar = None
            for name, port in (("storefront", storefront_metrics), ("inventory", inventory_metrics)):
                lines, found = red_summary(name, f"http://127.0.0.1:{port}/metrics")
                print("\n".join(lines))
                if name == "storefront":
                    exemplar = found
            if exemplar:
                le, value, trace_id = exemplar
                with contextlib.suppress(AssertionError):  # the downstream half may still be in flight
                    sink.wait_for(lambda s: any(x.trace_id == trace_id and x.service == "inventory" for x in s), 5)
                stored = any(s.trace_id == trace_id for s in sink.snapshot())
                where = "found in the trace sink" if stored else "NOT in the trace sink"
                print(f"\nExemplar: the storefront's bucket le={le} holds a {value * 1000:.0f} ms request, "
                      f"trace {trace_id} ({where}):")
                print("\n".join(waterfall(sink.snapshot(), trace_id)))
            log_line = next((line for line in (logs / "inventory.log").read_text().splitlines()
                             if "trace_id=" in line and "stock looked up" in line), "")
            print(f"\nA log line of inventory, with its trace:\n  {log_line}")
    except KeyboardInterrupt:
        print("\ninterrupted; stopping the services")
        return 130
    finally:
        sink.stop()
    print("\nAll services stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
