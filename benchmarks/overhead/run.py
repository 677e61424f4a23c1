"""Overhead benchmark: what ``import meshlens.auto`` costs a hello-world service per request.

    python benchmarks/overhead/run.py [--rounds 5] [--duration 10] [--flavours flask,fastapi]

Each flavour (Flask on gunicorn with one sync worker, FastAPI on one uvicorn process)
runs in each configuration: uninstrumented, meshlens at 100% and 10% sampling,
stock ``opentelemetry-instrument``, and meshlens with its collector down. Runs are
interleaved (every round runs every configuration, in a rotated order) so that a
slow minute of a busy machine spreads over all of them, and the medians of the
rounds are reported. See README.md for the method and how to read the table.

Every run is checked before its numbers count: the route answers 200, wrk saw no
error status, meshlens (and only where expected) serves /metrics and counted the
requests, and spans (and the stock agent's metrics) reached the local OTLP sink.
A broken setup stops the benchmark with exit code 1; missed targets do not.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import procs
import report
from loadgen import WrkResult, run_wrk, wrk_binary
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
ROOT = HERE.parent.parent
BIN = Path(sys.executable).parent
IMPORT_LINE = "import meshlens.auto"
REQUESTS_METRIC = "http_server_request_duration_seconds_count"
SINK_DELAY_S = 2.0  # how long the "slow" collector takes to answer each export


class BenchmarkError(RuntimeError):
    """The setup is broken: the numbers would not mean what the table says."""


# -- what runs -------------------------------------------------------------------


@dataclass(frozen=True)
class Flavour:
    name: str
    server: str
    stop_signal: int
    """What stops the server gracefully *and* runs atexit, where telemetry SDKs flush."""

    def argv(self, module: str, port: int) -> list[str]:
        if self.name == "flask":
            # One sync worker: one request at a time, so 1/throughput is the time per request.
            # gunicorn writes no access log by default.
            return [
                str(BIN / "gunicorn"), "--workers", "1", "--worker-class", "sync",
                "--bind", f"127.0.0.1:{port}", "--log-level", "warning", f"{module}:app",
            ]  # fmt: skip
        # One uvicorn process (uvloop and httptools when installed, as in production).
        # No access log: its per-request log line would cost more than the app itself.
        return [
            str(BIN / "uvicorn"), f"{module}:app", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip


FLAVOURS = {
    "flask": Flavour("flask", "gunicorn, 1 sync worker", signal.SIGTERM),
    # uvicorn re-raises the signal that stopped it with the handler it found: after
    # SIGTERM the process dies before atexit, and the stock agent never flushes (meshlens
    # installs its own SIGTERM handler). After SIGINT, atexit runs for both.
    "fastapi": Flavour("fastapi", "uvicorn, 1 process", signal.SIGINT),
}


@dataclass(frozen=True)
class Config:
    name: str
    meshlens: bool
    """The app with the import line (else the plain twin)."""
    otel_instrument: bool = False
    """Started under the stock ``opentelemetry-instrument`` agent."""
    collector: str = "none"
    """Where OTLP goes: ``none`` (no telemetry), ``up``, ``down`` (a closed port), ``slow``, ``refuse``."""
    env: Mapping[str, str] = field(default_factory=dict)


_FULL = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.0"}
_TENTH = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
# The stock agent, configured as close to meshlens as it goes: traces and metrics over
# OTLP/HTTP to the same sink, no logs. OTEL_PYTHON_DISTRO/CONFIGURATOR pick the stock
# distro, because meshlens registers an entry point for both as well.
_STOCK = {
    **_FULL,
    "OTEL_PYTHON_DISTRO": "distro",
    "OTEL_PYTHON_CONFIGURATOR": "configurator",
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_METRICS_EXPORTER": "otlp",
    "OTEL_LOGS_EXPORTER": "none",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
}

CONFIGS = {
    config.name: config
    for config in (
        Config("uninstrumented", meshlens=False),
        Config("meshlens-100", meshlens=True, collector="up", env=_FULL),
        Config("meshlens-10", meshlens=True, collector="up", env=_TENTH),
        Config("otel-instrument", meshlens=False, otel_instrument=True, collector="up", env=_STOCK),
        Config("meshlens-collector-down", meshlens=True, collector="down", env=_FULL),
        # Not run by default (--configs): the other two ways a collector misbehaves.
        Config("meshlens-collector-slow", meshlens=True, collector="slow", env=_FULL),
        Config("meshlens-collector-refusing", meshlens=True, collector="refuse", env=_FULL),
    )
}
DEFAULT_CONFIGS = ("uninstrumented", "meshlens-100", "meshlens-10", "otel-instrument", "meshlens-collector-down")


# -- the environment of a service ---------------------------------------------------


def clean_env() -> dict[str, str]:
    """This process's environment without any telemetry setting: nothing leaks into a run."""
    dropped = ("OTEL_", "MESHLENS_", "PROMETHEUS_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env.pop("PYTHONPATH", None)
    return env


def service_env(flavour: Flavour, config: Config, endpoint: str | None, metrics_port: int) -> dict[str, str]:
    env = clean_env()
    env["PYTHONPATH"] = str(APPS)
    env["PYTHONUNBUFFERED"] = "1"
    # Set in every run, meshlens or not: a fresh port each time, and a tripwire: the
    # port must answer exactly when meshlens is meant to be running.
    env["MESHLENS_METRICS_PORT"] = str(metrics_port)
    env["MESHLENS_METRICS_HOST"] = "127.0.0.1"
    if config.collector != "none":
        assert endpoint is not None
        env["OTEL_SERVICE_NAME"] = f"overhead-{flavour.name}"
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        env.update(config.env)
    return env


def check_apps() -> None:
    """Each meshlens app is its plain twin plus the import line in front, nothing else."""
    for flavour in FLAVOURS:
        plain = (APPS / f"{flavour}_plain.py").read_text().splitlines()
        first, *rest = (APPS / f"{flavour}_meshlens.py").read_text().splitlines()
        if not first.startswith(IMPORT_LINE) or rest != plain:
            raise BenchmarkError(f"apps/{flavour}_meshlens.py must be apps/{flavour}_plain.py plus `{IMPORT_LINE}`")


# -- the OTLP sinks --------------------------------------------------------------------


class Sinks:
    """One sink process per collector behaviour, started when first needed, shared by runs."""

    def __init__(self, log_dir: Path, cpus: list[int] | None) -> None:
        self._log_dir = log_dir
        self._cpus = cpus
        self._ports: dict[str, int] = {}

    def endpoint(self, behaviour: str) -> str | None:
        if behaviour == "none":
            return None
        if behaviour == "down":
            # A port nobody listens on: every export is refused at connect.
            port = procs.free_port()
            return f"http://127.0.0.1:{port}"
        if behaviour not in self._ports:
            self._ports[behaviour] = self._start(behaviour)
        return f"http://127.0.0.1:{self._ports[behaviour]}"

    def _start(self, behaviour: str) -> int:
        port = procs.free_port()
        mode = {"up": "ok", "slow": "slow", "refuse": "refuse"}[behaviour]
        argv = [sys.executable, str(HERE / "sink.py"), "--port", str(port), "--mode", mode]
        argv += ["--delay", str(SINK_DELAY_S)]
        log = self._log_dir / f"sink-{behaviour}.log"
        process = procs.start(procs.pinned(argv, self._cpus), clean_env(), log)
        try:
            procs.wait_http(f"http://127.0.0.1:{port}/stats", process, timeout_s=20)
        except RuntimeError as exc:
            raise BenchmarkError(f"the OTLP sink did not start: {exc}\n{procs.tail(log)}") from None
        return port

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """The counters of every sink started so far, by endpoint."""
        endpoints = (f"http://127.0.0.1:{port}" for port in self._ports.values())
        return {endpoint: self.stats(endpoint) for endpoint in endpoints}

    @staticmethod
    def stats(endpoint: str) -> dict[str, Any]:
        status, body = procs.http_get(endpoint + "/stats")
        if status != 200:
            raise BenchmarkError(f"the OTLP sink at {endpoint} answered {status} to /stats")
        return json.loads(body)


def sink_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, int]:
    def requests(stats: Mapping[str, Any], path: str) -> int:
        return int(stats["requests"].get(path, 0))

    def sent(stats: Mapping[str, Any]) -> int:
        return sum(int(value) for value in stats["bytes"].values())

    return {
        "trace_requests": requests(after, "/v1/traces") - requests(before, "/v1/traces"),
        "metric_requests": requests(after, "/v1/metrics") - requests(before, "/v1/metrics"),
        "log_requests": requests(after, "/v1/logs") - requests(before, "/v1/logs"),
        "bytes": sent(after) - sent(before),
        "spans": int(after["spans"]) - int(before["spans"]),
        "decode_errors": int(after["decode_errors"]) - int(before["decode_errors"]),
    }


