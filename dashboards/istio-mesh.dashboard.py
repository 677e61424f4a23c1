"""Istio mesh: requests between workloads as the Envoy sidecars see them, their errors and
duration, and how much of the traffic is mutual TLS.

Reads Istio's standard metrics, reported by the destination's sidecar (reporter="destination"),
so each request is counted once.
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

REQUESTS = c.ISTIO_REQUESTS
DURATION = c.ISTIO_REQUEST_DURATION
NAMESPACE_VARIABLE = "namespace"
WORKLOAD_VARIABLE = "workload"
SEEN_BY_DESTINATION = q.eq(c.REPORTER, "destination")
TO_WORKLOAD = (
    SEEN_BY_DESTINATION,
    q.regex(c.DESTINATION_WORKLOAD_NAMESPACE, q.variable(NAMESPACE_VARIABLE)),
    q.regex(c.DESTINATION_WORKLOAD, q.variable(WORKLOAD_VARIABLE)),
)
FAILED = q.regex(c.RESPONSE_CODE, "5..")
MUTUAL_TLS = q.eq(c.CONNECTION_SECURITY_POLICY, "mutual_tls")
EDGE = (c.SOURCE_WORKLOAD, c.DESTINATION_WORKLOAD)
EDGE_LEGEND = f"{p.legend(c.SOURCE_WORKLOAD)} -> {p.legend(c.DESTINATION_WORKLOAD)}"
ERROR_STEPS = p.thresholds("green", (0.01, "orange"), (0.05, "red"))


def requests(*extra: q.Match, by: tuple[str, ...] = EDGE) -> str:
    return q.sum_by(q.rate(REQUESTS, TO_WORKLOAD, *extra), *by)


dashboard = p.dashboard(
    uid="meshlens-istio-mesh",
    title="meshlens / Istio mesh",
    description="Requests between workloads seen by the sidecars: rate, 5xx ratio, duration, mutual TLS share.",
    tags=("istio",),
    variables=[
        p.datasource_variable(),
        p.label_variable(NAMESPACE_VARIABLE, REQUESTS, label=c.DESTINATION_WORKLOAD_NAMESPACE),
        p.label_variable(
            WORKLOAD_VARIABLE,
            REQUESTS,
            q.regex(c.DESTINATION_WORKLOAD_NAMESPACE, q.variable(NAMESPACE_VARIABLE)),
            label=c.DESTINATION_WORKLOAD,
        ),
    ],
    rows=[
        p.row(
            "Mesh",
            p.stat("Requests", p.query(requests(by=())), unit="reqps", decimals=1),
            p.stat(
                "5xx ratio",
                p.query(q.ratio(requests(FAILED, by=()), requests(by=()))),
                unit="percentunit",
                steps=ERROR_STEPS,
                decimals=2,
            ),
            p.stat(
                "Mutual TLS share",
                p.query(q.ratio(requests(MUTUAL_TLS, by=()), requests(by=()))),
                unit="percentunit",
                decimals=1,
                steps=p.thresholds("red", (0.99, "green")),
                description="Share of requests whose connection was mutual TLS (connection_security_policy).",
            ),
            p.stat("p99 duration", p.query(q.quantile(0.99, DURATION, TO_WORKLOAD)), unit="ms"),
        ),
        p.row(
            "Between workloads",
            p.timeseries("Requests per second", p.query(requests(), EDGE_LEGEND), unit="reqps"),
            p.timeseries(
                "5xx ratio",
                p.query(q.ratio(requests(FAILED), requests()), EDGE_LEGEND),
                unit="percentunit",
                steps=ERROR_STEPS,
            ),
            p.timeseries(
                "p99 duration", p.query(q.quantile(0.99, DURATION, TO_WORKLOAD, by=EDGE), EDGE_LEGEND), unit="ms"
            ),
            p.timeseries(
                "Mutual TLS share", p.query(q.ratio(requests(MUTUAL_TLS), requests()), EDGE_LEGEND), unit="percentunit"
            ),
        ),
        p.row(
            "TCP",
            p.timeseries(
                "Bytes sent",
                p.query(q.sum_by(q.rate(c.ISTIO_TCP_SENT_BYTES, TO_WORKLOAD), *EDGE), EDGE_LEGEND),
                unit="Bps",
            ),
            p.timeseries(
                "Bytes received",
                p.query(q.sum_by(q.rate(c.ISTIO_TCP_RECEIVED_BYTES, TO_WORKLOAD), *EDGE), EDGE_LEGEND),
                unit="Bps",
            ),
        ),
    ],
)
