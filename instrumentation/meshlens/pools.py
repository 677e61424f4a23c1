"""Connection-pool metrics of SQLAlchemy engines (the ``db.client.connection.*`` conventions).

The contrib SQLAlchemy instrumentation records pool usage through the OpenTelemetry metrics
API, which meshlens does not export (its metrics come from the catalogue, on ``/metrics``).
This module records the catalogue's pool metrics itself:

- connections by state (``used``, ``idle``) and the pool's maximum, read from the pool
  after every checkout and checkin, so the gauges are current in every pre-fork worker
  without a sampling thread;
- the time a caller waits for a connection (``Pool.connect``, a new connection's set-up
  included), the callers waiting meanwhile, and the waits that time out.

The pool name is ``server.address:server.port/db.namespace`` of the engine's URL, as the
conventions suggest for pools without a name; pools of one name are added together.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import weakref
from types import ModuleType
from typing import Any

from meshlens import catalogue
from meshlens.instruments import Instruments

_logger = logging.getLogger("meshlens")

USED, IDLE = "used", "idle"


def pool_name(url: Any) -> str:
    """``host:port/database`` of a SQLAlchemy URL (parts it lacks are left out)."""
    host = url.host or ""
    port = f":{url.port}" if url.port else ""
    database = f"/{url.database}" if url.database else ""
    return f"{host}{port}{database}" or url.drivername


class PoolMetrics:
    """Records the pool metrics of every engine created after :meth:`install`."""

    def __init__(self, instruments: Instruments) -> None:
        self._connections = instruments[catalogue.DB_CLIENT_CONNECTION_COUNT]
        self._max = instruments[catalogue.DB_CLIENT_CONNECTION_MAX]
        self._pending = instruments[catalogue.DB_CLIENT_CONNECTION_PENDING_REQUESTS]
        self._wait = instruments[catalogue.DB_CLIENT_CONNECTION_WAIT_TIME]
        self._timeouts = instruments[catalogue.DB_CLIENT_CONNECTION_TIMEOUTS]
        self._names: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # -- recording ------------------------------------------------------------

    def register(self, engine: Any) -> None:
        pool = getattr(engine, "pool", None)
        if pool is None:
            return
        name = pool_name(engine.url)
        with self._lock:
            self._names[pool] = name
        # The timeouts series exists from the start, at 0: "no timeouts" is then a value that
        # rate() and alerts see, not an absent series.
        self._timeouts.labels(name)
        self.refresh(name)

    def refresh(self, name: str) -> None:
        """Sets the gauges of ``name`` from the state of its pools."""
        used = idle = maximum = 0
        with self._lock:
            pools = [pool for pool, pool_name_ in self._names.items() if pool_name_ == name]
        for pool in pools:
            checked_out = getattr(pool, "checkedout", None)
            checked_in = getattr(pool, "checkedin", None)
            if checked_out is None or checked_in is None:  # NullPool, StaticPool: nothing pooled
                continue
            used += checked_out()
            idle += checked_in()
            overflow = getattr(pool, "_max_overflow", -1)
            if overflow >= 0 and hasattr(pool, "size"):
                maximum += pool.size() + overflow
        self._connections.labels(name, USED).set(used)
        self._connections.labels(name, IDLE).set(idle)
        if maximum:
            self._max.labels(name).set(maximum)

    def checkout(self, pool: Any, connect: Any, timeout_error: type[BaseException]) -> Any:
        """Runs ``connect()``, a checkout from ``pool``, measured."""
        name = self._names.get(pool, "")
        pending = self._pending.labels(name)
        pending.inc()
        started = time.perf_counter()
        try:
            return connect()
        except timeout_error:
            self._timeouts.labels(name).inc()
            raise
        finally:
            pending.dec()
            self._wait.observe((name,), time.perf_counter() - started)
            if name:
                self.refresh(name)

    # -- installing -------------------------------------------------------------

    def install(self, _sqlalchemy: ModuleType) -> None:
        """Patches ``create_engine`` (everywhere the application can import it from) and the
        pool's checkout. Runs when the application imports ``sqlalchemy``."""
        import sqlalchemy
        import sqlalchemy.engine
        import sqlalchemy.engine.create
        from sqlalchemy import exc
        from sqlalchemy.pool import Pool

        metrics = self

        def watching(create: Any) -> Any:
            @functools.wraps(create)
            def create_engine(*args: Any, **kwargs: Any) -> Any:
                engine = create(*args, **kwargs)
                try:
                    metrics.register(engine)
                except Exception:  # pool metrics never cost the engine
                    _logger.debug("meshlens: could not watch an engine's pool", exc_info=True)
                return engine

            create_engine._meshlens = True  # type: ignore[attr-defined]
            return create_engine

        # Each name the application may call, wrapped as it is now: the contrib SQLAlchemy
        # instrumentation may already have replaced some of them with its own wrapper.
        for module in (sqlalchemy.engine.create, sqlalchemy.engine, sqlalchemy):
            current = getattr(module, "create_engine", None)
            if current is not None and not getattr(current, "_meshlens", False):
                module.create_engine = watching(current)
        if getattr(Pool.connect, "_meshlens", False):
            return

        original_connect = Pool.connect

        @functools.wraps(original_connect)
        def connect(pool: Any) -> Any:
            return metrics.checkout(pool, functools.partial(original_connect, pool), exc.TimeoutError)

        connect._meshlens = True  # type: ignore[attr-defined]
        Pool.connect = connect

        # A checkin is complete when the pool has taken the connection back (its "checkin"
        # event fires before): refresh after Pool._return_conn, where SQLAlchemy 1.4 to 2.0
        # return every connection.
        original_return = getattr(Pool, "_return_conn", None)
        if original_return is None:
            _logger.debug("meshlens: Pool._return_conn is gone; pool gauges refresh on checkout only")
            return

        @functools.wraps(original_return)
        def return_conn(pool: Any, record: Any) -> None:
            try:
                original_return(pool, record)
            finally:
                name = metrics._names.get(pool)
                if name:
                    metrics.refresh(name)

        Pool._return_conn = return_conn
