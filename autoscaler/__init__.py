"""zeroserve autoscaler: desired state of endpoints, the scaling policy, the loop and the backends."""
