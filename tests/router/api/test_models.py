from __future__ import annotations

from typing import Any

import pytest

from router.api.models import (
    CreateEndpointInput,
    EndpointCoreConfigInput,
    name_safe,
    normalize_config,
    parse_body,
)
from runtime.errors import InvalidParameterValue


def config(body: dict[str, Any]) -> Any:
    return normalize_config(parse_body(EndpointCoreConfigInput, body, "config"))


def entity(**fields: Any) -> dict[str, Any]:
    return {"entity_name": "s3://models/propensity", "entity_version": "1", **fields}


def test_single_entity_defaults() -> None:
    result = config({"served_entities": [entity()]})
    (served,) = result.served_entities
    assert served.name == "propensity-1"
    assert served.model_uri == "s3://models/propensity"
    assert served.workload_size == "Small"
    assert served.workload_type == "CPU"
    assert served.scale_to_zero_enabled is False
    assert [(r.served_entity_name, r.traffic_percentage) for r in result.routes] == [("propensity-1", 100)]


@pytest.mark.parametrize(("uri", "version", "expected"), [
    ("s3://bucket/models/propensity/2", "2", "propensity-2"),
    ("file:///tmp/model/1", "1", "model-1"),
    ("models:/fraud/3", "3", "fraud-3"),
    ("s3://bucket/churn", None, "churn"),
])
def test_default_served_entity_name(uri: str, version: str | None, expected: str) -> None:
    fields: dict[str, Any] = {"entity_name": uri}
    if version:
        fields["entity_version"] = version
    assert config({"served_entities": [fields]}).served_entities[0].name == expected


def test_unknown_fields_are_ignored_and_versions_become_text() -> None:
    result = config({
        "served_entities": [entity(entity_version=3, brand_new_field={"x": 1})],
        "auto_capture_config": {"enabled": False},
        "something_newer": True,
    })
    assert result.served_entities[0].entity_version == "3"


def test_legacy_served_models_and_served_model_name_routes() -> None:
    result = config({
        "served_models": [
            {"model_name": "file:///m/a", "model_version": "1", "name": "a", "workload_size": "small"},
            {"model_name": "file:///m/b", "model_version": "2", "name": "b"},
        ],
        "traffic_config": {"routes": [{"served_model_name": "a", "traffic_percentage": 90},
                                      {"served_model_name": "b", "traffic_percentage": 10}]},
    })
    assert [e.legacy for e in result.served_entities] == [True, True]
    assert result.served_entities[0].workload_size == "Small"
    assert result.traffic("a") == 90 and result.traffic("b") == 10


def test_optimization_extension_defaults_to_auto_and_is_normalised() -> None:
    result = config({"served_entities": [entity(name="a"), entity(name="b", optimization="OFF"),
                                         entity(name="c", optimization=None)],
                     "traffic_config": {"routes": [{"served_entity_name": "a", "traffic_percentage": 100}]}})
    assert [e.optimization for e in result.served_entities] == ["auto", "off", "auto"]
    # A different mode is a different replica: switching it rolls the replicas.
    first, second, _ = result.served_entities
    assert first.replica_identity() != second.model_copy(update={"name": "a"}).replica_identity()


def test_the_start_timeout_is_the_replicas_and_shown_with_the_autoscaling_settings() -> None:
    from router.api.specs import entity_spec
    from router.api.views import autoscaling_view

    (served,) = config({"served_entities": [entity(autoscaling={"start_timeout_s": 600})]}).served_entities
    assert entity_spec(served).start_timeout_s == 600.0
    assert autoscaling_view(served)["start_timeout_s"] == 600.0
    (default,) = config({"served_entities": [entity()]}).served_entities
    assert entity_spec(default).start_timeout_s == 120.0


