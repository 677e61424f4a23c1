"""Unit tests of the pre-fork parts: exemplar files, folding dead workers, group folders."""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from meshlens import _setup, multiprocess
from meshlens.exposition import MetricsServer
from meshlens.instruments import exemplar_key
from meshlens.multiprocess import (
    ExemplarFile,
    Group,
    GroupCollector,
    prepare,
    read_exemplars,
)

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN = 0x00F067AA0BA902B7


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _exemplars(directory: Path, pid: int | None = None) -> dict[str, tuple]:
    path = directory / f"exemplars_{pid or os.getpid()}.exemplars"
    return {record[0]: record[1:] for record in read_exemplars(path)}


# --- ExemplarFile ----------------------------------------------------------------


def test_exemplar_file_write_and_read(tmp_path):
    exemplars = ExemplarFile(tmp_path)
    exemplars.record("a_bucket\x00le=0.1", 0.05, TRACE, SPAN, 1000.0)
    exemplars.record("a_bucket\x00le=+Inf", 12.5, TRACE + 1, SPAN + 1, 1001.0)
    exemplars.record("a_bucket\x00le=0.1", 0.07, TRACE + 2, SPAN + 2, 1002.0)  # the latest wins
    found = _exemplars(tmp_path)
    assert found == {
        "a_bucket\x00le=0.1": (0.07, 1002.0, format(TRACE + 2, "032x"), format(SPAN + 2, "016x")),
        "a_bucket\x00le=+Inf": (12.5, 1001.0, format(TRACE + 1, "032x"), format(SPAN + 1, "016x")),
    }


def test_exemplar_file_grows_beyond_its_first_64_kib(tmp_path):
    exemplars = ExemplarFile(tmp_path)
    keys = [f"http_server_request_duration_seconds_bucket\x00http_route=/r/{i}/{'x' * 40}\x00le=0.1"
            for i in range(1500)]
    for i, key in enumerate(keys):
        exemplars.record(key, i / 1000, TRACE + i, SPAN + i, 2000.0 + i)
    assert exemplars.path.stat().st_size > 64 * 1024
    found = _exemplars(tmp_path)
    assert len(found) == len(keys)
    assert found[keys[-1]] == (1.499, 3499.0, format(TRACE + 1499, "032x"), format(SPAN + 1499, "016x"))
    exemplars.record(keys[0], 9.0, TRACE, SPAN, 5000.0)  # records before the growth stay writable
    assert _exemplars(tmp_path)[keys[0]][0] == 9.0


def test_half_written_records_are_skipped_by_sequence_number(tmp_path):
    exemplars = ExemplarFile(tmp_path)
    for i in range(3):
        exemplars.record(f"k{i}", float(i), TRACE, SPAN, 100.0 + i)
    data = bytearray(exemplars.path.read_bytes())
    header, record = multiprocess._HEADER.size, multiprocess._RECORD.size
    second = header + record + 8  # keys of 2 bytes are padded to 8
    sequence_at = second + multiprocess._SEQUENCE_OFFSET
    (sequence,) = multiprocess._SEQUENCE.unpack_from(data, sequence_at)
    assert sequence == 2
    # The writer stopped between "odd: being written" and "even: complete".
    data[sequence_at : sequence_at + 8] = multiprocess._SEQUENCE.pack(sequence + 1)
    torn = tmp_path / "torn.exemplars"
    torn.write_bytes(bytes(data))
    assert [r[0] for r in read_exemplars(torn)] == ["k0", "k2"]
    # A record never written (sequence 0) is skipped too.
    data[sequence_at : sequence_at + 8] = multiprocess._SEQUENCE.pack(0)
    torn.write_bytes(bytes(data))
    assert [r[0] for r in read_exemplars(torn)] == ["k0", "k2"]


def test_a_record_that_changes_between_two_reads_is_read_again(tmp_path, monkeypatch):
    exemplars = ExemplarFile(tmp_path)
    exemplars.record("k", 1.0, TRACE, SPAN, 100.0)
    stable = exemplars.path.read_bytes()
    changed = bytearray(stable)
    position = multiprocess._HEADER.size + multiprocess._PAYLOAD_OFFSET
    changed[position : position + 8] = b"\xff" * 8  # a payload torn by a concurrent write
    reads = iter([bytes(changed), stable])
    monkeypatch.setattr(multiprocess, "_read_exemplar_file", lambda fd: next(reads))
    # The two whole-file reads differ: the record is read again with pread, then accepted.
    assert [r[:2] for r in read_exemplars(exemplars.path)] == [("k", 1.0)]


