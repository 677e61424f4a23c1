"""meshlens's own instrumentors, for libraries that OpenTelemetry's contrib project does not cover:
Temporal (its SDK's tracing interceptor added to every client and worker, and its SDK metrics on
``/metrics``), ClickHouse (clickhouse-driver and clickhouse-connect) and Elasticsearch (the
client's native tracing, turned on and mapped onto the catalogue).

They are ``BaseInstrumentor`` subclasses registered under the ``opentelemetry_instrumentor``
entry-point group, so library detection (:mod:`meshlens.libraries`) finds them as it finds the
contrib ones, and ``opentelemetry-instrument`` can run them too. None imports its library at
module level: detection imports this package's module only once the application imported the
library.
"""

from __future__ import annotations

from importlib import metadata

from meshlens.libraries import instrumented_requirements


def supported_versions(extra: str) -> tuple[str, ...]:
    """The requirements the meshlens extra ``extra`` lists (``"temporalio>=1.7,<2"``): the one
    declaration, in ``pyproject.toml``, of the library versions an instrumentor supports."""
    try:
        dist = metadata.distribution("meshlens")
    except metadata.PackageNotFoundError:  # run from a source tree: nothing to check against
        return ()
    requirements = instrumented_requirements(dist, (extra,))
    return tuple(f"{requirement.name}{requirement.specifier}" for requirement in requirements)
