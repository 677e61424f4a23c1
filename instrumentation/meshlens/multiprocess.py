"""Pre-fork servers: one scrape returns the sum over all workers, exemplars included.

Values use prometheus-client's multiprocess mode: each worker writes its counters,
gauges and histograms into memory-mapped files in a folder shared by the group, and
the process answering a scrape merges them. prometheus-client drops exemplars in
that mode, so each worker also keeps the latest exemplar of every bucket series in
a small memory-mapped file of its own (:class:`ExemplarFile`); the collector attaches
the newest one across workers to each merged bucket.

When a worker dies, the next scrape folds its counters and histograms into one
archive file per type and removes its files, so totals never go backwards and the
folder does not grow with every recycled worker.

Which processes form a group is detected without any code from the user: gunicorn
(with or without ``--preload``), uWSGI and ``uvicorn --workers``; or set
``MESHLENS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import inspect
import logging
import mmap
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample

from meshlens.instruments import EXEMPLAR_SPAN_ID, EXEMPLAR_TRACE_ID, exemplar_key

_logger = logging.getLogger("meshlens")

ENV_PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_GROUP_PREFIX = "meshlens-metrics"
_LOCK_FILE = ".lock"
_ARCHIVED_TYPES = ("counter", "histogram")
_EXEMPLAR_SUFFIX = ".exemplars"
_PID_FILE = re.compile(r"^(?P<prefix>.+)_(?P<pid>\d+)(?P<suffix>\.db|\.exemplars)$")


@dataclass(frozen=True)
class Group:
    """The processes that share one /metrics."""

    directory: Path
    leader: bool
    """True in the process that forks the others (it starts the folder afresh)."""
    server: str


def _start_time(pid: int) -> str:
    """The kernel's start time of a process, so a reused pid is not mistaken for its group."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def group_dir(leader_pid: int) -> Path:
    name = f"{_GROUP_PREFIX}-{os.getuid()}-{leader_pid}-{_start_time(leader_pid)}"
    return Path(tempfile.gettempdir()) / name


def _on_stack(path_part: str, function: str) -> bool:
    frame = inspect.currentframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == function and path_part in code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


def detect_group(explicit_dir: str) -> Group | None:
    """The pre-fork group this process belongs to, or None for a single process."""
    if explicit_dir:
        return Group(Path(explicit_dir), leader=False, server="configured")
    modules = sys.modules
    if "gunicorn" in modules:
        # A worker loads the app in Worker.init_process; with --preload the arbiter
        # loads it in Arbiter.setup, before forking.
        if _on_stack("gunicorn/workers/", "init_process"):
            return Group(group_dir(os.getppid()), leader=False, server="gunicorn")
        if _on_stack("gunicorn/arbiter.py", "setup"):
            return Group(group_dir(os.getpid()), leader=True, server="gunicorn")
    uwsgi = modules.get("uwsgi")
    if uwsgi is not None and hasattr(uwsgi, "worker_id"):
        if uwsgi.worker_id() == 0:  # the master, loading the app before forking
            return Group(group_dir(os.getpid()), leader=True, server="uwsgi")
        return Group(group_dir(os.getppid()), leader=False, server="uwsgi")
    if "uvicorn" in modules:
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            return Group(group_dir(os.getppid()), leader=False, server="uvicorn")
    return None


def prepare(group: Group) -> None:
    """Create the group's folder; the leader starts it empty. Also removes folders of
    groups whose leader is gone (left behind by a hard kill)."""
    directory = group.directory
    if group.leader and directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / _LOCK_FILE).touch(exist_ok=True)
    _remove_orphaned_groups(Path(tempfile.gettempdir()))


