"""This gateway's part in a fleet of gateways sharing one PostgreSQL.

Every ``poll_s`` (0.25 s) it reads the shared change counter and, when it moved, runs ``on_change``
(caches dropped, endpoints re-routed): a change made through any gateway is in force here within a
poll. Every ``heartbeat_s`` it records that it is alive and takes or renews the autoscaler's lease
(``router.fleet.store``). The holder leads: its autoscaler decides and its backend runs the replicas,
which it writes to the replica registry; the others follow: they route to the replicas the registry
lists, and send their load reports and pokes to the leader over HTTP (``LeaderLink``).

A follower that finds the lease expired takes it and leads (``on_lead``): it adopts the running
replicas instead of starting new ones. A leader that cannot renew in time steps down (``on_follow``)
before anyone else can take over, and stops nothing that runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from autoscaler.types import EntityKey, ReplicaInfo, ReplicaListener
from router.fleet.store import FleetStore, GatewayRow, Lease, RegisteredReplica
from router.state.db import DatabaseUnavailable

logger = logging.getLogger("zeroserve.fleet")

SECRET_HEADER = "x-zeroserve-fleet-secret"
INTERNAL_PREFIX = "/internal/fleet"
# A gateway not heard from for this many heartbeats is not counted as live (rate-limit shares, status).
LIVE_HEARTBEATS = 3


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    gateway_id: str
    url: str | None
    since_ms: int


class FleetMember:
    def __init__(
        self,
        store: FleetStore,
        *,
        gateway_id: str,
        lease_s: float,
        on_change: Callable[[], Awaitable[None]],
        on_lead: Callable[[], Awaitable[None]],
        on_follow: Callable[[], Awaitable[None]],
        listener: ReplicaListener,
        statuses: Callable[[], dict[EntityKey, tuple[dict[str, Any], str | None]]],
        poll_s: float = 0.25,
    ) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.heartbeat_s = min(1.0, lease_s / 3)
        self._on_change = on_change
        self._on_lead = on_lead
        self._on_follow = on_follow
        self._listener = listener
        self._statuses = statuses
        self.url = ""
        self.started_ms = int(time.time() * 1000)
        self.leading = False
        self.leader: LeaderInfo | None = None
        self._lead_until = 0.0  # monotonic: past it, a leader that could not renew steps down
        self._seq: int | None = None
        self._next_beat = 0.0
        self._live = 1
        self._gateways: list[GatewayRow] = []
        self._known: dict[str, RegisteredReplica] = {}
        self._failed: dict[EntityKey, str] = {}
        self.published: dict[EntityKey, tuple[dict[str, Any], str | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.secret = store.secret()

    @property
    def live_gateways(self) -> int:
        """How many gateways were heard from lately (at least this one)."""
        return max(1, self._live)

    async def start(self) -> None:
        await self._tick()  # lead at once when nobody does, so that a lone gateway serves right away
        self._task = asyncio.create_task(self._run(), name="zeroserve-fleet")

    async def aclose(self, *, hand_over: bool) -> None:
        """Stop taking part: the lease is released (when ``hand_over``, another gateway leads at once
        instead of after the lease time) and this gateway's row goes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(DatabaseUnavailable):
            if self.leading and hand_over:
                await asyncio.to_thread(self.store.release, self.gateway_id)
            await asyncio.to_thread(self.store.leave, self.gateway_id)

    async def others_alive(self) -> bool:
        """Whether another gateway is alive right now (asked of the database, not the last heartbeat):
        a leader hands its replicas over only when someone can take them."""
        window = int(LIVE_HEARTBEATS * self.heartbeat_s * 1000) + 1000
        try:
            live = await asyncio.to_thread(self.store.gateways, seen_within_ms=window)
        except DatabaseUnavailable:
            return self._live > 1
        return any(g.gateway_id != self.gateway_id for g in live)

    # ---- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self._tick()
            except DatabaseUnavailable as error:
                logger.debug("fleet poll: %s", error.message)
            except Exception:
                logger.exception("fleet poll failed")

    async def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.heartbeat_s
            await self._beat(now)
        seq = await asyncio.to_thread(self.store.db.change_seq)
        if seq != self._seq:
            self._seq = seq
            await self._on_change()
        if not self.leading:
            await self._follow_registry()

    async def _beat(self, started: float) -> None:
        try:
            lease = await asyncio.to_thread(self._heartbeat_and_lease)
        except DatabaseUnavailable:
            if self.leading and time.monotonic() >= self._lead_until:
                logger.warning("cannot renew the autoscaler lease: stepping down (replicas keep running)")
                await self._follow()
            raise
        if lease.holder == self.gateway_id:
            # Measured from before the renewal was sent: never later than the expiry the others see.
            self._lead_until = started + (lease.expires_ms - lease.now_ms) / 1000.0
            self.leader = LeaderInfo(self.gateway_id, self.url or None, lease.since_ms)
            if not self.leading:
                await self._lead()
            else:
                statuses = self._statuses()
                await asyncio.to_thread(self.store.publish, statuses)
        else:
            if self.leading:
                logger.warning("gateway %s holds the autoscaler lease now: following", lease.holder)
                await self._follow()
            urls = {g.gateway_id: g.url for g in self._gateways}
            self.leader = LeaderInfo(lease.holder, urls.get(lease.holder), lease.since_ms)

    def _heartbeat_and_lease(self) -> Lease:
        self.store.heartbeat(self.gateway_id, self.url or "", socket.gethostname(), os.getpid(),
                             self.started_ms)
        lease = self.store.acquire(self.gateway_id, int(self.lease_s * 1000))
        self._gateways = self.store.gateways()
        window = int(LIVE_HEARTBEATS * self.heartbeat_s * 1000) + 1000
        self._live = sum(1 for g in self._gateways if lease.now_ms - g.seen_ms <= window)
        return lease

    async def _lead(self) -> None:
        logger.info("gateway %s leads the autoscaler", self.gateway_id)
        self.leading = True
        self._known.clear()
        self._failed.clear()
        await self._on_lead()

    async def _follow(self) -> None:
        self.leading = False
        # What this gateway's data plane knows now is what the registry lists: follow on from there.
        with contextlib.suppress(DatabaseUnavailable):
            self._known = {r.info.replica_id: r for r in await asyncio.to_thread(self.store.replicas)}
        await self._on_follow()

    # ---- following the registry ----------------------------------------------------------------

    async def _follow_registry(self) -> None:
        registered = await asyncio.to_thread(self.store.replicas)
        self.published = await asyncio.to_thread(self.store.published)
        current = {r.info.replica_id: r for r in registered}
        for replica_id, known in list(self._known.items()):
            now = current.get(replica_id)
            if now is None:
                del self._known[replica_id]
                self._listener.replica_gone(known.info)
            elif now.state == "DRAINING" and known.state != "DRAINING":
                self._known[replica_id] = now
                self._spawn(self._listener.replica_draining(known.info))
        for replica_id, replica in current.items():
            if replica_id not in self._known and replica.state == "READY":
                self._known[replica_id] = replica
                self._listener.replica_ready(replica.info)
        for key, (_, reason) in self.published.items():
            if reason and self._failed.get(key) != reason:
                self._listener.entity_failed(key, reason)
            if reason:
                self._failed[key] = reason
            else:
                self._failed.pop(key, None)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def check_secret(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.secret.encode())


