"""Service overview: is the service healthy right now, and if not, which routes and since when.

Rate, errors and duration (RED) of the HTTP requests a service serves, from the meshlens
runtime's request-duration histogram. The heatmap's exemplar dots are sampled requests: each
opens its trace in Jaeger.
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

REQUESTS = c.HTTP_SERVER_REQUEST_DURATION
ONE_SERVICE = q.SERVICE_FILTER
FAILED = q.regex(c.HTTP_RESPONSE_STATUS_CODE, "5..")
ERROR_STEPS = p.thresholds("green", (0.01, "orange"), (0.05, "red"))
TABLE_WINDOW = "5m"


def requests(*by: str, window: str = q.RATE_INTERVAL) -> str:
    return q.sum_by(q.rate(REQUESTS, ONE_SERVICE, window=window), *by)


def error_ratio(*by: str, window: str = q.RATE_INTERVAL) -> str:
    return q.ratio(q.sum_by(q.rate(REQUESTS, ONE_SERVICE, FAILED, window=window), *by), requests(*by, window=window))


def latency(quantile: float, *by: str, window: str = q.RATE_INTERVAL) -> str:
    return q.quantile(quantile, REQUESTS, ONE_SERVICE, by=by, window=window)


PER_ROUTE = (c.SERVICE, c.HTTP_ROUTE)

dashboard = p.dashboard(
    uid="meshlens-service-overview",
    title="meshlens / Service overview",
    description="Requests, errors and latency of the HTTP requests a service serves, per route.",
    tags=("red",),
    variables=p.service_variables(REQUESTS),
    rows=[
        p.row(
            "Now",
            p.stat("Requests", p.query(requests()), unit="reqps", decimals=1),
            p.stat("Errors (5xx)", p.query(error_ratio()), unit="percentunit", steps=ERROR_STEPS, decimals=2),
            p.stat(
                "p99 latency",
                p.query(latency(0.99)),
                unit="s",
                decimals=3,
                steps=p.thresholds("green", (0.5, "orange"), (1.0, "red")),
            ),
            p.stat(
                "In flight",
                p.query(q.sum_by(q.selector(c.HTTP_SERVER_ACTIVE_REQUESTS, ONE_SERVICE))),
                description="Requests being served right now, summed over workers and pods.",
            ),
        ),
        p.row(
            "Traffic and errors",
            p.timeseries("Requests per second", p.query(requests(c.SERVICE), p.legend(c.SERVICE)), unit="reqps"),
            p.timeseries(
                "Error ratio (5xx)",
                p.query(error_ratio(c.SERVICE), p.legend(c.SERVICE)),
                unit="percentunit",
                steps=ERROR_STEPS,
            ),
            p.timeseries(
                "Responses by status code",
                p.query(requests(c.HTTP_RESPONSE_STATUS_CODE), p.legend(c.HTTP_RESPONSE_STATUS_CODE)),
                unit="reqps",
                stacked=True,
                width=24,
            ),
        ),
        p.row(
            "Latency",
            p.timeseries(
                "Latency percentiles",
                p.query(latency(0.5), "p50"),
                p.query(latency(0.95), "p95"),
                p.query(latency(0.99), "p99"),
                unit="s",
            ),
            p.heatmap(
                "Latency distribution (dots: sampled requests, click for the trace)",
                REQUESTS,
                ONE_SERVICE,
                description="Requests per latency bucket over time.",
            ),
        ),
        p.row(
            "Routes",
            p.table(
                "Per route, last 5 minutes",
                p.query(requests(*PER_ROUTE, window=TABLE_WINDOW), instant=True),
                p.query(f"100 * {error_ratio(*PER_ROUTE, window=TABLE_WINDOW)}", instant=True),
                p.query(f"1000 * {latency(0.99, *PER_ROUTE, window=TABLE_WINDOW)}", instant=True),
                columns=["requests/s", "errors %", "p99 ms"],
                description="Routes are templates (/items/{id}), never raw paths.",
            ),
        ),
    ],
)
