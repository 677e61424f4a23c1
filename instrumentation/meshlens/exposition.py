"""The ``/metrics`` endpoint: prometheus-client's exposition, with content negotiation.

A scrape gets the Prometheus text format, or OpenMetrics (which carries the
exemplars) when its Accept header asks for it, and gzip when accepted; all of it
is prometheus-client's own WSGI app.

In a pre-fork group every worker listens on the same port with SO_REUSEPORT: the
kernel hands each scrape to one of them, and whichever answers merges the whole
group's files, so the answer does not depend on which worker got it and survives
any one worker's death. A worker joins the port only when a live member of its own
group already listens there, or when the port is free: SO_REUSEPORT would otherwise
let another service of the same user share the port, and scrapes would alternate
silently between two services' numbers. A single process binds without it.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from meshlens import multiprocess

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


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _server_class(host: str, reuse_port: bool) -> type[ThreadingWSGIServer]:
    class MetricsHTTPServer(ThreadingWSGIServer):
        address_family = _family(host)

        def server_bind(self) -> None:
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    return MetricsHTTPServer


def _port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (the probe itself does not use SO_REUSEPORT,
    so a listener that does still makes it fail)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class MetricsServer:
    """Serves a registry on ``host:port`` from a daemon thread.

    With ``group_dir`` (a pre-fork group's folder) the port is shared with the other
    members of that group only.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int, group_dir: Path | None = None) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._group_dir = group_dir
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def start(self) -> bool:
        """Starts serving; on a port taken by another program, logs once and returns False."""
        app = make_wsgi_app(self._registry)
        try:
            if self._group_dir is None:
                self._server = self._bind(app, reuse_port=False)
            else:
                with multiprocess.serving_lock(self._group_dir):
                    joining = multiprocess.serving_members(self._group_dir, self._port)
                    if not joining and self._port and not _port_free(self._host, self._port):
                        raise OSError(errno.EADDRINUSE, "in use by another program or service")
                    self._server = self._bind(app, reuse_port=True)
                    multiprocess.mark_serving(self._group_dir, self._port)
        except OSError as exc:
            _logger.warning(
                "meshlens: cannot serve /metrics on %s:%d (%s); set MESHLENS_METRICS_PORT to a free "
                "port, or 0 to turn the endpoint off. Traces and logs are unaffected.",
                self._host, self._port, exc.strerror or exc,
            )  # fmt: skip
            return False
        self._thread = threading.Thread(target=self._server.serve_forever, name="meshlens-metrics", daemon=True)
        self._thread.start()
        return True

    def _bind(self, app: Callable[..., Iterable[bytes]], reuse_port: bool) -> ThreadingWSGIServer:
        return make_server(
            self._host, self._port, app, _server_class(self._host, reuse_port), handler_class=_QuietHandler
        )

    def stop(self) -> None:
        """Stops listening (within the serving loop's half-second poll); safe to call twice."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
