"""Pre-fork servers: one scrape returns the sum over all workers, exemplars included.

Values use prometheus-client's multiprocess mode: each worker writes its counters,
gauges and histograms into memory-mapped files in a folder shared by the group, and
the process answering a scrape merges them. prometheus-client drops exemplars in
that mode, so each worker also keeps the latest exemplar of every bucket series in
a small memory-mapped file of its own (:class:`ExemplarFile`); the collector attaches
the newest one across workers to each merged bucket.

When a worker dies, the next scrape folds its counters, histograms and summaries
into one archive file per type (and its exemplars into an exemplar archive) and
removes its files, so totals never go backwards and the folder does not grow with
every recycled worker. The fold is crash-safe: a reaper that dies half-way leaves
files that the next scrape either finishes folding or recognises as already folded.

Which processes form a group is detected without any code from the user: gunicorn
(with or without ``--preload``), uWSGI, ``uvicorn --workers`` and Celery's prefork
worker; or set ``MESHLENS_MULTIPROC_DIR``.

Every live member holds a shared ``flock`` on the group's ``.members`` file (forked
children inherit it), so a folder is removed as stale only when nobody holds that
lock: never while a process of its group is alive, whatever the pids say.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import glob
import inspect
import json
import logging
import mmap
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from meshlens import _forks, mmap_values
from meshlens.instruments import attach_exemplars

_logger = logging.getLogger("meshlens")

ENV_PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"
_GROUP_PREFIX = "meshlens-metrics"
_LOCK_FILE = ".lock"
"""Scrapes hold it shared, reaping dead workers holds it exclusive."""
_MEMBERS_FILE = ".members"
"""Every live member of the group holds a shared flock on it."""
_SERVE_LOCK_FILE = ".serve-lock"
_EXEMPLAR_SUFFIX = ".exemplars"
_SERVING_SUFFIX = ".serving"
_EXEMPLAR_ARCHIVE = "exemplars_archive" + _EXEMPLAR_SUFFIX
_PID_FILE = re.compile(r"^(?P<prefix>.+)_(?P<pid>\d+)(?P<suffix>\.db|\.exemplars|\.serving)$")
_REAPING = ".reaping-"
_REAPING_FILE = re.compile(r"^(?P<prefix>.+)_(?P<pid>\d+)\.db\.reaping-(?P<token>[0-9a-f]+)$")
# Value files whose dead workers' values still count: folded into `<prefix>_archive.db`.
_FOLDED = ("counter", "histogram", "summary", "gauge_sum", "gauge_min", "gauge_max")
# Value files prometheus-client keeps per process after it died: left alone.
_KEPT = ("gauge_all", "gauge_mostrecent")
# The key that stamps an archive with the token of the fold that wrote it.
_TOKEN_METRIC = "meshlens_archive_token"


@dataclass(frozen=True)
class Group:
    """The processes that share one /metrics."""

    directory: Path
    leader: bool
    """True in the process that forks the others (it starts the folder afresh)."""
    server: str
    threads_after_fork: bool = False
    """True where meshlens must start no thread before the fork, and each worker starts its own
    after it: a uWSGI master (or first process) that forks without taking the GIL first (see
    :func:`_uwsgi_forks_safely`)."""


def _start_time(pid: int) -> str:
    """The kernel's start time of a process, so a reused pid is not mistaken for its group."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def group_dir(leader_pid: int) -> Path:
    name = f"{_GROUP_PREFIX}-{os.getuid()}-{leader_pid}-{_start_time(leader_pid)}"
    return Path(tempfile.gettempdir()) / name


def _on_stack(path_part: str, function: str | None = None) -> bool:
    frame = inspect.currentframe()
    while frame is not None:
        code = frame.f_code
        if (function is None or code.co_name == function) and path_part in code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


