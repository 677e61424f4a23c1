"""Databases and caches: PostgreSQL and Redis calls, and the SQLAlchemy connection pools.

Calls come from the meshlens runtime's db_client_operation_duration_seconds (one histogram for
every database client, told apart by db_system_name). The pool panels read the semantic
conventions' db.client.connection.* metrics.
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

CALLS = c.DB_CLIENT_OPERATION_DURATION
ONE_SERVICE = q.SERVICE_FILTER
FAILED = q.ne(c.ERROR_TYPE, "")
POSTGRESQL = q.eq(c.DB_SYSTEM_NAME, "postgresql")
REDIS = q.eq(c.DB_SYSTEM_NAME, "redis")
POOL = (c.SERVICE, c.DB_CLIENT_CONNECTION_POOL_NAME)


def system_row(title: str, system: q.Match) -> p.Row:
    by = (c.DB_OPERATION_NAME,)
    return p.row(
        title,
        p.timeseries(
            "Calls per second",
            p.query(q.sum_by(q.rate(CALLS, ONE_SERVICE, system), *by), p.legend(*by)),
            unit="ops",
            stacked=True,
            width=8,
        ),
        p.timeseries(
            "p99 latency",
            p.query(q.quantile(0.99, CALLS, ONE_SERVICE, system, by=by), p.legend(*by)),
            unit="s",
            width=8,
        ),
        p.timeseries(
            "Failures per second",
            p.query(
                q.sum_by(q.rate(CALLS, ONE_SERVICE, system, FAILED), c.DB_OPERATION_NAME, c.ERROR_TYPE),
                p.legend(c.DB_OPERATION_NAME, c.ERROR_TYPE),
            ),
            unit="ops",
            width=8,
        ),
    )


dashboard = p.dashboard(
    uid="meshlens-databases",
    title="meshlens / Databases and caches",
    description="PostgreSQL and Redis calls by operation, and SQLAlchemy connection pools.",
    tags=("databases",),
    variables=p.service_variables(CALLS),
    rows=[
        p.row(
            "All database clients",
            p.timeseries(
                "Calls per second by system",
                p.query(
                    q.sum_by(q.rate(CALLS, ONE_SERVICE), c.DB_SYSTEM_NAME, c.DB_NAMESPACE),
                    p.legend(c.DB_SYSTEM_NAME, c.DB_NAMESPACE),
                ),
                unit="ops",
            ),
            p.timeseries(
                "p99 latency by system",
                p.query(q.quantile(0.99, CALLS, ONE_SERVICE, by=(c.DB_SYSTEM_NAME,)), p.legend(c.DB_SYSTEM_NAME)),
                unit="s",
            ),
        ),
        system_row("PostgreSQL", POSTGRESQL),
        system_row("Redis", REDIS),
        p.row(
            "SQLAlchemy connection pools",
            p.timeseries(
                "Connections in use / open / max",
                p.query(
                    q.sum_by(
                        q.selector(
                            c.DB_CLIENT_CONNECTION_COUNT, ONE_SERVICE, q.eq(c.DB_CLIENT_CONNECTION_STATE, "used")
                        ),
                        *POOL,
                    ),
                    "used " + p.legend(*POOL),
                ),
                p.query(
                    q.sum_by(q.selector(c.DB_CLIENT_CONNECTION_COUNT, ONE_SERVICE), *POOL), "open " + p.legend(*POOL)
                ),
                p.query(q.sum_by(q.selector(c.DB_CLIENT_CONNECTION_MAX, ONE_SERVICE), *POOL), "max " + p.legend(*POOL)),
                width=8,
            ),
            p.timeseries(
                "Callers waiting for a connection",
                p.query(
                    q.sum_by(q.selector(c.DB_CLIENT_CONNECTION_PENDING_REQUESTS, ONE_SERVICE), *POOL), p.legend(*POOL)
                ),
                width=8,
            ),
            p.timeseries(
                "Checkout wait, p99 / checkout timeouts per second",
                p.query(
                    q.quantile(0.99, c.DB_CLIENT_CONNECTION_WAIT_TIME, ONE_SERVICE, by=POOL),
                    "wait p99 " + p.legend(*POOL),
                ),
                p.query(
                    q.sum_by(q.rate(c.DB_CLIENT_CONNECTION_TIMEOUTS, ONE_SERVICE), *POOL),
                    "timeouts/s " + p.legend(*POOL),
                ),
                width=8,
            ),
        ),
    ],
)
