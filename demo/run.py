"""`make demo`: the whole stack, live, on one machine, with no network and no Kubernetes.

Four services, each changed by one import line: a storefront BFF (FastAPI on uvicorn,
2 workers) calls orders (Flask on gunicorn, 2 workers; PostgreSQL when reachable, else
SQLite), which asks pricing (an old service traced with jaeger-client) for the price and
publishes the order to Kafka (librdkafka's mock cluster); payments consumes it (Redis
when reachable). A real Prometheus scrapes them with the generated rules, Alertmanager
delivers to a local webhook, and a local OTLP sink stands in for Jaeger.

The demo drives traffic, injects a fault into payments (slow, failing payment provider)
until the SLO burn-rate alerts fire and reach Alertmanager, then prints the trace of one
checkout across every service and the Kafka hop, the RED summary from Prometheus with
the dashboards' own queries, the exemplar behind a slow bucket, and the alerts. It
evaluates every query of every generated dashboard and exits non-zero when one that
can run here returns no data, then builds and lints the Helm bundle. Everything it
starts is stopped at the end, on Ctrl-C too.

    python demo/run.py            # the full demo (about three minutes)
    python demo/run.py --short    # the quick version `make test` runs (alerts pending, not firing)
"""

from __future__ import annotations

import argparse
import itertools
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from demo import report  # noqa: E402
from demo.otlp_sink import OtlpSink  # noqa: E402
from demo.ports import free_port  # noqa: E402
from demo.stack import (  # noqa: E402
    Prometheus,
    Stack,
    Target,
    Webhook,
    alertmanager_config,
    http,
    prometheus_config,
    tool,
)

APPS = HERE / "apps"
DASHBOARDS = ROOT / "helm" / "meshlens" / "files" / "dashboards"
RULES = ROOT / "helm" / "meshlens" / "files" / "rules"
SERVICES = ("storefront", "orders", "pricing", "payments")
FAULTY = "payments"
# The burn-rate alerts that page, as alerts/slos.yaml declares them.
BURN_ALERTS = tuple(alert["alert"] for alert in yaml.safe_load((ROOT / "alerts" / "slos.yaml").read_text())
                    ["burn_rate_alerts"] if alert.get("severity") == "page")
POSTGRES_PORT, REDIS_PORT = 5432, 6379


def kafka_mock_cluster() -> tuple[object, str]:
    """librdkafka's mock cluster lives in a client of this process; its broker listens on
    loopback and the services connect to it as to any Kafka."""
    from confluent_kafka import Producer

    holder = Producer({"test.mock.num.brokers": 1, "log_level": 3})
    brokers = holder.list_topics(timeout=10).brokers.values()
    return holder, ",".join(f"{broker.host}:{broker.port}" for broker in brokers)


ORDERS_TABLE = ("CREATE TABLE demo_orders (id {id} PRIMARY KEY, idempotency_key TEXT UNIQUE, product INTEGER, "
                "price INTEGER)")