def test_fork_gives_the_child_its_own_file_even_with_the_lock_held(tmp_path):
    exemplars = ExemplarFile(tmp_path)
    exemplars.record("parent", 1.0, TRACE, SPAN, 100.0)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with exemplars._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread holds the lock for ever, here
        try:
            exemplars.record("child", 2.0, TRACE + 1, SPAN + 1, 200.0)
            os._exit(0)
        except BaseException:
            os._exit(1)
    release.set()
    holder.join()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        pytest.fail("the forked child hung on the exemplar lock")
    assert os.waitstatus_to_exitcode(status) == 0
    assert set(_exemplars(tmp_path)) == {"parent"}
    assert set(_exemplars(tmp_path, pid)) == {"child"}
    exemplars.record("parent-again", 3.0, TRACE, SPAN, 300.0)
    assert set(_exemplars(tmp_path)) == {"parent", "parent-again"}


def test_an_unwritable_folder_disables_exemplars_without_raising(tmp_path, caplog):
    exemplars = ExemplarFile(tmp_path / "missing")
    with caplog.at_level(logging.WARNING, logger="meshlens"):
        exemplars.record("k", 1.0, TRACE, SPAN, 1.0)
        exemplars.record("k", 1.0, TRACE, SPAN, 1.0)
    assert len([r for r in caplog.records if "cannot write exemplars" in r.message]) == 1


# --- folding dead workers ------------------------------------------------------------


def _counter(directory: Path, pid: int | str, value: float, route: str = "/a") -> None:
    store = MmapedDict(str(directory / f"counter_{pid}.db"))
    store.write_value(mmap_key("requests", "requests_total", ["route"], [route], "Requests."), value, 0.0)
    store.close()


def _histogram(directory: Path, pid: int | str, buckets: dict[str, float], total: float) -> None:
    store = MmapedDict(str(directory / f"histogram_{pid}.db"))
    for le, count in buckets.items():
        key = mmap_key("latency_seconds", "latency_seconds_bucket", ["route", "le"], ["/a", le], "Latency.")
        store.write_value(key, count, 0.0)
    store.write_value(mmap_key("latency_seconds", "latency_seconds_sum", ["route"], ["/a"], "Latency."), total, 0.0)
    store.close()


def _gauge(directory: Path, pid: int, value: float) -> None:
    store = MmapedDict(str(directory / f"gauge_livesum_{pid}.db"))
    store.write_value(mmap_key("inflight", "inflight", [], [], "In flight."), value, 0.0)
    store.close()


def _samples(collector: GroupCollector) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def _pid_files(directory: Path, pid: int) -> list[str]:
    return [name for name in os.listdir(directory) if f"_{pid}." in name]


def test_dead_workers_are_folded_into_the_archive_exactly_once(tmp_path):
    live, dead = os.getpid(), _dead_pid()
    (tmp_path / ".lock").touch()
    _counter(tmp_path, live, 5)
    _counter(tmp_path, dead, 7)
    _histogram(tmp_path, live, {"0.1": 1, "1.0": 1, "+Inf": 0}, 0.6)
    _histogram(tmp_path, dead, {"0.1": 2, "1.0": 0, "+Inf": 1}, 3.1)
    _gauge(tmp_path, live, 1)
    _gauge(tmp_path, dead, 4)
    key = exemplar_key("latency_seconds_bucket", {"route": "/a", "le": "+Inf"})
    dead_exemplars = tmp_path / f"exemplars_{dead}.exemplars"
    multiprocess.write_exemplars(dead_exemplars, [(key, 2.5, 50.0, format(TRACE, "032x"), format(SPAN, "016x"))])
    (tmp_path / f"metrics_{dead}.serving").write_text("9464")

    collector = GroupCollector(tmp_path)
    for _ in range(3):  # the first scrape folds; the next ones must not count again
        values = _samples(collector)
        assert values[("requests_total", (("route", "/a"),))] == 12
        assert values[("latency_seconds_count", (("route", "/a"),))] == 5
        assert values[("latency_seconds_bucket", (("le", "0.1"), ("route", "/a")))] == 3
        assert values[("latency_seconds_bucket", (("le", "1.0"), ("route", "/a")))] == 4
        assert values[("latency_seconds_sum", (("route", "/a"),))] == pytest.approx(3.7)
        assert values[("inflight", ())] == 1  # a dead worker's live gauge is gone
        assert _pid_files(tmp_path, dead) == []
        assert not any("meshlens_archive_token" in name for name, _ in values)
    histogram = next(f for f in collector.collect() if f.name == "latency_seconds")
    inf = next(s for s in histogram.samples if s.labels.get("le") == "+Inf")
    assert inf.exemplar is not None and inf.exemplar.labels["trace_id"] == format(TRACE, "032x")

    another = _dead_pid()
    _counter(tmp_path, another, 100)
    _counter(tmp_path, another, 1, route="/b")
    values = _samples(collector)
    assert values[("requests_total", (("route", "/a"),))] == 112
    assert values[("requests_total", (("route", "/b"),))] == 1
    names = sorted(os.listdir(tmp_path))
    assert names == sorted([
        ".lock", "counter_archive.db", f"counter_{live}.db", "exemplars_archive.exemplars",
        f"gauge_livesum_{live}.db", "histogram_archive.db", f"histogram_{live}.db",
    ])  # fmt: skip