# -- one run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    rounds: int
    duration_s: int
    warmup_s: int
    connections: int
    flavours: tuple[str, ...]
    configs: tuple[str, ...]
    server_cpus: list[int] | None
    load_cpus: list[int] | None
    output_dir: Path


def run_once(flavour: Flavour, config: Config, round_: int, options: Options, sinks: Sinks) -> dict[str, Any]:
    port, metrics_port = procs.free_port(), procs.free_port()
    endpoint = sinks.endpoint(config.collector)
    before = sinks.snapshot()
    module = f"{flavour.name}_{'meshlens' if config.meshlens else 'plain'}"
    argv = flavour.argv(module, port)
    if config.otel_instrument:
        argv = [str(BIN / "opentelemetry-instrument"), *argv]
    log = options.output_dir / "logs" / f"{flavour.name}-{config.name}-r{round_}.log"
    env = service_env(flavour, config, endpoint, metrics_port)
    process = procs.start(procs.pinned(argv, options.server_cpus), env, log, cwd=APPS)
    url = f"http://127.0.0.1:{port}/"
    try:
        _check_answers(url, process, log)
        _check_metrics_endpoint(config, metrics_port, log)
        warmup = run_wrk(url, options.warmup_s, options.connections, options.load_cpus)
        cpu_before = procs.cpu_seconds(process.pid)
        measured = run_wrk(url, options.duration_s, options.connections, options.load_cpus)
        cpu_used = procs.cpu_seconds(process.pid) - cpu_before
        _check_wrk(measured, log)
        counted = _check_counted(config, metrics_port, warmup.requests + measured.requests)
        if config.collector == "down" and endpoint is not None and procs.port_open(int(endpoint.rsplit(":", 1)[1])):
            raise BenchmarkError(f"{endpoint} was meant to be closed but something listens there")
    finally:
        # Graceful: the service flushes its spans (and the stock agent its metrics) on the way out.
        procs.stop(process, flavour.stop_signal)
    sent = warmup.requests + measured.requests + 1
    after = sinks.snapshot()
    deltas = {sink: sink_delta(before[sink], after[sink]) for sink in before}
    delta = deltas.pop(endpoint, None) if endpoint is not None else None
    _check_sink(config, delta, log)
    for sink, stray in deltas.items():  # every other sink must have received nothing
        if stray["trace_requests"] or stray["metric_requests"] or stray["log_requests"]:
            raise BenchmarkError(f"{config.name}: telemetry reached {sink}, which this run does not use: {stray}")
    return {
        "flavour": flavour.name,
        "config": config.name,
        "round": round_,
        "wrk": measured.as_dict(),
        # The service's own CPU time per request (all its processes and threads): unlike
        # 1/throughput, it does not count time the server waited for a CPU the VM lent elsewhere.
        "cpu_us_per_request": cpu_used / measured.requests * 1e6 if measured.requests else None,
        "warmup_requests": warmup.requests,
        "meshlens_counted_requests": counted,
        "sink": delta,
        "spans_per_request": delta["spans"] / sent if delta is not None and config.collector == "up" else None,
    }


