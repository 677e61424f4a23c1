"""`make demo`, shortened: the whole stack on one machine, as the README shows it.

Runs ``demo/run.py --short``: four services with the import line, Kafka's mock cluster,
a real Prometheus with the generated rules, Alertmanager, traffic and the payments fault
until the burn-rate alert is pending. It must exit 0 (every dashboard query that can run
here returns data), print one trace across every service, and leave no process behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def test_short_demo_runs_the_whole_stack_and_cleans_up(tmp_path):
    logs = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHLENS_", "PROMETHEUS_"))}
    env["DEMO_LOGS"] = str(logs)
    result = subprocess.run([sys.executable, str(ROOT / "demo" / "run.py"), "--short"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=420, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    # One checkout, drawn across every service, through the Kafka hop to payments.
    waterfall = output.split("One checkout across every service", 1)[1].split("\n\n", 1)[0]
    for service in ("storefront:", "orders:", "pricing:", "payments:"):
        assert service in waterfall, waterfall
    assert "price-lookup" in waterfall, "the jaeger-client service's own span is in the trace"

    # The RED table came from Prometheus, and the exemplar leads to a stored trace.
    assert "storefront   /checkout/{product_id}" in output, output
    assert "(in the trace sink)" in output, output
    # The fault made payments' burn-rate alert at least pending.
    assert "MeshlensSLOBurnRateFast service=payments" in output, output
    # Every dashboard query that can run here had data; Istio and the collector are named as such.
    assert "NO DATA" not in output, output
    assert "not applicable here (needs Istio sidecars)" in output, output
    assert "`helm lint --strict` passed" in output, output
    assert (logs / "spans.jsonl").stat().st_size > 0, "the trace sink keeps its spans in a file"

    assert "Stopped everything the demo started." in output, output
    assert _processes_mentioning(str(logs)) == []
