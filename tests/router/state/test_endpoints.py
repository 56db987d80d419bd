from __future__ import annotations

from collections.abc import Callable

import pytest

from router.api.lifecycle import ConfigUpdate, ResourceConflict
from router.api.models import EndpointConfig, Route, ServedEntity
from router.errors import AlreadyExists
from router.state.db import Database
from router.state.endpoints import EndpointStore
from runtime.errors import NotFound


def make_config(*versions: str) -> EndpointConfig:
    entities = [
        ServedEntity(
            name=f"m-{v}", entity_name="file:///models/m", entity_version=v, model_uri=f"file:///models/m/{v}",
            workload_size="Small", workload_type="CPU", scale_to_zero_enabled=False,
            min_provisioned_concurrency=0, max_provisioned_concurrency=None, environment_vars={},
            autoscaling={},
        )
        for v in versions
    ]
    share = 100 // len(entities)
    routes = [Route(served_entity_name=e.name, traffic_percentage=share) for e in entities]
    return EndpointConfig(served_entities=entities, routes=routes)


@pytest.fixture
def store(open_db: Callable[[], Database]) -> EndpointStore:
    return EndpointStore(open_db())


def test_create_then_promote(store: EndpointStore) -> None:
    record = store.create("ep", make_config("1"), creator="alice", tags={"team": "ds"})
    assert record.config is None
    assert record.pending is not None and record.pending.version == 1
    assert record.config_update is ConfigUpdate.IN_PROGRESS
    record = store.finish_update("ep", 1)
    assert record.config is not None and record.config.version == 1
    assert record.pending is None
    assert record.config_update is ConfigUpdate.NOT_UPDATING
    assert record.tags == {"team": "ds"}
    assert [e.kind for e in store.history("ep")] == ["CREATED", "UPDATE_SUCCEEDED"]


def test_duplicate_and_missing(store: EndpointStore) -> None:
    store.create("ep", make_config("1"))
    with pytest.raises(AlreadyExists):
        store.create("ep", make_config("1"))
    with pytest.raises(NotFound):
        store.get("nope")
    with pytest.raises(NotFound):
        store.submit_config("nope", make_config("1"))


def test_failed_update_keeps_previous_config_and_versions_grow(store: EndpointStore) -> None:
    store.create("ep", make_config("1"))
    store.finish_update("ep", 1)
    with pytest.raises(ResourceConflict):
        store.submit_config("ep", make_config("2"))
        store.submit_config("ep", make_config("3"))  # second update while one runs
    record = store.finish_update("ep", 2, failure="replica exited: boom")
    assert record.config is not None and record.config.version == 1
    assert record.config_update is ConfigUpdate.UPDATE_FAILED
    assert record.update_message == "replica exited: boom"
    record = store.submit_config("ep", make_config("3"))
    assert record.pending is not None and record.pending.version == 3  # 2 is never reused
    record = store.finish_update("ep", 3)
    assert record.config is not None and record.config.config.served_entities[0].name == "m-3"


def test_failed_first_config_still_shows(store: EndpointStore) -> None:
    store.create("ep", make_config("1"))
    record = store.finish_update("ep", 1, failure="cannot load model")
    assert record.config is not None and record.config.version == 1
    assert record.config_update is ConfigUpdate.UPDATE_FAILED


def test_finish_wrong_version_is_refused(store: EndpointStore) -> None:
    store.create("ep", make_config("1"))
    with pytest.raises(NotFound):
        store.finish_update("ep", 7)


def test_tags_delete_and_reopen(open_db: Callable[[], Database]) -> None:
    store = EndpointStore(open_db())
    store.create("ep", make_config("1", "2"))
    assert store.patch_tags("ep", {"a": "1", "b": None}, []) == {"a": "1", "b": None}
    assert store.patch_tags("ep", {"c": "3"}, ["a", "missing"]) == {"b": None, "c": "3"}
    store.create("other", make_config("1"))
    store.delete("other")
    kinds = [e.kind for e in store.history("other")]
    assert kinds[-2:] == ["UPDATE_CANCELED", "DELETED"]

    reopened = EndpointStore(open_db())
    (record,) = reopened.list_all()
    assert record.name == "ep" and record.tags == {"b": None, "c": "3"}
    assert record.pending is not None and record.pending.config == make_config("1", "2")
    assert reopened.get_by_id(record.id).name == "ep"
