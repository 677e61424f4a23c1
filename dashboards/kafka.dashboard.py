"""Kafka: what services produce and consume, how long processing a message takes, and how far
each consumer group lags behind.

Producer and consumer rates and processing time come from the meshlens runtime's Kafka
instrumentation (messaging.* semantic conventions). Lag is shown twice, by group, topic and
partition: as the consuming services measure it (meshlens, from the client: the high watermark
minus the committed offset) beside the broker side (kafka-exporter). The client-side series sit
on the same /metrics as the consumers' processing times and exemplars, so a lag spike leads to
the traces of the messages processed at that moment; the broker side still shows a group whose
consumers are all down.
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

SENT = c.MESSAGING_CLIENT_SENT_MESSAGES
CONSUMED = c.MESSAGING_CLIENT_CONSUMED_MESSAGES
PROCESS = c.MESSAGING_PROCESS_DURATION
SEND = c.MESSAGING_CLIENT_OPERATION_DURATION
LAG = c.KAFKA_CONSUMERGROUP_LAG
CLIENT_LAG = c.MESSAGING_KAFKA_CONSUMER_LAG
PARTITION = c.MESSAGING_DESTINATION_PARTITION_ID
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
                width=8,
            ),
            p.timeseries(
                "Send call time, p99",
                p.query(q.quantile(0.99, SEND, ONE_SERVICE, by=(TOPIC,)), "p99 " + p.legend(TOPIC)),
                unit="s",
                description="Time the producer's send call took. confluent-kafka and kafka-python deliver in the "
                "background, so this is the hand-over to the client; a rise means its buffer is full.",
                width=8,
            ),
            p.timeseries(
                "Failed sends per second",
                p.query(
                    q.sum_by(q.rate(SENT, ONE_SERVICE, FAILED), TOPIC, c.ERROR_TYPE), p.legend(TOPIC, c.ERROR_TYPE)
                ),
                unit="ops",
                width=8,
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
            "Consumer lag (client side, measured by the consuming services)",
            p.timeseries(
                "Lag by group and topic (messages), as the consumers see it",
                p.query(q.sum_by(q.selector(CLIENT_LAG, ONE_SERVICE), GROUP, TOPIC), p.legend(GROUP, TOPIC)),
                description="The high watermark minus the group's committed offset, reported by each consumer "
                "for the partitions it owns (confluent-kafka, from librdkafka's statistics). Beside the "
                "processing times of the same services: follow an exemplar there to a trace.",
            ),
            p.table(
                "Client-side lag by partition, now",
                p.query(
                    q.sum_by(q.selector(CLIENT_LAG, ONE_SERVICE), c.SERVICE, GROUP, TOPIC, PARTITION), instant=True
                ),
                columns=["lag (messages)"],
                decimals=0,
                width=12,
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
