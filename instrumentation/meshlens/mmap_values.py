"""Metric values of a pre-fork worker, kept in its memory-mapped files as prometheus-client keeps them.

prometheus-client's multiprocess value (``prometheus_client.values.MultiProcessValue``) pays two
things on every update that a worker serving requests does not need to pay: a system call
(``os.getpid()``, to notice that the process was forked) and a search for the value's place in
its file by key. A gunicorn request makes four updates (in-flight up and down, a histogram's
sum and bucket): with this module's values instead, a Flask request under gunicorn costs about
11 to 13k instructions fewer (``benchmarks/overhead/instructions.py --multiprocess``).

:func:`value_class` makes a drop-in value class that writes the same files: the same names
(``<type>_<pid>.db``), keys and layout, through prometheus-client's own ``MmapedDict``. Its
readers (``MultiProcessCollector``, ``mark_process_dead``) and :mod:`meshlens.multiprocess`
read them unchanged. What differs:

- A fork is noticed through :mod:`meshlens._forks`'s counter; the process id is still compared
  every few thousand writes, for a fork made some other way.
- Each value keeps its place in the file; the file's mapping is read at each write, as
  ``MmapedDict`` replaces it when the file grows.
- :meth:`MmapValue.inc_both` adds to two values under one lock (a histogram's sum and bucket).

As in prometheus-client, one lock serves every value of the process, and a write rewrites the
whole 16-byte value and timestamp with one slice assignment (``struct.pack_into`` clears the
bytes first, and a concurrent reader could see the zeros).
"""

from __future__ import annotations

import os
import struct
import threading
import weakref
from pathlib import Path
from typing import Any

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from meshlens import _forks

_PACK_VALUE = struct.Struct("dd").pack
"""An entry's value and timestamp, as ``MmapedDict`` lays them out."""
PID_CHECK_EVERY = 4096
"""Writes between two comparisons of the process id, for forks made without Python's handlers."""
_GENERATION = _forks.GENERATION

SUPPORTED = {"_m", "_positions"} <= set(MmapedDict.__init__.__code__.co_names)
"""Whether this prometheus-client's ``MmapedDict`` keeps its mapping and its entries' places
where this module reads them (its private ``_m`` and ``_positions``); if not, meshlens uses
prometheus-client's own multiprocess value."""

_all_files: weakref.WeakSet[ProcessFiles] = weakref.WeakSet()


def after_fork_in_child() -> None:
    """A fresh lock for every value class's files: a thread of the parent may have held one
    at the fork, and nobody would ever release it in the child."""
    for files in list(_all_files):
        files.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)


class ProcessFiles:
    """The value files of this process and every value kept in them.

    Opened on first use and again in a forked child, whose values start from zero in files of
    its own pid, as prometheus-client's do."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = str(directory)
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.generation = _GENERATION[0]
        self.writes_left = PID_CHECK_EVERY
        self._files: dict[str, MmapedDict] = {}
        self._values: list[MmapValue] = []
        _all_files.add(self)

    def file(self, prefix: str) -> MmapedDict:
        """With the lock held."""
        found = self._files.get(prefix)
        if found is None:
            found = MmapedDict(os.path.join(self.directory, f"{prefix}_{self.pid}.db"))
            self._files[prefix] = found
        return found

    def add(self, value: MmapValue) -> None:
        with self.lock:
            self.check_process()
            value.open()
            self._values.append(value)

    def check_process(self) -> None:
        """With the lock held: after a fork, reopens every value in this process's own files."""
        self.generation = _GENERATION[0]
        self.writes_left = PID_CHECK_EVERY
        pid = os.getpid()
        if pid == self.pid:
            return
        self.pid = pid
        for file in self._files.values():
            file.close()  # this process's copy of the parent's mapping
        self._files.clear()
        for value in self._values:
            value.open()


class MmapValue:
    """One float of a metric, in memory and in this process's file for its type.

    The interface prometheus-client's metrics expect of ``values.ValueClass``."""

    _multiprocess = True
    files: ProcessFiles  # set on the class by value_class()

    __slots__ = ("_file", "_key", "_prefix", "_slice", "_timestamp", "_value")

    def __init__(
        self,
        typ: str,
        metric_name: str,
        name: str,
        labelnames: Any,
        labelvalues: Any,
        help_text: str,
        multiprocess_mode: str = "",
        **_: Any,
    ) -> None:
        self._prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
        self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
        self._value = 0.0
        self._timestamp = 0.0
        self.files.add(self)

    def open(self) -> None:
        """With the lock held: finds (or adds) this value in the process's file and reads it."""
        file = self.files.file(self._prefix)
        self._value, self._timestamp = file.read_value(self._key)
        self._file = file
        position = file._positions[self._key]  # where read_value put it; fixed for the file's life
        self._slice = slice(position, position + 16)

    def _write(self) -> None:
        """With the lock held and the process checked."""
        self._file._m[self._slice] = _PACK_VALUE(self._value, self._timestamp)

    def inc(self, amount: float) -> None:
        files = self.files
        with files.lock:
            files.writes_left -= 1
            if files.generation != _GENERATION[0] or not files.writes_left:
                files.check_process()
            value = self._value + amount
            self._value = value
            self._timestamp = 0.0
            self._file._m[self._slice] = _PACK_VALUE(value, 0.0)

    def inc_both(self, amount: float, other: MmapValue, other_amount: float) -> None:
        """``self.inc(amount)`` and ``other.inc(other_amount)`` under one lock."""
        files = self.files
        with files.lock:
            files.writes_left -= 1
            if files.generation != _GENERATION[0] or not files.writes_left:
                files.check_process()
            # Written out, not looped over the two: a loop costs a quarter more here.
            total, other_total = self._value + amount, other._value + other_amount
            self._value, other._value = total, other_total
            self._timestamp = other._timestamp = 0.0
            self._file._m[self._slice] = _PACK_VALUE(total, 0.0)
            other._file._m[other._slice] = _PACK_VALUE(other_total, 0.0)

    def set(self, value: float, timestamp: float | None = None) -> None:
        files = self.files
        with files.lock:
            files.check_process()
            self._value = value
            self._timestamp = timestamp or 0.0
            self._write()

    def get(self) -> float:
        files = self.files
        with files.lock:
            files.check_process()
            return self._value

    def set_exemplar(self, exemplar: Any) -> None:
        """Exemplars of pre-fork workers go to meshlens's exemplar files (:mod:`meshlens.multiprocess`)."""

    def get_exemplar(self) -> None:
        return None


def value_class(directory: str | Path) -> type[Any]:
    """The class for ``prometheus_client.values.ValueClass``, writing to ``directory``: this
    module's when :data:`SUPPORTED`, else prometheus-client's own multiprocess value (which
    finds the folder through ``PROMETHEUS_MULTIPROC_DIR``). Each call makes a class with files
    of its own."""
    if not SUPPORTED:
        return values.MultiProcessValue()  # type: ignore[no-any-return]
    return type("MmapValue", (MmapValue,), {"__slots__": (), "files": ProcessFiles(directory)})
