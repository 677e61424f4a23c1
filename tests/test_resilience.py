"""The service never pays for telemetry trouble: collector down, slow or refusing; floods of paths."""

from __future__ import annotations

import random
import socket
import subprocess
import time

import pytest

from harness import OtlpSink, base_env, bin_path, free_port, rss_bytes, running, sample_value

pytestmark = pytest.mark.slow

OUTAGE_WARNING = "cannot export spans to"
EXPORTER_NOISE = ("Failed to export", "Transient error", "Queue full")


def _flask(port: int, app: str = "flask_app:app") -> list[str]:
    return [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", app]


def _dropped(text: str) -> float:
    return sum(sample_value(text, "meshlens_spans_dropped_total", reason=reason)
               for reason in ("queue_full", "export_failed"))


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as probe:  # nothing listens there: connections are refused
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


@pytest.mark.parametrize("mode", ["down", "refuse", "slow"])
def test_collector_trouble_costs_telemetry_not_requests(mode, tmp_path):
    sink = OtlpSink(mode=mode if mode != "down" else "ok", delay=3.0)
    endpoint = f"http://127.0.0.1:{_closed_port()}" if mode == "down" else sink.start().endpoint
    port = free_port()
    env = base_env(None, free_port(), OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                   OTEL_BSP_MAX_QUEUE_SIZE="64", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="32",
                   OTEL_BSP_SCHEDULE_DELAY="50", OTEL_EXPORTER_OTLP_TIMEOUT="1000")
    try:
        with running(_flask(port), port, env, tmp_path / "service.log") as service:
            started = time.monotonic()
            for item in range(600):
                status, _, _ = service.get(f"/items/{item}")
                assert status == 200
            elapsed = time.monotonic() - started
            memory_early = rss_bytes(_worker_pid(service))
            for item in range(1500):
                assert service.get(f"/items/{item}")[0] == 200
            memory_late = rss_bytes(_worker_pid(service))
            text = service.metrics()
            log = service.log()
    finally:
        sink.stop()
    # 600 requests on loopback take a few seconds at most, collector or not.
    assert elapsed < 30, elapsed
    assert memory_late - memory_early < 8 * 1024 * 1024, (memory_early, memory_late)
    assert sample_value(text, "http_server_request_duration_seconds_count", http_route="/items/<int:item_id>") == 2100
    assert _dropped(text) > 0
    if mode != "slow":
        assert sample_value(text, "meshlens_export_failures_total", signal="traces") >= 1
        assert log.count(OUTAGE_WARNING) == 1, log
    foreign = [line for line in log.splitlines() if "meshlens:" not in line]
    assert not any(noise in line for line in foreign for noise in EXPORTER_NOISE), log


def _worker_pid(service) -> int:
    children = subprocess.run(["pgrep", "-P", str(service.process.pid)], capture_output=True, text=True,
                              check=False).stdout.split()
    return int(children[0]) if children else service.process.pid


def test_recovery_is_logged_once_and_spans_flow_again(tmp_path):
    sink = OtlpSink(mode="refuse").start()
    port = free_port()
    env = base_env(sink, free_port(), OTEL_BSP_SCHEDULE_DELAY="50", OTEL_EXPORTER_OTLP_TIMEOUT="500")
    try:
        with running(_flask(port), port, env, tmp_path / "service.log") as service:
            for item in range(20):
                service.get(f"/items/{item}")
            deadline = time.monotonic() + 10
            while OUTAGE_WARNING not in service.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            sink.mode = "ok"
            service.get("/items/999")
            sink.wait_for(lambda spans: any(s.attributes.get("http.target", s.attributes.get("url.path")) == "/items/999"
                                            for s in spans))
            deadline = time.monotonic() + 10
            while "recovered" not in service.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            log = service.log()
    finally:
        sink.stop()
    assert log.count(OUTAGE_WARNING) == 1
    assert log.count("recovered after") == 1


def test_a_flood_of_unknown_paths_keeps_series_and_memory_bounded(tmp_path):
    port = free_port()
    env = base_env(None, free_port())
    script = tmp_path / "random_paths.lua"
    seed = random.randrange(1 << 30)
    script.write_text(
        f"math.randomseed({seed})\n"
        "request = function()\n"
        "  return wrk.format('GET', '/' .. math.random(1, 1000000000) .. '/' .. math.random(1, 1000000000))\n"
        "end\n"
    )
    with running(_flask(port), port, env, tmp_path / "service.log") as service:
        worker = _worker_pid(service)

        def flood_until(total: int) -> float:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                count = _count_404(service.metrics())
                if count >= total:
                    return count
                subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", str(script), service.url], check=True,
                               capture_output=True, timeout=30)
            raise AssertionError(f"could not send {total} requests in time")

        flood_until(4000)
        memory_early = rss_bytes(worker)
        total = flood_until(20_000)
        memory_late = rss_bytes(worker)
        text = service.metrics()
    series = [line for line in text.splitlines() if line.startswith("http_server_request_duration_seconds_count")]
    assert total >= 20_000
    assert len(series) <= 3, series  # /health, the 404s with no route, nothing per path
    assert memory_late - memory_early < 10 * 1024 * 1024, (memory_early, memory_late)


def _count_404(text: str) -> float:
    try:
        return sample_value(text, "http_server_request_duration_seconds_count", http_response_status_code="404")
    except AssertionError:
        return 0.0


def test_label_set_limit_over_the_wire(tmp_path):
    port = free_port()
    env = base_env(None, free_port(), MESHLENS_METRIC_LABEL_SET_LIMIT="10")
    with running(_flask(port, "many_routes_app:app"), port, env, tmp_path / "service.log") as service:
        for number in range(40):
            assert service.get(f"/r{number}/k")[0] == 200
        text = service.metrics()
    series = [line for line in text.splitlines()
              if line.startswith("http_server_request_duration_seconds_count{http_request_method")]
    assert len(series) == 10  # /health and the first nine routes
    overflow = sample_value(text, "http_server_request_duration_seconds_count", otel_metric_overflow="true")
    assert overflow == 31
    assert sample_value(text, "meshlens_metric_overflow_total", metric="http_server_request_duration_seconds") == 31
