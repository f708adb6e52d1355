"""The one layer that knows gRPC: servicers, interceptors, codec."""