class RegistryPublisher:
    """The leader's replica listener: every replica that becomes ready or starts draining is written
    to the registry before the data plane behind it hears of it, so the followers route alike."""

    def __init__(self, store: FleetStore, inner: ReplicaListener, owner: str,
                 pid_of: Callable[[str], int | None], follower_poll_s: float) -> None:
        self._store = store
        self._inner = inner
        self._owner = owner
        self._pid_of = pid_of
        self._follower_poll_s = follower_poll_s
        self.enabled = False  # only while this gateway leads

    def replica_ready(self, replica: ReplicaInfo) -> None:
        if self.enabled:
            pid = self._pid_of(replica.replica_id)
            self._write(self._store.register, replica, "READY", self._owner, pid)
        self._inner.replica_ready(replica)

    async def replica_draining(self, replica: ReplicaInfo) -> None:
        if self.enabled:
            pid = self._pid_of(replica.replica_id)
            self._write(self._store.register, replica, "DRAINING", self._owner, pid)
            # The followers stop sending to it at their next poll; wait for that before it is stopped.
            await asyncio.sleep(2 * self._follower_poll_s)
        await self._inner.replica_draining(replica)

    def replica_gone(self, replica: ReplicaInfo) -> None:
        if self.enabled:
            self._write(self._store.unregister, replica.replica_id)
        self._inner.replica_gone(replica)

    def entity_failed(self, entity: EntityKey, reason: str) -> None:
        self._inner.entity_failed(entity, reason)

    @staticmethod
    def _write(write: Callable[..., None], *args: Any) -> None:
        try:
            write(*args)
        except DatabaseUnavailable as error:
            # The followers miss this replica until the database is back (they keep what they know);
            # the leader's own data plane is told regardless.
            logger.warning("replica registry not updated: %s", error.message)


