"""Load from wrk, and its numbers read back exactly (report.lua prints them as JSON)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from procs import pinned

HERE = Path(__file__).resolve().parent
REPORT_SCRIPT = HERE / "report.lua"
_MARKER = "WRK_JSON "


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": self.rps}


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: `apt-get install -y wrk` (or `make tools`)")
    return found


def run_wrk(url: str, duration_s: int, connections: int, cpus: list[int] | None, timeout_s: float = 2.0) -> WrkResult:
    """One wrk run of ``duration_s`` seconds, with one thread.

    One thread: a single sync worker serves a few thousand requests per second, which
    one wrk thread generates with most of a core to spare; a second thread would only
    compete with the server on a two-core machine. ``connections`` keeps requests
    queued at the server so that it never idles (it is saturated): throughput then
    measures the server's time per request.
    """
    argv = pinned(
        [
            wrk_binary(),
            "-t1",
            f"-c{connections}",
            f"-d{duration_s}s",
            f"--timeout={timeout_s:g}s",
            "--latency",
            "-s",
            str(REPORT_SCRIPT),
            url,
        ],
        cpus,
    )
    # wrk stops itself after -d; the timeout only guards against a hung wrk.
    completed = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 60, start_new_session=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip() or completed.stdout}")
    return parse(completed.stdout)


def parse(output: str) -> WrkResult:
    for line in output.splitlines():
        if line.startswith(_MARKER):
            raw = json.loads(line[len(_MARKER) :])
            return WrkResult(
                requests=int(raw["requests"]),
                duration_s=raw["duration_us"] / 1e6,
                errors={key: int(value) for key, value in raw["errors"].items()},
                latency_us={key: float(value) for key, value in raw["latency_us"].items()},
            )
    raise RuntimeError(f"no {_MARKER.strip()} line in wrk's output:\n{output}")
