"""Which loaded model version serves a request."""

from riskserve.routing.table import Deployment, RoutingTable

__all__ = ["Deployment", "RoutingTable"]
