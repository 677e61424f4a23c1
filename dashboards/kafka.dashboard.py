"""Kafka: what services produce and consume, how long processing a message takes, and how far
each consumer group lags behind.

Producer and consumer rates and processing time come from the meshlens runtime's Kafka
instrumentation (messaging.* semantic conventions); lag comes from the broker side, through
kafka-exporter, by group, topic and partition.
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

SENT = c.MESSAGING_CLIENT_SENT_MESSAGES
CONSUMED = c.MESSAGING_CLIENT_CONSUMED_MESSAGES
PROCESS = c.MESSAGING_PROCESS_DURATION
LAG = c.KAFKA_CONSUMERGROUP_LAG
ONE_SERVICE = q.SERVICE_FILTER
FAILED = q.ne(c.ERROR_TYPE, "")
TOPIC = c.MESSAGING_DESTINATION_NAME
GROUP = c.MESSAGING_CONSUMER_GROUP_NAME

dashboard = p.dashboard(
    uid="meshlens-kafka",
    title="meshlens / Kafka",
    description="Messages produced and consumed, processing time, and consumer lag by group, topic and partition.",
    tags=("kafka",),
    variables=p.service_variables(CONSUMED),
    rows=[
        p.row(
            "Producers",
            p.timeseries(
                "Messages sent per second, by topic",
                p.query(q.sum_by(q.rate(SENT, ONE_SERVICE), c.SERVICE, TOPIC), p.legend(c.SERVICE, TOPIC)),
                unit="ops",
            ),
            p.timeseries(
                "Failed sends per second",
                p.query(
                    q.sum_by(q.rate(SENT, ONE_SERVICE, FAILED), TOPIC, c.ERROR_TYPE), p.legend(TOPIC, c.ERROR_TYPE)
                ),
                unit="ops",
            ),
        ),
        p.row(
            "Consumers",
            p.timeseries(
                "Messages consumed per second, by group and topic",
                p.query(q.sum_by(q.rate(CONSUMED, ONE_SERVICE), GROUP, TOPIC), p.legend(GROUP, TOPIC)),
                unit="ops",
                width=8,
            ),
            p.timeseries(
                "Processing time, p50 and p99",
                p.query(q.quantile(0.5, PROCESS, ONE_SERVICE, by=(TOPIC,)), "p50 " + p.legend(TOPIC)),
                p.query(q.quantile(0.99, PROCESS, ONE_SERVICE, by=(TOPIC,)), "p99 " + p.legend(TOPIC)),
                unit="s",
                width=8,
            ),
            p.timeseries(
                "Processing failures per second",
                p.query(
                    q.sum_by(q.rate(PROCESS, ONE_SERVICE, FAILED), TOPIC, c.ERROR_TYPE), p.legend(TOPIC, c.ERROR_TYPE)
                ),
                unit="ops",
                width=8,
            ),
        ),
        p.row(
            "Consumer lag (broker side, kafka-exporter)",
            p.timeseries(
                "Lag by group and topic (messages)",
                p.query(q.sum_by(q.selector(LAG), c.CONSUMERGROUP, c.TOPIC), p.legend(c.CONSUMERGROUP, c.TOPIC)),
                description="Messages written to the topic that the group has not committed yet. "
                "Growing lag: consumers are down, too few, or too slow.",
            ),
            p.timeseries(
                "Lag growth per minute",
                p.query(
                    q.sum_by(f"delta({q.selector(LAG)}[5m])", c.CONSUMERGROUP, c.TOPIC),
                    p.legend(c.CONSUMERGROUP, c.TOPIC),
                ),
                description="Change of the lag over 5 minutes: above 0, the group is falling behind.",
            ),
            p.table(
                "Lag by partition, now",
                p.query(q.sum_by(q.selector(LAG), c.CONSUMERGROUP, c.TOPIC, c.PARTITION), instant=True),
                columns=["lag (messages)"],
                decimals=0,
            ),
        ),
    ],
)
