"""The one layer that knows gRPC: servicers, the codec, error mapping and the admin token check."""