def _remove_orphaned_groups(parent: Path) -> None:
    for candidate in parent.glob(f"{_GROUP_PREFIX}-{os.getuid()}-*"):
        parts = candidate.name.split("-")
        try:
            leader = int(parts[-2])
        except (ValueError, IndexError):
            continue
        if not _alive(leader) or _start_time(leader) != parts[-1]:
            shutil.rmtree(candidate, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- exemplars ---------------------------------------------------------------

# Record layout: key length, sequence, value, timestamp, trace id, span id, key bytes
# (padded to 8). The sequence is odd while the writer updates a record, so a reader
# in another process skips a half-written exemplar instead of mixing two.
_RECORD = struct.Struct("<IIdd16s8s")
_HEADER = struct.Struct("<II")  # bytes used, reserved
_INITIAL_SIZE = 64 * 1024


class ExemplarFile:
    """The latest exemplar of each bucket series written by this process."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._pid = -1
        self._file: mmap.mmap | None = None
        self._fd = -1
        self._positions: dict[str, int] = {}
        self._used = 0

    def _open(self) -> None:
        if self._file is not None:
            self._file.close()
            os.close(self._fd)
        self._pid = os.getpid()
        path = self._directory / f"exemplars_{self._pid}{_EXEMPLAR_SUFFIX}"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, _INITIAL_SIZE)
        self._file = mmap.mmap(self._fd, _INITIAL_SIZE)
        self._positions = {}
        self._used = _HEADER.size
        _HEADER.pack_into(self._file, 0, self._used, 0)

    def _grow(self, needed: int) -> None:
        assert self._file is not None
        size = len(self._file)
        while size < needed:
            size *= 2
        self._file.close()
        os.ftruncate(self._fd, size)
        self._file = mmap.mmap(self._fd, size)

    def record(self, key: str, value: float, trace_id: int, span_id: int, timestamp: float) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a fork since
                self._open()
            file = self._file
            assert file is not None
            position = self._positions.get(key)
            if position is None:
                encoded = key.encode()
                padded = len(encoded) + (-len(encoded) % 8)
                position = self._used
                end = position + _RECORD.size + padded
                if end > len(file):
                    self._grow(end)
                    file = self._file
                    assert file is not None
                file[position + _RECORD.size : position + _RECORD.size + len(encoded)] = encoded
                _RECORD.pack_into(file, position, len(encoded), 0, 0.0, 0.0, b"", b"")
                self._positions[key] = position
                self._used = end
                _HEADER.pack_into(file, 0, end, 0)
            key_length, sequence = struct.unpack_from("<II", file, position)
            _RECORD.pack_into(file, position, key_length, sequence + 1, 0.0, 0.0, b"", b"")
            _RECORD.pack_into(
                file, position, key_length, sequence + 2, value, timestamp,
                trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big"),
            )  # fmt: skip

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                os.close(self._fd)
                self._file = None
            self._pid = -1


def read_exemplars(path: str) -> Iterator[tuple[str, float, float, str, str]]:
    """(key, value, timestamp, trace id, span id) of every complete record in a file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return
    if len(data) < _HEADER.size:
        return
    used, _ = _HEADER.unpack_from(data, 0)
    position = _HEADER.size
    while position + _RECORD.size <= min(used, len(data)):
        key_length, sequence, value, timestamp, trace, span = _RECORD.unpack_from(data, position)
        start = position + _RECORD.size
        key = data[start : start + key_length].decode(errors="replace")
        position = start + key_length + (-key_length % 8)
        if sequence == 0 or sequence % 2:
            continue  # never written, or being written right now
        yield key, value, timestamp, trace.hex(), span.hex()


# --- collection --------------------------------------------------------------


class GroupCollector(Collector):
    """Merges the group's files into one set of families, with exemplars."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock_path = directory / _LOCK_FILE

    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _pid_files(self) -> dict[int, list[str]]:
        by_pid: dict[int, list[str]] = {}
        for name in os.listdir(self._directory):
            match = _PID_FILE.match(name)
            if match:
                by_pid.setdefault(int(match["pid"]), []).append(str(self._directory / name))
        return by_pid

    def reap_dead_workers(self) -> int:
        """Folds dead workers' counters and histograms into the archive; returns how many."""
        dead = [pid for pid in self._pid_files() if pid != os.getpid() and not _alive(pid)]
        if not dead:
            return 0
        with self._flock(fcntl.LOCK_EX):
            by_pid = self._pid_files()
            dead = [pid for pid in dead if pid in by_pid]
            for typ in _ARCHIVED_TYPES:
                archive = self._directory / f"{typ}_archive.db"
                sources = [str(self._directory / f"{typ}_{pid}.db") for pid in dead]
                sources = [path for path in sources if os.path.exists(path)]
                if not sources:
                    continue
                if archive.exists():
                    sources.insert(0, str(archive))
                _write_archive(archive, MultiProcessCollector.merge(sources, accumulate=False))
            for pid in dead:
                for path in by_pid[pid]:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
        return len(dead)

    def collect(self) -> Iterable[Metric]:
        self.reap_dead_workers()
        with self._flock(fcntl.LOCK_SH):
            files = glob.glob(os.path.join(self._directory, "*.db"))
            families = list(MultiProcessCollector.merge(files, accumulate=True))
            exemplars: dict[str, tuple[float, float, str, str]] = {}
            for path in glob.glob(os.path.join(self._directory, f"*{_EXEMPLAR_SUFFIX}")):
                for key, value, timestamp, trace_id, span_id in read_exemplars(path):
                    newest = exemplars.get(key)
                    if newest is None or timestamp > newest[1]:
                        exemplars[key] = (value, timestamp, trace_id, span_id)
        if exemplars:
            for family in families:
                if family.type == "histogram":
                    family.samples = [_with_exemplar(sample, exemplars) for sample in family.samples]
        return families


def _with_exemplar(sample: Sample, exemplars: dict[str, tuple[float, float, str, str]]) -> Sample:
    if not sample.name.endswith("_bucket"):
        return sample
    found = exemplars.get(exemplar_key(sample.name, sample.labels))
    if found is None:
        return sample
    value, timestamp, trace_id, span_id = found
    exemplar = Exemplar({EXEMPLAR_TRACE_ID: trace_id, EXEMPLAR_SPAN_ID: span_id}, value, timestamp)
    return sample._replace(exemplar=exemplar)


def _write_archive(archive: Path, families: Iterable[Metric]) -> None:
    """Writes merged raw values into a new archive file and swaps it in atomically."""
    partial = archive.with_name(archive.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        os.remove(partial)
    store = MmapedDict(str(partial))
    try:
        for family in families:
            for sample in family.samples:
                key = mmap_key(
                    family.name, sample.name, list(sample.labels), list(sample.labels.values()),
                    family.documentation,
                )  # fmt: skip
                store.write_value(key, sample.value, 0.0)
    finally:
        store.close()
    os.replace(partial, archive)
