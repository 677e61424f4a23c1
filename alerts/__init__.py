"""meshlens SLOs and alerts as code: the YAML beside this module (``slos.yaml``, ``alerts.yaml``)
and the generator that turns it into Prometheus rules and promtool tests (``generate``)."""
