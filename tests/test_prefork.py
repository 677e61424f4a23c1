"""Pre-fork servers over real HTTP on loopback: gunicorn (sync, gthread, uvicorn workers,
--preload), uWSGI (app in the master, with and without its Python fork hooks, and
--lazy-apps), ``uvicorn --workers`` and ``meshlens-run``. One scrape of /metrics is the sum
over all workers, with exemplars, whichever worker answers it; every worker exports its
spans; dead workers' numbers stay counted and their files go; respawned workers never hang."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import base_env, bin_path, families, free_port, http_get, running, sample_value, started_sink

pytestmark = pytest.mark.slow

SERVER_KIND = 2  # OTLP SpanKind SERVER
FLASK_ROUTE = "/items/<int:item_id>"
FASTAPI_ROUTE = "/items/{item_id}"
COUNT = "http_server_request_duration_seconds_count"
HISTOGRAM = "http_server_request_duration_seconds"
N = 200
START_TIMEOUT = 90.0
RESPAWNS = 20
PROMTOOL = "/usr/bin/promtool"
# Instrumentations of libraries the test apps do not use: importing them (sqlalchemy,
# redis, grpc, ...) triples a worker's start-up time, and four workers start at once.
UNUSED_LIBRARIES = ("aiohttp-client,aiohttp-server,asyncpg,celery,django,grpc_aio_client,grpc_aio_server,"
                    "grpc_client,grpc_server,httpx,httpx2,psycopg,psycopg2,redis,requests,sqlalchemy,urllib,urllib3")


sink = pytest.fixture(started_sink)

@pytest.fixture
def groups_dir(tmp_path):
    """TMPDIR of the service: its group folder lands here, apart from other tests'."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def _env(sink, groups_dir: Path, **extra: str) -> dict[str, str]:
    return base_env(sink, free_port(), TMPDIR=str(groups_dir),
                    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=UNUSED_LIBRARIES, **extra)


def _gunicorn(port: int, app: str, *extra: str, workers: int = 4) -> list[str]:
    return [bin_path("gunicorn"), "-w", str(workers), "-b", f"127.0.0.1:{port}", "--no-control-socket",
            "--graceful-timeout", "20", *extra, app]


def _uwsgi(port: int, app: str, *extra: str) -> list[str]:
    return [bin_path("uwsgi"), "--master", "--processes", "4", "--http-socket", f"127.0.0.1:{port}",
            "--module", app, "--need-app", "--die-on-term", "--disable-logging", *extra]


def _drive(service, count: int, first: int = 0, connections: int = 8) -> Counter[int]:
    """``count`` requests over several connections at once; how many each worker pid served."""

    def one(item: int) -> int:
        status, body, _ = http_get(f"{service.url}/items/{item}", timeout=30)
        assert status == 200, body
        return json.loads(body)["pid"]

    with ThreadPoolExecutor(connections) as pool:
        return Counter(pool.map(one, range(first, first + count)))


def _drive_spread(service, count: int) -> tuple[Counter[int], int]:
    """``count`` requests, then more until at least two workers served some: which worker
    the kernel hands a connection is its choice, and when requests are fast one worker can
    take a whole batch. Returns the pids served and how many requests were sent."""
    served = _drive(service, count)
    sent = count
    while len(served) < 2 and sent < 5 * count:
        served += _drive(service, count, first=sent)
        sent += count
    assert len(served) >= 2, f"requests did not spread over workers: {served}"
    return served, sent


