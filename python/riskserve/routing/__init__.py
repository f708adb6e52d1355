"""Which loaded model version serves a request: the routing table and sticky assignment."""

from riskserve.routing.table import Deployment, Routed, RoutingTable, Variant, bucket_of

__all__ = ["Deployment", "Routed", "RoutingTable", "Variant", "bucket_of"]
