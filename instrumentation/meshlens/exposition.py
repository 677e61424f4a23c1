"""The ``/metrics`` endpoint: prometheus-client's exposition, with content negotiation.

A scrape gets the Prometheus text format, or OpenMetrics (which carries the
exemplars) when its Accept header asks for it, and gzip when accepted; all of it
is prometheus-client's own WSGI app.

In a pre-fork group every worker listens on the same port with SO_REUSEPORT: the
kernel hands each scrape to one of them, and whichever answers merges the whole
group's files, so the answer does not depend on which worker got it and survives
any one worker's death.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

_logger = logging.getLogger("meshlens")


class BeforeScrape(Collector):
    """Runs the samplers (runtime, queue size) first, then contributes nothing itself."""

    def __init__(self, samplers: Iterable[Callable[[], None]]) -> None:
        self._samplers = tuple(samplers)

    def collect(self) -> Iterable[Metric]:
        for sampler in self._samplers:
            try:
                sampler()
            except Exception:
                _logger.debug("meshlens: sampler failed", exc_info=True)
        return ()


class ApplicationMetrics(Collector):
    """The service's own prometheus-client metrics from the default registry, so one
    /metrics serves both. prometheus-client's default process, platform and GC
    collectors are left out: meshlens reports the same under the catalogue's names."""

    _DEFAULT_COLLECTORS = (ProcessCollector, PlatformCollector, GCCollector)

    def __init__(self, skip_names: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self._registry = registry or prometheus_client.REGISTRY
        self._skip = frozenset(skip_names)

    def collect(self) -> Iterable[Metric]:
        collectors = getattr(self._registry, "_collector_to_names", {})
        for collector in list(collectors):
            if isinstance(collector, self._DEFAULT_COLLECTORS):
                continue
            try:
                for family in collector.collect():
                    if family.name not in self._skip:
                        yield family
            except Exception:
                _logger.debug("meshlens: an application collector failed", exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


def _server_class(host: str) -> type[ThreadingWSGIServer]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class ReusePortServer(ThreadingWSGIServer):
        address_family = family

        def server_bind(self) -> None:
            if hasattr(socket, "SO_REUSEPORT"):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    return ReusePortServer


class MetricsServer:
    """Serves a registry on ``host:port`` from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def start(self) -> bool:
        """Starts serving; on a port taken by another program, logs once and returns False."""
        app = make_wsgi_app(self._registry)
        try:
            self._server = make_server(
                self._host, self._port, app, _server_class(self._host), handler_class=_QuietHandler
            )
        except OSError as exc:
            _logger.warning(
                "meshlens: cannot serve /metrics on %s:%d (%s); set MESHLENS_METRICS_PORT to a free "
                "port, or 0 to turn the endpoint off. Traces and logs are unaffected.",
                self._host, self._port, exc.strerror or exc,
            )  # fmt: skip
            return False
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="meshlens-metrics", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
