"""The demo's moving parts: service processes, Prometheus, Alertmanager and its webhook.

Everything listens on 127.0.0.1 on ports picked at start, runs in its own process
group, and is stopped by :class:`Stack` on exit, Ctrl-C included: the demo leaves no
process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

# Prometheus scrapes every second, so that a demo of a few minutes has enough points
# for the dashboards' rate() windows and for the burn-rate alerts' `for:` clauses.
SCRAPE_INTERVAL = "1s"
NAMESPACE = "demo"




def http(url: str, data: bytes | None = None, accept: str = "", timeout: float = 10) -> tuple[int, str]:
    headers = {"Accept": accept} if accept else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: `make tools` installs it (apt)")
    return found


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """Starts processes and stops them all, in reverse order, whatever happens."""

    logs: Path
    processes: list[Process] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Process:
        log = self.logs / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def wait_ready(self, process: Process, url: str, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise SystemExit(f"{process.name} exited during start-up (code {process.popen.returncode}):\n"
                                 f"{process.tail()}")
            with contextlib.suppress(OSError):
                if http(url, timeout=2)[0] == 200:
                    return
            time.sleep(0.2)
        raise SystemExit(f"{process.name} did not answer {url} within {timeout:.0f} s:\n{process.tail()}")

    def stop(self) -> list[str]:
        """Stops every process group (SIGTERM, then SIGKILL after 15 s); names what had to be killed."""
        killed = []
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.popen.wait(15)
            except subprocess.TimeoutExpired:
                killed.append(process.name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)  # also any child left in the group
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(5)
        return killed


@dataclass(frozen=True)
class Target:
    service: str
    metrics_port: int


def prometheus_config(targets: list[Target], rule_files: list[Path], alertmanager_port: int) -> str:
    """One job per service, labelled as the Prometheus Operator labels a pod's series."""
    return yaml.safe_dump({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(path) for path in rule_files],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": [
            {
                "job_name": target.service,
                "static_configs": [{
                    "targets": [f"127.0.0.1:{target.metrics_port}"],
                    "labels": {"service": target.service, "namespace": NAMESPACE, "pod": f"{target.service}-0",
                               "container": target.service},
                }],
            }
            for target in targets
        ],
    }, sort_keys=False)


def alertmanager_config(webhook_url: str) -> str:
    return yaml.safe_dump({
        "route": {"receiver": "demo-webhook", "group_by": ["alertname", "service"], "group_wait": "1s",
                  "group_interval": "5s", "repeat_interval": "1h"},
        "receivers": [{"name": "demo-webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": False}]}],
    }, sort_keys=False)


class Webhook:
    """What Alertmanager delivered: the notifications an on-call engineer would get."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with webhook._lock:
                    webhook.alerts.extend(body.get("alerts", []))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/alerts"
        threading.Thread(target=self._server.serve_forever, name="demo-webhook", daemon=True).start()

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.alerts)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Prometheus:
    """The HTTP API of the demo's Prometheus."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def _api(self, path: str, **params: str) -> Any:
        status, body = http(f"{self.url}{path}?{urllib.parse.urlencode(params)}")
        if status != 200:
            raise RuntimeError(f"Prometheus {path} answered {status}: {body[:300]}")
        return json.loads(body)["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self._api("/api/v1/query", query=expr)["result"])

    def exemplars(self, expr: str, seconds: float = 600) -> list[dict[str, Any]]:
        now = time.time()
        return list(self._api("/api/v1/query_exemplars", query=expr, start=str(now - seconds), end=str(now)))

    def alerts(self) -> list[dict[str, Any]]:
        return list(self._api("/api/v1/alerts")["alerts"])

    def targets_up(self) -> int:
        return sum(t["health"] == "up" for t in self._api("/api/v1/targets")["activeTargets"])
