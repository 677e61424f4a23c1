"""Child processes of the benchmark: each in its own process group, all killed on the way out.

Every server, sink and wrk starts in a new session, so one ``killpg`` takes the
process and whatever it forked (gunicorn's worker). :func:`kill_all` runs at exit, on
Ctrl-C and on SIGTERM, so an interrupted benchmark leaves nothing running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from demo.ports import free_port  # noqa: F401  (re-exported: the benchmark's ports)

_live: dict[int, subprocess.Popen[bytes]] = {}


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                pending.extend(int(child) for child in task.read_text().split())
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and all its descendants (gunicorn's worker
    included), threads included: what the service burnt, whatever else ran on the machine."""
    total = 0
    for process in _descendants(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields 14 and 15 (utime, stime), counted after the parenthesised command name.
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _CLOCK_TICKS


def pinned(argv: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """``argv`` run under ``taskset`` on ``cpus`` (visible in ps, inherited by forks)."""
    if not cpus:
        return list(argv)
    return ["taskset", "-c", ",".join(str(cpu) for cpu in cpus), *argv]


def start(
    argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            list(argv), env=dict(env), stdout=log, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    _live[process.pid] = process
    return process


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 20.0) -> int | None:
    """``sig`` to the group (a graceful stop flushes telemetry), SIGKILL after ``grace_s``."""
    try:
        _signal_group(process, sig)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait(5)
    finally:
        # Forked children outlive their parent when it dies first; finish them too.
        _signal_group(process, signal.SIGKILL)
        _live.pop(process.pid, None)
    return process.returncode


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session=True: the group id is the pid


def kill_all() -> None:
    for process in list(_live.values()):
        _signal_group(process, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        _live.pop(process.pid, None)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_http(url: str, process: subprocess.Popen[bytes] | None, timeout_s: float = 30.0) -> tuple[int, bytes]:
    """The first answer of ``url``; raises if none comes in time or the process dies."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before {url} answered")
        try:
            return http_get(url, timeout=2.0)
        except OSError as exc:  # URLError is an OSError: not listening yet
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s ({last})")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
