"""The provider's side of the gateway's REST API: calls, request bodies made from Terraform values, and
Terraform state read back from the gateway's answers.

Standard library only (see the package docstring). Values here are plain Python: a Terraform number
arrives as ``int`` or ``float``, an unset optional attribute as ``None``.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ENDPOINTS = "/api/2.0/serving-endpoints"
TOKENS = "/api/2.0/zeroserve/tokens"
PERMISSIONS = "/api/2.0/permissions/serving-endpoints"
DEFAULT_READY_TIMEOUT_S = 900.0
# A served entity's optional settings and the gateway's default for each: a value the configuration
# leaves unset is kept unset in state while the gateway reports the default, so that it shows no drift.
ENTITY_DEFAULTS: dict[str, Any] = {
    "entity_version": None,
    "workload_size": "Small",
    "workload_type": "CPU",
    "scale_to_zero_enabled": False,
    "min_provisioned_concurrency": 0,
    "max_provisioned_concurrency": None,
    "environment_vars": {},
    "optimization": "auto",
}
ENTITY_FIELDS = ("name", "entity_name", *ENTITY_DEFAULTS)
RATE_LIMIT_DEFAULTS: dict[str, Any] = {"key": "endpoint"}
# Answers worth another try: the gateway (or the fleet's leader) is restarting, or its database is
# reconnecting. A read is tried again on any of them; a write only where nothing was done (503, which
# the gateway answers before changing anything, and no connection at all): a 502 or 504 may come after
# the change was made, and a create tried twice would then be refused as a duplicate.
_RETRY_STATUSES = {502, 503, 504}
_WRITE_RETRY_STATUSES = {0, 503}
_RETRIES = 6


@dataclass
class ApiError(Exception):
    """A call the gateway refused or that did not reach it; ``status`` 0 when there was no answer."""

    status: int
    error_code: str
    message: str
    method: str
    path: str

    def __str__(self) -> str:
        where = f"{self.method} {self.path}"
        if self.status == 0:
            return f"{where}: {self.message}"
        return f"{where} answered {self.status} {self.error_code}: {self.message}"

    @property
    def not_found(self) -> bool:
        return self.status == 404


class Client:
    def __init__(self, host: str, token: str | None, timeout_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.host = host.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._sleep = sleep

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One API call (retried while the gateway answers 502/503/504 or cannot be reached); the
        decoded JSON answer, or ``ApiError`` with the gateway's own ``error_code`` and message."""
        delay = 0.25
        for attempt in range(_RETRIES):
            try:
                return self._once(method, path, body)
            except ApiError as exc:
                retried = _RETRY_STATUSES | {0} if method == "GET" else _WRITE_RETRY_STATUSES
                if attempt == _RETRIES - 1 or exc.status not in retried:
                    raise
            self._sleep(delay)
            delay = min(delay * 2, 4.0)
        raise AssertionError("unreachable")  # pragma: no cover - the loop raises or returns

    def _once(self, method: str, path: str, body: Any) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.host + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        request.add_header("User-Agent", "terraform-provider-zeroserve")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            code, message = _error_of(raw, exc.reason)
            raise ApiError(exc.code, code, message, method, path) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(0, "UNREACHABLE", f"cannot reach the zeroserve gateway at {self.host}: {reason}",
                           method, path) from None
        return json.loads(raw) if raw else {}


def _error_of(raw: bytes, reason: str) -> tuple[str, str]:
    try:
        body = json.loads(raw)
    except ValueError:
        return "HTTP_ERROR", raw.decode(errors="replace")[:500] or str(reason)
    if isinstance(body, dict):
        code = body.get("error_code") or "HTTP_ERROR"
        message = body.get("message") or body.get("error") or str(reason)
        return str(code), str(message)
    return "HTTP_ERROR", str(reason)


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# ---- serving endpoints -------------------------------------------------------------------------


def _number(value: Any) -> int | None:
    return None if value is None else int(value)


def entity_body(entity: Mapping[str, Any]) -> dict[str, Any]:
    """A ``served_entity`` block → the API's served entity (unset settings left to the gateway)."""
    body: dict[str, Any] = {"name": entity["name"], "entity_name": entity["entity_name"]}
    for field in ENTITY_DEFAULTS:
        value = entity.get(field)
        if value is None:
            continue
        if field.endswith("_concurrency"):
            value = _number(value)
        body[field] = value
    return body


def config_body(state: Mapping[str, Any]) -> dict[str, Any]:
    """The endpoint's ``config`` (served entities and the traffic split) from its Terraform values."""
    entities = sorted(state.get("served_entity") or [], key=lambda e: str(e.get("name")))
    config: dict[str, Any] = {"served_entities": [entity_body(e) for e in entities]}
    traffic = state.get("traffic")
    if traffic:
        config["traffic_config"] = {"routes": [
            {"served_entity_name": name, "traffic_percentage": _number(share)}
            for name, share in sorted(traffic.items())
        ]}
    return config


