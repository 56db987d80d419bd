from __future__ import annotations

import dataclasses
import hashlib

import pytest

from router.auth.tokens import TokenStore, parse_token_id
from router.auth.types import Principal
from router.state.db import Database
from runtime.errors import InvalidParameterValue, NotFound
from tests.router.auth.conftest import FakeClock


@pytest.fixture
def store(db: Database, clock: FakeClock) -> TokenStore:
    return TokenStore(db, clock=clock, monotonic=clock, cache_ttl_s=5.0)


def test_token_is_random_and_stored_only_as_hash(store: TokenStore, db: Database) -> None:
    token, info = store.create("alice", groups=["ml", "ml"], comment="ci")
    other, _ = store.create("alice")
    assert token != other
    token_id = parse_token_id(token)
    assert token_id == info.token_id
    secret = token.split("_", 2)[2]
    assert len(secret) >= 43  # 32 random bytes, urlsafe base64: 256 bits
    row = db.query_one("SELECT * FROM auth_tokens WHERE token_id = ?", (token_id,))
    assert row is not None
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert all(secret not in str(value) for value in tuple(row))
    assert info.groups == ("ml",)


def test_authenticate_accepts_only_the_exact_token(store: TokenStore) -> None:
    token, info = store.create("alice", groups=["ml"])
    principal = store.authenticate(token)
    assert principal is not None
    assert (principal.name, principal.groups, principal.is_admin, principal.token_id) == (
        "alice", frozenset({"ml"}), False, info.token_id)
    prefix, token_id, secret = token.split("_", 2)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for wrong in (f"{prefix}_{token_id}_{flipped}", f"{prefix}_0000000000000000_{secret}", "zs__x", "garbage",
                  "", token + "x", "x" * 10_000):
        assert store.authenticate(wrong) is None, wrong


def test_expired_token_stops_working(store: TokenStore, clock: FakeClock) -> None:
    token, info = store.create("bob", expires_in_s=60)
    assert info.expires_at_ms == info.created_at_ms + 60_000
    clock.advance(59.9)
    assert store.authenticate(token) is not None
    clock.advance(0.2)
    assert store.authenticate(token) is None
    assert [i.token_id for i in store.list()] == []
    assert [i.token_id for i in store.list(include_inactive=True)] == [info.token_id]


def test_revoke_takes_effect_at_once_here_and_within_the_ttl_elsewhere(
    store: TokenStore, db: Database, clock: FakeClock
) -> None:
    elsewhere = TokenStore(db, clock=clock, monotonic=clock, cache_ttl_s=5.0)  # another gateway process
    token, info = store.create("carol")
    assert store.authenticate(token) is not None
    assert elsewhere.authenticate(token) is not None
    revoked = store.revoke(info.token_id)
    assert revoked.revoked_at_ms is not None
    assert store.authenticate(token) is None
    assert elsewhere.authenticate(token) is not None  # served from its cache...
    clock.advance(5.1)
    assert elsewhere.authenticate(token) is None  # ...until the entry is read again
    assert store.revoke(info.token_id).revoked_at_ms == revoked.revoked_at_ms  # idempotent
    with pytest.raises(NotFound):
        store.revoke("0123456789abcdef")


def test_a_principal_stays_valid_only_while_authenticate_would_give_it_again(
    store: TokenStore, db: Database, clock: FakeClock
) -> None:
    # Revoked here: invalid at once.
    token, info = store.create("carol")
    principal = store.authenticate(token)
    assert principal is not None and store.still_valid(principal)
    store.revoke(info.token_id)
    assert not store.still_valid(principal)
    # Expired: invalid from its expiry on.
    expiring, _ = store.create("dave", expires_in_s=2)
    principal = store.authenticate(expiring)
    assert principal is not None
    clock.advance(1.9)
    assert store.still_valid(principal)
    clock.advance(0.2)
    assert not store.still_valid(principal) and store.authenticate(expiring) is None
    # Cache entry older than the TTL (a revoke by another process shows only on a reload): invalid,
    # and the reload gives a new principal.
    lasting, _ = store.create("erin")
    principal = store.authenticate(lasting)
    assert principal is not None
    clock.advance(5.1)
    assert not store.still_valid(principal)
    reloaded = store.authenticate(lasting)
    assert reloaded is not None and reloaded is not principal and store.still_valid(reloaded)
    # A principal this store did not produce is never taken on trust.
    assert not store.still_valid(dataclasses.replace(reloaded))
    assert not store.still_valid(Principal("admin", is_admin=True))
    static = TokenStore(db, clock=clock, static_admin_token="s" * 40)
    admin = static.authenticate("s" * 40)
    assert admin is not None and static.still_valid(admin) and not store.still_valid(admin)


def test_lookups_are_cached_in_memory(store: TokenStore, db: Database, clock: FakeClock) -> None:
    token, info = store.create("dave")
    assert store.authenticate(token) is not None
    with db.transaction() as conn:
        conn.execute("DELETE FROM auth_tokens WHERE token_id = ?", (info.token_id,))
    assert store.authenticate(token) is not None  # no database read within the TTL
    clock.advance(6)
    assert store.authenticate(token) is None


def test_unknown_token_ids_are_cached_negatively_but_new_tokens_work(store: TokenStore) -> None:
    assert store.authenticate("zs_feedfacefeedface_nope") is None
    token, _ = store.create("erin")
    assert store.authenticate(token) is not None


def test_static_admin_token(db: Database, clock: FakeClock) -> None:
    store = TokenStore(db, clock=clock, static_admin_token="s" * 40)
    principal = store.authenticate("s" * 40)
    assert principal is not None and principal.is_admin and principal.name == "admin"
    assert store.authenticate("s" * 39) is None
    assert store.ensure_admin_token() is None  # the operator holds one already


def test_admin_token_generated_once(store: TokenStore, db: Database, clock: FakeClock) -> None:
    first = store.ensure_admin_token()
    assert first is not None
    principal = store.authenticate(first)
    assert principal is not None and principal.is_admin
    restarted = TokenStore(db, clock=clock, monotonic=clock)
    assert restarted.ensure_admin_token() is None
    # Every admin token revoked: the next start mints a new one, so the operator is never locked out.
    restarted.revoke(principal.token_id or "")
    assert TokenStore(db, clock=clock).ensure_admin_token() not in (None, first)


@pytest.mark.parametrize(
    ("principal", "expires_in_s", "groups"),
    [("", None, ()), ("   ", None, ()), ("a\nb", None, ()), ("x" * 300, None, ()), ("ok", 0, ()),
     ("ok", -5, ()), ("ok", None, ("",))],
    ids=["empty", "blank", "control-char", "too-long", "zero-expiry", "negative-expiry", "empty-group"],
)
def test_create_validates(
    store: TokenStore, principal: str, expires_in_s: float | None, groups: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidParameterValue):
        store.create(principal, expires_in_s=expires_in_s, groups=groups)
