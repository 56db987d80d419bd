"""The fleet's tables: gateways and their heartbeats, the autoscaler's lease, the replica registry and
the entities' published status.

The lease is a row, not a session lock: whoever holds it renews ``expires_ms`` every third of the
lease time, and another gateway may take it only once it has expired by the database's clock (every
gateway compares against the same clock, so skewed machine clocks cannot make two leaders). A leader
that cannot renew (its database connection is gone) stops leading at ``expires_ms`` by its own clock,
measured from before the renewal it last saw succeed, which is never later than when the others may
take over.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from autoscaler.types import EntityKey, ReplicaInfo, ReplicaOptimization
from router.state.db import Database

MIGRATIONS = [
    """
    CREATE TABLE fleet_gateways (
        gateway_id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        seen_ms INTEGER NOT NULL
    );
    CREATE TABLE fleet_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    );
    CREATE TABLE fleet_secrets (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE fleet_replicas (
        replica_id TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        served_entity TEXT NOT NULL,
        url TEXT NOT NULL,
        unix_socket TEXT,
        capacity INTEGER NOT NULL,
        optimization TEXT,
        state TEXT NOT NULL,
        pid INTEGER,
        owner TEXT NOT NULL,
        updated_ms INTEGER NOT NULL
    );
    CREATE TABLE fleet_entities (
        endpoint TEXT NOT NULL,
        served_entity TEXT NOT NULL,
        status TEXT NOT NULL,
        failed_reason TEXT,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (endpoint, served_entity)
    );
    """,
]

AUTOSCALER_LEASE = "autoscaler"
_NOW = {
    "postgresql": "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint",
    "sqlite": "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
}


@dataclass(frozen=True, slots=True)
class Lease:
    holder: str
    since_ms: int
    expires_ms: int
    now_ms: int  # the database's clock when this was read


@dataclass(frozen=True, slots=True)
class GatewayRow:
    gateway_id: str
    url: str
    host: str
    pid: int
    started_ms: int
    seen_ms: int


@dataclass(frozen=True, slots=True)
class RegisteredReplica:
    info: ReplicaInfo
    state: str  # READY or DRAINING
    pid: int | None
    owner: str  # the gateway whose backend started (or adopted) it


class FleetStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("fleet", MIGRATIONS)

    def now_ms(self, conn: Any | None = None) -> int:
        sql = _NOW[self.db.dialect]
        row = conn.execute(sql).fetchone() if conn is not None else self.db.query_one(sql)
        assert row is not None
        return int(row[0])

    # ---- gateways ------------------------------------------------------------------------------

    def heartbeat(self, gateway_id: str, url: str, host: str, pid: int, started_ms: int) -> None:
        with self.db.transaction(notify=False) as conn:
            now = self.now_ms(conn)
            conn.execute(
                "INSERT INTO fleet_gateways(gateway_id, url, host, pid, started_ms, seen_ms)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(gateway_id) DO UPDATE SET url = excluded.url,"
                " seen_ms = excluded.seen_ms",
                (gateway_id, url, host, pid, started_ms, now),
            )

    def gateways(self, *, seen_within_ms: int | None = None) -> list[GatewayRow]:
        rows = self.db.query("SELECT * FROM fleet_gateways ORDER BY started_ms, gateway_id")
        gateways = [GatewayRow(r["gateway_id"], r["url"], r["host"], int(r["pid"]), int(r["started_ms"]),
                               int(r["seen_ms"])) for r in rows]
        if seen_within_ms is None:
            return gateways
        now = self.now_ms()
        return [g for g in gateways if now - g.seen_ms <= seen_within_ms]

    def leave(self, gateway_id: str) -> None:
        with self.db.transaction(notify=False) as conn:
            conn.execute("DELETE FROM fleet_gateways WHERE gateway_id = ?", (gateway_id,))

    def forget_gateways(self, silent_for_ms: int) -> int:
        """Drop the rows of gateways not heard from for ``silent_for_ms`` (killed, never to return)."""
        with self.db.transaction(notify=False) as conn:
            now = self.now_ms(conn)
            cursor = conn.execute("DELETE FROM fleet_gateways WHERE seen_ms < ?", (now - silent_for_ms,))
            return int(cursor.rowcount or 0)

    # ---- the lease -----------------------------------------------------------------------------

    def acquire(self, holder: str, ttl_ms: int, name: str = AUTOSCALER_LEASE) -> Lease:
        """Take or renew the lease for ``holder`` if it is free, expired or already ``holder``'s; the
        lease as it stands afterwards either way."""
        with self.db.transaction(notify=False) as conn:
            now = self.now_ms(conn)
            row = conn.execute(
                "SELECT holder, since_ms, expires_ms FROM fleet_leases WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO fleet_leases(name, holder, since_ms, expires_ms) VALUES (?, ?, ?, ?)",
                    (name, holder, now, now + ttl_ms),
                )
                return Lease(holder, now, now + ttl_ms, now)
            if row["holder"] == holder:
                conn.execute("UPDATE fleet_leases SET expires_ms = ? WHERE name = ?", (now + ttl_ms, name))
                return Lease(holder, int(row["since_ms"]), now + ttl_ms, now)
            if int(row["expires_ms"]) <= now:
                conn.execute(
                    "UPDATE fleet_leases SET holder = ?, since_ms = ?, expires_ms = ? WHERE name = ?",
                    (holder, now, now + ttl_ms, name),
                )
                return Lease(holder, now, now + ttl_ms, now)
            return Lease(row["holder"], int(row["since_ms"]), int(row["expires_ms"]), now)

    def release(self, holder: str, name: str = AUTOSCALER_LEASE) -> None:
        """Give the lease up at once (an orderly shutdown): the next gateway need not wait it out."""
        with self.db.transaction(notify=False) as conn:
            conn.execute("UPDATE fleet_leases SET expires_ms = 0 WHERE name = ? AND holder = ?",
                         (name, holder))

    def lease(self, name: str = AUTOSCALER_LEASE) -> Lease | None:
        row = self.db.query_one("SELECT holder, since_ms, expires_ms FROM fleet_leases WHERE name = ?",
                                (name,))
        if row is None:
            return None
        return Lease(row["holder"], int(row["since_ms"]), int(row["expires_ms"]), self.now_ms())

    # ---- the secret the gateways talk to each other with ---------------------------------------

    def secret(self) -> str:
        """The shared secret of the fleet's internal routes, made by the first gateway ever."""
        with self.db.transaction(notify=False) as conn:
            conn.execute("INSERT INTO fleet_secrets(name, value) VALUES ('internal', ?)"
                         " ON CONFLICT(name) DO NOTHING", (secrets.token_urlsafe(32),))
            row = conn.execute("SELECT value FROM fleet_secrets WHERE name = 'internal'").fetchone()
            return str(row[0])

    # ---- the replica registry ------------------------------------------------------------------

    def register(self, replica: ReplicaInfo, state: str, owner: str, pid: int | None) -> None:
        optimization = None
        if replica.optimization is not None:
            opt = replica.optimization
            optimization = json.dumps({"path": opt.path, "reason": opt.reason, "mode": opt.mode})
        with self.db.transaction(notify=False) as conn:
            conn.execute(
                "INSERT INTO fleet_replicas(replica_id, endpoint, served_entity, url, unix_socket, capacity,"
                " optimization, state, pid, owner, updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(replica_id) DO UPDATE SET state = excluded.state, owner = excluded.owner,"
                " updated_ms = excluded.updated_ms",
                (replica.replica_id, replica.entity.endpoint, replica.entity.served_entity, replica.url,
                 replica.unix_socket, replica.capacity, optimization, state, pid, owner, self.now_ms(conn)),
            )

    def unregister(self, replica_id: str) -> None:
        with self.db.transaction(notify=False) as conn:
            conn.execute("DELETE FROM fleet_replicas WHERE replica_id = ?", (replica_id,))

    def replicas(self) -> list[RegisteredReplica]:
        rows = self.db.query("SELECT * FROM fleet_replicas ORDER BY replica_id")
        return [_registered(row) for row in rows]

    # ---- published entity status ---------------------------------------------------------------

    def publish(self, statuses: dict[EntityKey, tuple[dict[str, Any], str | None]]) -> None:
        """The leader's view of every entity (``{key: (state view, failed reason)}``), replacing the last."""
        with self.db.transaction(notify=False) as conn:
            now = self.now_ms(conn)
            conn.execute("DELETE FROM fleet_entities")
            conn.executemany(
                "INSERT INTO fleet_entities(endpoint, served_entity, status, failed_reason, updated_ms)"
                " VALUES (?, ?, ?, ?, ?)",
                [(key.endpoint, key.served_entity, json.dumps(view), reason, now)
                 for key, (view, reason) in statuses.items()],
            )

    def published(self) -> dict[EntityKey, tuple[dict[str, Any], str | None]]:
        rows = self.db.query("SELECT endpoint, served_entity, status, failed_reason FROM fleet_entities")
        return {EntityKey(r["endpoint"], r["served_entity"]): (json.loads(r["status"]), r["failed_reason"])
                for r in rows}


def _registered(row: Any) -> RegisteredReplica:
    optimization = None
    if row["optimization"]:
        opt = json.loads(row["optimization"])
        optimization = ReplicaOptimization(opt["path"], opt["reason"], opt.get("mode", "auto"))
    info = ReplicaInfo(row["replica_id"], EntityKey(row["endpoint"], row["served_entity"]), row["url"],
                       int(row["capacity"]), optimization, row["unix_socket"])
    pid = row["pid"]
    return RegisteredReplica(info, row["state"], int(pid) if pid is not None else None, row["owner"])
