"""Prometheus metrics, drift read-outs and drift alerts."""

from riskserve.monitoring.metrics import (
    DriftAlerts,
    Metrics,
    ModelView,
    ServingCollector,
    VersionView,
    table_view,
)

__all__ = ["DriftAlerts", "Metrics", "ModelView", "ServingCollector", "VersionView", "table_view"]