def _scrape(service, openmetrics: bool = False, attempts: int = 5) -> str:
    """One scrape; retried when the worker that got the connection was exiting."""
    for attempt in range(attempts):
        try:
            return service.metrics(openmetrics=openmetrics)
        except (OSError, urllib.error.URLError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _count(text: str, route: str) -> float:
    try:
        return sample_value(text, COUNT, http_route=route)
    except AssertionError:
        return 0.0


def _wait_count(service, route: str, expected: int, timeout: float = 30.0) -> None:
    """Until the last requests' spans have ended (a response can reach the client first)."""
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        seen = _count(_scrape(service), route)
        if seen >= expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{route}: count {seen} after {timeout}s, expected {expected}")


def _assert_exact(service, route: str, expected: int, scrapes: int = 8) -> None:
    """Every scrape, whichever worker answers it, has the whole group's count."""
    for _ in range(scrapes):
        text = _scrape(service)
        assert _count(text, route) == expected
        if "shop_items_fetched" in text:  # flask_app's own prometheus-client counter
            assert sample_value(text, "shop_items_fetched_total") == expected


def _server_spans(spans, route: str):
    return [s for s in spans if s.kind == SERVER_KIND and s.attributes.get("http.route") == route]


def _check_spans(sink, route: str, expected: int, served: Counter[int]):
    spans = _server_spans(sink.wait_for(lambda s: len(_server_spans(s, route)) >= expected, timeout=30), route)
    assert len(spans) == expected
    by_pid = Counter(s.resource["process.pid"] for s in spans)
    assert by_pid == served, "every worker exports its own spans, under its own pid"
    return spans


def _check_exemplars(service, sink, route: str) -> None:
    histogram = families(_scrape(service, openmetrics=True), openmetrics=True)[HISTOGRAM]
    exemplars = [s.exemplar for s in histogram.samples if s.exemplar and s.labels.get("http_route") == route]
    assert exemplars, "the merged buckets carry exemplars"
    # Each exemplar's trace is exported: the last requests' spans may still be in the
    # 200 ms export schedule, so wait for them rather than read the sink at once.
    linked = {e.labels["trace_id"] for e in exemplars}
    sink.wait_for(lambda spans: linked <= {s.trace_id for s in spans}, timeout=15)


def _promtool(text: str) -> str:
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False,
                            timeout=30)
    report = result.stdout + result.stderr
    assert "error" not in report.lower(), report
    return report


def _wait_workers(service, expected: int, timeout: float = 60.0) -> None:
    """Until ``expected`` processes report: each one's runtime sampler sets its
    meshlens_process_workers to 1 as it starts (in a forked worker, after the fork)."""
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        text = _scrape(service)
        seen = sample_value(text, "meshlens_process_workers") if "meshlens_process_workers" in text else 0
        if seen >= expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{seen} processes report after {timeout}s, expected {expected}")


def _check_group(service, sink, route: str, count: int = N, master: bool = False) -> Counter[int]:
    """``master``: the master reports too (meshlens was set up in it, and its threads run there)."""
    _wait_workers(service, 4 + master)
    served, count = _drive_spread(service, count)
    _wait_count(service, route, count)
    _assert_exact(service, route, count)
    _check_spans(sink, route, count, served)
    _check_exemplars(service, sink, route)
    _promtool(_scrape(service))
    return served


def _group_folder(groups_dir: Path) -> Path:
    folders = list(groups_dir.glob("meshlens-metrics-*"))
    assert len(folders) == 1, folders
    return folders[0]


PID_FILE = re.compile(r"^.+_(\d+)\.(db|exemplars|serving)$")


def _pid_files(folder: Path, pid: int) -> list[str]:
    return [name for name in os.listdir(folder) if (match := PID_FILE.match(name)) and int(match[1]) == pid]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return _stat(pid)[0] != "Z"


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first, start time at 19)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


# --- gunicorn, uWSGI, uvicorn -------------------------------------------------------

GUNICORN = {
    "sync": ("flask_app:app", FLASK_ROUTE, ()),
    "gthread": ("flask_app:app", FLASK_ROUTE, ("-k", "gthread", "--threads", "4")),
    "uvicorn-worker": ("fastapi_app:app", FASTAPI_ROUTE, ("-k", "uvicorn.workers.UvicornWorker")),
    "preload": ("flask_app:app", FLASK_ROUTE, ("--preload",)),
}


@pytest.mark.parametrize("kind", list(GUNICORN))
def test_gunicorn_scrape_is_the_sum_over_workers(kind, sink, groups_dir, tmp_path):
    app, route, extra = GUNICORN[kind]
    port = free_port()
    with running(_gunicorn(port, app, *extra), port, _env(sink, groups_dir), tmp_path / "service.log",
                 timeout=START_TIMEOUT) as service:
        _check_group(service, sink, route, master=kind == "preload")
        text = _scrape(service)
        assert sample_value(text, "meshlens_info", multiprocess="gunicorn") == 1
        assert "cannot serve /metrics" not in service.log()
    if kind == "preload":  # the master, the group's leader, removes the folder as it exits
        assert not list(groups_dir.glob("meshlens-metrics-*"))


