"""The Terraform provider: schemas and create/read/update/delete on the ``tf`` framework (plugin
protocol 6), calling the gateway through ``api``.

Runs in the provider's interpreter (``zeroserve terraform mirror``); it writes nothing to stdout but
the plugin handshake, which ``tf.runner`` prints.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tf import iface
from tf.blocks import SetNestedBlock
from tf.iface import (
    Config,
    CreateContext,
    DataSource,
    DeleteContext,
    ImportContext,
    ReadContext,
    ReadDataContext,
    Resource,
    State,
    UpdateContext,
)
from tf.schema import Attribute, Block, Schema
from tf.types import Bool, Map, Number, Set, String, Unknown
from tf.utils import Diagnostics

from . import api

SOURCE = "zeroserve.local/zeroserve/zeroserve"
LEVELS = ("CAN_VIEW", "CAN_QUERY", "CAN_MANAGE")
# The state layout of each resource; a change to it needs an upgrade() that moves old state over.
SCHEMA_VERSION = 0


class ZeroserveProvider(iface.Provider):
    def __init__(self) -> None:
        self._client: api.Client | None = None

    @property
    def client(self) -> api.Client:
        if self._client is None:  # Terraform configures a provider before it touches a resource
            raise RuntimeError("the zeroserve provider was not configured")
        return self._client

    def get_model_prefix(self) -> str:
        return "zeroserve_"

    def full_name(self) -> str:
        return SOURCE

    def get_provider_schema(self, diags: Diagnostics) -> Schema:
        return Schema(attributes=[
            Attribute("host", String(), optional=True,
                      description="The gateway's URL, e.g. `https://serving.example.com`"
                                  " (else `ZEROSERVE_URL`)."),
            Attribute("token", String(), optional=True, sensitive=True,
                      description="A bearer token with the rights to manage endpoints"
                                  " (else `ZEROSERVE_TOKEN`)."),
            Attribute("request_timeout_seconds", Number(), optional=True,
                      description="Seconds one API call may take (default 30)."),
        ])

    def validate_config(self, diags: Diagnostics, config: Config) -> None:
        host = config.get("host")
        if isinstance(host, str) and not host.startswith(("http://", "https://")):
            diags.add_error("host must be an http:// or https:// URL", f"got {host!r}", path=["host"])

    def configure_provider(self, diags: Diagnostics, config: Config) -> None:
        host = config.get("host") or os.environ.get("ZEROSERVE_URL")
        if not host:
            diags.add_error("No zeroserve gateway to talk to",
                            "Set host in the provider block or the ZEROSERVE_URL environment variable.",
                            path=["host"])
            return
        timeout = config.get("request_timeout_seconds") or 30
        token = config.get("token") or os.environ.get("ZEROSERVE_TOKEN")
        self._client = api.Client(host, token, float(timeout))

    def get_data_sources(self) -> list[type[DataSource]]:
        return [ServingEndpointData]

    def get_resources(self) -> list[type[Resource]]:
        return [ServingEndpoint, Permissions, Token]


def _refused(diags: Diagnostics, what: str, exc: api.ApiError, attribute: str | None = None) -> None:
    """An API error as a diagnostic, pointing at the attribute its message is about where one is."""
    path = [attribute] if attribute else None
    summary = f"zeroserve refused to {what}" if exc.status else f"zeroserve could not {what}"
    diags.add_error(summary, str(exc), path=path)


def _unknown(value: Any) -> bool:
    return value is Unknown


class _Resource:
    def __init__(self, provider: ZeroserveProvider) -> None:
        self.provider = provider

    @property
    def client(self) -> api.Client:
        return self.provider.client


# ---- zeroserve_serving_endpoint ------------------------------------------------------------------

_ENTITY = Block(attributes=[
    Attribute("name", String(), required=True, description="The served entity's name (the traffic key)."),
    Attribute("entity_name", String(), required=True,
              description="A model URI (`s3://`, `file://`, `models:/`, `runs:/`)"
                          " or a registered model's name."),
    Attribute("entity_version", String(), optional=True, description="The registered model's version."),
    Attribute("workload_size", String(), optional=True,
              description="Small, Medium or Large (default Small)."),
    Attribute("workload_type", String(), optional=True, description="CPU or a GPU type (default CPU)."),
    Attribute("scale_to_zero_enabled", Bool(), optional=True, description="Scale to zero when idle."),
    Attribute("min_provisioned_concurrency", Number(), optional=True,
              description="The reserved floor: concurrency kept warm at all times."),
    Attribute("max_provisioned_concurrency", Number(), optional=True,
              description="The most concurrency the autoscaler may provision."),
    Attribute("environment_vars", Map(String()), optional=True, description="Environment of the replicas."),
    Attribute("optimization", String(), optional=True, description="auto, off or required (default auto)."),
])
_RATE_LIMIT = Block(attributes=[
    Attribute("calls", Number(), required=True, description="Calls allowed per renewal period."),
    Attribute("renewal_period", String(), required=True, description="minute, hour or day."),
    Attribute("key", String(), optional=True, description="endpoint (default) or user."),
])


class ServingEndpoint(_Resource, Resource):
    @classmethod
    def get_name(cls) -> str:
        return "serving_endpoint"

    @classmethod
    def get_schema(cls) -> Schema:
        entities = SetNestedBlock("served_entity", _ENTITY)
        entities.min_items = 1
        return Schema(
            version=SCHEMA_VERSION,
            description="A serving endpoint: its served entities, traffic split, tags and rate limits.",
            attributes=[
                Attribute("name", String(), required=True, requires_replace=True,
                          description="The endpoint's name (changing it makes a new endpoint)."),
                Attribute("traffic", Map(Number()), optional=True,
                          description="Percent of traffic per served entity name; may be left out with one."),
                Attribute("tags", Map(String()), optional=True, description="The endpoint's tags."),
                Attribute("ready_timeout_seconds", Number(), optional=True,
                          description="How long apply waits for the endpoint to be READY (default 900)."),
                Attribute("id", String(), computed=True, description="The endpoint's id."),
                Attribute("endpoint_url", String(), computed=True, description="Its invocations URL."),
            ],
            block_types=[entities, SetNestedBlock("rate_limit", _RATE_LIMIT)],
        )

    def _timeout(self, state: State) -> float:
        value = state.get("ready_timeout_seconds")
        return float(value) if isinstance(value, int | float) else api.DEFAULT_READY_TIMEOUT_S

    def _wait(self, diags: Diagnostics, state: State) -> dict[str, Any] | None:
        try:
            return api.wait_ready(self.client, state["name"], self._timeout(state))
        except api.NotReady as exc:
            diags.add_error(f"Endpoint {state['name']!r} is not ready", exc.message, path=[exc.attribute])
        except api.ApiError as exc:
            _refused(diags, f"report endpoint {state['name']!r}", exc)
        return None

    def create(self, ctx: CreateContext, planned: State) -> State | None:
        try:
            made = self.client.call("POST", api.ENDPOINTS, api.create_body(planned))
        except api.ApiError as exc:
            _refused(ctx.diagnostics, f"create endpoint {planned['name']!r}", exc,
                     api.attribute_of(exc.message))
            return None
        state = {**planned, "id": made.get("id"), "endpoint_url": made.get("endpoint_url")}
        body = self._wait(ctx.diagnostics, planned)
        if body is not None:
            state["endpoint_url"] = body.get("endpoint_url", state["endpoint_url"])
        # With an error beside it, the state returned marks the endpoint tainted: it exists but failed.
        return state

    def read(self, ctx: ReadContext, current: State) -> State | None:
        try:
            body = self.client.call("GET", f"{api.ENDPOINTS}/{api.quote(current['name'])}")
        except api.ApiError as exc:
            if exc.not_found:
                return None  # deleted behind Terraform's back: the plan makes it again
            _refused(ctx.diagnostics, f"read endpoint {current['name']!r}", exc)
            return current
        return api.endpoint_state(body, current)

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State | None:
        path = f"{api.ENDPOINTS}/{api.quote(planned['name'])}"
        diags = ctx.diagnostics
        try:
            if api.config_body(current) != api.config_body(planned):
                # The gateway rolls the new config out beside the old one: no query is refused meanwhile.
                self.client.call("PUT", f"{path}/config", api.config_body(planned))
            patch = api.tags_patch(current.get("tags"), planned.get("tags"))
            if patch is not None:
                self.client.call("PATCH", f"{path}/tags", patch)
            if api.rate_limits_body(current) != api.rate_limits_body(planned):
                self.client.call("PUT", f"{path}/rate-limits", {"rate_limits": api.rate_limits_body(planned)})
        except api.ApiError as exc:
            _refused(diags, f"update endpoint {planned['name']!r}", exc, api.attribute_of(exc.message))
            return current
        self._wait(diags, planned)
        return {**planned, "id": current.get("id"), "endpoint_url": current.get("endpoint_url")}

    def delete(self, ctx: DeleteContext, current: State) -> State | None:
        try:
            self.client.call("DELETE", f"{api.ENDPOINTS}/{api.quote(current['name'])}")
        except api.ApiError as exc:
            if not exc.not_found:
                _refused(ctx.diagnostics, f"delete endpoint {current['name']!r}", exc)
                return current
        return None

    def import_(self, ctx: ImportContext, id: str) -> State | None:
        try:
            body = self.client.call("GET", f"{api.ENDPOINTS}/{api.quote(id)}")
        except api.ApiError as exc:
            _refused(ctx.diagnostics, f"import endpoint {id!r}", exc)
            return None
        return api.endpoint_state(body, None)


# ---- zeroserve_permissions -----------------------------------------------------------------------

_GRANT = Block(attributes=[
    Attribute("user_name", String(), optional=True, description="A principal (a token's principal)."),
    Attribute("group_name", String(), optional=True, description="A group."),
    Attribute("permission_level", String(), required=True, description="CAN_VIEW, CAN_QUERY or CAN_MANAGE."),
])


class Permissions(_Resource, Resource):
    """Who may view, query and manage one endpoint: the complete set of its direct grants."""

    @classmethod
    def get_name(cls) -> str:
        return "permissions"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=SCHEMA_VERSION,
            description="The direct grants on one serving endpoint (replacing any made outside Terraform).",
            attributes=[
                Attribute("endpoint", String(), required=True, requires_replace=True,
                          description="The endpoint's name."),
                Attribute("id", String(), computed=True, description="The endpoint's id."),
                Attribute("object_id", String(), computed=True, description="`/serving-endpoints/{id}`."),
            ],
            block_types=[SetNestedBlock("access_control", _GRANT)],
        )

    def validate(self, diags: Diagnostics, type_name: str, config: Config) -> None:
        super().validate(diags, type_name, config)
        grants = config.get("access_control")
        for grant in grants if isinstance(grants, list) else []:
            level = grant.get("permission_level")
            if isinstance(level, str) and level not in LEVELS:
                diags.add_error(f"permission_level {level!r} is not one of {', '.join(LEVELS)}",
                                path=["access_control"])
            named = [grant.get(kind) for kind in ("user_name", "group_name")]
            if any(_unknown(value) for value in named):
                continue
            if sum(value is not None for value in named) != 1:
                diags.add_error("each access_control grant names one user_name or one group_name",
                                path=["access_control"])

    def _endpoint(self, diags: Diagnostics, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.call("GET", f"{api.ENDPOINTS}/{api.quote(name)}"))
        except api.ApiError as exc:
            _refused(diags, f"find endpoint {name!r}", exc, "endpoint")
            return None

    def _put(self, diags: Diagnostics, planned: State, endpoint: dict[str, Any]) -> State | None:
        try:
            self.client.call("PUT", f"{api.PERMISSIONS}/{api.quote(endpoint['id'])}", api.acl_body(planned))
        except api.ApiError as exc:
            _refused(diags, f"set the permissions of endpoint {planned['endpoint']!r}", exc, "access_control")
            return None
        return {**planned, "id": endpoint["id"], "object_id": f"/serving-endpoints/{endpoint['id']}"}

    def create(self, ctx: CreateContext, planned: State) -> State | None:
        endpoint = self._endpoint(ctx.diagnostics, planned["endpoint"])
        return None if endpoint is None else self._put(ctx.diagnostics, planned, endpoint)

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State | None:
        endpoint = self._endpoint(ctx.diagnostics, planned["endpoint"])
        if endpoint is None:
            return current
        return self._put(ctx.diagnostics, planned, endpoint) or current

    def read(self, ctx: ReadContext, current: State) -> State | None:
        return self._read(ctx.diagnostics, current["endpoint"], current)

    def _read(self, diags: Diagnostics, name: str, prior: State | None) -> State | None:
        try:
            endpoint = self.client.call("GET", f"{api.ENDPOINTS}/{api.quote(name)}")
            body = self.client.call("GET", f"{api.PERMISSIONS}/{api.quote(endpoint['id'])}")
        except api.ApiError as exc:
            if exc.not_found:
                return None
            _refused(diags, f"read the permissions of endpoint {name!r}", exc)
            return prior
        return {"endpoint": name, "id": endpoint["id"], "object_id": body.get("object_id"),
                "access_control": api.acl_state(body, endpoint.get("creator"), prior)}

    def delete(self, ctx: DeleteContext, current: State) -> State | None:
        try:
            self.client.call("PUT", f"{api.PERMISSIONS}/{api.quote(current['id'])}",
                             {"access_control_list": []})
        except api.ApiError as exc:
            if not exc.not_found:
                _refused(ctx.diagnostics, f"clear the permissions of endpoint {current['endpoint']!r}", exc)
                return current
        return None

    def import_(self, ctx: ImportContext, id: str) -> State | None:
        return self._read(ctx.diagnostics, id, None)


# ---- zeroserve_token -----------------------------------------------------------------------------


class Token(_Resource, Resource):
    """An API token. Its secret exists only in Terraform's state (mark outputs sensitive); tokens are
    immutable, so any change makes a new one and revokes the old. Not importable: the gateway keeps
    only a hash of the secret."""

    @classmethod
    def get_name(cls) -> str:
        return "token"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            version=SCHEMA_VERSION,
            description="An API token for one principal.",
            attributes=[
                Attribute("principal", String(), required=True, requires_replace=True,
                          description="Whom the token speaks for (the name permissions grant to)."),
                Attribute("groups", Set(String()), optional=True, requires_replace=True,
                          description="The principal's groups."),
                Attribute("admin", Bool(), optional=True, requires_replace=True,
                          description="Whether the token may administer the gateway."),
                Attribute("comment", String(), optional=True, requires_replace=True),
                Attribute("lifetime_seconds", Number(), optional=True, requires_replace=True,
                          description="Seconds until it expires (default: never)."),
                Attribute("id", String(), computed=True, description="The token's id."),
                Attribute("token", String(), computed=True, sensitive=True, description="The secret."),
                Attribute("creation_time", Number(), computed=True,
                          description="Milliseconds since the epoch."),
                Attribute("expiry_time", Number(), computed=True,
                          description="Milliseconds since the epoch; null when it never expires."),
            ],
        )

    def create(self, ctx: CreateContext, planned: State) -> State | None:
        body: dict[str, Any] = {
            "principal": planned["principal"], "groups": sorted(planned.get("groups") or []),
            "admin": bool(planned.get("admin")), "comment": planned.get("comment") or "",
        }
        if planned.get("lifetime_seconds") is not None:
            body["lifetime_seconds"] = planned["lifetime_seconds"]
        try:
            made = self.client.call("POST", api.TOKENS, body)
        except api.ApiError as exc:
            attribute = "lifetime_seconds" if "lifetime" in exc.message else (
                "groups" if "group" in exc.message else "principal")
            _refused(ctx.diagnostics, f"create a token for {planned['principal']!r}", exc, attribute)
            return None
        return {**planned, "id": made["token_id"], "token": made["token"],
                "creation_time": made.get("creation_time"), "expiry_time": made.get("expiry_time")}

    def read(self, ctx: ReadContext, current: State) -> State | None:
        try:
            info = self.client.call("GET", f"{api.TOKENS}/{api.quote(current['id'])}")
        except api.ApiError as exc:
            if exc.not_found:
                return None
            _refused(ctx.diagnostics, f"read token {current['id']!r}", exc)
            return current
        expiry = info.get("expiry_time")
        if info.get("revoked_time") is not None or (expiry is not None and expiry <= time.time() * 1000):
            return None  # revoked or expired: the plan makes a new one
        return current

    def update(self, ctx: UpdateContext, current: State, planned: State) -> State | None:
        return {**planned, **{k: current.get(k) for k in ("id", "token", "creation_time", "expiry_time")}}

    def delete(self, ctx: DeleteContext, current: State) -> State | None:
        try:
            self.client.call("DELETE", f"{api.TOKENS}/{api.quote(current['id'])}")
        except api.ApiError as exc:
            if not exc.not_found:
                _refused(ctx.diagnostics, f"revoke token {current['id']!r}", exc)
                return current
        return None


# ---- data "zeroserve_serving_endpoint" -----------------------------------------------------------


class ServingEndpointData(_Resource, DataSource):
    @classmethod
    def get_name(cls) -> str:
        return "serving_endpoint"

    @classmethod
    def get_schema(cls) -> Schema:
        return Schema(
            description="An endpoint's config and live state.",
            attributes=[
                Attribute("name", String(), required=True),
                Attribute("id", String(), computed=True),
                Attribute("endpoint_url", String(), computed=True),
                Attribute("creator", String(), computed=True),
                Attribute("ready", String(), computed=True, description="READY or NOT_READY."),
                Attribute("config_update", String(), computed=True),
                Attribute("config_update_message", String(), computed=True),
                Attribute("config_version", Number(), computed=True),
                Attribute("entity_names", Map(String()), computed=True,
                          description="Served entity name → the model it serves."),
                Attribute("entity_states", Map(String()), computed=True,
                          description="Served entity name → its deployment state."),
                Attribute("entity_replicas", Map(Number()), computed=True,
                          description="Served entity name → replicas running now."),
                Attribute("traffic", Map(Number()), computed=True),
                Attribute("tags", Map(String()), computed=True),
            ],
        )

    def read(self, ctx: ReadDataContext, config: Config) -> State | None:
        name = config["name"]
        try:
            body = self.client.call("GET", f"{api.ENDPOINTS}/{api.quote(name)}")
        except api.ApiError as exc:
            _refused(ctx.diagnostics, f"read endpoint {name!r}", exc, "name")
            return None
        return api.endpoint_data(body)


def main() -> None:
    from tf.runner import run_provider

    run_provider(ZeroserveProvider(), sys.argv)
