"""The one readiness probe of a replica: ``GET /v2/health/ready``, answered 200 within the timeout.

Every party that must know whether a replica can serve asks it, so "ready" means one thing: a backend
while the replica starts (it is ready once it has answered), for its liveness afterwards (``health()``)
and before it adopts a replica an earlier gateway left running; the router's data plane before an
ejected replica gets traffic again. Kubernetes' own readinessProbe in the pod manifest names the same
path.

Probes go to replicas this gateway reaches directly: no proxies from the environment and no TLS
verification (so no CA bundle to load, which costs ~150 ms per client).
"""

from __future__ import annotations

import httpx

READY_PATH = "/v2/health/ready"


class ReadinessProbe:
    """``await probe(url)``: whether the replica at ``url`` (its base URL) is ready. Its HTTP client is
    made at first use and kept (``client`` also carries a backend's other calls to its replicas)."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # No keep-alive: a probe's idle connection would hold up a draining replica's exit (it
            # lingers for requests on open connections, runtime.app.ReplicaProtocol); a loopback or pod
            # connect per probe costs far less than that.
            self._client = httpx.AsyncClient(timeout=self.timeout_s, trust_env=False, verify=False,
                                             limits=httpx.Limits(max_keepalive_connections=0))
        return self._client

    @property
    def opened(self) -> bool:
        return self._client is not None

    async def __call__(self, url: str) -> bool:
        try:
            response = await self.client.get(url + READY_PATH)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def warm(self) -> None:
        """The first request through a client imports its async backend (~50 ms): pay it now, on a port
        nothing listens on, rather than on the first cold start."""
        await self("http://127.0.0.1:1")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
