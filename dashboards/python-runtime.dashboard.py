"""Python runtime: CPU, memory, threads, garbage collection, asyncio event-loop lag and workers
of each service's processes (summed over pre-fork workers), from the meshlens runtime.
"""

from meshlens import catalogue as c
from meshlens_dashboards import panels as p
from meshlens_dashboards import promql as q

ONE_SERVICE = q.SERVICE_FILTER
PER_POD = (c.SERVICE, c.POD)
LAG = c.ASYNCIO_EVENT_LOOP_LAG


def gauge(spec: c.MetricSpec, *by: str) -> str:
    return q.sum_by(q.selector(spec, ONE_SERVICE), *by)


dashboard = p.dashboard(
    uid="meshlens-python-runtime",
    title="meshlens / Python runtime",
    description="CPU, memory, threads, GC, event-loop lag and pre-fork workers of each service.",
    tags=("runtime",),
    variables=p.service_variables(c.PROCESS_CPU_TIME),
    rows=[
        p.row(
            "CPU and memory",
            p.timeseries(
                "CPU (cores), by mode",
                p.query(
                    q.sum_by(q.rate(c.PROCESS_CPU_TIME, ONE_SERVICE), *PER_POD, c.CPU_MODE), p.legend(c.POD, c.CPU_MODE)
                ),
                unit="short",
                stacked=True,
                width=8,
            ),
            p.timeseries(
                "Resident memory",
                p.query(gauge(c.PROCESS_MEMORY_USAGE, *PER_POD), p.legend(c.POD)),
                unit="bytes",
                width=8,
            ),
            p.timeseries(
                "Virtual memory",
                p.query(gauge(c.PROCESS_MEMORY_VIRTUAL, *PER_POD), p.legend(c.POD)),
                unit="bytes",
                width=8,
            ),
        ),
        p.row(
            "Threads, files and workers",
            p.timeseries("Threads", p.query(gauge(c.PROCESS_THREAD_COUNT, *PER_POD), p.legend(c.POD)), width=6),
            p.timeseries(
                "Open file descriptors",
                p.query(gauge(c.PROCESS_OPEN_FILE_DESCRIPTOR_COUNT, *PER_POD), p.legend(c.POD)),
                width=6,
            ),
            p.timeseries(
                "Live worker processes",
                p.query(gauge(c.PROCESS_WORKERS, *PER_POD), p.legend(c.POD)),
                width=6,
                description="Pre-fork workers reporting into each pod's /metrics.",
            ),
            p.timeseries(
                "Requests in flight per worker",
                p.query(
                    q.ratio(gauge(c.HTTP_SERVER_ACTIVE_REQUESTS, *PER_POD), gauge(c.PROCESS_WORKERS, *PER_POD)),
                    p.legend(c.POD),
                ),
                width=6,
                steps=p.thresholds("green", (0.9, "red")),
                description="A sync worker serves one request at a time: near 1, new requests queue.",
            ),
        ),
        p.row(
            "Garbage collection",
            p.timeseries(
                "Collections per second, by generation",
                p.query(
                    q.sum_by(q.rate(c.CPYTHON_GC_COLLECTIONS, ONE_SERVICE), c.SERVICE, c.GC_GENERATION),
                    p.legend(c.SERVICE, c.GC_GENERATION),
                ),
                unit="ops",
                width=8,
            ),
            p.timeseries(
                "Objects collected per second",
                p.query(
                    q.sum_by(q.rate(c.CPYTHON_GC_COLLECTED_OBJECTS, ONE_SERVICE), c.SERVICE, c.GC_GENERATION),
                    p.legend(c.SERVICE, c.GC_GENERATION),
                ),
                unit="ops",
                width=8,
            ),
            p.timeseries(
                "Uncollectable objects per second",
                p.query(
                    q.sum_by(q.rate(c.CPYTHON_GC_UNCOLLECTABLE_OBJECTS, ONE_SERVICE), c.SERVICE), p.legend(c.SERVICE)
                ),
                unit="ops",
                width=8,
            ),
        ),
        p.row(
            "asyncio event loop",
            p.timeseries(
                "Event-loop lag, p50 and p99",
                p.query(q.quantile(0.5, LAG, ONE_SERVICE, by=(c.SERVICE,)), "p50 " + p.legend(c.SERVICE)),
                p.query(q.quantile(0.99, LAG, ONE_SERVICE, by=(c.SERVICE,)), "p99 " + p.legend(c.SERVICE)),
                unit="s",
                steps=p.thresholds("green", (0.1, "red")),
                description="How late the loop ran a callback scheduled for a known time: the time every "
                "other coroutine waited behind blocking code.",
            ),
            p.heatmap("Event-loop lag distribution", LAG, ONE_SERVICE),
        ),
    ],
)