def detect_group(explicit_dir: str) -> Group | None:
    """The pre-fork group this process belongs to, or None for a single process."""
    modules = sys.modules
    uwsgi = modules.get("uwsgi")
    if explicit_dir:
        return Group(Path(explicit_dir), leader=False, server="configured",
                     threads_after_fork=uwsgi is not None and _uwsgi_forks_unsafely(uwsgi))  # fmt: skip
    if "gunicorn" in modules:
        # A worker loads the app in Worker.init_process (requests are served from there
        # too). Anywhere else in gunicorn code this is the arbiter, before it forks:
        # --preload (Arbiter.setup), a config file or a server hook.
        if _on_stack("gunicorn/workers/", "init_process"):
            return Group(group_dir(os.getppid()), leader=False, server="gunicorn")
        if _on_stack("gunicorn/"):
            return Group(group_dir(os.getpid()), leader=True, server="gunicorn")
    if uwsgi is not None and hasattr(uwsgi, "worker_id"):
        worker = uwsgi.worker_id()
        if worker == 0:  # the master (or the first process), loading the app before forking
            return Group(group_dir(os.getpid()), leader=True, server="uwsgi",
                         threads_after_fork=_uwsgi_forks_unsafely(uwsgi))  # fmt: skip
        master = uwsgi.masterpid() if hasattr(uwsgi, "masterpid") else 0
        if not master:  # no --master: worker 1 is the first process and forks the others
            master = os.getpid() if worker == 1 else os.getppid()
        return Group(group_dir(master), leader=False, server="uwsgi")
    if "uvicorn" in modules:
        import multiprocessing

        if multiprocessing.parent_process() is not None:
            return Group(group_dir(os.getppid()), leader=False, server="uvicorn")
    if "celery" in modules and _celery_prefork_worker(sys.argv):
        # `celery worker` loads the app in its main process, then forks the pool.
        return Group(group_dir(os.getpid()), leader=True, server="celery")
    return None


CELERY_POOLS_WITHOUT_FORK = frozenset({"solo", "threads", "eventlet", "gevent", "custom"})


def _celery_prefork_worker(argv: list[str]) -> bool:
    """``celery ... worker`` with the default prefork pool."""
    if "worker" not in argv[1:] or not os.path.basename(argv[0]).startswith("celery"):
        return False
    for index, arg in enumerate(argv):
        value = None
        if arg in ("-P", "--pool") and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--pool="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-P") and len(arg) > 2:
            value = arg[2:]
        if value is not None:
            return value not in CELERY_POOLS_WITHOUT_FORK
    return True


# --- the group's folder --------------------------------------------------------

_membership_fd: int | None = None


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _make_private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not directory.name.startswith(_GROUP_PREFIX):
        return  # a folder the user chose (MESHLENS_MULTIPROC_DIR)
    # In a shared temporary folder: not one another user prepared for us.
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(
            f"{directory} is not a folder owned by this user; set MESHLENS_MULTIPROC_DIR to a private folder"
        )


def _clear(directory: Path, keep: Iterable[str]) -> None:
    kept = set(keep)
    for entry in os.scandir(directory):
        if entry.name in kept:
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.remove(entry.path)


