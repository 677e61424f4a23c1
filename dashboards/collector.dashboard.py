"""OpenTelemetry Collector health: spans accepted and refused by its receivers, delivered and lost
by its exporters, its sending queues and memory; and, on the services' side, what the meshlens
runtime exported, dropped or failed to send.
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

IN_NAMESPACE = q.NAMESPACE_FILTER
PER_RECEIVER = (c.POD, c.RECEIVER)
PER_EXPORTER = (c.POD, c.EXPORTER)
LOSS_STEPS = p.thresholds("green", (0.001, "red"))


def spans(spec: c.MetricSpec, *by: str) -> str:
    return q.sum_by(q.rate(spec, IN_NAMESPACE), *by)


dashboard = p.dashboard(
    uid="meshlens-collector",
    title="meshlens / OpenTelemetry Collector",
    description="Spans in and out of the collector, what it refuses or drops, its queues and memory; "
    "and the services' own exporters.",
    tags=("collector",),
    variables=p.namespace_variables(c.OTELCOL_RECEIVER_ACCEPTED_SPANS),
    rows=[
        p.row(
            "Now",
            p.stat("Spans accepted", p.query(spans(c.OTELCOL_RECEIVER_ACCEPTED_SPANS)), unit="ops", decimals=0),
            p.stat("Spans refused", p.query(spans(c.OTELCOL_RECEIVER_REFUSED_SPANS)), unit="ops", steps=LOSS_STEPS),
            p.stat(
                "Spans that failed to send",
                p.query(spans(c.OTELCOL_EXPORTER_SEND_FAILED_SPANS)),
                unit="ops",
                steps=LOSS_STEPS,
            ),
            p.stat(
                "Spans dropped (queue full)",
                p.query(spans(c.OTELCOL_EXPORTER_ENQUEUE_FAILED_SPANS)),
                unit="ops",
                steps=LOSS_STEPS,
            ),
        ),
        p.row(
            "Receivers",
            p.timeseries(
                "Accepted spans per second",
                p.query(spans(c.OTELCOL_RECEIVER_ACCEPTED_SPANS, *PER_RECEIVER), p.legend(*PER_RECEIVER)),
                unit="ops",
            ),
            p.timeseries(
                "Refused spans per second",
                p.query(spans(c.OTELCOL_RECEIVER_REFUSED_SPANS, *PER_RECEIVER), p.legend(*PER_RECEIVER)),
                unit="ops",
                description="Usually the memory limiter pushing back: the collector is at its limit.",
            ),
        ),
        p.row(
            "Processors and exporters",
            p.timeseries(
                "Items into / out of each processor",
                p.query(spans(c.OTELCOL_PROCESSOR_INCOMING_ITEMS, c.PROCESSOR), "in " + p.legend(c.PROCESSOR)),
                p.query(spans(c.OTELCOL_PROCESSOR_OUTGOING_ITEMS, c.PROCESSOR), "out " + p.legend(c.PROCESSOR)),
                unit="ops",
                width=8,
                description="What goes in and does not come out was dropped or sampled away (tail sampling).",
            ),
            p.timeseries(
                "Exporters: sent / failed / dropped",
                p.query(spans(c.OTELCOL_EXPORTER_SENT_SPANS, *PER_EXPORTER), "sent " + p.legend(*PER_EXPORTER)),
                p.query(
                    spans(c.OTELCOL_EXPORTER_SEND_FAILED_SPANS, *PER_EXPORTER), "failed " + p.legend(*PER_EXPORTER)
                ),
                p.query(
                    spans(c.OTELCOL_EXPORTER_ENQUEUE_FAILED_SPANS, *PER_EXPORTER), "dropped " + p.legend(*PER_EXPORTER)
                ),
                unit="ops",
                width=8,
            ),
            p.timeseries(
                "Sending queue fill",
                p.query(
                    q.ratio(
                        q.sum_by(q.selector(c.OTELCOL_EXPORTER_QUEUE_SIZE, IN_NAMESPACE), *PER_EXPORTER),
                        q.sum_by(q.selector(c.OTELCOL_EXPORTER_QUEUE_CAPACITY, IN_NAMESPACE), *PER_EXPORTER),
                    ),
                    p.legend(*PER_EXPORTER),
                ),
                unit="percentunit",
                width=8,
                steps=p.thresholds("green", (0.8, "red")),
                description="At 100% new batches are dropped.",
            ),
            p.timeseries(
                "Collector resident memory",
                p.query(q.sum_by(q.selector(c.OTELCOL_PROCESS_MEMORY_RSS, IN_NAMESPACE), c.POD), p.legend(c.POD)),
                unit="bytes",
                width=24,
            ),
        ),
        p.row(
            "Services' exporters (meshlens runtime)",
            p.timeseries(
                "Spans exported per second",
                p.query(spans(c.MESHLENS_SPANS_EXPORTED, c.SERVICE), p.legend(c.SERVICE)),
                unit="ops",
                width=8,
            ),
            p.timeseries(
                "Spans dropped per second, by reason",
                p.query(spans(c.MESHLENS_SPANS_DROPPED, c.SERVICE, c.REASON), p.legend(c.SERVICE, c.REASON)),
                unit="ops",
                width=8,
            ),
            p.timeseries(
                "Failed exports per second",
                p.query(spans(c.MESHLENS_EXPORT_FAILURES, c.SERVICE, c.SIGNAL), p.legend(c.SERVICE, c.SIGNAL)),
                unit="ops",
                width=8,
            ),
            p.timeseries(
                "Export queue fill",
                p.query(
                    q.ratio(
                        q.sum_by(q.selector(c.MESHLENS_SPAN_QUEUE_SIZE, IN_NAMESPACE), c.SERVICE),
                        q.sum_by(q.selector(c.MESHLENS_SPAN_QUEUE_CAPACITY, IN_NAMESPACE), c.SERVICE),
                    ),
                    p.legend(c.SERVICE),
                ),
                unit="percentunit",
                width=12,
            ),
            p.timeseries(
                "Metrics past their label-set limit (observations per second)",
                p.query(spans(c.MESHLENS_METRIC_OVERFLOW, c.SERVICE, c.METRIC), p.legend(c.SERVICE, c.METRIC)),
                unit="ops",
                width=12,
                description="Above 0, the metric's per-label panels no longer show every label set.",
            ),
        ),
    ],
)