def rate_limits_body(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    rules = []
    for rule in state.get("rate_limit") or []:
        body: dict[str, Any] = {"calls": _number(rule.get("calls")),
                                "renewal_period": rule.get("renewal_period")}
        if rule.get("key") is not None:
            body["key"] = rule["key"]
        rules.append(body)
    return sorted(rules, key=lambda r: (str(r.get("key")), str(r["renewal_period"]), r["calls"] or 0))


def create_body(state: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"name": state["name"], "config": config_body(state)}
    tags = state.get("tags") or {}
    if tags:
        body["tags"] = [{"key": key, "value": value} for key, value in sorted(tags.items())]
    rules = rate_limits_body(state)
    if rules:
        body["rate_limits"] = rules
    return body


def tags_patch(old: Mapping[str, str] | None, new: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The ``PATCH .../tags`` body that turns ``old`` into ``new``; None when they are the same."""
    old, new = dict(old or {}), dict(new or {})
    if old == new:
        return None
    return {
        "add_tags": [{"key": k, "value": v} for k, v in sorted(new.items()) if old.get(k) != v],
        "delete_tags": sorted(k for k in old if k not in new),
    }


def _kept(prior: Any, served: Any, default: Any) -> Any:
    """What state shows for an optional setting: unset while the configuration leaves it unset and the
    gateway applies its default; otherwise what the gateway serves."""
    if prior is None and served == default:
        return None
    if isinstance(prior, int | float) and isinstance(served, int | float) and prior == served:
        return prior
    return served


def endpoint_state(body: Mapping[str, Any], prior: Mapping[str, Any] | None) -> dict[str, Any]:
    """The gateway's ``GET serving-endpoints/{name}`` answer → Terraform state, keeping ``prior``'s
    spelling of every value the gateway serves unchanged (so that only real drift shows in a plan)."""
    prior = prior or {}
    config = body.get("pending_config") or body.get("config") or {}
    prior_entities = {e.get("name"): e for e in prior.get("served_entity") or []}
    entities = []
    for served in config.get("served_entities") or []:
        before = prior_entities.get(served.get("name")) or {}
        entity: dict[str, Any] = {"name": served.get("name"), "entity_name": served.get("entity_name")}
        for field, default in ENTITY_DEFAULTS.items():
            value = served.get(field, default)
            if field == "environment_vars":
                value = dict(value or {})
                entity[field] = None if before.get(field) is None and not value else value
            else:
                entity[field] = _kept(before.get(field), value, default)
        entities.append(entity)
    routes = (config.get("traffic_config") or {}).get("routes") or []
    traffic: dict[str, int] | None = {
        str(route.get("served_entity_name")): int(route.get("traffic_percentage", 0)) for route in routes
    }
    if prior.get("traffic") is None and len(entities) == 1 and traffic == {entities[0]["name"]: 100}:
        traffic = None
    tags: dict[str, str] | None = {tag["key"]: tag.get("value", "") for tag in body.get("tags") or []}
    if prior.get("tags") is None and not tags:
        tags = None
    prior_rules = prior.get("rate_limit")
    rules = []
    for rule in body.get("rate_limits") or []:
        kept_key = _prior_rule_key(prior_rules, rule)
        rules.append({"calls": rule.get("calls"), "renewal_period": rule.get("renewal_period"),
                      "key": kept_key})
    return {
        "name": body.get("name"),
        "id": body.get("id"),
        "endpoint_url": body.get("endpoint_url"),
        "served_entity": entities,
        "traffic": traffic,
        "tags": tags,
        "rate_limit": rules,
        "ready_timeout_seconds": prior.get("ready_timeout_seconds"),
    }


def _prior_rule_key(prior_rules: Any, rule: Mapping[str, Any]) -> str | None:
    key = rule.get("key") or RATE_LIMIT_DEFAULTS["key"]
    for before in prior_rules or []:
        same = (_number(before.get("calls")) == rule.get("calls")
                and before.get("renewal_period") == rule.get("renewal_period"))
        if same and (before.get("key") or RATE_LIMIT_DEFAULTS["key"]) == key:
            return before.get("key")
    return None if key == RATE_LIMIT_DEFAULTS["key"] else key


class NotReady(Exception):
    """The endpoint did not become ready: ``message`` says why (the failed entity's own reason)."""

    def __init__(self, message: str, attribute: str = "served_entity") -> None:
        super().__init__(message)
        self.message = message
        self.attribute = attribute


def wait_ready(client: Client, name: str, timeout_s: float, *, poll_s: float = 0.5,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the endpoint until its config update is done and it is READY; its last answer.

    Raises ``NotReady`` with the served entity's reason when the update failed, or when ``timeout_s``
    passed first (naming what it was still waiting for)."""
    deadline = clock() + timeout_s
    while True:
        body = client.call("GET", f"{ENDPOINTS}/{quote(name)}")
        state = body.get("state") or {}
        update = state.get("config_update")
        if update in ("UPDATE_FAILED", "UPDATE_CANCELED"):
            raise NotReady(f"the update of endpoint {name!r} failed: {failure_reason(body)}")
        if update == "NOT_UPDATING" and state.get("ready") == "READY":
            return dict(body)
        if clock() >= deadline:
            raise NotReady(
                f"endpoint {name!r} was not READY within {timeout_s:g} s (config_update {update},"
                f" ready {state.get('ready')}): {failure_reason(body) or 'no reason reported yet'}",
                attribute="ready_timeout_seconds",
            )
        sleep(poll_s)


def failure_reason(body: Mapping[str, Any]) -> str:
    """The gateway's own words for what went wrong: the update message and each served entity's."""
    reasons = []
    message = (body.get("state") or {}).get("config_update_message")
    if message:
        reasons.append(str(message))
    for config in (body.get("pending_config"), body.get("config")):
        for entity in (config or {}).get("served_entities") or []:
            entity_state = entity.get("state") or {}
            said = entity_state.get("deployment_state_message")
            if entity_state.get("deployment") not in (None, "READY", "DEPLOYMENT_READY") and said:
                reasons.append(f"served entity {entity.get('name')!r}: {said}")
    return "; ".join(dict.fromkeys(reasons))


_FIELD_ATTRIBUTES = (
    (re.compile(r"traffic_config|traffic percentages|routed"), "traffic"),
    (re.compile(r"served_(entities|models)|entity_name|entity_version|workload|concurrency|served entity"),
     "served_entity"),
    (re.compile(r"rate_limits"), "rate_limit"),
    (re.compile(r"tags?\b|\btag\b"), "tags"),
    (re.compile(r"endpoint name|\bname\b"), "name"),
)


def attribute_of(message: str) -> str | None:
    """Which attribute of ``zeroserve_serving_endpoint`` an API error message is about, if any."""
    for pattern, attribute in _FIELD_ATTRIBUTES:
        if pattern.search(message):
            return attribute
    return None


def endpoint_data(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``zeroserve_serving_endpoint`` data source: the endpoint's config and live state."""
    state = body.get("state") or {}
    config = body.get("config") or body.get("pending_config") or {}
    entities = config.get("served_entities") or []
    routes = (config.get("traffic_config") or {}).get("routes") or []
    return {
        "name": body.get("name"),
        "id": body.get("id"),
        "endpoint_url": body.get("endpoint_url"),
        "creator": body.get("creator"),
        "ready": state.get("ready"),
        "config_update": state.get("config_update"),
        "config_update_message": state.get("config_update_message"),
        "config_version": config.get("config_version"),
        "entity_names": {e.get("name"): e.get("entity_name") for e in entities},
        "entity_states": {e.get("name"): (e.get("state") or {}).get("deployment", "UNKNOWN")
                          for e in entities},
        "entity_replicas": {e.get("name"): _ready_replicas(e) for e in entities},
        "traffic": {r.get("served_entity_name"): int(r.get("traffic_percentage", 0)) for r in routes},
        "tags": {tag["key"]: tag.get("value", "") for tag in body.get("tags") or []},
    }


def _ready_replicas(entity: Mapping[str, Any]) -> int:
    replicas = (entity.get("state") or {}).get("replicas")
    return int(replicas.get("ready") or 0) if isinstance(replicas, dict) else 0


# ---- permissions ---------------------------------------------------------------------------------


def acl_body(state: Mapping[str, Any]) -> dict[str, Any]:
    entries = []
    for grant in state.get("access_control") or []:
        entry = {"permission_level": grant.get("permission_level")}
        for kind in ("user_name", "group_name"):
            if grant.get(kind):
                entry[kind] = grant[kind]
        entries.append(entry)
    return {"access_control_list": sorted(entries, key=lambda e: json.dumps(e, sort_keys=True))}


def acl_state(
    body: Mapping[str, Any], creator: str | None, prior: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """Direct grants from a ``GET permissions`` answer. The creator's own CAN_MANAGE (implied by having
    made the endpoint) counts only where the configuration grants it too."""
    grants_before = (prior or {}).get("access_control") or []
    configured = {(g.get("user_name"), g.get("group_name")) for g in grants_before}
    grants = []
    for entry in body.get("access_control_list") or []:
        direct = [p for p in entry.get("all_permissions") or [] if not p.get("inherited")]
        if not direct:
            continue
        user, group = entry.get("user_name"), entry.get("group_name")
        if user is not None and user == creator and (user, None) not in configured:
            continue
        grants.append({"user_name": user, "group_name": group,
                       "permission_level": direct[0].get("permission_level")})
    return grants
