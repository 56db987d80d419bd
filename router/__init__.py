"""zeroserve router: the gateway (auth, routing, activator queue, control-plane API, CLI)."""
