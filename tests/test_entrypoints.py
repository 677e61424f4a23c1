"""The ways into meshlens: the import line, meshlens-run, opentelemetry-instrument, OTEL_SDK_DISABLED."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import APPS, base_env, bin_path, free_port, http_get, running, sample_value, started_sink

pytestmark = pytest.mark.slow

SERVER_KIND = 2


sink = pytest.fixture(started_sink)

def _gunicorn(port: int, app: str = "flask_app:app") -> list[str]:
    return [bin_path("gunicorn"), "-w", "1", "-b", f"127.0.0.1:{port}", app]


def test_sdk_disabled_means_nothing_at_all(sink, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = base_env(sink, metrics_port, OTEL_SDK_DISABLED="true")
    with running(_gunicorn(port), port, env, tmp_path / "service.log") as service:
        assert service.get("/items/1")[0] == 200
        with pytest.raises(OSError):
            http_get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2)
        log = service.log()
    assert sink.requests == 0
    assert "trace_id=" not in log


def test_bad_settings_warn_and_the_service_runs(sink, tmp_path):
    port = free_port()
    env = base_env(sink, free_port(), OTEL_TRACES_SAMPLER_ARG="abc", OTEL_TRACES_SAMPLER="sometimes",
                   MESHLENS_METRIC_LABEL_SET_LIMIT="lots")
    with running(_gunicorn(port), port, env, tmp_path / "service.log") as service:
        assert service.get("/items/1")[0] == 200
        assert sample_value(service.metrics(), "http_server_request_duration_seconds_count",
                            http_route="/items/<int:item_id>") == 1
        log = service.log()
    for variable, value, default in (("OTEL_TRACES_SAMPLER_ARG", "'abc'", "1.0"),
                                     ("OTEL_TRACES_SAMPLER", "'sometimes'", "'parentbased_always_on'"),
                                     ("MESHLENS_METRIC_LABEL_SET_LIMIT", "'lots'", "2000")):
        lines = [line for line in log.splitlines() if f"ignoring {variable}=" in line]
        assert len(lines) == 1, log
        assert value in lines[0] and default in lines[0]


def test_a_taken_metrics_port_costs_only_metrics(sink, tmp_path):
    import socket

    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        env = base_env(sink, taken)
        with running(_gunicorn(port), port, env, tmp_path / "service.log") as service:
            assert service.get("/items/1")[0] == 200
            sink.wait_for(lambda spans: any(s.attributes.get("http.route") == "/items/<int:item_id>" for s in spans))
            log = service.log()
    assert f"cannot serve /metrics on 127.0.0.1:{taken}" in log


def test_meshlens_run_needs_no_code_change(sink, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = base_env(sink, metrics_port, APP_PORT=str(port), OTEL_SERVICE_NAME="plain")
    argv = [bin_path("meshlens-run"), sys.executable, str(APPS / "plain_app.py")]
    with running(argv, port, env, tmp_path / "service.log") as service:
        assert service.get("/items/5")[0] == 200
        spans = sink.wait_for(lambda s: any(x.attributes.get("http.route") == "/items/<int:item_id>" for x in s))
        assert next(s for s in spans if s.kind == SERVER_KIND).resource["service.name"] == "plain"
        assert sample_value(service.metrics(), "http_server_request_duration_seconds_count",
                            http_route="/items/<int:item_id>") == 1


def test_meshlens_run_usage_and_unknown_command():
    usage = subprocess.run([bin_path("meshlens-run"), "--help"], capture_output=True, text=True, check=False)
    assert usage.returncode == 0 and "usage: meshlens-run COMMAND" in usage.stdout
    missing = subprocess.run([bin_path("meshlens-run"), "no-such-command-xyz"], capture_output=True, text=True,
                             check=False)
    assert missing.returncode == 127 and "command not found: no-such-command-xyz" in missing.stderr


@pytest.mark.skipif(not Path(bin_path("opentelemetry-instrument")).exists(),
                    reason="opentelemetry-instrument is not installed (it comes with meshlens[dev])")
def test_opentelemetry_instrument_users_get_the_meshlens_setup(sink, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = base_env(sink, metrics_port, APP_PORT=str(port), OTEL_PYTHON_DISTRO="meshlens",
                   OTEL_PYTHON_CONFIGURATOR="meshlens")
    argv = [bin_path("opentelemetry-instrument"), sys.executable, str(APPS / "plain_app.py")]
    with running(argv, port, env, tmp_path / "service.log") as service:
        assert service.get("/items/5")[0] == 200
        sink.wait_for(lambda s: any(x.attributes.get("http.route") == "/items/<int:item_id>" for x in s))
        text = service.metrics()
        log = service.log()
    assert sample_value(text, "http_server_request_duration_seconds_count", http_route="/items/<int:item_id>") == 1
    assert sample_value(text, "meshlens_info") == 1
    assert "already instrumented" not in log.lower()


def test_promtool_accepts_the_exposition(sink, tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make setup` (apt package prometheus)"
    port = free_port()
    with running(_gunicorn(port), port, base_env(sink, free_port()), tmp_path / "service.log") as service:
        service.get("/items/1")
        service.get("/fail")
        # An outgoing call, to the service's own /metrics (its one sync worker is busy with /call).
        service.get(f"/call?url=http://127.0.0.1:{service.metrics_port}/metrics")
        text = service.metrics()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr
