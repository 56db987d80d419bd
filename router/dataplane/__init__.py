"""The data plane: what every query goes through — admission below ASGI (``queries``), the routing
table and traffic split (``routing``, ``traffic``), the activator and its balancer that hold requests
at zero and pick replicas (``activator``, ``balancer``), the upstream connection pool (``proxy``) and
its deadlines, the statistics — and the ASGI service that ties them (``plane``)."""
