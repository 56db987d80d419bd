"""The control plane's actions: create, update and delete endpoints, and roll configs out.

The store holds the desired state; this module makes the running system match it. A config update is
zero-downtime: the new config's served entities are handed to the autoscaler first, the routed ones
that must run (not allowed at zero) are waited for until a replica of theirs is ready, only then does
the routing table move traffic, and only after that do the old entities drain. If a new entity fails
or does not come up in time, the new entities are removed, the old config keeps serving, and the
endpoint reports ``UPDATE_FAILED`` with the reason.

Every step is idempotent, so a gateway killed at any point resumes on restart (``restore``): it applies
the active configs, routes them, and restarts the rollouts that were in progress.

With several gateways (``router.fleet``) only the leading one applies configs to its autoscaler and
runs rollouts (``leading``); every gateway routes the active configs, and ``sync`` brings a gateway in
line with changes another one made (an endpoint created, promoted or deleted there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from autoscaler.backend import GpuCapacity
from autoscaler.spec import EntitySpec
from autoscaler.types import EntityKey
from router.api.models import (
    CreateEndpointInput,
    EndpointConfig,
    EndpointCoreConfigInput,
    normalize_config,
    parse_body,
    validate_name,
)
from router.api.registry import check_registered
from router.api.specs import check_specs, routing_for
from router.api.suggestions import gpu_suggestions
from router.dataplane.routing import EndpointRouting
from router.state.endpoints import EndpointRecord, EndpointStore
from runtime.errors import InvalidParameterValue

logger = logging.getLogger(__name__)


class RolloutProbe(Protocol):
    """What a rollout needs to know about an entity: is a replica of its current spec up, or has it failed."""

    def ready_replicas(self, entity: EntityKey) -> int: ...

    def failure(self, entity: EntityKey) -> str | None: ...


class Scaler(RolloutProbe, Protocol):
    def apply(self, entity: EntityKey, spec: EntitySpec) -> Any: ...

    async def remove(self, entity: EntityKey) -> Any: ...


class Router(Protocol):
    """Where traffic goes (``router.dataplane.plane.DataPlane``, or a bare ``RoutingTable``)."""

    def set_endpoint(
        self, name: str, routes: Iterable[tuple[EntityKey, int]], settings: EndpointRouting | None = None
    ) -> Any: ...

    def remove_endpoint(self, name: str) -> None: ...


class EndpointController:
    def __init__(
        self,
        store: EndpointStore,
        scaler: Scaler,
        routing: Router,
        *,
        rollout_timeout_s: float = 300.0,
        poll_interval_s: float = 0.05,
    ) -> None:
        self.store = store
        self.scaler = scaler
        self.routing = routing
        self.rollout_timeout_s = rollout_timeout_s
        self.poll_interval_s = poll_interval_s
        self._rollouts: dict[str, asyncio.Task[None]] = {}
        # Whether this gateway's autoscaler runs the replicas (always, unless several gateways share
        # the state and another one leads).
        self.leading = True
        # The active config this gateway routes (and, leading, has applied), per endpoint.
        self._known: dict[str, tuple[int, EndpointConfig]] = {}
        # Entity removals in the background, per endpoint: a re-created endpoint of the same name waits
        # for them so that its entities never collide with the old ones still draining.
        self._removals: dict[str, set[asyncio.Task[None]]] = {}
        # Called with the record of each deleted endpoint (e.g. to drop its permission grants).
        self.on_deleted: list[Callable[[EndpointRecord], Any]] = []
        # What GPUs the backend can place replicas on (None: it cannot tell; nothing is refused).
        self.gpu_capacity: Callable[[], Awaitable[GpuCapacity]] | None = None
        # Per endpoint: why some of its CPU entities would be worth a GPU here (shown in its view).
        self.suggestions: dict[str, list[str]] = {}

    # ---- API actions -------------------------------------------------------------------------

    async def create(self, body: Any, principal: str | None = None) -> EndpointRecord:
        request = parse_body(CreateEndpointInput, body)
        name = validate_name(request.name, "name")
        if request.config.name is not None and request.config.name != name:
            raise InvalidParameterValue(f"config.name {request.config.name!r} does not match name {name!r}")
        config = normalize_config(request.config)
        check_specs(config)
        await check_registered(config)
        capacity = await self._gpu_capacity()
        _check_gpus(config, capacity)
        await self._removed(name)
        record = self.store.create(
            name,
            config,
            creator=principal,
            description=request.description,
            tags={tag.key: tag.value for tag in request.tags},
            extras=_extras(request),
        )
        await self._suggest(name, config, capacity)
        if self.leading:
            self._start_rollout(record)
        return record

    async def update_config(self, name: str, body: Any, principal: str | None = None) -> EndpointRecord:
        self.store.get(name)  # 404 before 400: a missing endpoint is the first thing to tell
        config = normalize_config(parse_body(EndpointCoreConfigInput, body, ""), prefix="")
        check_specs(config, "served_entities")
        await check_registered(config, "served_entities")
        capacity = await self._gpu_capacity()
        _check_gpus(config, capacity, "served_entities")
        record = self.store.submit_config(name, config, principal)
        await self._suggest(name, config, capacity)
        if self.leading:
            self._start_rollout(record)
        return record

    async def _gpu_capacity(self) -> GpuCapacity | None:
        """Asked once per create or update (on Kubernetes it lists the nodes), for the check and the
        suggestions both."""
        return await self.gpu_capacity() if self.gpu_capacity is not None else None

    async def _suggest(self, name: str, config: EndpointConfig, capacity: GpuCapacity | None) -> None:
        self.suggestions.pop(name, None)
        if capacity is None or not capacity.gpus:
            return
        found = await asyncio.to_thread(gpu_suggestions, config, capacity)
        if found:
            self.suggestions[name] = found

    async def delete(self, name: str, principal: str | None = None) -> None:
        rollout = self._rollouts.pop(name, None)
        record = self.store.delete(name, principal)
        self.suggestions.pop(name, None)
        if rollout is not None:
            rollout.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rollout
        self.routing.remove_endpoint(name)
        self._known.pop(name, None)
        if self.leading:
            keys = {EntityKey(name, e.name) for e in _entities(record.config, record.pending)}
            self._remove_later(name, keys)
        for hook in self.on_deleted:
            hook(record)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def restore(self) -> None:
        """Bring back every stored endpoint after a (re)start, resuming interrupted rollouts."""
        self.sync()
        logger.info("restored %d endpoint(s)", len(self._known))

    def sync(self) -> None:
        """Match the stored endpoints: route each one's active config (and apply it, leading), forget
        the deleted ones, and (leading) run the rollouts of pending configs not yet running."""
        records = {record.name: record for record in self.store.list_all()}
        for name, (_, config) in list(self._known.items()):
            if name not in records:  # deleted through another gateway
                del self._known[name]
                self.routing.remove_endpoint(name)
                if self.leading:
                    self._remove_later(name, _keys(name, config))
        for name, record in records.items():
            active = record.config
            known = self._known.get(name)
            if active is not None and (known is None or known[0] != active.version):
                if self.leading:
                    self._apply(name, active.config)
                    if known is not None:
                        self._remove_later(name, _keys(name, known[1]) - _keys(name, active.config))
                self._route(name, active.config)
                self._known[name] = (active.version, active.config)
            if self.leading and record.pending is not None and name not in self._rollouts:
                self._start_rollout(record)

    def lead(self) -> None:
        """This gateway's autoscaler runs the replicas from now on: apply every active config (before
        the autoscaler starts, so that it can adopt the replicas already running). ``resume_rollouts``
        once it has started."""
        self.leading = True
        for name, record in ((r.name, r) for r in self.store.list_all()):
            if record.config is not None:
                self._apply(name, record.config.config)
                self._route(name, record.config.config)
                self._known[name] = (record.config.version, record.config.config)

    def resume_rollouts(self) -> None:
        self.sync()

    async def follow(self) -> None:
        """Another gateway leads: stop the rollouts here (the store still says IN_PROGRESS, so the
        leader resumes them) and apply nothing from now on."""
        self.leading = False
        tasks = list(self._rollouts.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._rollouts.clear()

    async def aclose(self) -> None:
        # Rollouts are not failed on shutdown: the store still says IN_PROGRESS, so they resume on restart.
        tasks = [*self._rollouts.values(), *(t for ts in self._removals.values() for t in ts)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._rollouts.clear()
        self._removals.clear()

    async def wait_rollout(self, name: str) -> None:
        task = self._rollouts.get(name)
        if task is not None:
            await asyncio.shield(task)

    # ---- the rollout -------------------------------------------------------------------------

    def _start_rollout(self, record: EndpointRecord) -> None:
        assert record.pending is not None
        rollout = self._rollout(record.name, record.pending.version)
        task = asyncio.create_task(rollout, name=f"rollout {record.name}")
        self._rollouts[record.name] = task
        task.add_done_callback(lambda done: self._rollout_done(record.name, done))

    def _rollout_done(self, name: str, task: asyncio.Task[None]) -> None:
        if self._rollouts.get(name) is task:
            del self._rollouts[name]
        if not task.cancelled() and task.exception() is not None:
            logger.error("rollout of %s crashed", name, exc_info=task.exception())

    async def _rollout(self, name: str, version: int) -> None:
        record = self.store.get(name)
        if record.pending is None or record.pending.version != version:
            return
        old = record.config.config if record.config is not None else None
        new = record.pending.config
        old_keys = _keys(name, old)
        new_keys = _keys(name, new)
        try:
            self._apply(name, new)
            await self._wait_ready(name, new)
        except _RolloutFailed as failure:
            logger.warning("config %d of %s failed: %s", version, name, failure.reason)
            if old is not None:
                self._remove_later(name, new_keys - old_keys)
                self._apply(name, old)  # entities kept by name go back to their previous spec
            else:
                # Nothing served before: keep the failed entities so that their state shows the reason.
                self._route(name, new)
                self._known[name] = (version, new)
            self.store.finish_update(name, version, failure=failure.reason)
            return
        self._route(name, new)
        self._known[name] = (version, new)
        self.store.finish_update(name, version)
        self._remove_later(name, old_keys - new_keys)
        logger.info("config %d of %s is serving", version, name)

    async def _wait_ready(self, name: str, config: EndpointConfig) -> None:
        specs = check_specs(config)
        must_run = [
            EntityKey(name, route.served_entity_name)
            for route in config.routes
            if route.traffic_percentage > 0 and specs[route.served_entity_name].autoscaling.floor_replicas > 0
        ]
        deadline = time.monotonic() + self.rollout_timeout_s
        while True:
            waiting = []
            for key in must_run:
                reason = self.scaler.failure(key)
                if reason is not None:
                    raise _RolloutFailed(f"served entity '{key.served_entity}' failed: {reason}")
                if self.scaler.ready_replicas(key) < 1:
                    waiting.append(key.served_entity)
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise _RolloutFailed(
                    f"served entities {', '.join(waiting)} had no ready replica"
                    f" after {self.rollout_timeout_s:g} s"
                )
            await asyncio.sleep(self.poll_interval_s)

    # ---- helpers -----------------------------------------------------------------------------

    def _apply(self, name: str, config: EndpointConfig) -> None:
        for entity_name, spec in check_specs(config).items():
            self.scaler.apply(EntityKey(name, entity_name), spec)

    def _route(self, name: str, config: EndpointConfig) -> None:
        routes, settings = routing_for(name, config)
        self.routing.set_endpoint(name, routes, settings)

    def _remove_later(self, name: str, keys: Iterable[EntityKey]) -> None:
        for key in keys:
            task = asyncio.create_task(self._remove(key), name=f"remove {key}")
            removals = self._removals.setdefault(name, set())
            removals.add(task)
            task.add_done_callback(removals.discard)

    async def _remove(self, key: EntityKey) -> None:
        try:
            await self.scaler.remove(key)
        except Exception:
            logger.exception("removing %s failed", key)

    async def _removed(self, name: str) -> None:
        pending = self._removals.get(name)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


class _RolloutFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _check_gpus(config: EndpointConfig, capacity: GpuCapacity | None,
                where: str = "config.served_entities") -> None:
    """A GPU workload type where the backend has no GPU is refused now (400), not accepted, priced and
    then crash-looping or served on the CPU. ``capacity`` None: the backend cannot tell; nothing refused."""
    if capacity is None or capacity.gpus is None or capacity.gpus > 0:
        return
    for index, entity in enumerate(config.served_entities):
        if entity.workload_type != "CPU":
            raise InvalidParameterValue(
                f"{where}[{index}].workload_type {entity.workload_type} needs a GPU, and {capacity.where} "
                "has none: use workload_type CPU, or a backend with GPUs")


def _keys(name: str, config: EndpointConfig | None) -> set[EntityKey]:
    return {EntityKey(name, e.name) for e in config.served_entities} if config is not None else set()


def _entities(*versions: Any) -> list[Any]:
    return [e for version in versions if version is not None for e in version.config.served_entities]


def _extras(request: CreateEndpointInput) -> dict[str, Any]:
    extras: dict[str, Any] = {}
    for key in ("route_optimized", "rate_limits", "ai_gateway"):
        value = getattr(request, key)
        if value is not None:
            extras[key] = value
    return extras
