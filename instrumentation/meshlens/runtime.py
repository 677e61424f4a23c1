"""Python runtime metrics: CPU, memory, threads, open files, GC, and event-loop lag.

Values are sampled from the process (``/proc`` where there is one) when a scrape
arrives, and, in pre-fork workers whose scrape another process answers, by a
background thread every ``MESHLENS_RUNTIME_INTERVAL`` seconds.

Event-loop lag is measured on every asyncio loop that serves a request: a callback
scheduled for a known time records how late it ran, which is how long every other
coroutine waited behind blocking code.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import os
import threading
import weakref
from pathlib import Path

from meshlens import catalogue
from meshlens.instruments import Instruments

_logger = logging.getLogger("meshlens")

LOOP_PROBE_INTERVAL_S = 0.25
"""How often each event loop is probed: short enough to see a 100 ms stall, cheap at 4 calls a second."""

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _memory() -> tuple[int, int] | None:
    """(resident, virtual) bytes."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
        return int(fields[1]) * _PAGE_SIZE, int(fields[0]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        try:
            import resource

            # ru_maxrss is the peak, in KiB on Linux and bytes on macOS: the best available.
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 0
        except Exception:
            return None


def _threads() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return threading.active_count()


def _open_files() -> int | None:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return None


class RuntimeMetrics:
    """Samples the process into the catalogue's runtime instruments."""

    def __init__(self, instruments: Instruments) -> None:
        self._cpu = instruments[catalogue.PROCESS_CPU_TIME]
        self._memory = instruments[catalogue.PROCESS_MEMORY_USAGE].labels()
        self._virtual = instruments[catalogue.PROCESS_MEMORY_VIRTUAL].labels()
        self._threads = instruments[catalogue.PROCESS_THREAD_COUNT].labels()
        self._files = instruments[catalogue.PROCESS_OPEN_FILE_DESCRIPTOR_COUNT].labels()
        self._gc_collections = instruments[catalogue.CPYTHON_GC_COLLECTIONS]
        self._gc_collected = instruments[catalogue.CPYTHON_GC_COLLECTED_OBJECTS]
        self._gc_uncollectable = instruments[catalogue.CPYTHON_GC_UNCOLLECTABLE_OBJECTS]
        self._workers = instruments[catalogue.PROCESS_WORKERS].labels()
        self._lock = threading.Lock()
        self._cpu_seen = {"user": 0.0, "system": 0.0}
        self._gc_seen = [(0, 0, 0) for _ in gc.get_stats()]
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._interval = 5.0
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.after_fork)

    def sample(self) -> None:
        """Brings every runtime instrument up to date."""
        with self._lock:
            self._workers.set(1)
            times = os.times()
            for mode, total in (("user", times.user), ("system", times.system)):
                delta = total - self._cpu_seen[mode]
                if delta > 0:
                    self._cpu.labels(mode).inc(delta)
                    self._cpu_seen[mode] = total
            memory = _memory()
            if memory is not None:
                self._memory.set(memory[0])
                self._virtual.set(memory[1])
            self._threads.set(_threads())
            files = _open_files()
            if files is not None:
                self._files.set(files)
            for generation, stats in enumerate(gc.get_stats()):
                now = (stats["collections"], stats["collected"], stats["uncollectable"])
                seen = self._gc_seen[generation]
                label = str(generation)
                for counter, current, before in zip(
                    (self._gc_collections, self._gc_collected, self._gc_uncollectable), now, seen,
                    strict=True,
                ):
                    # Every generation's series exists, at 0 until something happens.
                    child = counter.labels(label)
                    if current > before:
                        child.inc(current - before)
                self._gc_seen[generation] = now

    def start_background(self, interval_s: float) -> None:
        """Samples every ``interval_s`` seconds from a daemon thread (pre-fork workers)."""
        self._interval = interval_s
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="meshlens-runtime", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:  # a sampling error costs one sample, never the thread
                _logger.debug("meshlens: runtime sample failed", exc_info=True)
            if self._stop.wait(self._interval):
                return

    def stop(self) -> None:
        self._stop.set()

    def after_fork(self) -> None:
        """Resets per-process state in a forked child (registered for os.fork; in uWSGI's
        workers, which it forks without Python's hooks, meshlens's post-fork hook calls it)."""
        # A forked child starts with zero CPU time of its own; its GC counts are inherited.
        self._lock = threading.Lock()
        self._cpu_seen = {"user": 0.0, "system": 0.0}
        if self._thread is not None:  # threads do not survive fork(): start the child's own
            self.start_background(self._interval)


class EventLoopLagMonitor:
    """Probes each asyncio loop that serves requests, once it is first seen."""

    def __init__(self, instruments: Instruments, interval_s: float = LOOP_PROBE_INTERVAL_S) -> None:
        self._lag = instruments[catalogue.ASYNCIO_EVENT_LOOP_LAG]
        self._interval = interval_s
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def watch_current_loop(self) -> None:
        """Called at the start of each server span: cheap when the loop is already watched."""
        loop = asyncio._get_running_loop()
        if loop is None or loop in self._loops:
            return
        self._loops.add(loop)
        self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        expected = loop.time() + self._interval
        try:
            # In an empty context: the first probe is scheduled from inside a request, and
            # its context (the request's span) would otherwise be carried from probe to probe.
            loop.call_at(expected, self._probe, loop, expected, context=contextvars.Context())
        except RuntimeError:  # the loop is closed
            self._loops.discard(loop)

    def _probe(self, loop: asyncio.AbstractEventLoop, expected: float) -> None:
        self._lag.observe((), max(0.0, loop.time() - expected))
        self._schedule(loop)
