"""The audit trail: every control-plane change, who made it, when, and what it was.

``AuditMiddleware`` sees every mutating request (POST, PUT, PATCH, DELETE) under ``/api/``, so no
handler can forget to be audited. It records the principal, the time, the method and path, the answer's
status and the request body with secrets blanked out, as a structured JSON log line (logger
``zeroserve.audit``) and as a row of the ``audit`` table. Unauthenticated attempts are only logged, not
stored: a flood of them must not turn into a flood of fsyncs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.auth.limits import loads_json
from router.auth.types import PRINCIPAL_SCOPE_KEY, Principal
from router.state.db import Database
from runtime.errors import InvalidInput

log = logging.getLogger("zeroserve.audit")

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Request bodies are kept up to this size; control-plane bodies are small JSON documents.
MAX_RECORDED_BODY = 64 * 1024
REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(r"token|secret|password|passwd|credential|api_key|private_key|_key$", re.IGNORECASE)

MIGRATIONS = [
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        principal TEXT,
        token_id TEXT,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        status INTEGER NOT NULL,
        client TEXT,
        detail_json TEXT NOT NULL
    );
    CREATE INDEX audit_time ON audit(time_ms);
    """,
]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    time_ms: int
    principal: str | None  # None: auth disabled (--insecure-no-auth)
    token_id: str | None
    method: str
    path: str
    status: int
    client: str | None
    detail: Any  # the request body (JSON, secrets redacted), or a description of it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def redact(value: Any) -> Any:
    """A copy of a JSON value with the values of secret-looking keys (and all env vars) blanked out."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, str) and key == "environment_vars" and isinstance(item, dict):
                out[key] = dict.fromkeys(item, REDACTED)
            elif isinstance(key, str) and key != "key" and _SECRET_KEY.search(key):
                out[key] = REDACTED
            else:
                out[key] = redact(item)
        return out
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def describe_body(body: bytes, truncated: bool) -> Any:
    if not body:
        return None
    if truncated:
        return f"<body of more than {MAX_RECORDED_BODY} bytes, not recorded>"
    try:
        # The data plane's own parser: what it refuses (lone surrogates, nesting past its limit) is
        # described rather than stored, and big integers come back as floats that any encoder can write.
        return redact(loads_json(body))
    except InvalidInput:
        return f"<{len(body)} bytes, not JSON>"


class AuditLog:
    """The ``audit`` table plus the JSON log line; ``record`` is synchronous (run it off the event loop)."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        db.migrate("audit", MIGRATIONS)

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    def record(self, record: AuditRecord, *, store: bool = True) -> None:
        log.info(json.dumps({"audit": record.to_dict()}, default=str, sort_keys=True))
        if not store:
            return
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO audit(time_ms, principal, token_id, method, path, status, client, detail_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (record.time_ms, record.principal, record.token_id, record.method, record.path,
                 record.status, record.client, json.dumps(record.detail, default=str)),
            )

    def list(
        self, *, limit: int = 100, since_ms: int | None = None, principal: str | None = None
    ) -> list[AuditRecord]:
        """The newest records first."""
        sql = "SELECT * FROM audit WHERE 1 = 1"
        params: list[Any] = []
        if since_ms is not None:
            sql += " AND time_ms >= ?"
            params.append(since_ms)
        if principal is not None:
            sql += " AND principal = ?"
            params.append(principal)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [
            AuditRecord(row["time_ms"], row["principal"], row["token_id"], row["method"], row["path"],
                        row["status"], row["client"], json.loads(row["detail_json"]))
            for row in self._db.query(sql, params)
        ]


class AuditMiddleware:
    """Records mutating requests under ``prefixes``; sits outside the auth middleware so that it also
    sees refused attempts (the principal is read from the scope after the app has run)."""

    def __init__(self, app: ASGIApp, *, audit: AuditLog, prefixes: tuple[str, ...] = ("/api/",)) -> None:
        self.app = app
        self.audit = audit
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in MUTATING_METHODS
            or not scope["path"].startswith(self.prefixes)
        ):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        status = 500  # what the client gets if the app raises before answering

        async def recording_receive() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                size += len(body)
                if size <= MAX_RECORDED_BODY:
                    chunks.append(body)
            return message

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, recording_receive, recording_send)
        finally:
            principal: Principal | None = scope.get(PRINCIPAL_SCOPE_KEY)
            authenticated = principal is not None or PRINCIPAL_SCOPE_KEY in scope
            client = scope.get("client")
            record = AuditRecord(
                time_ms=self.audit.now_ms(),
                principal=principal.name if principal is not None else None,
                token_id=principal.token_id if principal is not None else None,
                method=scope["method"],
                path=scope["path"],
                status=status,
                client=f"{client[0]}:{client[1]}" if client else None,
                detail=describe_body(b"".join(chunks), size > MAX_RECORDED_BODY),
            )
            await asyncio.shield(asyncio.to_thread(self.audit.record, record, store=authenticated))
