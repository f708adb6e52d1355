"""Which loaded model version serves a request."""

from riskserve.routing.table import Deployment, RoutingTable, load_repository

__all__ = ["Deployment", "RoutingTable", "load_repository"]
