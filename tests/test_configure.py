"""configure() and the import line in a fresh interpreter: idempotent, explicit, never fatal."""

from __future__ import annotations

import subprocess
import sys

from harness import base_env, free_port


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env=base_env(None, free_port(), **env),
                          capture_output=True, text=True, timeout=60, check=False)


def test_importing_twice_and_configuring_again_changes_nothing():
    result = _run(
        "import meshlens.auto\n"
        "import importlib, meshlens\n"
        "first = meshlens.current()\n"
        "importlib.reload(meshlens.auto)\n"
        "again = meshlens.configure()\n"
        "ignored = meshlens.configure(service_name='other')\n"
        "import threading\n"
        "servers = [t for t in threading.enumerate() if t.name == 'meshlens-metrics']\n"
        "print(first is again is ignored, len(servers))\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "1"]
    assert "already configured; configure(service_name) ignored" in result.stderr


def test_configure_with_arguments_wins_over_the_environment():
    result = _run(
        "import meshlens\n"
        "runtime = meshlens.configure(service_name='explicit', metrics_port=0)\n"
        "print(runtime.settings.service_name, runtime.metrics_server,\n"
        "      runtime.tracer_provider.resource.attributes['service.name'])\n",
        OTEL_SERVICE_NAME="from-env",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["explicit", "None", "explicit"]


def test_sdk_disabled_returns_none_and_leaves_everything_alone():
    result = _run(
        "import logging, sys\n"
        "before = logging.getLogRecordFactory()\n"
        "import meshlens.auto, meshlens\n"
        "from opentelemetry import trace\n"
        "print(meshlens.current(), logging.getLogRecordFactory() is before,\n"
        "      type(trace.get_tracer_provider()).__name__, 'flask' in sys.modules)\n",
        OTEL_SDK_DISABLED="true",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", "True", "ProxyTracerProvider", "False"]


def _fake_instrumentation(root, name: str, requirement: str) -> None:
    """An installed contrib-style instrumentation: metadata and entry point, as pip writes them."""
    info = root / f"fake_{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: fake-{name}\nVersion: 0.1\n"
        f'Provides-Extra: instruments\nRequires-Dist: {requirement} ; extra == "instruments"\n'
    )
    (info / "entry_points.txt").write_text(f"[opentelemetry_instrumentor]\nfake_{name} = fake_{name}:Instrumentor\n")
    (root / f"fake_{name}.py").write_text(
        "from opentelemetry.instrumentation.instrumentor import BaseInstrumentor\n"
        "CALLS = []\n"
        "class Instrumentor(BaseInstrumentor):\n"
        "    def instrumentation_dependencies(self):\n"
        f"        return ['{requirement}']\n"
        "    def _instrument(self, **kwargs):\n"
        "        CALLS.append(sorted(kwargs))\n"
        "    def _uninstrument(self, **kwargs):\n"
        "        pass\n"
    )


def test_libraries_are_detected_from_metadata_and_absent_ones_never_imported(tmp_path):
    _fake_instrumentation(tmp_path, "absent", "meshlens-no-such-library>=1")
    _fake_instrumentation(tmp_path, "present", "flask>=2")
    result = _run(
        "import sys, meshlens.auto, meshlens\n"
        "outcomes = {o.name: o for o in meshlens.current().instrumented}\n"
        "print(outcomes['fake_absent'].instrumented, 'fake_absent' in sys.modules)\n"
        "waiting = 'fake_present' not in sys.modules and 'flask' not in sys.modules\n"
        "import flask  # the application imports the library: now it is instrumented\n"
        "print(waiting and outcomes['fake_present'].instrumented, sys.modules['fake_present'].CALLS)\n"
        "print(outcomes['fake_absent'].detail)\n",
        PYTHONPATH=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    absent, present, detail = result.stdout.splitlines()
    assert absent == "False False", "an instrumentation whose library is missing is not even imported"
    assert present == "True [['meter_provider', 'tracer_provider']]"
    assert "meshlens-no-such-library" in detail


def test_opting_out_of_one_library(tmp_path):
    _fake_instrumentation(tmp_path, "present", "flask>=2")
    result = _run(
        "import sys, meshlens.auto, meshlens\n"
        "outcomes = {o.name: o for o in meshlens.current().instrumented}\n"
        "print(outcomes['fake_present'].instrumented, 'fake_present' in sys.modules)\n",
        PYTHONPATH=str(tmp_path), OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="fake_present, redis",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_the_services_own_prometheus_metrics_are_served_too():
    port = free_port()
    result = _run(
        "import meshlens.auto\n"
        "import urllib.request\n"
        "from prometheus_client import Counter\n"
        "orders = Counter('shop_orders', 'Orders placed.', ['channel'])\n"
        "orders.labels('web').inc(3)\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').read().decode())\n",
        MESHLENS_METRICS_PORT=str(port),
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert 'shop_orders_total{channel="web"} 3.0' in text
    assert "process_cpu_seconds_total" not in text, "prometheus-client's default collectors are left out"
    assert "process_cpu_time_seconds_total" in text


def test_an_unsupported_library_version_is_reported_once(tmp_path):
    _fake_instrumentation(tmp_path, "tooold", "flask<1")
    result = _run(
        "import sys, meshlens.auto, meshlens\n"
        "outcomes = {o.name: o for o in meshlens.current().instrumented}\n"
        "print(outcomes['fake_tooold'].instrumented, 'fake_tooold' in sys.modules)\n",
        PYTHONPATH=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]
    warnings = [line for line in result.stderr.splitlines() if "flask<1" in line]
    assert len(warnings) == 1 and "runs untraced" in warnings[0], result.stderr


def test_shutdown_stops_taking_scrapes_before_the_process_is_gone():
    """A pre-fork worker that exits shares its port with the others: from shutdown on it
    must not accept scrapes (the kernel would hand it scrapes that die with it)."""
    port = free_port()
    result = _run(
        "import meshlens, socket, urllib.request\n"
        f"runtime = meshlens.configure(metrics_port={port}, metrics_host='127.0.0.1')\n"
        f"print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics').status)\n"
        "runtime.shutdown()\n"
        f"print(socket.socket().connect_ex(('127.0.0.1', {port})) != 0)\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "True"]