# uWSGI's modes: its arguments, and whether its master reports into /metrics.
UWSGI_MODES = {
    # The app is loaded in the master, which forks the workers without taking the GIL:
    # meshlens runs no thread there (a thread holding the GIL at a fork hangs the new worker),
    # each worker starts its own.
    "app-in-master": ((), False),
    # uWSGI takes the GIL and runs Python's fork handlers around each fork: the master serves
    # /metrics and exports its spans, as gunicorn's does with --preload.
    "fork-hooks": (("--py-call-uwsgi-fork-hooks",), True),
    "lazy-apps": (("--lazy-apps",), False),
}
FORK_HOOKS_ADVICE = "Start uWSGI with --py-call-uwsgi-fork-hooks"


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.parametrize("mode", list(UWSGI_MODES))
def test_uwsgi_scrape_is_the_sum_over_workers(mode, sink, groups_dir, tmp_path):
    port = free_port()
    extra, master_reports = UWSGI_MODES[mode]
    with running(_uwsgi(port, "flask_app:app", *extra), port, _env(sink, groups_dir),
                 tmp_path / "service.log", timeout=START_TIMEOUT) as service:
        _check_group(service, sink, FLASK_ROUTE, master=master_reports)
        log = service.log()
        assert "uWSGI runs without Python threads" not in log
        assert log.count(FORK_HOOKS_ADVICE) == (mode == "app-in-master"), log
        if mode == "app-in-master":
            assert _threads(service.process.pid) == 1, "meshlens started a thread in the uWSGI master"


def _oldest(pids: list[int]) -> int:
    return min(pids, key=lambda pid: int(_stat(pid)[19]))


@pytest.mark.parametrize("server", ["uwsgi-app-in-master", "uwsgi-fork-hooks", "gunicorn-preload"])
def test_workers_respawned_while_the_master_is_scraped_all_come_up(server, sink, groups_dir, tmp_path):
    """Workers killed one after another while /metrics is scraped without pause: each new
    one serves and reports, and scrapes go on. What this guards against, both seen before:
    uWSGI forks from C code without taking the GIL, so a thread of the master holding it at
    that moment left the new worker waiting for it forever; and a worker forked while a
    scrape in the master held the group's file lock kept that lock for its whole life, and
    every later scrape waited for it."""
    port = free_port()
    if server == "gunicorn-preload":
        argv, master_reports = _gunicorn(port, "flask_app:app", "--preload"), True
    else:
        extra, master_reports = UWSGI_MODES[server.removeprefix("uwsgi-")]
        argv = _uwsgi(port, "flask_app:app", *extra)
    with running(argv, port, _env(sink, groups_dir), tmp_path / "service.log", timeout=START_TIMEOUT) as service:
        _wait_workers(service, 4 + master_reports)
        master = service.process.pid
        stop = threading.Event()
        scrapes = Counter[str]()

        def scrape_without_pause() -> None:
            while not stop.is_set():
                try:
                    service.metrics()
                    scrapes["answered"] += 1
                except (OSError, urllib.error.URLError):
                    scrapes["failed"] += 1
                    time.sleep(0.01)

        scrapers = [threading.Thread(target=scrape_without_pause) for _ in range(3)]
        for scraper in scrapers:
            scraper.start()
        try:
            for _ in range(RESPAWNS):
                victim = _oldest(_children(master))
                os.kill(victim, signal.SIGKILL)
                deadline = time.monotonic() + 30
                while (victim in (workers := _children(master)) or len(workers) < 4) and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert victim not in workers and len(workers) == 4, workers
        finally:
            stop.set()
            for scraper in scrapers:
                scraper.join(timeout=30)
        assert scrapes["answered"] > RESPAWNS, scrapes
        # A worker that hangs after the fork never runs Python again: it never reports.
        _wait_workers(service, 4 + master_reports, timeout=30.0)
        assert _drive(service, 40)


def test_uvicorn_workers_scrape_is_the_sum_over_workers(sink, groups_dir, tmp_path):
    port = free_port()
    argv = [bin_path("uvicorn"), "--workers", "4", "--host", "127.0.0.1", "--port", str(port), "fastapi_app:app"]
    with running(argv, port, _env(sink, groups_dir), tmp_path / "service.log", timeout=START_TIMEOUT) as service:
        _check_group(service, sink, FASTAPI_ROUTE)


