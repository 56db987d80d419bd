"""The endpoint store: endpoints, their config versions, tags and history, durable in SQLite.

This is the desired state of the control plane. Every change is one transaction, so a gateway killed
at any point restarts with a consistent picture: an endpoint's active config (``config_version``), at
most one pending config being rolled out, and the config-update state clients poll. Config versions
only grow, failed ones included, so a client never sees a version number reused.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from router.api.lifecycle import ConfigUpdate, UpdateEvent, next_state
from router.api.models import EndpointConfig
from router.errors import AlreadyExists, EndpointNotFound
from router.state.db import Database
from runtime.errors import NotFound

MIGRATIONS = [
    """
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        creator TEXT,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        description TEXT,
        tags TEXT NOT NULL DEFAULT '{}',
        extras TEXT NOT NULL DEFAULT '{}',
        config_version INTEGER,
        pending_version INTEGER,
        pending_started_ms INTEGER,
        config_update TEXT NOT NULL,
        update_message TEXT
    );
    CREATE TABLE endpoint_configs (
        endpoint TEXT NOT NULL REFERENCES endpoints(name) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        config TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (endpoint, version)
    );
    CREATE TABLE endpoint_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        endpoint TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        principal TEXT
    );
    CREATE INDEX endpoint_events_by_endpoint ON endpoint_events(endpoint, seq);
    """,
]

_CONFIG_SQL = "SELECT version, config, created_ms FROM endpoint_configs WHERE endpoint = ? AND version = ?"
HISTORY_LIMIT = 200  # events kept per endpoint


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    version: int
    config: EndpointConfig
    created_ms: int


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    name: str
    id: str
    creator: str | None
    created_ms: int
    updated_ms: int
    description: str | None
    tags: dict[str, str | None]
    extras: dict[str, Any]
    config: ConfigVersion | None
    pending: ConfigVersion | None
    config_update: ConfigUpdate
    update_message: str | None


@dataclass(frozen=True, slots=True)
class Event:
    ts_ms: int
    kind: str
    message: str
    principal: str | None = field(default=None)


class EndpointStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate("endpoints", MIGRATIONS)

    # ---- reads -------------------------------------------------------------------------------

    def get(self, name: str) -> EndpointRecord:
        row = self.db.query_one("SELECT * FROM endpoints WHERE name = ?", (name,))
        if row is None:
            raise EndpointNotFound(name)
        return self._record(row)

    def find(self, name: str) -> EndpointRecord | None:
        row = self.db.query_one("SELECT * FROM endpoints WHERE name = ?", (name,))
        return self._record(row) if row is not None else None

    def get_by_id(self, endpoint_id: str) -> EndpointRecord:
        row = self.db.query_one("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,))
        if row is None:
            raise EndpointNotFound(endpoint_id)
        return self._record(row)

    def list_all(self) -> list[EndpointRecord]:
        return [self._record(row) for row in self.db.query("SELECT * FROM endpoints ORDER BY name")]

    def history(self, name: str, limit: int = 50) -> list[Event]:
        rows = self.db.query(
            "SELECT ts_ms, kind, message, principal FROM endpoint_events WHERE endpoint = ?"
            " ORDER BY seq DESC LIMIT ?",
            (name, limit),
        )
        return [Event(r["ts_ms"], r["kind"], r["message"], r["principal"]) for r in reversed(rows)]

    def config_version(self, name: str, version: int) -> ConfigVersion | None:
        row = self.db.query_one(_CONFIG_SQL, (name, version))
        return _config_version(row) if row is not None else None

    # ---- writes ------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        config: EndpointConfig,
        *,
        creator: str | None = None,
        description: str | None = None,
        tags: dict[str, str | None] | None = None,
        extras: dict[str, Any] | None = None,
    ) -> EndpointRecord:
        """A new endpoint whose first config (version 1) is pending: the rollout brings it up."""
        ts = now_ms()
        state = next_state(ConfigUpdate.NOT_UPDATING, UpdateEvent.SUBMIT, name)
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"Endpoint with name '{name}' already exists.")
            conn.execute(
                "INSERT INTO endpoints(name, id, creator, created_ms, updated_ms, description, tags, extras,"
                " pending_version, pending_started_ms, config_update) VALUES (?,?,?,?,?,?,?,?,1,?,?)",
                (name, uuid.uuid4().hex, creator, ts, ts, description, json.dumps(tags or {}),
                 json.dumps(extras or {}), ts, state.value),
            )
            conn.execute(
                "INSERT INTO endpoint_configs(endpoint, version, config, created_ms) VALUES (?, 1, ?, ?)",
                (name, config.model_dump_json(), ts),
            )
            self._event(conn, name, ts, "CREATED", "endpoint created; config version 1 pending", creator)
        return self.get(name)

    def submit_config(
        self, name: str, config: EndpointConfig, principal: str | None = None
    ) -> EndpointRecord:
        """Make ``config`` the pending config with the next version (409 while an update runs)."""
        ts = now_ms()
        with self.db.transaction() as conn:
            record = self._locked(conn, name)
            state = next_state(record.config_update, UpdateEvent.SUBMIT, name)
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM endpoint_configs WHERE endpoint = ?", (name,)
            ).fetchone()
            version = int(row[0])
            conn.execute(
                "INSERT INTO endpoint_configs(endpoint, version, config, created_ms) VALUES (?, ?, ?, ?)",
                (name, version, config.model_dump_json(), ts),
            )
            conn.execute(
                "UPDATE endpoints SET pending_version = ?, pending_started_ms = ?, config_update = ?,"
                " update_message = NULL, updated_ms = ? WHERE name = ?",
                (version, ts, state.value, ts, name),
            )
            self._event(conn, name, ts, "CONFIG_SUBMITTED", f"config version {version} pending", principal)
        return self.get(name)

    def finish_update(self, name: str, version: int, *, failure: str | None = None) -> EndpointRecord:
        """The rollout of pending ``version`` ended: promote it, or record why it failed.

        A failed first config (nothing served before) still becomes the config, so that its served
        entities show ``DEPLOYMENT_FAILED`` with the reason; a failed later one is dropped and the
        previous config keeps serving.
        """
        ts = now_ms()
        with self.db.transaction() as conn:
            record = self._locked(conn, name)
            if record.pending is None or record.pending.version != version:
                raise NotFound(f"Endpoint '{name}' has no pending config version {version}.")
            event = UpdateEvent.FAIL if failure else UpdateEvent.SUCCEED
            state = next_state(record.config_update, event, name)
            promote = failure is None or record.config is None
            conn.execute(
                "UPDATE endpoints SET config_version = ?, pending_version = NULL, pending_started_ms = NULL,"
                " config_update = ?, update_message = ?, updated_ms = ? WHERE name = ?",
                (version if promote else (record.config.version if record.config else None),
                 state.value, failure, ts, name),
            )
            if failure:
                self._event(conn, name, ts, "UPDATE_FAILED", f"config version {version}: {failure}", None)
            else:
                self._event(conn, name, ts, "UPDATE_SUCCEEDED", f"config version {version} serving", None)
        return self.get(name)

    def delete(self, name: str, principal: str | None = None) -> EndpointRecord:
        ts = now_ms()
        with self.db.transaction() as conn:
            record = self._locked(conn, name)
            if record.config_update is ConfigUpdate.IN_PROGRESS:
                next_state(record.config_update, UpdateEvent.CANCEL, name)
                self._event(conn, name, ts, "UPDATE_CANCELED", "endpoint deleted during a config update",
                            principal)
            conn.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            # The history outlives the endpoint (an audit trail), but only the last events of it.
            self._event(conn, name, ts, "DELETED", "endpoint deleted", principal)
        return record

    def patch_tags(
        self, name: str, add: dict[str, str | None], remove: list[str], principal: str | None = None
    ) -> dict[str, str | None]:
        ts = now_ms()
        with self.db.transaction() as conn:
            record = self._locked(conn, name)
            tags = dict(record.tags)
            for key in remove:
                tags.pop(key, None)
            tags.update(add)
            conn.execute(
                "UPDATE endpoints SET tags = ?, updated_ms = ? WHERE name = ?", (json.dumps(tags), ts, name)
            )
            self._event(conn, name, ts, "TAGS_CHANGED",
                        f"added {sorted(add)}, removed {sorted(remove)}", principal)
        return tags

    def set_extra(self, name: str, key: str, value: Any, principal: str | None = None) -> EndpointRecord:
        """Endpoint-level settings other components enforce (``rate_limits``, ``ai_gateway``, ...)."""
        ts = now_ms()
        with self.db.transaction() as conn:
            record = self._locked(conn, name)
            extras = dict(record.extras)
            extras[key] = value
            conn.execute(
                "UPDATE endpoints SET extras = ?, updated_ms = ? WHERE name = ?",
                (json.dumps(extras), ts, name),
            )
            self._event(conn, name, ts, "SETTINGS_CHANGED", f"{key} changed", principal)
        return self.get(name)

    def record_event(self, name: str, kind: str, message: str, principal: str | None = None) -> None:
        with self.db.transaction() as conn:
            self._event(conn, name, now_ms(), kind, message, principal)

    # ---- helpers -----------------------------------------------------------------------------

    def _locked(self, conn: Any, name: str) -> EndpointRecord:
        row = conn.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise EndpointNotFound(name)
        return self._record(row, conn)

    def _record(self, row: Any, conn: Any | None = None) -> EndpointRecord:
        def load(version: int | None) -> ConfigVersion | None:
            if version is None:
                return None
            sql = _CONFIG_SQL
            params = (row["name"], version)
            if conn is not None:
                found = conn.execute(sql, params).fetchone()
            else:
                found = self.db.query_one(sql, params)
            return _config_version(found) if found is not None else None

        return EndpointRecord(
            name=row["name"],
            id=row["id"],
            creator=row["creator"],
            created_ms=row["created_ms"],
            updated_ms=row["updated_ms"],
            description=row["description"],
            tags=json.loads(row["tags"]),
            extras=json.loads(row["extras"]),
            config=load(row["config_version"]),
            pending=load(row["pending_version"]),
            config_update=ConfigUpdate(row["config_update"]),
            update_message=row["update_message"],
        )

    @staticmethod
    def _event(conn: Any, name: str, ts: int, kind: str, message: str, principal: str | None) -> None:
        conn.execute(
            "INSERT INTO endpoint_events(endpoint, ts_ms, kind, message, principal) VALUES (?,?,?,?,?)",
            (name, ts, kind, message, principal),
        )
        conn.execute(
            "DELETE FROM endpoint_events WHERE endpoint = ? AND seq <= ("
            " SELECT seq FROM endpoint_events WHERE endpoint = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (name, name, HISTORY_LIMIT),
        )


def _config_version(row: Any) -> ConfigVersion:
    return ConfigVersion(
        version=int(row["version"]),
        config=EndpointConfig.model_validate_json(row["config"]),
        created_ms=int(row["created_ms"]),
    )
