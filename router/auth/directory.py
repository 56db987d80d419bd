"""``EndpointDirectory`` over the control plane's endpoint store: name or id -> ``EndpointRef``.

The data plane asks for every query, so refs are cached for a moment; the front door's own writes
(rate limits) invalidate at once, and other changes (a delete, a new creator) show within ``ttl_s``,
which cannot widen access: a deleted endpoint has no routes left to query.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from router.auth.ratelimit import rules_of
from router.auth.types import EndpointRef
from router.state.db import DatabaseUnavailable
from router.state.endpoints import EndpointRecord, EndpointStore
from runtime.errors import NotFound


def endpoint_ref(record: EndpointRecord) -> EndpointRef:
    ai_gateway: Any = record.extras.get("ai_gateway") or {}
    rules = rules_of(record.extras.get("rate_limits"), "rate_limits")
    if isinstance(ai_gateway, dict):
        rules += rules_of(ai_gateway.get("rate_limits"), "ai_gateway")
    return EndpointRef(id=record.id, name=record.name, creator=record.creator, rate_limits=rules)


class StoreDirectory:
    def __init__(
        self, store: EndpointStore, *, ttl_s: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, EndpointRef]] = {}

    def lookup_endpoint(self, name_or_id: str) -> EndpointRef | None:
        now = self._monotonic()
        cached = self._cache.get(name_or_id)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        try:
            record = self.store.find(name_or_id)
            if record is None:
                record = self.store.get_by_id(name_or_id)
        except NotFound:
            self._cache.pop(name_or_id, None)
            return None
        except DatabaseUnavailable:
            if cached is not None:
                return cached[1]  # the database is down: the endpoint as last seen keeps serving
            raise
        ref = endpoint_ref(record)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name_or_id] = (now, ref)
        return ref

    def invalidate(self) -> None:
        """Every cached endpoint is stale: read again on next use, kept for when the database is down."""
        self._cache = {key: (-math.inf, ref) for key, (_, ref) in self._cache.items()}
