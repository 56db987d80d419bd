"""Several gateways sharing one PostgreSQL: who is alive, which one leads the autoscaler, the replicas
every gateway routes to, and the changes each must pick up (``router.fleet.member``).

What is per gateway process on purpose, and its effect with N gateways:

- the balancer's in-flight counts and the activator's queues: each gateway balances the requests it
  holds; the leader's autoscaler adds up every gateway's reports, so scaling sees the whole fleet;
- rate limits: each gateway admits its share, ``calls / live gateways``, of every limit
  (``router.auth.ratelimit``), so the fleet admits ``calls`` when the load balancer spreads requests
  evenly, and less when it sends one gateway more than its share;
- token and permission caches: dropped on every change of the shared state, so a revoke is in force on
  every gateway within a poll interval (0.25 s).
"""