@pytest.mark.parametrize("server", ["gunicorn", "uwsgi"])
def test_meshlens_run_with_a_plain_app(server, sink, groups_dir, tmp_path):
    """No import line: the master configures meshlens at start-up, then forks the workers."""
    port = free_port()
    command = _gunicorn(port, "plain_app:app") if server == "gunicorn" else _uwsgi(port, "plain_app:app")
    argv = [bin_path("meshlens-run"), *command]
    with running(argv, port, _env(sink, groups_dir), tmp_path / "service.log", timeout=START_TIMEOUT) as service:
        # meshlens-run starts uWSGI with its Python fork hooks: the master reports too.
        served = _check_group(service, sink, FLASK_ROUTE, master=True)
        assert service.process.pid not in served
        assert _group_folder(groups_dir).name.split("-")[-2] == str(service.process.pid)
    if server == "gunicorn":
        assert not list(groups_dir.glob("meshlens-metrics-*"))


# --- dead workers -----------------------------------------------------------------


def test_recycled_and_killed_workers_stay_counted_and_their_files_go(sink, groups_dir, tmp_path):
    port = free_port()
    count = 120
    argv = _gunicorn(port, "flask_app:app", "--max-requests", "20", "--max-requests-jitter", "4")
    with running(argv, port, _env(sink, groups_dir), tmp_path / "service.log", timeout=START_TIMEOUT) as service:
        _wait_workers(service, 4)
        served = _drive(service, count)
        assert len(served) >= 6, f"workers are recycled every 20-24 requests: {served}"
        _wait_count(service, FLASK_ROUTE, count)
        _assert_exact(service, FLASK_ROUTE, count)
        # Each recycled worker flushed its spans on the way out.
        _check_spans(sink, FLASK_ROUTE, count, served)

        # A worker killed outright: gunicorn starts another, the dead one's numbers stay.
        folder = _group_folder(groups_dir)
        victim = next(pid for pid in served if _alive(pid))
        assert _pid_files(folder, victim)
        os.kill(victim, signal.SIGKILL)
        _drive(service, 40, first=count)
        _wait_count(service, FLASK_ROUTE, count + 40)
        _assert_exact(service, FLASK_ROUTE, count + 40)
        _check_exemplars(service, sink, FLASK_ROUTE)

        # After a scrape, only live processes have files: the folder does not grow.
        _scrape(service)
        names = os.listdir(folder)
        pids = {int(match[1]) for match in map(PID_FILE.match, names) if match}
        assert all(_alive(pid) for pid in pids), (pids, names)
        assert victim not in pids
        assert not [name for name in names if ".reaping-" in name]
        assert {"counter_archive.db", "histogram_archive.db", "exemplars_archive.exemplars"} <= set(names)
        assert len(pids) <= 4 and len(names) <= 4 * 8 + 10, names
        _promtool(_scrape(service))


# --- graceful stop ----------------------------------------------------------------


def test_sigterm_to_the_master_flushes_every_workers_buffered_spans(sink, groups_dir, tmp_path):
    port = free_port()
    # A long schedule delay and batches larger than the load: nothing is exported before the stop.
    env = _env(sink, groups_dir, OTEL_BSP_SCHEDULE_DELAY="600000", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2048")  # nothing leaves before the stop
    count = 100
    with running(_gunicorn(port, "flask_app:app"), port, env, tmp_path / "service.log",
                 timeout=START_TIMEOUT) as service:
        _wait_workers(service, 4)
        served, count = _drive_spread(service, count)
        _wait_count(service, FLASK_ROUTE, count)
        assert not _server_spans(sink.snapshot(), FLASK_ROUTE)
        returncode = service.stop(signal.SIGTERM)
    assert returncode == 0, service.log()
    _check_spans(sink, FLASK_ROUTE, count, served)


def test_the_port_is_not_shared_with_another_service(sink, groups_dir, tmp_path):
    """Two pre-fork services given the same metrics port: the second one warns and
    stays out, rather than having scrapes alternate between two services' numbers."""
    first_port, second_port = free_port(), free_port()
    env = _env(sink, groups_dir)
    with running(_gunicorn(first_port, "flask_app:app", workers=2), first_port, env,
                 tmp_path / "first.log", timeout=START_TIMEOUT) as first, \
            running(_gunicorn(second_port, "flask_app:app", workers=2), second_port, env,
                    tmp_path / "second.log", timeout=START_TIMEOUT) as second:
        _drive(first, 10)
        _drive(second, 30)
        _wait_count(first, FLASK_ROUTE, 10)
        _assert_exact(first, FLASK_ROUTE, 10)
        assert "cannot serve /metrics" in second.log()
        status, _, _ = http_get(f"http://127.0.0.1:{second.metrics_port}/metrics")
        assert status == 200
