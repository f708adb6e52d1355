"""Prometheus metrics, drift read-outs and drift alerts."""

from riskserve.monitoring.metrics import (
    DriftAlerts,
    Metrics,
    ModelView,
    ServingCollector,
    VersionView,
)

__all__ = ["DriftAlerts", "Metrics", "ModelView", "ServingCollector", "VersionView"]