@pytest.mark.parametrize("interrupted", ["before the archive", "after the archive"])
def test_a_fold_interrupted_by_a_crash_is_finished_without_double_counting(tmp_path, interrupted):
    (tmp_path / ".lock").touch()
    collector = GroupCollector(tmp_path)
    _counter(tmp_path, _dead_pid(), 10)
    assert _samples(collector)[("requests_total", (("route", "/a"),))] == 10  # archive: 10
    dead = _dead_pid()
    _counter(tmp_path, dead, 3)
    token = "0123456789abcdef"
    renamed = tmp_path / f"counter_{dead}.db.reaping-{token}"
    os.replace(tmp_path / f"counter_{dead}.db", renamed)
    if interrupted == "after the archive":
        # The archive was rewritten with this fold's token; removing the file did not happen.
        archive = tmp_path / "counter_archive.db"
        multiprocess._write_archive(
            archive,
            (family for family in multiprocess.MultiProcessCollector.merge([str(archive), str(renamed)], False)
             if family.name != multiprocess._TOKEN_METRIC),
            token,
        )
    # Were folding to fail again, the scrape would still count the renamed file once.
    folding = GroupCollector(tmp_path)
    folding.reap_dead_workers = lambda: (_ for _ in ()).throw(OSError("disk full"))
    assert _samples(folding)[("requests_total", (("route", "/a"),))] == 13
    values = _samples(collector)
    assert values[("requests_total", (("route", "/a"),))] == 13
    assert not renamed.exists()
    assert _samples(collector)[("requests_total", (("route", "/a"),))] == 13


def test_per_process_gauges_prometheus_client_keeps_are_left_alone(tmp_path):
    (tmp_path / ".lock").touch()
    dead = _dead_pid()
    store = MmapedDict(str(tmp_path / f"gauge_all_{dead}.db"))
    store.write_value(mmap_key("config", "config", [], [], "Config."), 3, 0.0)
    store.close()
    values = _samples(GroupCollector(tmp_path))
    assert values[("config", (("pid", str(dead)),))] == 3
    assert (tmp_path / f"gauge_all_{dead}.db").exists()


# --- group folders -------------------------------------------------------------


@pytest.fixture
def groups_parent(tmp_path, monkeypatch):
    parent = tmp_path / "tmp"
    parent.mkdir()
    monkeypatch.setattr(multiprocess.tempfile, "gettempdir", lambda: str(parent))
    monkeypatch.setattr(multiprocess, "_membership_fd", None)
    return parent


