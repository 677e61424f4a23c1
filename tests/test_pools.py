"""SQLAlchemy connection-pool metrics against the local PostgreSQL: checkouts, waits, timeouts."""

from __future__ import annotations

import os
import threading
import time

import pytest
import sqlalchemy
import sqlalchemy.engine
import sqlalchemy.engine.create
from sqlalchemy.pool import Pool

from meshlens import catalogue
from meshlens.instruments import Instruments
from meshlens.pools import PoolMetrics, pool_name

pytestmark = pytest.mark.slow

PG_URL = f"postgresql+psycopg://{os.environ.get('PG_USER', 'postgres')}@127.0.0.1:5432/test"
POOL = "127.0.0.1:5432/test"


@pytest.fixture
def instruments(monkeypatch):
    # install() patches SQLAlchemy process-wide: put the originals back afterwards.
    for module in (sqlalchemy, sqlalchemy.engine, sqlalchemy.engine.create):
        monkeypatch.setattr(module, "create_engine", module.create_engine)
    monkeypatch.setattr(Pool, "connect", Pool.connect)
    monkeypatch.setattr(Pool, "_return_conn", Pool._return_conn)
    instruments = Instruments(100)
    PoolMetrics(instruments).install(sqlalchemy)
    return instruments


def _value(instruments, spec, suffix="", **labels):
    for family in instruments[spec].collect():
        for sample in family.samples:
            if sample.name == spec.base_name + suffix and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def _connections(instruments, state):
    return _value(instruments, catalogue.DB_CLIENT_CONNECTION_COUNT,
                  **{catalogue.DB_CLIENT_CONNECTION_POOL_NAME: POOL, catalogue.DB_CLIENT_CONNECTION_STATE: state})


def test_checkouts_waits_and_timeouts_are_measured(instruments):
    engine = sqlalchemy.create_engine(PG_URL, pool_size=2, max_overflow=1, pool_timeout=0.3)
    pool = {catalogue.DB_CLIENT_CONNECTION_POOL_NAME: POOL}
    assert _value(instruments, catalogue.DB_CLIENT_CONNECTION_MAX, **pool) == 3
    held = [engine.connect() for _ in range(3)]
    assert _connections(instruments, "used") == 3
    assert _connections(instruments, "idle") == 0

    waiting = threading.Event()

    def fourth():
        waiting.set()
        with pytest.raises(sqlalchemy.exc.TimeoutError):
            engine.connect()

    thread = threading.Thread(target=fourth)
    thread.start()
    waiting.wait()
    time.sleep(0.1)
    assert _value(instruments, catalogue.DB_CLIENT_CONNECTION_PENDING_REQUESTS, **pool) == 1
    thread.join()
    assert _value(instruments, catalogue.DB_CLIENT_CONNECTION_PENDING_REQUESTS, **pool) == 0
    assert _value(instruments, catalogue.DB_CLIENT_CONNECTION_TIMEOUTS, "_total", **pool) == 1

    held.pop().close()
    assert (_connections(instruments, "used"), _connections(instruments, "idle")) == (2, 1)
    for connection in held:
        connection.close()
    assert (_connections(instruments, "used"), _connections(instruments, "idle")) == (0, 2)

    waits = _value(instruments, catalogue.DB_CLIENT_CONNECTION_WAIT_TIME, "_count", **pool)
    assert waits == 4, "every checkout is timed, the one that timed out included"
    assert _value(instruments, catalogue.DB_CLIENT_CONNECTION_WAIT_TIME, "_sum", **pool) >= 0.3
    engine.dispose()


def test_engines_of_one_database_add_up(instruments):
    first = sqlalchemy.create_engine(PG_URL, pool_size=1, max_overflow=0)
    second = sqlalchemy.engine.create_engine(PG_URL, pool_size=2, max_overflow=0)
    with first.connect(), second.connect():
        assert _connections(instruments, "used") == 2
    assert _value(instruments, catalogue.DB_CLIENT_CONNECTION_MAX,
                  **{catalogue.DB_CLIENT_CONNECTION_POOL_NAME: POOL}) == 3
    first.dispose()
    second.dispose()


def test_pool_names_follow_the_conventions():
    url = sqlalchemy.engine.make_url
    assert pool_name(url("postgresql://u@db.internal:6432/orders")) == "db.internal:6432/orders"
    assert pool_name(url("postgresql://u@db.internal/orders")) == "db.internal/orders"
    assert pool_name(url("sqlite://")) == "sqlite"
