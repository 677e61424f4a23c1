"""Temporal: how long workflow and activity tasks wait for a worker (schedule-to-start), how long
they run, and what fails.

Everything here is the Temporal SDK's own metrics, which the meshlens runtime collects from each
worker into its /metrics (see the catalogue's Temporal section).
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

WF_SCHEDULE = c.TEMPORAL_WORKFLOW_TASK_SCHEDULE_TO_START_LATENCY
WF_EXECUTION = c.TEMPORAL_WORKFLOW_TASK_EXECUTION_LATENCY
WF_ENDTOEND = c.TEMPORAL_WORKFLOW_ENDTOEND_LATENCY
ACT_SCHEDULE = c.TEMPORAL_ACTIVITY_SCHEDULE_TO_START_LATENCY
ACT_EXECUTION = c.TEMPORAL_ACTIVITY_EXECUTION_LATENCY
COMPLETED = c.TEMPORAL_WORKFLOW_COMPLETED
FAILED = c.TEMPORAL_WORKFLOW_FAILED
TASK_FAILED = c.TEMPORAL_WORKFLOW_TASK_EXECUTION_FAILED
ACT_FAILED = c.TEMPORAL_ACTIVITY_EXECUTION_FAILED
SLOTS = c.TEMPORAL_WORKER_TASK_SLOTS_AVAILABLE
ONE_SERVICE = q.SERVICE_FILTER
QUEUE = c.TEMPORAL_TASK_QUEUE
WORKFLOW = c.TEMPORAL_WORKFLOW_TYPE
ACTIVITY = c.TEMPORAL_ACTIVITY_TYPE

dashboard = p.dashboard(
    uid="meshlens-temporal",
    title="meshlens / Temporal",
    description="Temporal workers: schedule-to-start latency, task and workflow durations, failures, free slots.",
    tags=("temporal",),
    variables=p.service_variables(WF_SCHEDULE),
    rows=[
        p.row(
            "Waiting for a worker",
            p.timeseries(
                "Workflow task schedule-to-start, p99",
                p.query(q.quantile(0.99, WF_SCHEDULE, ONE_SERVICE, by=(QUEUE,)), p.legend(QUEUE)),
                unit="s",
                description="Time workflow tasks waited in their queue before a worker polled them. "
                "Growing: too few workers or pollers.",
            ),
            p.timeseries(
                "Activity schedule-to-start, p99",
                p.query(q.quantile(0.99, ACT_SCHEDULE, ONE_SERVICE, by=(QUEUE,)), p.legend(QUEUE)),
                unit="s",
            ),
            p.timeseries(
                "Free task slots",
                p.query(q.sum_by(q.selector(SLOTS, ONE_SERVICE), QUEUE, c.TEMPORAL_WORKER_TYPE),
                        p.legend(QUEUE, c.TEMPORAL_WORKER_TYPE)),
                description="At zero the workers are saturated and tasks wait.",
            ),
        ),
        p.row(
            "Running",
            p.timeseries(
                "Workflow task execution, p50 and p99",
                p.query(q.quantile(0.5, WF_EXECUTION, ONE_SERVICE, by=(WORKFLOW,)), "p50 " + p.legend(WORKFLOW)),
                p.query(q.quantile(0.99, WF_EXECUTION, ONE_SERVICE, by=(WORKFLOW,)), "p99 " + p.legend(WORKFLOW)),
                unit="s",
            ),
            p.timeseries(
                "Activity execution, p50 and p99",
                p.query(q.quantile(0.5, ACT_EXECUTION, ONE_SERVICE, by=(ACTIVITY,)), "p50 " + p.legend(ACTIVITY)),
                p.query(q.quantile(0.99, ACT_EXECUTION, ONE_SERVICE, by=(ACTIVITY,)), "p99 " + p.legend(ACTIVITY)),
                unit="s",
            ),
            p.timeseries(
                "Workflow end-to-end, p99",
                p.query(q.quantile(0.99, WF_ENDTOEND, ONE_SERVICE, by=(WORKFLOW,)), p.legend(WORKFLOW)),
                unit="s",
            ),
        ),
        p.row(
            "Outcomes",
            p.timeseries(
                "Workflows completed per second",
                p.query(q.sum_by(q.rate(COMPLETED, ONE_SERVICE), WORKFLOW), p.legend(WORKFLOW)),
                unit="ops",
            ),
            p.timeseries(
                "Workflow failures per second",
                p.query(q.sum_by(q.rate(FAILED, ONE_SERVICE), WORKFLOW), p.legend(WORKFLOW)),
                unit="ops",
            ),
            p.timeseries(
                "Activity and workflow-task failures per second, by reason",
                p.query(q.sum_by(q.rate(ACT_FAILED, ONE_SERVICE), ACTIVITY, c.TEMPORAL_FAILURE_REASON),
                        "activity " + p.legend(ACTIVITY, c.TEMPORAL_FAILURE_REASON)),
                p.query(q.sum_by(q.rate(TASK_FAILED, ONE_SERVICE), WORKFLOW, c.TEMPORAL_FAILURE_REASON),
                        "workflow task " + p.legend(WORKFLOW, c.TEMPORAL_FAILURE_REASON)),
                unit="ops",
            ),
        ),
    ],
)
