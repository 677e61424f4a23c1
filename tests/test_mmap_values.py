"""meshlens.mmap_values: a pre-fork worker's metric values, in the files prometheus-client reads."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from meshlens import _forks, mmap_values


@pytest.fixture
def value_class_in(monkeypatch: pytest.MonkeyPatch):
    """Installs a value class writing to a folder, as meshlens does in a pre-fork worker."""

    def install(directory: Path, cls: type | None = None) -> type:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))  # prometheus-client's own class reads it
        chosen = cls if cls is not None else mmap_values.value_class(directory)
        monkeypatch.setattr(values, "ValueClass", chosen)
        return chosen

    return install


def _use_metrics(suffix: str) -> None:
    """The same updates, whichever value class is installed."""
    counter = Counter("jobs", "Jobs done.", ["queue"], registry=None)
    counter.labels("a").inc()
    counter.labels("b").inc(2.5)
    histogram = Histogram("latency_seconds", "Latency.", ["route"], buckets=(0.1, 1.0), registry=None)
    for amount in (0.05, 0.5, 5.0, 0.5):
        histogram.labels("/x").observe(amount)
    live = Gauge("in_flight", "In flight.", multiprocess_mode="livesum", registry=None)
    live.inc(3)
    live.dec()
    latest = Gauge("temperature", "Latest.", multiprocess_mode="mostrecent", registry=None)
    latest.set(21.5)
    everyone = Gauge("workers", "Per process.", multiprocess_mode="all", registry=None)
    everyone.set(1)


def _stored(path: Path) -> dict[str, float]:
    """What prometheus-client reads from one value file."""
    return {key: value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))}


def _merged(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_prometheus_client_reads_the_same_metrics_as_from_its_own_values(tmp_path, value_class_in):
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    theirs.mkdir()
    ours.mkdir()
    value_class_in(theirs, values.MultiProcessValue())
    _use_metrics("theirs")
    value_class_in(ours)
    _use_metrics("ours")
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs))
    merged = _merged(ours)
    assert merged == _merged(theirs)
    assert merged[("latency_seconds_bucket", (("le", "1.0"), ("route", "/x")))] == 3
    assert merged[("jobs_total", (("queue", "b"),))] == 2.5
    assert merged[("in_flight", ())] == 2


def test_a_value_stays_right_when_its_file_grows_and_is_mapped_again(tmp_path, value_class_in):
    value_class = value_class_in(tmp_path)
    first = value_class("counter", "early", "early_total", ("n",), ("0",), "Early.")
    first.inc(1)
    later = [value_class("counter", "many", "many_total", ("n",), (str(n),), "x" * 100) for n in range(2000)]
    assert os.path.getsize(tmp_path / f"counter_{os.getpid()}.db") > 64 * 1024  # grown and mapped again
    first.inc(2)
    later[-1].inc_both(4, first, 10)
    stored = _stored(tmp_path / f"counter_{os.getpid()}.db")
    assert stored[first._key] == 13
    assert stored[later[-1]._key] == 4
    assert first.get() == 13


def _run_in_child(body) -> int:
    """Runs ``body`` in a forked child; its exit status (0: every assertion held)."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # a child stuck on a lock fails the test instead of hanging it
        try:
            body()
        except BaseException:
            os._exit(1)
        os._exit(0)
    return os.waitpid(pid, 0)[1]


def test_a_forked_child_counts_from_zero_in_its_own_file(tmp_path, value_class_in):
    value_class = value_class_in(tmp_path)
    value = value_class("counter", "jobs", "jobs_total", (), (), "Jobs.")
    value.inc(5)
    files = value_class.files
    files.lock.acquire()  # as if a thread of the parent held it at the fork

    def child() -> None:
        value.inc(1)  # does not hang: the child has a lock of its own
        assert value.get() == 1

    try:
        status = _run_in_child(child)
    finally:
        files.lock.release()
    assert status == 0
    parent_file, = tmp_path.glob(f"counter_{os.getpid()}.db")
    child_files = [path for path in tmp_path.glob("counter_*.db") if path != parent_file]
    assert len(child_files) == 1
    assert [list(_stored(path).values()) for path in (parent_file, *child_files)] == [[5.0], [1.0]]
    assert value.get() == 5


@pytest.mark.parametrize(
    ("hook", "writes"),
    [(True, 1), (False, mmap_values.PID_CHECK_EVERY)],
    ids=["meshlens-uwsgi-hook-ran", "no-hook-pid-check"],
)
def test_a_fork_without_pythons_handlers(hook, writes, tmp_path, value_class_in):
    """uWSGI forks without Python's after-fork handlers: with meshlens's hook the child uses its
    own file from its first write; without it, from the periodic process id check."""
    value_class = value_class_in(tmp_path)
    value = value_class("counter", "jobs", "jobs_total", (), (), "Jobs.")
    value.inc(1)
    generation = _forks.GENERATION[0]

    def child() -> None:
        _forks.GENERATION[0] = generation  # as after a fork that ran no after-fork handler
        if hook:
            _forks.count()
        for _ in range(writes):
            value.inc(1)
        assert value_class.files.pid == os.getpid()

    assert _run_in_child(child) == 0
    assert len(list(tmp_path.glob("counter_*.db"))) == 2


def test_prometheus_clients_own_value_class_when_its_files_are_not_as_expected(tmp_path, monkeypatch):
    assert mmap_values.SUPPORTED  # the installed prometheus-client
    assert issubclass(mmap_values.value_class(tmp_path), mmap_values.MmapValue)
    monkeypatch.setattr(mmap_values, "SUPPORTED", False)
    assert mmap_values.value_class(tmp_path).__qualname__ == "MultiProcessValue.<locals>.MmapedValue"