def test_autoscaling_extension_keeps_only_given_settings() -> None:
    result = config({"served_entities": [entity(autoscaling={"container_concurrency": 8, "max_queue": 10})]})
    assert result.served_entities[0].autoscaling == {"container_concurrency": 8, "max_queue": 10}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"served_entities": []}, "config.served_entities", id="no-entities"),
        pytest.param({"served_entities": [entity(workload_size="Huge")]},
                     "config.served_entities[0].workload_size", id="bad-size"),
        pytest.param({"served_entities": [entity(workload_type="TPU")]},
                     "config.served_entities[0].workload_type", id="bad-type"),
        pytest.param({"served_entities": [entity(min_provisioned_concurrency=-1)]},
                     "config.served_entities[0].min_provisioned_concurrency", id="negative-min"),
        pytest.param({"served_entities": [entity(min_provisioned_concurrency=8,
                                                 max_provisioned_concurrency=4)]},
                     "config.served_entities[0].min_provisioned_concurrency", id="min-above-max"),
        pytest.param({"served_entities": [entity(name="bad name!")]},
                     "config.served_entities[0].name", id="bad-name"),
        pytest.param({"served_entities": [entity(autoscaling={"target_utilization": 1.5})]},
                     "config.served_entities[0].autoscaling.target_utilization", id="bad-utilization"),
        pytest.param({"served_entities": [entity(autoscaling={"start_timeout_s": 0})]},
                     "config.served_entities[0].autoscaling.start_timeout_s", id="zero-start-timeout"),
        pytest.param({"served_entities": [entity(autoscaling={"container_concurrency": 0})]},
                     "config.served_entities[0].autoscaling.container_concurrency", id="zero-concurrency"),
        pytest.param({"served_entities": [entity(scale_to_zero_enabled="sometimes")]},
                     "config.served_entities[0].scale_to_zero_enabled", id="bad-bool"),
        pytest.param({"served_entities": [entity(environment_vars={"1BAD": "x"})]},
                     "config.served_entities[0].environment_vars", id="bad-env-name"),
        pytest.param({"served_entities": [{"entity_version": "1"}]},
                     "config.served_entities[0].entity_name", id="no-entity-name"),
        pytest.param({"served_entities": [entity(name="a"), entity(name="a")]},
                     "config.served_entities[1].name", id="duplicate-names"),
        pytest.param({"served_entities": [entity(name="a"), entity(name="b")]},
                     "config.traffic_config.routes", id="routes-required-for-two"),
        pytest.param({"served_entities": [entity(name="a")],
                      "traffic_config": {"routes": [{"served_entity_name": "a", "traffic_percentage": 90}]}},
                     "config.traffic_config.routes: traffic percentages sum to 90", id="sum-not-100"),
        pytest.param({"served_entities": [entity(name="a")],
                      "traffic_config": {"routes": [{"served_entity_name": "z", "traffic_percentage": 100}]}},
                     "config.traffic_config.routes[0].served_entity_name", id="route-to-unknown"),
        pytest.param({"served_entities": [entity(name="a")],
                      "traffic_config": {"routes": [{"served_entity_name": "a", "traffic_percentage": 101}]}},
                     "config.traffic_config.routes[0].traffic_percentage", id="percent-over-100"),
        pytest.param({"served_entities": [entity()], "served_models": [entity()]}, "not both",
                     id="both-lists"),
        pytest.param({"served_entities": [entity(optimization="fastest")]},
                     "config.served_entities[0].optimization: must be one of auto, off, required",
                     id="bad-optimization"),
        pytest.param({"served_entities": [entity(optimization=True)]},
                     "config.served_entities[0].optimization", id="optimization-not-text"),
    ],
)
def test_invalid_configs_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:
        config(body)
    assert field in info.value.message
    assert info.value.status_code == 400


def test_registry_names_need_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(InvalidParameterValue, match="MLFLOW_TRACKING_URI"):
        config({"served_entities": [{"entity_name": "propensity", "entity_version": "2"}]})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")
    registered = {"entity_name": "catalog.schema.propensity", "entity_version": "2"}
    result = config({"served_entities": [registered]})
    assert result.served_entities[0].model_uri == "models:/catalog.schema.propensity/2"
    assert result.served_entities[0].name == "catalog-schema-propensity-2"


def test_create_body_must_be_object_and_name_is_required() -> None:
    with pytest.raises(InvalidParameterValue, match="must be a JSON object"):
        parse_body(CreateEndpointInput, [1, 2])
    with pytest.raises(InvalidParameterValue, match="name"):
        parse_body(CreateEndpointInput, {"config": {}})


@pytest.mark.parametrize(("text", "expected"), [
    ("propensity-1", "propensity-1"),
    ("my.model v2", "my-model-v2"),
    ("///", "model"),
    ("x" * 80, "x" * 63),
])
def test_name_safe(text: str, expected: str) -> None:
    assert name_safe(text) == expected
