"""Prometheus metrics, drift read-outs and drift alerts."""

from riskserve.monitoring.metrics import DriftAlerts, DriftCollector, Metrics

__all__ = ["DriftAlerts", "DriftCollector", "Metrics"]
