from __future__ import annotations

from dataclasses import dataclass

import pytest

from router.auth.permissions import AclEntry, Authorizer, PermissionStore, parse_access_control_list
from router.auth.types import EndpointRef, PermissionLevel, Principal
from router.errors import PermissionDenied
from router.state.db import Database
from runtime.errors import InvalidParameterValue, NotFound
from tests.router.auth.conftest import FakeClock, FakeDirectory

VIEW, QUERY, MANAGE = PermissionLevel.CAN_VIEW, PermissionLevel.CAN_QUERY, PermissionLevel.CAN_MANAGE
ENDPOINT = EndpointRef(id="ep-1", name="fraud", creator="owner")


@pytest.fixture
def authorizer(db: Database, directory: FakeDirectory, clock: FakeClock) -> Authorizer:
    directory.add(ENDPOINT)
    directory.add(EndpointRef(id="ep-2", name="other", creator="someone"))
    store = PermissionStore(db, monotonic=clock)
    store.replace("ep-1", [
        AclEntry("user_name", "viewer", VIEW),
        AclEntry("user_name", "querier", QUERY),
        AclEntry("service_principal_name", "batch-job", QUERY),
        AclEntry("group_name", "analysts", VIEW),
        AclEntry("group_name", "ml", MANAGE),
    ])
    return Authorizer(store, directory)


@dataclass(frozen=True)
class Case:
    id: str
    principal: Principal
    required: PermissionLevel
    outcome: type[Exception] | None  # None: allowed


CASES = [
    Case("stranger-view-404", Principal("stranger"), VIEW, NotFound),
    Case("stranger-query-404", Principal("stranger"), QUERY, NotFound),
    Case("viewer-view", Principal("viewer"), VIEW, None),
    Case("viewer-query-403", Principal("viewer"), QUERY, PermissionDenied),
    Case("querier-query", Principal("querier"), QUERY, None),
    Case("querier-manage-403", Principal("querier"), MANAGE, PermissionDenied),
    Case("service-principal-query", Principal("batch-job"), QUERY, None),
    Case("group-view", Principal("ann", frozenset({"analysts"})), VIEW, None),
    Case("group-query-403", Principal("ann", frozenset({"analysts"})), QUERY, PermissionDenied),
    Case("best-of-user-and-group", Principal("viewer", frozenset({"ml"})), MANAGE, None),
    Case("creator-manages", Principal("owner"), MANAGE, None),
    Case("admin-manages", Principal("root", is_admin=True), MANAGE, None),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_authorize(authorizer: Authorizer, case: Case) -> None:
    for endpoint in ("fraud", "ep-1"):  # by name and by id alike
        if case.outcome is None:
            assert authorizer.authorize(case.principal, endpoint, case.required) == ENDPOINT
        else:
            with pytest.raises(case.outcome):
                authorizer.authorize(case.principal, endpoint, case.required)


def test_hidden_and_missing_endpoints_answer_alike(authorizer: Authorizer) -> None:
    with pytest.raises(NotFound) as hidden:
        authorizer.authorize(Principal("viewer"), "other", VIEW)
    with pytest.raises(NotFound) as missing:
        authorizer.authorize(Principal("viewer"), "nope", VIEW)
    assert hidden.value.message.replace("other", "X") == missing.value.message.replace("nope", "X")


def test_users_group_opens_to_everyone(authorizer: Authorizer) -> None:
    authorizer.permissions.update("ep-2", [AclEntry("group_name", "users", QUERY)])
    assert authorizer.authorize(Principal("anyone"), "other", QUERY) is not None


def test_auth_disabled_allows_everything(authorizer: Authorizer) -> None:
    assert authorizer.authorize(None, "fraud", MANAGE) == ENDPOINT
    assert authorizer.authorize(None, "nope", MANAGE) is None


def test_filter_visible(authorizer: Authorizer, directory: FakeDirectory) -> None:
    refs = list(directory.endpoints.values())
    assert authorizer.filter_visible(Principal("viewer"), refs, lambda r: r) == [ENDPOINT]
    assert authorizer.filter_visible(Principal("viewer"), refs, lambda r: r, QUERY) == []
    assert authorizer.filter_visible(Principal("root", is_admin=True), refs, lambda r: r) == refs
    assert authorizer.filter_visible(Principal("stranger"), refs, lambda r: r) == []


def test_put_replaces_patch_merges_and_changes_apply_at_once(authorizer: Authorizer) -> None:
    store = authorizer.permissions
    assert authorizer.level(Principal("querier"), ENDPOINT) is QUERY  # now cached
    store.update("ep-1", [AclEntry("user_name", "querier", MANAGE), AclEntry("user_name", "new", VIEW)])
    assert authorizer.level(Principal("querier"), ENDPOINT) is MANAGE
    assert authorizer.level(Principal("viewer"), ENDPOINT) is VIEW
    store.replace("ep-1", [AclEntry("user_name", "new", QUERY)])
    assert authorizer.level(Principal("viewer"), ENDPOINT) is None
    assert [e.to_request_dict() for e in store.entries("ep-1")] == [
        {"user_name": "new", "permission_level": "CAN_QUERY"}]
    store.forget("ep-1")
    assert store.entries("ep-1") == ()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([], "JSON object"),
        ({"access_control_list": {}}, "must be a list"),
        ({"access_control_list": [1]}, "must be an object"),
        ({"access_control_list": [{"permission_level": "CAN_VIEW"}]}, "exactly one of"),
        ({"access_control_list": [{"user_name": "a", "group_name": "b", "permission_level": "CAN_VIEW"}]},
         "exactly one of"),
        ({"access_control_list": [{"user_name": "", "permission_level": "CAN_VIEW"}]}, "non-empty"),
        ({"access_control_list": [{"user_name": "a", "permission_level": "CAN_DANCE"}]}, "CAN_MANAGE"),
        ({"access_control_list": [{"user_name": "a"}]}, "permission_level"),
    ],
    ids=["not-object", "acl-not-list", "entry-not-object", "no-grantee", "two-grantees", "empty-name",
         "bad-level", "no-level"],
)
def test_parse_access_control_list_rejects(body: object, problem: str) -> None:
    with pytest.raises(InvalidParameterValue, match=problem):
        parse_access_control_list(body)


def test_parse_access_control_list_last_entry_for_a_grantee_wins() -> None:
    entries = parse_access_control_list({"access_control_list": [
        {"user_name": "a", "permission_level": "CAN_VIEW"},
        {"user_name": "a", "permission_level": "CAN_QUERY"},
        {"group_name": "a", "permission_level": "CAN_MANAGE"},
    ]})
    assert entries == [AclEntry("user_name", "a", QUERY), AclEntry("group_name", "a", MANAGE)]
