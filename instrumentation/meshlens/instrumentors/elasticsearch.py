"""Elasticsearch (elasticsearch-py 8.13 and later): the client's native OpenTelemetry tracing,
turned on and mapped onto the catalogue.

The client traces each API call itself (OpenTelemetry's contrib project dropped its own
Elasticsearch package in favour of it), but as an internal span: the RED processor measures
client spans only. meshlens gives the client a tracer whose spans are client spans (what the
database conventions prescribe), so each call is one ``db_client_operation_duration_seconds``
observation with ``db_system_name="elasticsearch"`` and the endpoint as ``db_operation_name``
(``search``, ``index``...). The bulk helpers' spans (``helpers.bulk``...) stay internal: the
calls they make are counted, not the helper around them.

Request bodies stay out of spans unless the application asks for them:
``OTEL_PYTHON_INSTRUMENTATION_ELASTICSEARCH_CAPTURE_SEARCH_QUERY=raw``. Tracing is on unless
``OTEL_PYTHON_INSTRUMENTATION_ELASTICSEARCH_ENABLED=false``; both are the client's own settings.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.trace import Span, SpanKind, Tracer

from meshlens._hooks import after_import
from meshlens.instrumentors import supported_versions

ENABLED_ENV = "OTEL_PYTHON_INSTRUMENTATION_ELASTICSEARCH_ENABLED"
BODY_ENV = "OTEL_PYTHON_INSTRUMENTATION_ELASTICSEARCH_CAPTURE_SEARCH_QUERY"
_HELPER_PREFIX = "helpers."
_SCOPE = "elasticsearch-api"  # the client's own tracer name


class ClientKindTracer(Tracer):
    """The client's tracer, starting its API-call spans as client spans."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    @staticmethod
    def _kind(name: str, kind: SpanKind) -> SpanKind:
        if kind is SpanKind.INTERNAL and not name.startswith(_HELPER_PREFIX):
            return SpanKind.CLIENT
        return kind

    def start_span(self, name: str, context: Any = None, kind: SpanKind = SpanKind.INTERNAL, *args: Any,
                   **kwargs: Any) -> Span:
        return self._tracer.start_span(name, context, self._kind(name, kind), *args, **kwargs)

    @contextmanager  # type: ignore[override]
    def start_as_current_span(self, name: str, context: Any = None, kind: SpanKind = SpanKind.INTERNAL,
                              *args: Any, **kwargs: Any) -> Iterator[Span]:
        with self._tracer.start_as_current_span(name, context, self._kind(name, kind), *args, **kwargs) as span:
            yield span


class ElasticsearchInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Turns on elasticsearch-py's native tracing, as client spans, without request bodies."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return supported_versions("elasticsearch")

    def _instrument(self, **kwargs: Any) -> None:
        # The client reads these when each Elasticsearch client is created; the
        # application's own values win.
        os.environ.setdefault(ENABLED_ENV, "true")
        os.environ.setdefault(BODY_ENV, "omit")
        tracer_provider = kwargs.get("tracer_provider")

        def give_client_tracer(module: ModuleType) -> None:
            module._tracer = ClientKindTracer(trace.get_tracer(_SCOPE, tracer_provider=tracer_provider))

        after_import("elasticsearch._otel", give_client_tracer)

    def _uninstrument(self, **kwargs: Any) -> None:
        import elasticsearch._otel

        if isinstance(elasticsearch._otel._tracer, ClientKindTracer):
            elasticsearch._otel._tracer = elasticsearch._otel._tracer._tracer