def _hold_membership(directory: Path) -> int:
    fd = os.open(directory / ".members", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def test_orphaned_groups_go_but_live_ones_stay(groups_parent):
    dead = _dead_pid()
    orphan = groups_parent / f"meshlens-metrics-{os.getuid()}-{dead}-123"
    held = groups_parent / f"meshlens-metrics-{os.getuid()}-{_dead_pid()}-456"  # e.g. a daemonised master
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = multiprocess._start_time(sleeper.pid)
        running = groups_parent / f"meshlens-metrics-{os.getuid()}-{sleeper.pid}-{started}"
        for folder in (orphan, held, running):
            folder.mkdir()
            (folder / ".members").touch()
            (folder / "counter_1.db").touch()
        fd = _hold_membership(held)
        try:
            mine = multiprocess.group_dir(os.getpid())
            prepare(Group(mine, leader=False, server="test"))
            assert not orphan.exists()
            assert held.exists(), "a folder a live process holds is never removed"
            assert running.exists(), "a folder whose leader runs is never removed"
            assert mine.exists()
        finally:
            os.close(fd)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_leader_starts_afresh_unless_a_live_member_holds_the_folder(groups_parent):
    directory = multiprocess.group_dir(os.getpid())
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"x" * 16)
    fd = _hold_membership(directory)  # an earlier member, still running
    try:
        prepare(Group(directory, leader=True, server="test"))
        assert (directory / "counter_1.db").exists()
    finally:
        os.close(fd)
    os.close(multiprocess._membership_fd)  # this process leaves the group too
    multiprocess._membership_fd = None
    prepare(Group(directory, leader=True, server="test"))
    assert not (directory / "counter_1.db").exists()
    assert (directory / ".members").exists()


def test_the_leader_removes_the_folder_at_exit_once_nobody_holds_it(groups_parent):
    directory = multiprocess.group_dir(os.getpid())
    prepare(Group(directory, leader=True, server="test"))
    fd = _hold_membership(directory)  # a worker still running
    try:
        multiprocess._leave(directory, os.getpid())
        assert directory.exists()
    finally:
        os.close(fd)
    prepare(Group(directory, leader=True, server="test"))
    multiprocess._leave(directory, os.getpid() + 1)  # a forked worker runs the inherited handler
    assert directory.exists()
    multiprocess._leave(directory, os.getpid())
    assert not directory.exists()


def test_a_folder_owned_by_someone_else_is_refused(groups_parent, monkeypatch):
    directory = multiprocess.group_dir(os.getpid())
    directory.mkdir()
    monkeypatch.setattr(multiprocess.os, "getuid", lambda: os.geteuid() + 1)
    directory = directory.rename(multiprocess.group_dir(os.getpid()))  # the name carries the uid
    with pytest.raises(RuntimeError, match="not a folder owned by this user"):
        prepare(Group(directory, leader=False, server="test"))


def test_uwsgi_without_threads_warns_once_per_group(groups_parent, monkeypatch, caplog):
    fake = types.ModuleType("uwsgi")
    fake.has_threads = 0
    fake.worker_id = lambda: 2
    fake.masterpid = os.getppid
    fake.opt = {}
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    group = multiprocess.detect_group("")
    assert group == Group(multiprocess.group_dir(os.getppid()), leader=False, server="uwsgi")
    with caplog.at_level(logging.WARNING, logger="meshlens"):
        prepare(group)
        prepare(group)  # another worker of the same group
    warnings = [r.message for r in caplog.records if "uWSGI" in r.message]
    assert len(warnings) == 1
    assert "--enable-threads" in warnings[0]


def _fake_uwsgi(monkeypatch, **options: object) -> types.ModuleType:
    fake = types.ModuleType("uwsgi")
    fake.has_threads = 1
    fake.worker_id = lambda: 0
    fake.masterpid = lambda: 0  # no master: no uwsgidecorators
    fake.opt = options
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    return fake


def test_uwsgi_master_starts_no_thread_and_hooks_the_fork(groups_parent, monkeypatch, caplog):
    fake = _fake_uwsgi(monkeypatch)
    calls = []
    fake.post_fork_hook = lambda: calls.append("app's hook")
    group = multiprocess.detect_group("")
    assert group is not None and group.leader and group.threads_after_fork
    with caplog.at_level(logging.WARNING, logger="meshlens"):
        prepare(group)
    assert [r.message for r in caplog.records if "--py-call-uwsgi-fork-hooks" in r.message]
    started = []
    runtime = types.SimpleNamespace(runtime_metrics=None, start_background=lambda: started.append(os.getpid()))
    monkeypatch.setattr(_setup, "_runtime", runtime)
    monkeypatch.setitem(multiprocess._fork_state, "pid", -1)  # as in a freshly forked worker
    fake.post_fork_hook()
    assert calls == ["app's hook"]
    assert started == [os.getpid()]  # meshlens's threads start in the worker
    assert multiprocess._fork_state["pid"] == os.getpid()


