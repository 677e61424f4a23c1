"""The workflow and activity that tests/test_temporal.py runs: the workflow calls one activity,
which makes an HTTP call to the URL it is given (or fails, when asked)."""

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    import urllib.request

TASK_QUEUE = "meshlens-test"


@activity.defn
async def fetch(url: str) -> int:
    if url == "fail":
        raise RuntimeError("the activity failed, as asked")
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


@workflow.defn
class Fetch:
    @workflow.run
    async def run(self, url: str) -> int:
        return await workflow.execute_activity(fetch, url, start_to_close_timeout=timedelta(seconds=10),
                                               retry_policy=RetryPolicy(maximum_attempts=1))
