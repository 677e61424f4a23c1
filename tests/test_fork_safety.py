"""fork() while meshlens's own threads scrape and sample must not leave a child stuck on a lock.

Celery's prefork pool, multiprocessing and subprocess-heavy services fork at any time,
including while a scrape of /metrics or the runtime sampler holds a metric's lock.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import base_env, free_port

FORKS = 150

PROGRAM = f"""
import os, signal, sys, threading, time, urllib.request
import meshlens
runtime = meshlens.configure()
from meshlens import catalogue
histogram = runtime.instruments[catalogue.HTTP_SERVER_REQUEST_DURATION]
port = runtime.metrics_server.port
stop = False

def scrape():
    while not stop:
        urllib.request.urlopen(f"http://127.0.0.1:{{port}}/metrics").read()

threads = [threading.Thread(target=scrape, daemon=True) for _ in range(2)]
for thread in threads:
    thread.start()
stuck = 0
for number in range({FORKS}):
    pid = os.fork()
    if pid == 0:
        # The child's first updates: a new label set, a known one, the runtime sample.
        signal.alarm(5)
        histogram.observe(("GET", f"/child/{{number}}", "200"), 0.01, 1, 1)
        histogram.observe(("GET", "/known", "200"), 0.01)
        runtime.runtime_metrics.sample()
        os._exit(0)
    histogram.observe(("GET", "/known", "200"), 0.01)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        stuck += 1
stop = True
print("stuck", stuck)
"""


@pytest.mark.parametrize("multiprocess", [False, True], ids=["single-process", "pre-fork-group"])
def test_children_forked_during_scrapes_never_hang(multiprocess, tmp_path):
    extra = {"MESHLENS_MULTIPROC_DIR": str(tmp_path)} if multiprocess else {}
    env = base_env(None, free_port(), OTEL_TRACES_EXPORTER="none", **extra)
    result = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stuck", "0"], result.stdout + result.stderr