def reachable(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def prepare_database(logs: Path) -> str:
    """A fresh orders table: in the local PostgreSQL when one answers, else in SQLite."""
    if reachable(POSTGRES_PORT):
        try:
            import psycopg

            with psycopg.connect(f"postgresql://postgres@127.0.0.1:{POSTGRES_PORT}/test", connect_timeout=2) as db:
                db.execute("DROP TABLE IF EXISTS demo_orders")
                db.execute(ORDERS_TABLE.format(id="SERIAL"))
            return f"postgresql+psycopg://postgres@127.0.0.1:{POSTGRES_PORT}/test"
        except Exception as exc:
            print(f"  PostgreSQL answers but cannot be used ({exc}); orders uses SQLite")
    path = logs / "orders.db"
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.execute(ORDERS_TABLE.format(id="INTEGER"))
    return f"sqlite:///{path}"


class Traffic:
    """Checkouts at a steady rate from a few threads; counts the responses."""

    def __init__(self, url: str, rate: float, threads: int = 3) -> None:
        self.url, self.rate, self.threads = url, rate, threads
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _run(self) -> None:
        interval = self.threads / self.rate
        while not self._stop.is_set():
            started = time.monotonic()
            with self._lock:
                number = next(self._numbers)
            try:
                status, _ = http(f"{self.url}/checkout/{number}", data=b"{}", timeout=10)
            except OSError:
                status = 0
            with self._lock:
                self.statuses[status] += 1
            self._stop.wait(max(0.0, interval - (time.monotonic() - started)))

    def start(self) -> Traffic:
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"traffic-{index}", daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(15)

    def sent(self) -> int:
        with self._lock:
            return sum(self.statuses.values())


_last_line = [0.0]


def progress(label: str, fraction: float, detail: str) -> None:
    """A bar redrawn in place on a terminal; a line every 10 s in a log."""
    done = int(30 * min(1.0, fraction))
    line = f"  {label:<14} [{'#' * done}{'.' * (30 - done)}] {detail:<48}"
    if sys.stdout.isatty():
        print(f"\r{line}", end="", flush=True)
    elif time.monotonic() - _last_line[0] >= 10:
        _last_line[0] = time.monotonic()
        print(line.rstrip(), flush=True)


def start_services(stack: Stack, sink: OtlpSink, bootstrap: str, fault_file: Path, database: str,
                   short: bool) -> tuple[list[Target], str]:
    """Starts the four services; returns their scrape targets and the storefront's URL."""
    bin_dir = Path(sys.executable).parent
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MESHLENS_", "PROMETHEUS_"))}
    base.update({"OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "500",
                 "MESHLENS_METRICS_HOST": "127.0.0.1", "PYTHONUNBUFFERED": "1", "KAFKA_BOOTSTRAP": bootstrap,
                 "OTEL_RESOURCE_ATTRIBUTES": "k8s.namespace.name=demo", "PAYMENTS_FAULT_FILE": str(fault_file),
                 "ORDERS_DATABASE_URL": database, "REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0",
                 # --short runs seconds, not minutes: lost products come often enough to be seen.
                 "ORDERS_LOST_EVERY": "97" if short else "307"})
    ports = {name: (free_port(), free_port()) for name in SERVICES}

    def env(name: str, **extra: str) -> dict[str, str]:
        return {**base, "OTEL_SERVICE_NAME": name, "MESHLENS_METRICS_PORT": str(ports[name][1]), **extra}

    pricing = stack.start("pricing", [sys.executable, "pricing.py"], env("pricing", PORT=str(ports["pricing"][0])),
                          cwd=APPS)
    orders = stack.start("orders", [str(bin_dir / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{ports['orders'][0]}",
                                    "orders:app"],
                         env("orders", PRICING_URL=f"http://127.0.0.1:{ports['pricing'][0]}"), cwd=APPS)
    storefront = stack.start("storefront", [str(bin_dir / "uvicorn"), "--workers", "2", "--host", "127.0.0.1",
                                            "--port", str(ports["storefront"][0]), "--log-level", "warning",
                                            "storefront:app"],
                             env("storefront", ORDERS_URL=f"http://127.0.0.1:{ports['orders'][0]}"), cwd=APPS)
    payments = stack.start("payments", [sys.executable, "payments.py"], env("payments"), cwd=APPS)
    for process, name in ((pricing, "pricing"), (orders, "orders"), (storefront, "storefront")):
        stack.wait_ready(process, f"http://127.0.0.1:{ports[name][0]}/health")
    stack.wait_ready(payments, f"http://127.0.0.1:{ports['payments'][1]}/metrics")
    return [Target(name, ports[name][1]) for name in SERVICES], f"http://127.0.0.1:{ports['storefront'][0]}"


def start_monitoring(stack: Stack, targets: list[Target], webhook: Webhook) -> Prometheus:
    alertmanager_port, prometheus_port = free_port(), free_port()
    (stack.logs / "alertmanager.yml").write_text(alertmanager_config(webhook.url))
    alertmanager = stack.start("alertmanager", [
        tool("prometheus-alertmanager"), f"--config.file={stack.logs / 'alertmanager.yml'}",
        f"--storage.path={stack.logs / 'alertmanager-data'}", f"--web.listen-address=127.0.0.1:{alertmanager_port}",
        "--cluster.listen-address=",
    ])
    (stack.logs / "prometheus.yml").write_text(
        prometheus_config(targets, sorted(RULES.glob("*.yaml")), alertmanager_port))
    prometheus = stack.start("prometheus", [
        tool("prometheus"), f"--config.file={stack.logs / 'prometheus.yml'}",
        f"--storage.tsdb.path={stack.logs / 'prometheus-data'}", f"--web.listen-address=127.0.0.1:{prometheus_port}",
        "--enable-feature=exemplar-storage",
    ])
    stack.wait_ready(alertmanager, f"http://127.0.0.1:{alertmanager_port}/-/ready")
    stack.wait_ready(prometheus, f"http://127.0.0.1:{prometheus_port}/-/ready")
    return Prometheus(prometheus_port)


def drive(traffic: Traffic, prometheus: Prometheus, webhook: Webhook, fault_file: Path, short: bool) -> list[str]:
    """Normal traffic, then the fault until the burn-rate alert fires and is delivered
    (pending is enough for --short). Returns the alerts delivered to the webhook."""
    warmup = 10 if short else 20
    # The fault runs at least this long, so that its failures are in the dashboards' windows.
    least = 15
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < warmup:
        progress("normal traffic", elapsed / warmup, f"{traffic.sent()} checkouts")
        time.sleep(0.5)
    if sys.stdout.isatty():
        print()
    fault_file.touch()
    limit = 45 if short else 210
    wanted = "pending" if short else "delivered"
    started = time.monotonic()
    state = "none"
    while (elapsed := time.monotonic() - started) < limit:
        states = {a["state"] for a in prometheus.alerts()
                  if a["labels"].get("alertname") in BURN_ALERTS and a["labels"].get("service") == FAULTY}
        delivered = [a for a in webhook.received() if a["labels"].get("service") == FAULTY]
        state = "delivered" if delivered else "firing" if "firing" in states else \
            "pending" if "pending" in states else "none"
        progress("payments fault", elapsed / limit, f"{traffic.sent()} checkouts, burn-rate alert: {state}")
        if elapsed >= least and (state == wanted or (short and state in ("firing", "delivered"))):
            break
        time.sleep(1)
    if sys.stdout.isatty():
        print()
    fault_file.unlink(missing_ok=True)
    if state == "none" or (not short and state != "delivered"):
        raise SystemExit(f"the burn-rate alert for {FAULTY} did not reach {wanted!r} within {limit} s (got {state!r})")
    return [f"{a['labels'].get('alertname')} {a['labels'].get('service')} ({a['labels'].get('slo', '')}, "
            f"{a['labels'].get('severity', '')})" for a in webhook.received()]


def show_trace(sink: OtlpSink) -> None:
    """A checkout that made it through the Kafka hop to payments."""
    def complete(spans: list) -> bool:  # type: ignore[type-arg]
        services = {}
        for span in spans:
            services.setdefault(span.trace_id, set()).add(span.service)
        return any(set(SERVICES) <= found for found in services.values())

    spans = sink.wait_for(complete, timeout=30)
    by_trace: dict[str, set[str]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, set()).add(span.service)
    trace_id = next(t for t, found in by_trace.items() if set(SERVICES) <= found)
    print(f"\nOne checkout across every service and the Kafka hop (trace {trace_id}):")
    print("\n".join(report.waterfall(spans, trace_id)))


def show_exemplar(prometheus: Prometheus, sink: OtlpSink) -> None:
    found = prometheus.exemplars('http_server_request_duration_seconds_bucket{service="storefront"}')
    best = None
    for series in found:
        for exemplar in series.get("exemplars", []):
            value = float(exemplar["value"])
            if best is None or value > best[0]:
                best = (value, series["seriesLabels"].get("le", "?"), exemplar["labels"].get("trace_id", ""))
    if best is None:
        raise SystemExit("Prometheus holds no exemplar for storefront's latency histogram")
    value, le, trace_id = best
    stored = bool(sink.trace(trace_id))
    print(f"\nExemplar: storefront's latency bucket le={le} holds a {value * 1000:.0f} ms checkout, trace {trace_id} "
          f"({'in the trace sink' if stored else 'NOT in the trace sink'}):")
    print("\n".join(report.waterfall(sink.snapshot(), trace_id)))


def build_and_lint_bundle() -> None:
    bin_dir = Path(sys.executable).parent
    build = subprocess.run([str(bin_dir / "meshlens"), "build", "--check"], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    if build.returncode != 0:
        raise SystemExit(f"meshlens build --check failed:\n{build.stdout}{build.stderr}")
    helm = ROOT / ".cache" / "tools" / "helm4" / "helm"
    lint = subprocess.run([str(helm), "lint", "--strict", str(ROOT / "helm" / "meshlens")], capture_output=True,
                          text=True, check=False)
    if lint.returncode != 0:
        raise SystemExit(f"helm lint failed:\n{lint.stdout}{lint.stderr}")
    print("\nHelm bundle: `meshlens build --check` up to date (dashboards, rules, rule tests, collector), "
          f"`helm lint --strict` passed ({lint.stdout.strip().splitlines()[-1]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="the quick version that `make test` runs")
    args = parser.parse_args(argv)
    logs = Path(os.environ.get("DEMO_LOGS", "/tmp/meshlens-demo"))
    logs.mkdir(parents=True, exist_ok=True)
    for leftover in ("spans.jsonl", "orders.db"):
        (logs / leftover).unlink(missing_ok=True)
    began = time.monotonic()
    sink = OtlpSink(store_to=logs / "spans.jsonl").start()
    webhook = Webhook()
    stack = Stack(logs)
    fault_file = logs / "payments.fault"
    fault_file.unlink(missing_ok=True)
    traffic = None
    try:
        _cluster, bootstrap = kafka_mock_cluster()
        print(f"meshlens demo: logs and the trace sink's file in {logs}/ (the sink is for local use only)")
        print(f"  Kafka mock cluster on {bootstrap}; starting {', '.join(SERVICES)}, Prometheus and Alertmanager")
        database = prepare_database(logs)
        print(f"  orders' database: {database.split('://')[0]}; Redis for payments: "
              f"{'yes' if reachable(REDIS_PORT) else 'no (kept in memory)'}")
        targets, storefront_url = start_services(stack, sink, bootstrap, fault_file, database, args.short)
        prometheus = start_monitoring(stack, targets, webhook)
        traffic = Traffic(storefront_url, rate=15 if args.short else 25).start()
        delivered = drive(traffic, prometheus, webhook, fault_file, args.short)
        traffic.stop()
        print(f"  responses: {', '.join(f'{code}: {count}' for code, count in sorted(traffic.statuses.items()))}")

        show_trace(sink)
        print("\nRED per service and route over the last minute, from Prometheus, with the queries of the "
              "Service overview dashboard's table:")
        print("\n".join(report.red_lines(prometheus, DASHBOARDS)))
        show_exemplar(prometheus, sink)
        alerts = [a for a in prometheus.alerts() if a["state"] in ("pending", "firing")]
        print("\nAlerts in Prometheus:")
        for alert in sorted(alerts, key=lambda a: (a["labels"].get("alertname", ""), a["labels"].get("service", ""))):
            labels = alert["labels"]
            print(f"  {alert['state']:<8} {labels.get('alertname')} service={labels.get('service', '')} "
                  f"{labels.get('slo', '')}")
        print("Delivered by Alertmanager to the webhook:")
        print("\n".join(f"  {line}" for line in delivered) or "  (none yet: --short stops at pending)")

        unused = {"rpc_client_": "no demo service makes gRPC calls", "rpc_server_": "no demo service serves gRPC",
                  "temporal_": "no demo service runs Temporal"}
        if not database.startswith("postgresql"):
            unused['db_system_name="postgresql"'] = "no PostgreSQL on this machine (orders used SQLite)"
        if not reachable(REDIS_PORT):
            unused['db_system_name="redis"'] = "no Redis on this machine"
        results = report.evaluate_dashboards(prometheus, DASHBOARDS, unused)
        print("\nEvery query of every generated dashboard, against the live Prometheus:")
        print("\n".join(report.dashboard_lines(results)))
        build_and_lint_bundle()
        empty = [r for r in results if r.empty]
        if empty:
            print(f"\n{len(empty)} dashboard queries returned no data")
            return 1
        print(f"\nDone in {time.monotonic() - began:.0f} s.")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        if traffic is not None:
            traffic.stop()
        fault_file.unlink(missing_ok=True)
        killed = stack.stop()
        webhook.stop()
        sink.stop()
        print("Stopped everything the demo started" + (f" (had to kill {', '.join(killed)})." if killed else "."))


if __name__ == "__main__":
    raise SystemExit(main())
