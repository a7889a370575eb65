"""The dashboard's web application and the Prometheus exposition (the `web` extra)."""