@pytest.mark.parametrize(
    ("value", "safe"), [(True, True), (b"true", True), ([b"0", b"1"], True), (b"false", False), (False, False)]
)
def test_uwsgi_with_its_python_fork_hooks_runs_threads_in_the_master(groups_parent, monkeypatch, value, safe):
    fake = _fake_uwsgi(monkeypatch, **{"py-call-uwsgi-fork-hooks": value})
    group = multiprocess.detect_group("")
    assert group is not None and group.threads_after_fork is not safe
    prepare(group)
    assert hasattr(fake, "post_fork_hook") is not safe  # else Python's own fork handlers run


def test_uwsgi_master_with_a_configured_folder_starts_no_thread_either(groups_parent, monkeypatch):
    fake = _fake_uwsgi(monkeypatch)
    group = multiprocess.detect_group(str(groups_parent / "shared"))
    assert group is not None and group.server == "configured" and group.threads_after_fork
    prepare(group)
    assert hasattr(fake, "post_fork_hook")


def test_a_forked_child_does_not_keep_the_groups_file_lock(groups_parent):
    """A scrape in the parent holds the lock file shared at the fork; a reap (exclusive)
    must get it once that scrape is over, though the child lives on."""
    directory = multiprocess.group_dir(os.getpid())
    prepare(Group(directory, leader=True, server="test"))
    lock_file = directory / ".lock"
    holding, release = threading.Event(), threading.Event()

    def scrape() -> None:
        with multiprocess._locked(lock_file, fcntl.LOCK_SH):
            holding.set()
            release.wait(10)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    holding.wait(5)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child lives on until the parent is done
        os.close(write)
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    try:
        release.set()
        scraper.join()
        fd = os.open(lock_file, os.O_RDWR)
        try:
            deadline = time.monotonic() + 5
            while not multiprocess._try_flock(fd, fcntl.LOCK_EX):
                assert time.monotonic() < deadline, "the forked child still holds the lock"
                time.sleep(0.02)
        finally:
            os.close(fd)
    finally:
        os.close(write)
        os.waitpid(pid, 0)


# --- the /metrics port ------------------------------------------------------------


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_single_process_does_not_share_its_port(caplog):
    port = _port()
    first = MetricsServer(CollectorRegistry(), "127.0.0.1", port)
    second = MetricsServer(CollectorRegistry(), "127.0.0.1", port)
    assert first.start()
    try:
        with caplog.at_level(logging.WARNING, logger="meshlens"):
            assert not second.start()
        assert "cannot serve /metrics" in caplog.text
    finally:
        first.stop()


def test_a_group_shares_its_port_with_its_own_members_only(tmp_path, caplog):
    port = _port()
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    first = MetricsServer(CollectorRegistry(), "127.0.0.1", port, ours)
    assert first.start()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Another service's group: the port is taken, by nobody of its group.
        foreign = MetricsServer(CollectorRegistry(), "127.0.0.1", port, theirs)
        with caplog.at_level(logging.WARNING, logger="meshlens"):
            assert not foreign.start()
        assert "cannot serve /metrics" in caplog.text
        # A member of our group (its marker names a live process serving that port) joins.
        os.replace(ours / f"metrics_{os.getpid()}.serving", ours / f"metrics_{sleeper.pid}.serving")
        member = MetricsServer(CollectorRegistry(), "127.0.0.1", port, ours)
        assert member.start()
        member.stop()
    finally:
        sleeper.kill()
        sleeper.wait()
        first.stop()


@pytest.mark.parametrize(
    ("argv", "prefork"),
    [
        (["/venv/bin/celery", "-A", "app", "worker"], True),
        (["/venv/bin/celery", "-A", "app", "worker", "--pool", "prefork", "-c", "4"], True),
        (["/venv/bin/celery", "-A", "app", "worker", "--pool=solo"], False),
        (["/venv/bin/celery", "-A", "app", "worker", "-P", "threads"], False),
        (["/venv/bin/celery", "-A", "app", "worker", "-Pgevent"], False),
        (["/venv/bin/celery", "-A", "app", "beat"], False),
        (["/venv/bin/python", "manage.py", "worker"], False),
    ],
)
def test_celery_prefork_worker_detection(argv, prefork):
    from meshlens.multiprocess import _celery_prefork_worker

    assert _celery_prefork_worker(argv) is prefork
