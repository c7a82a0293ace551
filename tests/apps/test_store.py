"""The coordination store's contract, run against both backends (a directory and a real etcd)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.apps.store import (
    ComponentState,
    CoordinationConfig,
    EtcdStore,
    LocalStore,
    StoreError,
    open_store,
)
from tests.apps.conftest import EtcdServer, StoreFactory, free_port
from tests.conftest import wait_for


def state(node: str, status: str = "healthy", version: str = "1.4.2") -> ComponentState:
    return ComponentState(node, version, status, "c0ffee", time.time(), f"{node} says {status}")


def poll(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    return wait_for(predicate, timeout, what)


def later(delay: float, action: Callable[[], Any]) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- states


def test_published_states_are_seen_by_every_node(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    assert one.states("shop", "db") == {}
    first = state("db-1", "deploying")
    one.publish("shop", "db", first)
    second = state("db-2", "healthy")
    two.publish("shop", "db", second)

    assert one.states("shop", "db") == {"db-1": first, "db-2": second}
    assert two.states("shop", "db") == {"db-1": first, "db-2": second}

    newer = state("db-1", "healthy")
    one.publish("shop", "db", newer)
    assert two.states("shop", "db") == {"db-1": newer, "db-2": second}
    assert two.states("shop", "api") == {}
    assert two.states("shop2", "db") == {}


def test_names_are_kept_apart_whatever_they_contain(make_store: StoreFactory) -> None:
    store = make_store()
    odd = state("../node/1", "waiting")
    store.publish("a/b", "..", odd)
    store.publish("a", "b/..", state("n", "failed"))
    assert store.states("a/b", "..") == {"../node/1": odd}
    assert set(store.states("a", "b/..")) == {"n"}
    assert store.states("a", "b") == {}


def test_an_unknown_state_is_refused(make_store: StoreFactory) -> None:
    with pytest.raises(ValueError, match="state must be one of"):
        make_store().publish("shop", "db", state("db-1", "fine"))


# --------------------------------------------------------------------------- slots


def test_one_slot_lets_one_node_in_until_it_releases(make_store: StoreFactory) -> None:
    one, two = make_store(), make_store()
    assert one.acquire_slot("shop", "api", "1.4.2", "app-1", 1, 60)
    assert not two.acquire_slot("shop", "api", "1.4.2", "app-2", 1, 60)
    assert one.acquire_slot("shop", "api", "1.4.2", "app-1", 1, 60)  # held already: renewed
    assert two.holders("shop", "api", "1.4.2") == ["app-1"]
    # other versions and components have slots of their own
    assert two.acquire_slot("shop", "api", "1.4.3", "app-2", 1, 60)
    assert two.acquire_slot("shop", "web", "1.4.2", "app-2", 1, 60)

    one.release_slot("shop", "api", "1.4.2", "app-1")
    assert one.holders("shop", "api", "1.4.2") == []
    assert two.acquire_slot("shop", "api", "1.4.2", "app-2", 1, 60)
    assert one.holders("shop", "api", "1.4.2") == ["app-2"]
    assert not one.acquire_slot("shop", "api", "1.4.2", "app-1", 1, 60)
    one.release_slot("shop", "api", "1.4.2", "app-1")  # holds none: nothing happens
    assert one.holders("shop", "api", "1.4.2") == ["app-2"]


def test_max_parallel_counts_holders(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(4)]
    taken = [s.acquire_slot("shop", "api", "2", f"app-{i}", 2, 60) for i, s in enumerate(stores)]
    assert taken == [True, True, False, False]
    assert stores[3].holders("shop", "api", "2") == ["app-0", "app-1"]
    stores[0].release_slot("shop", "api", "2", "app-0")
    assert stores[3].acquire_slot("shop", "api", "2", "app-3", 2, 60)
    assert sorted(stores[2].holders("shop", "api", "2")) == ["app-1", "app-3"]
    # a lower max_parallel still counts every live holder
    assert not stores[2].acquire_slot("shop", "api", "2", "app-2", 1, 60)
    assert not stores[2].acquire_slot("shop", "api", "2", "app-2", 2, 60)


def test_an_expired_slot_goes_to_another_node(make_store: StoreFactory) -> None:
    dead, alive = make_store(), make_store()
    assert dead.acquire_slot("shop", "api", "1", "app-1", 1, 2)
    assert not alive.acquire_slot("shop", "api", "1", "app-2", 1, 2)
    started = time.monotonic()
    poll(lambda: alive.acquire_slot("shop", "api", "1", "app-2", 1, 30), what="the slot")
    assert time.monotonic() - started >= 1.0
    assert dead.holders("shop", "api", "1") == ["app-2"]
    assert not dead.acquire_slot("shop", "api", "1", "app-1", 1, 2)


def test_renewing_keeps_the_slot(make_store: StoreFactory) -> None:
    holder, other = make_store(), make_store()
    assert holder.acquire_slot("shop", "api", "1", "app-1", 1, 2)
    deadline = time.monotonic() + 4.5
    while time.monotonic() < deadline:
        time.sleep(0.5)
        assert holder.acquire_slot("shop", "api", "1", "app-1", 1, 2)
        assert not other.acquire_slot("shop", "api", "1", "app-2", 1, 2)
    assert other.holders("shop", "api", "1") == ["app-1"]


def test_nodes_acquiring_at_once_get_exactly_max_parallel(make_store: StoreFactory) -> None:
    stores = [make_store() for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    won: dict[str, bool] = {}

    def take(i: int) -> None:
        barrier.wait()
        won[f"app-{i}"] = stores[i].acquire_slot("shop", "api", "3", f"app-{i}", 3, 60)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 8
    winners = sorted(node for node, ok in won.items() if ok)
    assert len(winners) == 3
    assert sorted(stores[0].holders("shop", "api", "3")) == winners


def test_slot_arguments_are_checked(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="max_parallel"):
        store.acquire_slot("shop", "api", "1", "app-1", 0, 60)
    with pytest.raises(ValueError, match="ttl"):
        store.acquire_slot("shop", "api", "1", "app-1", 1, 0)


# --------------------------------------------------------------------------- wait


def test_wait_returns_when_another_node_publishes(make_store: StoreFactory) -> None:
    watcher, writer = make_store(), make_store()
    assert watcher.states("shop", "db") == {}
    started = time.monotonic()
    assert not watcher.wait(0.5)
    assert time.monotonic() - started >= 0.45

    thread = later(0.5, lambda: writer.publish("shop", "db", state("db-2")))
    started = time.monotonic()
    assert watcher.wait(20)
    assert time.monotonic() - started < 10
    thread.join()
    assert set(watcher.states("shop", "db")) == {"db-2"}


def test_wait_sees_a_change_made_since_the_last_read(make_store: StoreFactory) -> None:
    watcher, writer = make_store(), make_store()
    watcher.states("shop", "db")
    writer.publish("shop", "db", state("db-2"))
    started = time.monotonic()
    assert watcher.wait(20)
    assert time.monotonic() - started < 5
    assert not watcher.wait(0.3)  # that change is reported once


def test_wait_is_not_woken_by_the_stores_own_changes(make_store: StoreFactory) -> None:
    """A node that publishes its own state, or takes and frees a slot, has nothing to wait
    for in that: its daemon would otherwise run again after each of its own runs."""
    node, other = make_store(), make_store()
    node.states("shop", "api")
    node.publish("shop", "api", state("app-1", "deploying"))
    assert node.acquire_slot("shop", "api", "1", "app-1", 1, 60)
    node.release_slot("shop", "api", "1", "app-1")
    thread = later(0.3, lambda: node.publish("shop", "api", state("app-1")))
    assert not node.wait(1.5)
    thread.join()
    # Another node's change after ours is still news.
    thread = later(0.3, lambda: other.publish("shop", "db", state("db-2")))
    started = time.monotonic()
    assert node.wait(20)
    assert time.monotonic() - started < 10
    thread.join()


def test_wait_returns_when_a_slot_is_taken_released_or_expires(make_store: StoreFactory) -> None:
    watcher, node = make_store(), make_store()
    watcher.holders("shop", "api", "1")
    thread = later(0.3, lambda: node.acquire_slot("shop", "api", "1", "app-1", 1, 2))
    assert watcher.wait(20)
    thread.join()
    assert watcher.holders("shop", "api", "1") == ["app-1"]
    started = time.monotonic()
    assert watcher.wait(20)  # nobody renews: the slot runs out
    assert time.monotonic() - started < 10
    poll(lambda: watcher.holders("shop", "api", "1") == [], what="the expiry")

    assert node.acquire_slot("shop", "api", "1", "app-1", 1, 60)
    watcher.holders("shop", "api", "1")
    thread = later(0.3, lambda: node.release_slot("shop", "api", "1", "app-1"))
    assert watcher.wait(20)
    thread.join()
    assert watcher.holders("shop", "api", "1") == []


def test_close_ends_a_wait(make_store: StoreFactory) -> None:
    store = make_store()
    store.states("shop", "db")
    thread = later(0.5, store.close)
    started = time.monotonic()
    assert not store.wait(30)
    assert time.monotonic() - started < 10
    thread.join()


# --------------------------------------------------------------------------- local store


def _acquire_in_process(path: str, node: str, start: Any, results: Any) -> None:
    store = LocalStore(Path(path))
    start.wait()
    for version in ("1", "2", "3"):
        results.put((version, node, store.acquire_slot("shop", "api", version, node, 2, 60)))


def test_local_store_is_safe_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    results = ctx.Queue()
    nodes = [f"app-{i}" for i in range(6)]
    procs = [
        ctx.Process(target=_acquire_in_process, args=(str(tmp_path), node, start, results))
        for node in nodes
    ]
    for p in procs:
        p.start()
    start.set()
    got = [results.get(timeout=60) for _ in range(len(nodes) * 3)]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    store = LocalStore(tmp_path)
    for version in ("1", "2", "3"):
        winners = sorted(node for v, node, ok in got if v == version and ok)
        assert len(winners) == 2, (version, got)
        assert sorted(store.holders("shop", "api", version)) == winners


def test_local_store_writes_one_file_per_state_and_slot(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.publish("shop", "db", state("db-1"))
    assert store.acquire_slot("shop", "db", "1.4.2", "db-1", 1, 60)
    assert (tmp_path / "apps/shop/db/db-1.json").is_file()
    assert (tmp_path / "slots/shop/db/1.4.2/0.json").is_file()
    assert not [p for p in tmp_path.rglob("*") if ".reconciler-tmp-" in p.name]
    store.release_slot("shop", "db", "1.4.2", "db-1")
    assert not (tmp_path / "slots/shop/db/1.4.2").exists()


def test_local_store_reports_a_damaged_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.publish("shop", "db", state("db-1"))
    (tmp_path / "apps/shop/db/db-1.json").write_text("{not json")
    with pytest.raises(StoreError, match=r"db-1\.json: not a component state"):
        store.states("shop", "db")


def test_local_store_that_cannot_be_written_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    fresh = LocalStore(tmp_path / "fresh")  # reading makes nothing: a plan leaves no trace
    assert fresh.states("shop", "db") == {} and fresh.holders("shop", "db", "1") == []
    assert not (tmp_path / "fresh").exists()
    blocked = LocalStore(blocker / "coordination")
    with pytest.raises(StoreError, match="coordination store"):
        blocked.acquire_slot("shop", "db", "1", "db-1", 1, 10)
    store = LocalStore(tmp_path / "coordination")
    (tmp_path / "coordination").mkdir()
    (tmp_path / "coordination" / "apps").write_text("")
    with pytest.raises(StoreError, match="cannot publish"):
        store.publish("shop", "db", state("db-1"))


# --------------------------------------------------------------------------- etcd


def test_etcd_down_raises_store_error_and_recovers(etcd: EtcdServer) -> None:
    store = EtcdStore([etcd.url], timeout=1.0)
    before = state("db-1")
    store.publish("shop", "db", before)
    assert store.acquire_slot("shop", "db", "1", "db-1", 1, 60)

    etcd.stop()
    calls: list[Callable[[], Any]] = [
        lambda: store.publish("shop", "db", state("db-1", "failed")),
        lambda: store.states("shop", "db"),
        lambda: store.acquire_slot("shop", "db", "1", "db-1", 1, 60),
        lambda: store.release_slot("shop", "db", "1", "db-1"),
        lambda: store.holders("shop", "db", "1"),
        lambda: store.wait(2),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreError, match="etcd"):
            call()
        assert time.monotonic() - started < 5

    etcd.start()
    assert poll(lambda: _answers(store), what="etcd back") == {"db-1": before}
    assert store.holders("shop", "db", "1") == ["db-1"]
    assert store.acquire_slot("shop", "db", "1", "db-1", 1, 60)
    store.publish("shop", "db", state("db-1", "failed"))
    assert store.states("shop", "db")["db-1"].state == "failed"


def _answers(store: EtcdStore) -> dict[str, ComponentState] | None:
    try:
        return store.states("shop", "db")
    except StoreError:
        return None


def test_etcd_endpoints_are_tried_in_order(etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    store = EtcdStore([dead, etcd.url], timeout=1.0)
    store.publish("shop", "db", state("db-1"))
    assert set(store.states("shop", "db")) == {"db-1"}
    assert store.acquire_slot("shop", "db", "1", "db-1", 1, 60)

    other = f"http://127.0.0.1:{free_port()}"
    nowhere = EtcdStore([dead, other], timeout=1.0)
    with pytest.raises(StoreError) as caught:
        nowhere.states("shop", "db")
    assert dead in str(caught.value)
    assert other in str(caught.value)


def test_etcd_slots_are_leased_keys(etcd: EtcdServer) -> None:
    store = EtcdStore([etcd.url])
    assert store.acquire_slot("shop", "api", "1.4.2", "app-1", 2, 30)
    answer = store._call("kv/range", {"key": "L3JlY29uY2lsZXIv", "range_end": "L3JlY29uY2lsZXIw"})
    keys = {store_key(kv["key"]): kv for kv in answer["kvs"]}
    slot = keys["/reconciler/slots/shop/api/1.4.2/0"]
    assert int(slot["lease"]) > 0
    store.publish("shop", "api", state("app-1"))
    assert "/reconciler/apps/shop/api/app-1" in {
        store_key(kv["key"])
        for kv in store._call(
            "kv/range", {"key": "L3JlY29uY2lsZXIv", "range_end": "L3JlY29uY2lsZXIw"}
        )["kvs"]
    }


def store_key(b64: str) -> str:
    import base64

    return base64.b64decode(b64).decode()


def test_open_store_follows_the_configuration(tmp_path: Path) -> None:
    local = open_store(CoordinationConfig("local", tmp_path / "c", ()))
    assert isinstance(local, LocalStore)
    assert local.path == tmp_path / "c"
    remote = open_store(CoordinationConfig("etcd", tmp_path, ("http://127.0.0.1:1",)))
    assert isinstance(remote, EtcdStore)
    with pytest.raises(StoreError, match="not an http"):
        open_store(CoordinationConfig("etcd", tmp_path, ("ftp://x",)))