def prepare(group: Group) -> None:
    """Joins the group's folder, creating it. The leader starts it empty unless a live
    member still uses it. Also removes folders that no live process holds any more."""
    global _membership_fd
    directory = group.directory
    _make_private_dir(directory)
    fd = os.open(directory / _MEMBERS_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    if group.leader and _try_flock(fd, fcntl.LOCK_EX):
        _clear(directory, keep=(_MEMBERS_FILE,))  # left over by an earlier process with this pid
    fcntl.flock(fd, fcntl.LOCK_SH)  # held for the life of this process and of its forks
    if _membership_fd is not None:
        with contextlib.suppress(OSError):
            os.close(_membership_fd)
    _membership_fd = fd
    (directory / _LOCK_FILE).touch(exist_ok=True)
    try:
        _remove_orphaned_groups(directory.parent, keep=directory)
        GroupCollector(directory).reap_dead_workers()
    except OSError:
        _logger.debug("meshlens: cleaning up metrics folders failed", exc_info=True)
    _follow_forks()
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None and (group.server == "uwsgi" or group.threads_after_fork):
        _check_uwsgi(group, uwsgi)
    if _leader_pid(directory) == os.getpid():
        atexit.register(_leave, directory, os.getpid())


def _leader_pid(directory: Path) -> int:
    try:
        return int(directory.name.split("-")[-2]) if directory.name.startswith(_GROUP_PREFIX) else 0
    except (ValueError, IndexError):
        return 0


def _leave(directory: Path, leader: int) -> None:
    """At the leader's exit (the master that forked the workers): removes the group's
    folder if no process holds it any more. Not done by workers: when all of them are
    recycled at once, the folder (and the totals in it) must outlive them."""
    global _membership_fd
    if os.getpid() != leader or _membership_fd is None:
        return  # a forked worker inherits this exit handler
    with contextlib.suppress(OSError):
        os.close(_membership_fd)
    _membership_fd = None
    try:
        fd = os.open(directory / _MEMBERS_FILE, os.O_RDONLY)
    except OSError:
        return
    try:
        if _try_flock(fd, fcntl.LOCK_EX):
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        os.close(fd)


def _remove_orphaned_groups(parent: Path, keep: Path) -> None:
    """Removes group folders of this user whose leader is gone and that no live process holds."""
    for candidate in parent.glob(f"{_GROUP_PREFIX}-{os.getuid()}-*"):
        if candidate == keep:
            continue
        parts = candidate.name.split("-")
        try:
            leader = int(parts[-2])
        except (ValueError, IndexError):
            continue
        started = _start_time(leader)
        if _alive(leader) and (started == parts[-1] or "0" in (started, parts[-1])):
            continue  # the leader is running: the group is alive
        try:
            fd = os.open(candidate / _MEMBERS_FILE, os.O_RDONLY)
        except OSError:
            continue  # being created, or not a meshlens group folder: leave it
        try:
            if _try_flock(fd, fcntl.LOCK_EX):  # nobody holds it: nobody uses the folder
                shutil.rmtree(candidate, ignore_errors=True)
        finally:
            os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _warn_once(directory: Path, topic: str, message: str) -> None:
    """Logs ``message`` in one process of the group only."""
    try:
        os.close(os.open(directory / f".warned-{topic}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return
    except OSError:
        pass
    _logger.warning(message)


# --- forks -----------------------------------------------------------------------

_fork_state = {"pid": os.getpid(), "registered": False}


def _follow_forks() -> None:
    if not _fork_state["registered"] and hasattr(os, "register_at_fork"):
        _fork_state["registered"] = True
        os.register_at_fork(
            before=_lock_files_guard.acquire, after_in_parent=_lock_files_guard.release,
            after_in_child=after_fork_in_child,
        )  # fmt: skip


def after_fork_in_child() -> None:
    """Makes a forked worker its own process for meshlens; once per process."""
    pid = os.getpid()
    if _fork_state["pid"] == pid:
        return
    _fork_state["pid"] = pid
    steps = (_close_inherited_lock_files, _reinit_value_lock, mmap_values.after_fork_in_child, _update_resource_pid)
    for step in steps:
        try:
            step()
        except Exception:
            _logger.debug("meshlens: after-fork step %s failed", step.__name__, exc_info=True)


def _reinit_value_lock() -> None:
    """When meshlens uses prometheus-client's multiprocess values (see
    :data:`meshlens.mmap_values.SUPPORTED`): they share one lock, which a thread of the
    parent (a scrape, the runtime sampler) may have held at the fork: in the child
    nobody would ever release it. Give the child a fresh one."""
    import prometheus_client.values

    value_class = prometheus_client.values.ValueClass
    inc = getattr(value_class, "inc", None)
    code, closure = getattr(inc, "__code__", None), getattr(inc, "__closure__", None)
    if code is None or closure is None or "lock" not in code.co_freevars:
        return
    cell = closure[code.co_freevars.index("lock")]
    lock = cell.cell_contents
    if hasattr(lock, "_at_fork_reinit"):
        lock._at_fork_reinit()
    else:  # pragma: no cover - every supported Python has _at_fork_reinit
        cell.cell_contents = threading.Lock()


def _update_resource_pid() -> None:
    """A worker forked from a configured master exports spans with its own pid."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource

    provider = trace.get_tracer_provider()
    update = getattr(provider, "_update_resource", None)
    resource = getattr(provider, "resource", None)
    if update is None or resource is None or "process.pid" not in resource.attributes:
        return
    # The SDK re-creates this lock in its own after-fork handler, which may run later.
    provider._tracers_lock = threading.Lock()  # type: ignore[attr-defined]
    update(Resource({"process.pid": os.getpid()}))


_UWSGI_FORK_HOOKS = "py-call-uwsgi-fork-hooks"


def _uwsgi_forks_safely(uwsgi: ModuleType) -> bool:
    """Whether uWSGI takes the GIL and runs Python's fork handlers around each fork
    (``--py-call-uwsgi-fork-hooks``).

    Otherwise its master forks a worker (at start and at every respawn) from C code while any
    other thread may hold the GIL, and the worker then waits for that GIL forever: a thread of
    meshlens's in the master (the /metrics endpoint, span export) would hang workers.
    ``--py-call-osafterfork`` does not prevent it: a respawned worker takes the GIL before
    those handlers run.
    """
    options = getattr(uwsgi, "opt", None) or {}
    value = options.get(_UWSGI_FORK_HOOKS, options.get(_UWSGI_FORK_HOOKS.encode()))
    if isinstance(value, list):  # given more than once: the last one counts
        value = value[-1] if value else None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if value is None or isinstance(value, bool):
        return bool(value)  # a flag on the command line reads True
    return str(value).strip().lower() not in ("false", "0", "no", "off")  # as uWSGI reads an ini value


def _uwsgi_forks_unsafely(uwsgi: ModuleType) -> bool:
    """This process is uWSGI's master (or first process) loading the app, and it will fork
    the workers without taking the GIL."""
    worker_id = getattr(uwsgi, "worker_id", None)
    return worker_id is not None and worker_id() == 0 and not _uwsgi_forks_safely(uwsgi)


def _check_uwsgi(group: Group, uwsgi: ModuleType) -> None:
    if not getattr(uwsgi, "has_threads", True):
        _warn_once(
            group.directory,
            "uwsgi-threads",
            "meshlens: uWSGI runs without Python threads, so meshlens's background threads (span "
            "export, the /metrics endpoint, runtime sampling) only run while a request is being "
            "served: spans are delayed or lost and scrapes can hang. Start uWSGI with "
            "--enable-threads (enable-threads = true in the ini file).",
        )
    if not group.threads_after_fork:
        return  # a worker of lazy-apps, or uWSGI runs Python's own fork handlers
    _warn_once(
        group.directory,
        "uwsgi-fork-hooks",
        "meshlens: uWSGI loads the app before it forks the workers, and forks them without taking "
        "the GIL, so meshlens starts no thread until after the fork (one running at a fork could "
        "hang the new worker): each worker exports its spans and serves /metrics, and the master's "
        f"own spans and runtime metrics are not reported. Start uWSGI with --{_UWSGI_FORK_HOOKS} "
        f"({_UWSGI_FORK_HOOKS} = true in the ini file) to have them.",
    )
    if uwsgi.masterpid():
        try:
            import uwsgidecorators  # the app's @postfork functions are chained here too

            uwsgidecorators.postfork_chain.insert(0, _after_uwsgi_fork)
            return
        except Exception:
            _logger.debug("meshlens: uwsgidecorators unavailable", exc_info=True)
    previous: Callable[[], object] | None = getattr(uwsgi, "post_fork_hook", None)

    def post_fork_hook() -> None:
        _after_uwsgi_fork()
        if previous is not None:
            previous()

    uwsgi.post_fork_hook = post_fork_hook


def _after_uwsgi_fork() -> None:
    """In each uWSGI worker, after the fork: Python's after-fork handlers did not run (unless
    ``--py-call-osafterfork``), and meshlens's threads start here (none ran in the master)."""
    forked = _fork_state["pid"] != os.getpid()  # False in worker 1 without --master: it did not fork
    if forked:
        _forks.count()
        after_fork_in_child()
    try:
        from meshlens import _setup

        runtime = _setup.current()
        if runtime is None:
            return
        if forked and runtime.runtime_metrics is not None:
            runtime.runtime_metrics.after_fork()  # registered for os.fork, which uWSGI's fork skips
        runtime.start_background()
    except Exception:
        _logger.warning("meshlens: starting span export and /metrics in a uWSGI worker failed", exc_info=True)


# --- who serves /metrics ------------------------------------------------------------


# An flock belongs to the open file, which a forked child shares: had a thread of the parent
# held one at the fork (a scrape in a master that serves /metrics, as gunicorn's with
# --preload), the child would keep it locked for its whole life once the thread closed its
# own copy, and every later scrape would wait for it. So these files are opened and closed
# with forks held off, and a forked child closes its copies of those open at the fork.
_lock_files_guard = threading.Lock()
_open_lock_files: set[int] = set()


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    """Holds an flock on ``path`` (created if missing) for the block."""
    with _lock_files_guard:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        _open_lock_files.add(fd)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        with _lock_files_guard:
            _open_lock_files.discard(fd)
            os.close(fd)  # releases the lock (once no forked child holds a copy)


def _close_inherited_lock_files() -> None:
    """In a forked child: closes its copies of the files the parent's threads held locks
    on at the fork (never unlocks them: the parent still holds those locks)."""
    _lock_files_guard._at_fork_reinit()  # type: ignore[attr-defined]  # taken by the parent's fork
    inherited = list(_open_lock_files)
    _open_lock_files.clear()
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)


def serving_lock(directory: Path) -> contextlib.AbstractContextManager[None]:
    """Serialises the members deciding whether to join the group's listening port."""
    return _locked(directory / _SERVE_LOCK_FILE, fcntl.LOCK_EX)


def serving_members(directory: Path, port: int) -> list[int]:
    """Live processes of the group that listen for scrapes on ``port``."""
    members = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            match = _PID_FILE.match(name)
            if not match or match["suffix"] != _SERVING_SUFFIX:
                continue
            pid = int(match["pid"])
            try:
                serves = int((directory / name).read_text() or 0) == port
            except (OSError, ValueError):
                continue
            if serves and pid != os.getpid() and _alive(pid):
                members.append(pid)
    return members


def mark_serving(directory: Path, port: int) -> None:
    (directory / f"metrics_{os.getpid()}{_SERVING_SUFFIX}").write_text(str(port))


# --- exemplars -----------------------------------------------------------------
#
# File: a header (bytes used, format version), then one record per bucket series:
# key length, padding, sequence, value, timestamp, trace id, span id, then the key
# padded to 8 bytes. A record is only ever appended (its key never changes); its
# payload is rewritten in place. The writer makes the sequence odd, writes the payload,
# then makes it even: a reader accepts a record whose sequence is even and non-zero
# and whose bytes are identical in two reads of the file, so a record caught
# half-written is read again or skipped, never mixed.

_HEADER = struct.Struct("<II")
_RECORD = struct.Struct("<IIQdd16s8s")
_SEQUENCE = struct.Struct("<Q")
_PAYLOAD = struct.Struct("<dd16s8s")
_SEQUENCE_OFFSET = 8
_PAYLOAD_OFFSET = 16
_FORMAT_VERSION = 1
_INITIAL_SIZE = 64 * 1024
_READ_ATTEMPTS = 3

_PID_CHECK_EVERY = 4095  # a mask: every 4096 records
_GENERATION = _forks.GENERATION

_OPEN_LOCKS: dict[int, threading.Lock] = {}
"""One lock per process id for opening a process's file: a fresh one after any fork,
even one that runs no after-fork handlers (uWSGI)."""

ExemplarRecord = tuple[str, float, float, str, str]
"""(bucket key, value, timestamp, trace id, span id), ids in hex."""


class ExemplarFile:
    """The latest exemplar of each bucket series written by this process.

    Safe across fork: a child writes its own file (``exemplars_<pid>.exemplars``),
    with its own lock. Never raises into the request path: on an error it logs once
    and stops recording.
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._pid = -1
        self._file: mmap.mmap | None = None
        self._fd = -1
        self._entries: dict[str, list[int]] = {}  # key -> [position, sequence]
        self._used = 0
        self._failed_pid = -1
        self._generation = -1
        self._calls = 0

    @property
    def path(self) -> Path:
        return self._directory / f"exemplars_{os.getpid()}{_EXEMPLAR_SUFFIX}"

    def _open(self) -> None:
        # After a fork the parent's mapping and descriptor are this process's copies.
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._file = None
        self._entries = {}
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, _INITIAL_SIZE)
        self._file = mmap.mmap(self._fd, _INITIAL_SIZE)
        self._used = _HEADER.size
        self._file[0 : _HEADER.size] = _HEADER.pack(self._used, _FORMAT_VERSION)
        self._lock = threading.Lock()
        self._pid = os.getpid()  # last: other threads now take the fast path

    def _add(self, file: mmap.mmap, key: str) -> tuple[mmap.mmap, list[int]]:
        encoded = key.encode()
        position = self._used
        end = position + _RECORD.size + len(encoded) + (-len(encoded) % 8)
        if end > len(file):
            size = len(file)
            while size < end:
                size *= 2
            file.resize(size)  # grows the file too
        record = _RECORD.pack(len(encoded), 0, 0, 0.0, 0.0, b"", b"")
        file[position : position + _RECORD.size] = record
        file[position + _RECORD.size : position + _RECORD.size + len(encoded)] = encoded
        self._used = end
        file[0:4] = struct.pack("<I", end)  # published only once the record is complete
        entry = [position, 0]
        self._entries[key] = entry
        return file, entry

    def record(self, key: str, value: float, trace_id: int, span_id: int, timestamp: float) -> None:
        self._calls += 1
        if self._generation != _GENERATION[0] or not self._calls & _PID_CHECK_EVERY:
            self._check_process()
        with self._lock:
            file = self._file
            if file is None:
                return
            try:
                entry = self._entries.get(key)
                if entry is None:
                    file, entry = self._add(file, key)
                position, sequence = entry
                start = position + _SEQUENCE_OFFSET
                file[start : start + 8] = _SEQUENCE.pack(sequence + 1)
                file[position + _PAYLOAD_OFFSET : position + _RECORD.size] = _PAYLOAD.pack(
                    value, timestamp, trace_id.to_bytes(16, "big"), span_id.to_bytes(8, "big")
                )
                file[start : start + 8] = _SEQUENCE.pack(sequence + 2)
                entry[1] = sequence + 2
            except Exception:
                self._disable()

    def _check_process(self) -> None:
        """Opens this process's file on first use, and after a fork. os.getpid() is a
        system call (half the cost of a record here), so a fork is normally noticed
        through the after-fork counter; the pid is still compared every few
        thousand records, for forks made without Python's after-fork handlers."""
        generation, pid = _GENERATION[0], os.getpid()
        if self._pid != pid:
            # Not self._lock: a thread of the parent may have held it at the fork.
            with _OPEN_LOCKS.setdefault(pid, threading.Lock()):
                if pid not in (self._pid, self._failed_pid):
                    try:
                        self._open()
                    except Exception:
                        self._disable()
        self._generation = generation

    def _disable(self) -> None:
        if self._failed_pid != os.getpid():
            self._failed_pid = os.getpid()
            self._file = None
            self._pid = os.getpid()
            _logger.warning("meshlens: cannot write exemplars to %s; exemplars are off in this worker",
                            self._directory, exc_info=True)  # fmt: skip

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                os.close(self._fd)
                self._file = None
            self._pid = -1


def _read_exemplar_file(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def read_exemplars(path: str | Path) -> Iterator[ExemplarRecord]:
    """Every complete record of an exemplar file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        first = _read_exemplar_file(fd)
        if len(first) < _HEADER.size:
            return
        second = _read_exemplar_file(fd)
        used = min(_HEADER.unpack_from(first, 0)[0], len(first), len(second))
        position = _HEADER.size
        while position + _RECORD.size <= used:
            key_length = _RECORD.unpack_from(first, position)[0]
            end = position + _RECORD.size + key_length + (-key_length % 8)
            if end > used:
                break
            this, other = first[position:end], second[position:end]
            for _ in range(_READ_ATTEMPTS):
                if this == other:
                    break
                this, other = other, os.pread(fd, end - position, position)
            position = end
            _, _, sequence, value, timestamp, trace, span = _RECORD.unpack_from(this, 0)
            if this != other or sequence == 0 or sequence % 2:
                continue  # never written, or being written right now
            key = this[_RECORD.size : _RECORD.size + key_length].decode(errors="replace")
            yield key, value, timestamp, trace.hex(), span.hex()
    finally:
        os.close(fd)


def write_exemplars(path: Path, records: Iterable[ExemplarRecord]) -> None:
    """Writes a complete exemplar file at once (the archive of dead workers' exemplars)."""
    body = bytearray()
    for key, value, timestamp, trace_id, span_id in records:
        encoded = key.encode()
        body += _RECORD.pack(len(encoded), 0, 2, value, timestamp, bytes.fromhex(trace_id), bytes.fromhex(span_id))
        body += encoded + b"\0" * (-len(encoded) % 8)
    data = _HEADER.pack(_HEADER.size + len(body), _FORMAT_VERSION) + bytes(body)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def newest_exemplars(paths: Iterable[str | Path]) -> dict[str, ExemplarRecord]:
    newest: dict[str, ExemplarRecord] = {}
    for path in paths:
        for record in read_exemplars(path):
            found = newest.get(record[0])
            if found is None or record[2] > found[2]:
                newest[record[0]] = record
    return newest


# --- collection --------------------------------------------------------------


class GroupCollector(Collector):
    """Merges the group's files into one set of families, with exemplars."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock_path = directory / _LOCK_FILE
        self._missing_logged = False

    def _flock(self, mode: int) -> contextlib.AbstractContextManager[None]:
        return _locked(self._lock_path, mode)

    def _pid_files(self) -> dict[int, list[str]]:
        """Files of each pid that reaping acts on (not the per-process gauges that
        prometheus-client keeps after a process died)."""
        by_pid: dict[int, list[str]] = {}
        for name in os.listdir(self._directory):
            match = _PID_FILE.match(name)
            if match and match["prefix"] not in _KEPT:
                by_pid.setdefault(int(match["pid"]), []).append(name)
        return by_pid

    def _pending(self) -> list[str]:
        return [name for name in os.listdir(self._directory) if _REAPING in name]

    def reap_dead_workers(self) -> int:
        """Folds dead workers' values into the archives and removes their files;
        returns how many workers were reaped."""
        me = os.getpid()
        dead = [pid for pid in self._pid_files() if pid != me and not _alive(pid)]
        if not dead and not self._pending():
            return 0
        with self._flock(fcntl.LOCK_EX):
            by_pid = self._pid_files()
            dead = sorted(pid for pid in dead if pid in by_pid and not _alive(pid))
            self._fold(dead, by_pid)
        return len(dead)

    def _archive_token(self, prefix: str) -> str:
        archive = self._directory / f"{prefix}_archive.db"
        if not archive.exists():
            return ""
        for key, _, _, _ in MmapedDict.read_all_values_from_file(str(archive)):
            name, _, labels, _ = json.loads(key)
            if name == _TOKEN_METRIC:
                return str(labels.get("token", ""))
        return ""

    def _unfolded(self) -> list[str]:
        """Files a fold renamed but did not get into the archive (it failed or crashed):
        still counted, until the next fold finishes the job."""
        unfolded = []
        for name in self._pending():
            match = _REAPING_FILE.match(name)
            if match and self._archive_token(match["prefix"]) != match["token"]:
                unfolded.append(str(self._directory / name))
        return unfolded

    def _fold(self, dead: list[int], by_pid: dict[int, list[str]]) -> None:
        """With the exclusive lock held. Each value file to fold is first renamed with
        the fold's token, the new archive carries that token, then the renamed files go:
        after a crash at any point, the next fold knows whether a renamed file is
        already counted in the archive (same token) or not."""
        directory = self._directory
        token = uuid.uuid4().hex
        pending: dict[str, list[Path]] = {}
        tokens: dict[str, str] = {}
        for name in self._pending():  # left by a fold that did not finish
            match = _REAPING_FILE.match(name)
            if match is None:
                continue
            prefix = match["prefix"]
            if prefix not in tokens:
                tokens[prefix] = self._archive_token(prefix)
            if tokens[prefix] == match["token"]:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(directory / name)  # already in the archive
            else:
                pending.setdefault(prefix, []).append(directory / name)
        exemplar_files = []
        for pid in dead:
            for name in by_pid[pid]:
                match = _PID_FILE.match(name)
                assert match is not None
                prefix, suffix = match["prefix"], match["suffix"]
                path = directory / name
                if suffix == ".db" and prefix in _FOLDED:
                    target = directory / f"{name}{_REAPING}{token}"
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(path, target)
                        pending.setdefault(prefix, []).append(target)
                elif suffix == _EXEMPLAR_SUFFIX:
                    exemplar_files.append(path)
                else:  # live gauges and serving markers die with their process
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(path)
        for prefix, files in pending.items():
            archive = directory / f"{prefix}_archive.db"
            sources = [str(path) for path in files if _readable(path)]
            if archive.exists():
                sources.insert(0, str(archive))
            merged = MultiProcessCollector.merge(sources, accumulate=False)
            _write_archive(archive, (family for family in merged if family.name != _TOKEN_METRIC), token)
            for path in files:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        if exemplar_files:
            archive = directory / _EXEMPLAR_ARCHIVE
            write_exemplars(archive, newest_exemplars([archive, *exemplar_files]).values())
            for path in exemplar_files:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)

    def collect(self) -> Iterable[Metric]:
        try:
            self.reap_dead_workers()
        except FileNotFoundError:
            pass  # the folder is gone: reported below
        except Exception:  # never worth a failed scrape: the files stay, counted, until next time
            _logger.warning("meshlens: folding dead workers' metrics failed", exc_info=True)
        try:
            with self._flock(fcntl.LOCK_SH):
                files = [path for path in glob.glob(os.path.join(self._directory, "*.db")) if _readable(path)]
                files += self._unfolded()
                families = [
                    family
                    for family in MultiProcessCollector.merge(files, accumulate=True)
                    if family.name != _TOKEN_METRIC
                ]
                exemplars = newest_exemplars(glob.glob(os.path.join(self._directory, f"*{_EXEMPLAR_SUFFIX}")))
        except FileNotFoundError:
            if not self._missing_logged:
                self._missing_logged = True
                _logger.warning("meshlens: the metrics folder %s was removed; /metrics is empty", self._directory)
            return []
        attach_exemplars(families, {key: record[1:] for key, record in exemplars.items()})
        return families


def _readable(path: str | Path) -> bool:
    """False for a value file just created by prometheus-client and not yet sized."""
    try:
        return os.path.getsize(path) >= 8
    except OSError:
        return False


def _write_archive(archive: Path, families: Iterable[Metric], token: str) -> None:
    """Writes merged raw values, stamped with ``token``, and swaps the file in atomically."""
    partial = archive.with_name(archive.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        os.remove(partial)
    store = MmapedDict(str(partial))
    try:
        store.write_value(mmap_key(_TOKEN_METRIC, _TOKEN_METRIC, ["token"], [token], ""), 0.0, 0.0)
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
