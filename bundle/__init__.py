"""meshlens bundle tooling: `meshlens build` turns dashboards, alerts and collector config as code
into the files the Helm chart ships. Never imported by a service."""
