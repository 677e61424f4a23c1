"""A real Prometheus scrapes a service with only the import line: values, and exemplars that lead to traces."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse

import pytest

from harness import base_env, bin_path, free_port, http_get, running, started_sink, wait_http

pytestmark = pytest.mark.slow

sink = pytest.fixture(started_sink)
ROUTE = "/items/<int:item_id>"


@pytest.fixture
def prometheus(tmp_path):
    """Starts Prometheus (from the system's packages) with exemplar storage; yields a config writer."""
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is installed by `make setup` (apt package prometheus)"
    port = free_port()
    processes = []

    def start(target_port: int) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: shop\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
        )
        process = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"),  # noqa: SIM115
        )
        processes.append(process)
        wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=30, process=process)
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def _api(base: str, path: str, **params: str) -> dict:
    status, body, _ = http_get(f"{base}{path}?{urllib.parse.urlencode(params)}")
    assert status == 200, body
    return json.loads(body)["data"]


def _poll(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_prometheus_stores_the_counts_and_exemplars_link_to_exported_traces(sink, prometheus, tmp_path):
    port, metrics_port = free_port(), free_port()
    argv = [bin_path("gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "flask_app:app"]
    with running(argv, port, base_env(sink, metrics_port), tmp_path / "service.log") as service:
        base = prometheus(metrics_port)
        for item in range(40):
            assert service.get(f"/items/{item}")[0] == 200
        query = f'sum(http_server_request_duration_seconds_count{{http_route="{ROUTE}"}})'

        def count():
            result = _api(base, "/api/v1/query", query=query)["result"]
            return result and float(result[0]["value"][1]) == 40

        assert _poll(count), _api(base, "/api/v1/query", query=query)
        up = _api(base, "/api/v1/query", query='up{job="shop"}')["result"]
        assert up and up[0]["value"][1] == "1"

        def exemplars():
            now = time.time()
            return _api(base, "/api/v1/query_exemplars", query="http_server_request_duration_seconds_bucket",
                        start=str(now - 300), end=str(now + 5))

        found = _poll(exemplars)
        assert found, "Prometheus stored no exemplar (OpenMetrics scrape with exemplar storage)"
        trace_ids = {e["labels"]["trace_id"] for series in found for e in series["exemplars"]}
        exported = {s.trace_id for s in sink.wait_for(lambda spans: trace_ids <= {s.trace_id for s in spans})}
        assert trace_ids <= exported, "every stored exemplar leads to a trace the collector received"
