"""Bearer tokens: created at random, shown once, kept only as hashes, expirable and revocable.

A token reads ``zs_<token_id>_<secret>``: the id (64 random bits, not secret) finds the row, the secret
(256 random bits) proves possession. Only ``sha256(token)`` is stored, and the presented token's hash
is compared with ``hmac.compare_digest`` so the comparison takes the same time wherever it differs.

Why plain SHA-256 and not a slow password hash (bcrypt, argon2): those exist to make guessing
*low-entropy* human passwords expensive. A 256-bit random secret cannot be guessed at any hashing
speed, so a fast hash loses nothing, and it keeps authentication on the data-plane hot path at about a
microsecond instead of tens of milliseconds.

Lookups are cached in memory per token id. A revoke through this store drops the entry at once; other
gateway processes sharing the database see a revoke within ``cache_ttl_s``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from router.auth.types import Principal
from router.state.db import Database, DatabaseUnavailable
from runtime.errors import InvalidParameterValue, NotFound

log = logging.getLogger("zeroserve.auth")

TOKEN_PREFIX = "zs"
# Longer presented tokens are rejected before hashing: no legitimate token is near this size.
MAX_TOKEN_LENGTH = 512
_NEGATIVE_CACHE_LIMIT = 10_000
# Who ZEROSERVE_ADMIN_TOKEN authenticates as; one immutable instance, not one per request.
_STATIC_ADMIN = Principal("admin", is_admin=True)

MIGRATIONS = [
    """
    CREATE TABLE auth_tokens (
        token_id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        principal TEXT NOT NULL,
        groups_json TEXT NOT NULL DEFAULT '[]',
        is_admin INTEGER NOT NULL DEFAULT 0,
        comment TEXT NOT NULL DEFAULT '',
        created_at_ms INTEGER NOT NULL,
        created_by TEXT,
        expires_at_ms INTEGER,
        revoked_at_ms INTEGER
    );
    """,
]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """Everything about a token except the token itself (which exists only in the creator's hands)."""

    token_id: str
    principal: str
    groups: tuple[str, ...]
    is_admin: bool
    comment: str
    created_at_ms: int
    created_by: str | None
    expires_at_ms: int | None
    revoked_at_ms: int | None

    def to_dict(self) -> dict[str, object]:
        return {
            "token_id": self.token_id,
            "principal": self.principal,
            "groups": list(self.groups),
            "admin": self.is_admin,
            "comment": self.comment,
            "creation_time": self.created_at_ms,
            "created_by": self.created_by,
            "expiry_time": self.expires_at_ms,
            "revoked_time": self.revoked_at_ms,
        }

    def active_at(self, now_ms: int) -> bool:
        return self.revoked_at_ms is None and (self.expires_at_ms is None or now_ms < self.expires_at_ms)


@dataclass(frozen=True, slots=True)
class _Cached:
    token_hash: bytes
    info: TokenInfo
    principal: Principal
    loaded_at: float  # monotonic


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def parse_token_id(token: str) -> str | None:
    """The id part of a zeroserve token, or None when ``token`` does not have the zeroserve shape."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


def validate_principal_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise InvalidParameterValue("principal must be a non-empty string of at most 256 characters")
    if any(ord(char) < 32 for char in name):
        raise InvalidParameterValue("principal must not contain control characters")
    return name.strip()


class TokenStore:
    """Creates, lists, revokes and checks tokens; the table ``auth_tokens`` in the gateway database."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        cache_ttl_s: float = 5.0,
        static_admin_token: str | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._monotonic = monotonic
        self._cache_ttl_s = cache_ttl_s
        self._cache: dict[str, _Cached] = {}
        # Token ids that matched no row recently: a flood of made-up tokens must not hit SQLite each time.
        self._unknown: dict[str, float] = {}
        self._static_admin_hash = hash_token(static_admin_token) if static_admin_token else None
        db.migrate("auth_tokens", MIGRATIONS)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # -- administration ----------------------------------------------------------------------------

    def create(
        self,
        principal: str,
        *,
        expires_in_s: float | None = None,
        groups: Iterable[str] = (),
        is_admin: bool = False,
        comment: str = "",
        created_by: str | None = None,
    ) -> tuple[str, TokenInfo]:
        """Mint a token; returns ``(token, info)``. The token is not kept anywhere: show it once."""
        principal = validate_principal_name(principal)
        group_list = tuple(sorted({validate_principal_name(group) for group in groups}))
        if expires_in_s is not None and not (expires_in_s > 0):
            raise InvalidParameterValue(f"expiry must be a positive duration, got {expires_in_s} s")
        token_id = secrets.token_hex(8)
        token = f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
        now_ms = self._now_ms()
        expires_at_ms = None if expires_in_s is None else now_ms + int(expires_in_s * 1000)
        info = TokenInfo(token_id, principal, group_list, is_admin, comment, now_ms, created_by,
                         expires_at_ms, None)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO auth_tokens(token_id, token_hash, principal, groups_json, is_admin, comment,"
                " created_at_ms, created_by, expires_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (token_id, hash_token(token).hex(), principal, json.dumps(list(group_list)), int(is_admin),
                 comment, now_ms, created_by, expires_at_ms),
            )
        self._unknown.pop(token_id, None)
        return token, info

    def list(self, *, include_inactive: bool = False) -> list[TokenInfo]:
        rows = self._db.query("SELECT * FROM auth_tokens ORDER BY created_at_ms, token_id")
        infos = [_info(row) for row in rows]
        if include_inactive:
            return infos
        now_ms = self._now_ms()
        return [info for info in infos if info.active_at(now_ms)]

    def get(self, token_id: str) -> TokenInfo:
        row = self._db.query_one("SELECT * FROM auth_tokens WHERE token_id = ?", (token_id,))
        if row is None:
            raise NotFound(f"Token {token_id!r} does not exist.")
        return _info(row)

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token for good (idempotent); it stops working in this process immediately."""
        with self._db.transaction() as conn:
            updated = conn.execute(
                "UPDATE auth_tokens SET revoked_at_ms = ? WHERE token_id = ? AND revoked_at_ms IS NULL",
                (self._now_ms(), token_id),
            ).rowcount
        self._cache.pop(token_id, None)
        info = self.get(token_id)
        if updated:
            log.info("token %s of principal %r revoked", token_id, info.principal)
        return info

    def invalidate(self) -> None:
        """Every cached lookup is stale (the tokens table may have changed through another gateway):
        the next use of each token reads it again. The stale entries stay as what holds while the
        database cannot be reached."""
        self._cache = {key: replace(cached, loaded_at=-math.inf) for key, cached in self._cache.items()}
        self._unknown.clear()

    def ensure_admin_token(self) -> str | None:
        """First start: mint an admin token if there is no ``ZEROSERVE_ADMIN_TOKEN`` and no active admin
        token; return it (to be printed once) or None when an admin can already get in."""
        if self._static_admin_hash is not None:
            return None
        now_ms = self._now_ms()
        rows = self._db.query("SELECT * FROM auth_tokens WHERE is_admin = 1 AND revoked_at_ms IS NULL")
        if any(_info(row).active_at(now_ms) for row in rows):
            return None
        token, _ = self.create("admin", is_admin=True, comment="generated on first start")
        return token

    # -- the hot path ------------------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or None if it is unknown, wrong, expired or revoked."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        presented = hash_token(token)
        if self._static_admin_hash is not None and hmac.compare_digest(presented, self._static_admin_hash):
            return _STATIC_ADMIN
        token_id = parse_token_id(token)
        if token_id is None:
            return None
        cached = self._lookup(token_id)
        if cached is None or not hmac.compare_digest(presented, cached.token_hash):
            return None
        if not cached.info.active_at(self._now_ms()):
            return None
        return cached.principal

    def still_valid(self, principal: Principal) -> bool:
        """Whether ``principal``, which ``authenticate`` returned for a token a moment ago, may be taken
        again for the same token without hashing it: nothing that ``authenticate`` would now decide
        otherwise has happened. The token's cache entry is the one that produced ``principal`` (a revoke
        drops it, and a reload after ``cache_ttl_s`` makes a new principal), it is still fresh, and the
        token has not expired. ``ZEROSERVE_ADMIN_TOKEN`` cannot change while the process runs."""
        if principal is _STATIC_ADMIN:
            return self._static_admin_hash is not None
        if principal.token_id is None:
            return False
        cached = self._cache.get(principal.token_id)
        return (
            cached is not None
            and cached.principal is principal
            and self._monotonic() - cached.loaded_at < self._cache_ttl_s
            and cached.info.active_at(self._now_ms())
        )

    def _lookup(self, token_id: str) -> _Cached | None:
        now = self._monotonic()
        cached = self._cache.get(token_id)
        if cached is not None and now - cached.loaded_at < self._cache_ttl_s:
            return cached
        unknown_since = self._unknown.get(token_id)
        if unknown_since is not None and now - unknown_since < self._cache_ttl_s:
            return None
        try:
            row = self._db.query_one("SELECT * FROM auth_tokens WHERE token_id = ?", (token_id,))
        except DatabaseUnavailable:
            if cached is not None:
                # The database is down: what was true a moment ago still holds (a revoke made meanwhile
                # could not have been stored either), so queries keep flowing.
                return cached
            raise
        if row is None:
            if len(self._unknown) >= _NEGATIVE_CACHE_LIMIT:
                self._unknown.clear()
            self._unknown[token_id] = now
            self._cache.pop(token_id, None)
            return None
        info = _info(row)
        principal = Principal(info.principal, frozenset(info.groups), info.is_admin, info.token_id)
        cached = _Cached(bytes.fromhex(row["token_hash"]), info, principal, now)
        self._cache[token_id] = cached
        return cached


def _info(row: Any) -> TokenInfo:
    return TokenInfo(
        token_id=row["token_id"],
        principal=row["principal"],
        groups=tuple(json.loads(row["groups_json"])),
        is_admin=bool(row["is_admin"]),
        comment=row["comment"],
        created_at_ms=row["created_at_ms"],
        created_by=row["created_by"],
        expires_at_ms=row["expires_at_ms"],
        revoked_at_ms=row["revoked_at_ms"],
    )
