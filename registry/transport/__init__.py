"""gRPC transport: servicers, the error interceptor and proto <-> domain conversion."""
