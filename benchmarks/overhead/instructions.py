"""Instructions per request, counted by callgrind: a repeatable view of where meshlens's time goes.

The wrk benchmark (run.py) measures what a user sees, but this VM's run-to-run spread is
15 to 70%, too wide to see a 10 µs change. Instruction counts do not move with the
machine's load: the same code and inputs give the same count. This script calls the
benchmark's Flask app (as a WSGI server would) or FastAPI app (as an ASGI server would, on
one event loop) in-process: no server, no sockets, only the app's own work and meshlens's.
It runs under ``valgrind --tool=callgrind`` twice with different request counts and
reports the difference per request, so start-up costs cancel out.

    python benchmarks/overhead/instructions.py                 # every variant, about 3 minutes
    python benchmarks/overhead/instructions.py --flavour fastapi --variants plain,sampled
    python benchmarks/overhead/instructions.py --variants unsampled --requests 100,400   # quicker
    python benchmarks/overhead/instructions.py --multiprocess   # metrics as in a pre-fork worker

A single variant is enough while iterating: each one's count is its own, ``plain`` is only
the reference the last column subtracts.

Variants: ``plain`` (the app without meshlens), ``unsampled`` (meshlens, ratio 0: a
non-recording span and the metrics), ``sampled-no-export`` (every request sampled, no
exporter), ``sampled`` (every request sampled and exported over OTLP/HTTP to the benchmark's
sink). Counts include every thread (the export thread too). Not a test: informative.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import procs

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"
SMALL, LARGE = 300, 1300
WARMUP = 200

FLAVOURS = ("flask", "fastapi")
VARIANTS: Mapping[str, tuple[str, Mapping[str, str]]] = {  # variant: (app module suffix, environment)
    "plain": ("plain", {}),
    "unsampled": ("meshlens", {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}),
    "sampled-no-export": ("meshlens", {"OTEL_TRACES_EXPORTER": "none"}),
    "sampled": ("meshlens", {}),
}


def _environ() -> dict[str, object]:
    return {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/", "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.multithread": False, "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.version": (1, 0),
        "HTTP_HOST": "127.0.0.1:8000", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "HTTP_USER_AGENT": "wrk",
    }  # fmt: skip


def _scope() -> dict[str, object]:
    """What uvicorn hands the app for ``GET /`` from wrk."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http", "method": "GET",
        "root_path": "", "path": "/", "raw_path": b"/", "query_string": b"", "state": {},
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")],
    }  # fmt: skip


def _drive_wsgi(app: Any, requests: int) -> None:
    def start_response(status: str, headers: object, exc_info: object = None) -> None:
        return None

    for _ in range(requests):
        body = app(_environ(), start_response)
        for _chunk in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _drive_asgi(app: Any, requests: int) -> None:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: object) -> None:
        return None

    async def serve() -> None:
        for _ in range(requests):
            await app(_scope(), receive, send)

    asyncio.run(serve())


def drive(module: str, requests: int) -> None:
    """In the measured process: import the app (meshlens first, if the module says so) and call it."""
    sys.path.insert(0, str(APPS))
    app = __import__(module).app
    (_drive_asgi if module.startswith("fastapi") else _drive_wsgi)(app, WARMUP + requests)
    try:
        import meshlens  # only there when the module imported it

        runtime = meshlens.current()
        if runtime is not None and runtime.span_processor is not None:
            runtime.span_processor.force_flush()  # the export of every span counts
    except ImportError:
        pass


def _instructions(module: str, requests: int, env: Mapping[str, str]) -> int:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
             "--drive", module, str(requests)],
            env=dict(env), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no instruction total in callgrind's output for {module}")


def measure(
    variant: str,
    sink_endpoint: str,
    small: int = SMALL,
    large: int = LARGE,
    flavour: str = "flask",
    multiprocess: bool = False,
) -> float:
    suffix, extra = VARIANTS[variant]
    module = f"{flavour}_{suffix}"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "MESHLENS_", "PROMETHEUS_"))}
    env.update({"MESHLENS_METRICS_PORT": "0", "OTEL_EXPORTER_OTLP_ENDPOINT": sink_endpoint,
                # Randomised string hashes lay dicts out differently in every run: about 1% apart.
                "PYTHONHASHSEED": "0",
                # Only full batches and the final flush export: the same work in both runs.
                "OTEL_BSP_SCHEDULE_DELAY": "3600000", **extra})  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        if multiprocess:  # as in a gunicorn worker: every metric update also goes to the group's files
            env["MESHLENS_MULTIPROC_DIR"] = folder
        return (_instructions(module, large, env) - _instructions(module, small, env)) / (large - small)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=FLAVOURS, default="flask", help="which app (default: %(default)s)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--requests", default=f"{SMALL},{LARGE}", metavar="SMALL,LARGE",
                        help="the two request counts whose difference is measured (default: %(default)s)")
    parser.add_argument("--multiprocess", action="store_true",
                        help="metrics in pre-fork mode, as in a gunicorn or uvicorn --workers worker")
    parser.add_argument("--drive", nargs=2, metavar=("MODULE", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        drive(args.drive[0], int(args.drive[1]))
        return 0
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    try:
        small, large = (int(part) for part in args.requests.split(","))
    except ValueError:
        parser.error("--requests takes two counts, SMALL,LARGE")
    if not 0 <= small < large:
        parser.error("--requests: SMALL must be below LARGE")
    port = procs.free_port()
    sink = procs.start([sys.executable, str(HERE / "sink.py"), "--port", str(port), "--no-decode"], os.environ,
                       Path(tempfile.gettempdir()) / "meshlens-instructions-sink.log")  # fmt: skip
    try:
        procs.wait_http(f"http://127.0.0.1:{port}/stats", sink)
        endpoint = f"http://127.0.0.1:{port}"
        counts = {variant: measure(variant, endpoint, small, large, args.flavour, args.multiprocess)
                  for variant in variants}
    finally:
        procs.stop(sink)
    plain = counts.get("plain")
    mode = ", pre-fork metrics" if args.multiprocess else ""
    print(f"| {args.flavour}{mode} variant | instructions/request | added to plain |")
    print("|---|--:|--:|")
    for variant, count in counts.items():
        added = f"{count - plain:+,.0f}" if plain is not None else "-"
        print(f"| {variant} | {count:,.0f} | {added} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
