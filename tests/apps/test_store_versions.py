"""The store's order of versions and its kept failures, against both backends."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.apps.store import ComponentState, LocalStore, StoreError
from tests.apps.conftest import StoreFactory


def failure(node: str, version: str) -> ComponentState:
    return ComponentState(node, version, "failed", "c0ffee", time.time(), "exit 3")


def test_versions_keep_the_place_they_were_first_seen_at(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    one.note_version("shop", "api", "green")
    two.note_version("shop", "api", "blue")
    one.note_version("shop", "api", "green")  # seen again: keeps its place
    places = two.versions("shop", "api")
    assert sorted(places, key=places.__getitem__) == ["green", "blue"]
    assert one.versions("shop", "db") == {}
    one.forget_version("shop", "api", "green")
    two.note_version("shop", "api", "green")  # forgotten, then seen anew: after blue now
    places = one.versions("shop", "api")
    assert sorted(places, key=places.__getitem__) == ["blue", "green"]


def test_a_failure_outlives_the_nodes_later_states(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    one.record_failure("shop", "api", failure("api-1", "1.2.0"))
    one.publish("shop", "api", ComponentState("api-1", "1.3.0", "waiting", "c0ffee", 1.0))
    assert [(f.node, f.version) for f in two.failures("shop", "api")] == [("api-1", "1.2.0")]
    assert two.failures("shop", "api")[0].message == "exit 3"
    two.record_failure("shop", "api", failure("api-2", "1.2.0"))
    one.record_failure("shop", "api", failure("api-2", "1.1.0"))
    one.clear_failure("shop", "api", "1.1.0", "api-2")  # api-2 turned healthy at 1.1.0
    one.clear_failure("shop", "api", "1.1.0", "api-9")  # nothing to clear: no error
    assert sorted((f.node, f.version) for f in two.failures("shop", "api")) == [
        ("api-1", "1.2.0"),
        ("api-2", "1.2.0"),
    ]
    two.note_version("shop", "api", "1.2.0")
    one.forget_version("shop", "api", "1.2.0")  # every node moved past 1.2.0
    assert two.failures("shop", "api") == [] and two.versions("shop", "api") == {}


def test_local_store_reports_a_damaged_version_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.note_version("shop", "api", "1.0")
    (tmp_path / "versions/shop/api/1.0.json").write_text("{}")
    with pytest.raises(StoreError, match=r"versions/shop/api/1\.0\.json: not a version's place"):
        store.versions("shop", "api")
