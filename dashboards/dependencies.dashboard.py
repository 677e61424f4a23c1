"""Outbound dependencies: what a service calls, how often, how slowly, and how often it fails.

HTTP clients by peer (server_address) and gRPC clients by service and method, from the
meshlens runtime's client histograms. Failures of an HTTP call are the ones with an
error_type (a status of 500 and above, or an exception such as a refused connection).
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

HTTP = c.HTTP_CLIENT_REQUEST_DURATION
GRPC = c.RPC_CLIENT_DURATION
ONE_SERVICE = q.SERVICE_FILTER
HTTP_FAILED = q.ne(c.ERROR_TYPE, "")
GRPC_FAILED = q.ne(c.RPC_GRPC_STATUS_CODE, "0")  # gRPC status 0 is OK
ERROR_STEPS = p.thresholds("green", (0.01, "orange"), (0.05, "red"))


def calls(spec: c.MetricSpec, *by: str) -> str:
    return q.sum_by(q.rate(spec, ONE_SERVICE), *by)


def failure_ratio(spec: c.MetricSpec, failed: q.Match, *by: str) -> str:
    return q.ratio(q.sum_by(q.rate(spec, ONE_SERVICE, failed), *by), calls(spec, *by))


dashboard = p.dashboard(
    uid="meshlens-dependencies",
    title="meshlens / Outbound dependencies",
    description="HTTP and gRPC calls a service makes, by peer: rate, failures and latency.",
    tags=("dependencies",),
    variables=p.service_variables(HTTP),
    rows=[
        p.row(
            "HTTP clients, by peer",
            p.timeseries(
                "Calls per second",
                p.query(calls(HTTP, c.SERVER_ADDRESS), p.legend(c.SERVER_ADDRESS)),
                unit="reqps",
                width=8,
            ),
            p.timeseries(
                "Failure ratio",
                p.query(failure_ratio(HTTP, HTTP_FAILED, c.SERVER_ADDRESS), p.legend(c.SERVER_ADDRESS)),
                unit="percentunit",
                steps=ERROR_STEPS,
                width=8,
            ),
            p.timeseries(
                "p99 latency",
                p.query(q.quantile(0.99, HTTP, ONE_SERVICE, by=(c.SERVER_ADDRESS,)), p.legend(c.SERVER_ADDRESS)),
                unit="s",
                width=8,
            ),
            p.timeseries(
                "Failures by type",
                p.query(
                    q.sum_by(q.rate(HTTP, ONE_SERVICE, HTTP_FAILED), c.SERVER_ADDRESS, c.ERROR_TYPE),
                    p.legend(c.SERVER_ADDRESS, c.ERROR_TYPE),
                ),
                unit="reqps",
                stacked=True,
                width=24,
                description="error_type is the status code, or the exception's class when there was no "
                "response (a refused connection, a timeout).",
            ),
        ),
        p.row(
            "gRPC clients, by service and method",
            p.timeseries(
                "Calls per second",
                p.query(calls(GRPC, c.RPC_SERVICE, c.RPC_METHOD), p.legend(c.RPC_SERVICE, c.RPC_METHOD)),
                unit="reqps",
                width=8,
            ),
            p.timeseries(
                "Failure ratio (status not OK)",
                p.query(failure_ratio(GRPC, GRPC_FAILED, c.RPC_SERVICE), p.legend(c.RPC_SERVICE)),
                unit="percentunit",
                steps=ERROR_STEPS,
                width=8,
            ),
            p.timeseries(
                "p99 latency",
                p.query(
                    q.quantile(0.99, GRPC, ONE_SERVICE, by=(c.RPC_SERVICE, c.RPC_METHOD)),
                    p.legend(c.RPC_SERVICE, c.RPC_METHOD),
                ),
                unit="s",
                width=8,
            ),
        ),
    ],
)