def _check_answers(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    try:
        status, body = procs.wait_http(url, process, timeout_s=40)
    except RuntimeError as exc:
        raise BenchmarkError(f"{url} did not answer: {exc}\n{procs.tail(log)}") from None
    if status != 200:
        raise BenchmarkError(f"{url} answered {status}, not 200: {body[:200]!r}\n{procs.tail(log)}")


def _check_metrics_endpoint(config: Config, metrics_port: int, log: Path) -> None:
    """meshlens's /metrics answers in meshlens runs and nowhere else."""
    listening = procs.port_open(metrics_port)
    if config.meshlens and not listening:
        raise BenchmarkError(f"meshlens is not serving /metrics on {metrics_port}: not loaded?\n{procs.tail(log)}")
    if not config.meshlens and listening:
        raise BenchmarkError(f"{config.name}: something serves port {metrics_port}, meshlens loaded by mistake?")


def _check_wrk(result: WrkResult, log: Path) -> None:
    if result.requests == 0:
        raise BenchmarkError(f"wrk completed no request\n{procs.tail(log)}")
    if result.errors["status"]:
        raise BenchmarkError(f"{result.errors['status']} responses were not 2xx/3xx\n{procs.tail(log)}")
    failed = sum(result.errors.values())
    if failed:
        print(f"    warning: wrk socket errors {result.errors}", file=sys.stderr)


def _check_counted(config: Config, metrics_port: int, completed: int) -> int | None:
    """meshlens counted at least every request wrk completed, at every sampling ratio."""
    if not config.meshlens:
        return None
    status, body = procs.http_get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    if status != 200:
        raise BenchmarkError(f"meshlens /metrics answered {status}")
    counted = 0
    for family in text_string_to_metric_families(body.decode()):
        counted += int(sum(sample.value for sample in family.samples if sample.name == REQUESTS_METRIC))
    if counted < completed:
        raise BenchmarkError(f"meshlens counted {counted} requests in {REQUESTS_METRIC}, wrk completed {completed}")
    return counted


def _check_sink(config: Config, delta: Mapping[str, int] | None, log: Path) -> None:
    if delta is None:
        return
    if delta["decode_errors"]:
        raise BenchmarkError(f"the sink could not decode {delta['decode_errors']} trace requests")
    if config.collector in ("slow", "refuse"):
        if not delta["trace_requests"]:
            raise BenchmarkError(f"{config.name}: no export reached the {config.collector} collector")
        return
    if not delta["spans"]:
        raise BenchmarkError(f"{config.name}: no span reached the OTLP sink\n{procs.tail(log)}")
    if config.otel_instrument and not delta["metric_requests"]:
        raise BenchmarkError(f"{config.name}: the stock agent exported no metrics\n{procs.tail(log)}")


# -- the whole benchmark ---------------------------------------------------------------


def rotated(items: Sequence[str], by: int) -> list[str]:
    """Round r starts with the r-th configuration: none always runs first (or right after another)."""
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


def run_all(options: Options) -> list[dict[str, Any]]:
    sinks = Sinks(options.output_dir / "logs", options.load_cpus)
    runs = []
    for round_ in range(1, options.rounds + 1):
        for flavour_name in options.flavours:
            for config_name in rotated(options.configs, round_ - 1):
                flavour, config = FLAVOURS[flavour_name], CONFIGS[config_name]
                run = run_once(flavour, config, round_, options, sinks)
                runs.append(run)
                _progress(run, options.rounds)
    return runs


def _progress(run: Mapping[str, Any], rounds: int) -> None:
    wrk = run["wrk"]
    spans = "" if run["spans_per_request"] is None else f", spans/req {run['spans_per_request']:.2f}"
    print(
        f"  round {run['round']}/{rounds} {run['flavour']:8s} {run['config']:28s}"
        f"{wrk['rps']:9,.0f} req/s  p99 {wrk['latency_us']['p99'] / 1e3:6.2f} ms{spans}",
        file=sys.stderr,
        flush=True,
    )


def _command(argv: Sequence[str]) -> str:
    try:
        completed = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False, cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if completed.returncode != 0:
        return "?"
    lines = (completed.stdout or completed.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


PACKAGES = (
    "meshlens", "opentelemetry-sdk", "opentelemetry-instrumentation", "opentelemetry-distro",
    "prometheus-client", "flask", "gunicorn", "fastapi", "uvicorn",
)  # fmt: skip


def metadata_block(options: Options) -> dict[str, Any]:
    commit = _command(["git", "rev-parse", "--short", "HEAD"])
    dirty = _command(["git", "status", "--porcelain", "--untracked-files=no"]) not in ("", "?")
    pinning = (
        f"server on CPU {options.server_cpus}, wrk and sink on CPU {options.load_cpus}"
        if options.server_cpus
        else "none"
    )
    return {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "commit": commit + ("+dirty" if dirty else ""),
        "machine": {
            "nproc": os.cpu_count(),
            "usable_cpus": sorted(os.sched_getaffinity(0)),
            "cpu": _cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "wrk": _command([wrk_binary(), "-v"]),
            "load_before": _load(),
        },
        "packages": {name: _version(name) for name in PACKAGES},
        "method": {
            "rounds": options.rounds,
            "duration_s": options.duration_s,
            "warmup_s": options.warmup_s,
            "connections": options.connections,
            "flavours": list(options.flavours),
            "configs": list(options.configs),
            "pinning": pinning,
        },
    }


def write_results(meta: dict[str, Any], runs: list[dict[str, Any]], output_dir: Path) -> str:
    meta["machine"]["load_after"] = _load()
    summaries = report.summarise(runs)
    checks = report.check_targets(summaries)
    servers = {name: flavour.server for name, flavour in FLAVOURS.items()}
    text = report.markdown(meta, summaries, checks, servers)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "latest.md").write_text(text)
    raw = {"meta": meta, "summaries": [s.__dict__ for s in summaries], "targets": checks, "runs": runs}
    (output_dir / "latest.json").write_text(json.dumps(raw, indent=2) + "\n")
    return text


# -- command line --------------------------------------------------------------------


def _names(value: str, known: Mapping[str, object], what: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; choose from {', '.join(known)}")
    return names


def cpu_split(pin: bool) -> tuple[list[int] | None, list[int] | None]:
    """The server alone on the last usable CPU; wrk and the sink share the others.

    Pinning keeps wrk from being scheduled onto the server's core, and keeps the
    service's own background threads (span export, /metrics) on its core, where
    they cost request time as they would in a one-CPU container. Without two usable
    CPUs, or without taskset, nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return [cpus[-1]], cpus[:-1]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported (5)")
    parser.add_argument("--duration", type=int, default=10, help="seconds measured per run (10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of discarded load before each run (3)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--flavours", default="flask,fastapi", help=f"comma-separated: {', '.join(FLAVOURS)}")
    parser.add_argument(
        "--configs", default=",".join(DEFAULT_CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and wrk to separate CPUs")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results", help="where latest.md/.json go")
    args = parser.parse_args(argv)
    try:
        flavours = _names(args.flavours, FLAVOURS, "flavour")
        configs = _names(args.configs, CONFIGS, "config")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.rounds < 1 or args.duration < 1 or args.warmup < 1 or args.connections < 1:
        parser.error("--rounds, --duration, --warmup and --connections must be >= 1")
    if report.BASELINE not in configs:
        configs = (report.BASELINE, *configs)  # every overhead is relative to it
    server_cpus, load_cpus = cpu_split(not args.no_pin)
    return Options(
        rounds=args.rounds,
        duration_s=args.duration,
        warmup_s=args.warmup,
        connections=args.connections,
        flavours=flavours,
        configs=configs,
        server_cpus=server_cpus,
        load_cpus=load_cpus,
        output_dir=args.output_dir.resolve(),
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    atexit.register(procs.kill_all)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # finally-blocks then stop every child
    try:
        check_apps()
        wrk_binary()
        meta = metadata_block(options)
        runs = run_all(options)
        text = write_results(meta, runs, options.output_dir)
    except (BenchmarkError, RuntimeError) as exc:  # RuntimeError: wrk or a process failed
        print(f"\nbenchmark setup broken, no results written: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; every process started was stopped", file=sys.stderr)
        return 130
    finally:
        procs.kill_all()
    print(text)
    print(f"written to {options.output_dir / 'latest.md'} and latest.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
