import meshlens.auto  # noqa: F401  (the one line a service adds)

import asyncio
import os
import sys

from temporal_workflows import TASK_QUEUE, Fetch, fetch
from temporalio.client import Client
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor, Worker


class AppInterceptor(Interceptor):
    """The application's own interceptor: it must keep running beside meshlens's tracing."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        class Inbound(ActivityInboundInterceptor):
            async def execute_activity(self, input: ExecuteActivityInput):
                print("app interceptor: activity", input.fn.__name__, flush=True)
                return await super().execute_activity(input)

        return Inbound(next)


async def main() -> None:
    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    worker = Worker(client, task_queue=TASK_QUEUE, workflows=[Fetch], activities=[fetch],
                    interceptors=[AppInterceptor()])
    print("worker running", flush=True)
    await worker.run()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
