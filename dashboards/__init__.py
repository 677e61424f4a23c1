"""meshlens dashboards as code: the house panel library (``panels``), PromQL built from the
telemetry catalogue (``promql``), and the ``*.dashboard.py`` files beside them that
``meshlens build`` turns into Grafana 11 JSON."""
