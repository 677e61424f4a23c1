"""meshlens: one import line makes a Python microservice observable.

    import meshlens.auto            # first line of the service, settings from the environment

or, with explicit settings:

    import meshlens
    meshlens.configure(service_name="orders", metrics_port=9464)
"""

from meshlens._setup import Runtime, configure, current
from meshlens._version import __version__
from meshlens.settings import Settings, load_settings


def shutdown() -> None:
    """Flushes buffered spans now (meshlens also does this at exit and on SIGTERM)."""
    runtime = current()
    if runtime is not None:
        runtime.shutdown()


__all__ = ["Runtime", "Settings", "__version__", "configure", "current", "load_settings", "shutdown"]