class LeaderLink:
    """A follower's ``ScaleRequester``: load reports and pokes go to the leading gateway over HTTP.

    Reports made in one pass of the activator go out as one request; a poke goes at once, with them."""

    def __init__(self, member: FleetMember, *, timeout_s: float = 2.0) -> None:
        self._member = member
        self._client = httpx.AsyncClient(timeout=timeout_s, trust_env=False, verify=False)
        self._reports: dict[EntityKey, dict[str, Any]] = {}
        self._flush: asyncio.Task[None] | None = None

    def report(self, entity: EntityKey, in_flight: int, queued: int, *, arrivals: int | None = None,
               completions: int | None = None) -> None:
        self._reports[entity] = {"endpoint": entity.endpoint, "served_entity": entity.served_entity,
                                 "in_flight": in_flight, "queued": queued, "arrivals": arrivals,
                                 "completions": completions}
        if self._flush is None or self._flush.done():
            self._flush = asyncio.ensure_future(self._send([]))

    def poke(self, entity: EntityKey) -> Awaitable[None]:
        return self._send([entity])

    async def _send(self, pokes: list[EntityKey]) -> None:
        await asyncio.sleep(0)  # let the rest of this pass's reports join
        reports, self._reports = list(self._reports.values()), {}
        leader = self._member.leader
        if leader is None or leader.url is None or (not reports and not pokes):
            return
        body = {"gateway": self._member.gateway_id, "reports": reports,
                "pokes": [{"endpoint": e.endpoint, "served_entity": e.served_entity} for e in pokes]}
        try:
            await self._client.post(f"{leader.url}{INTERNAL_PREFIX}/load", content=orjson.dumps(body),
                                    headers={SECRET_HEADER: self._member.secret,
                                             "content-type": "application/json"})
        except httpx.HTTPError as error:
            # The leader is gone or busy: the next report or poke tries again (its successor, once the
            # lease moved); requests held here wait within their queue timeout meanwhile.
            logger.info("could not reach the leading gateway %s: %s", leader.gateway_id, error)

    async def logs(self, entity: EntityKey, build: bool) -> str:
        leader = self._member.leader
        if leader is None or leader.url is None:
            return "(no gateway leads the autoscaler right now; the replicas' logs are kept by the leader)"
        try:
            response = await self._client.get(
                f"{leader.url}{INTERNAL_PREFIX}/logs",
                params={"endpoint": entity.endpoint, "served_entity": entity.served_entity,
                        "build": "1" if build else "0"},
                headers={SECRET_HEADER: self._member.secret},
            )
            response.raise_for_status()
            return str(response.json()["logs"])
        except (httpx.HTTPError, ValueError, KeyError) as error:
            return f"(the leading gateway {leader.gateway_id} did not send the logs: {error})"

    async def aclose(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        await self._client.aclose()
