"""What wakes a wait on the coordination store, and what it costs: an unchanged record renewed
without a write, waits narrowed to the keys their waiter needs, on one watch stream."""

from __future__ import annotations

import threading
import time
import urllib.request

from reconciler.apps.store import ComponentState, EtcdStore, Store, Watched
from tests.apps.conftest import EtcdServer, StoreFactory
from tests.conftest import wait_for


def state(node: str, value: str = "healthy") -> ComponentState:
    return ComponentState(node, "1", value, "abc", time.time())


def spent(store: EtcdStore, before: dict[str, int]) -> dict[str, int]:
    """The requests ``store`` made since ``before``, by operation (those it made)."""
    after = store.requests.snapshot()
    return {op: n - before[op] for op, n in after.items() if n != before[op]}


def etcd_metric(etcd: EtcdServer, name: str) -> float:
    with urllib.request.urlopen(f"{etcd.url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"etcd reports no {name}")


# --------------------------------------------------------------------------- renewing a record


def test_an_identical_republish_wakes_nobody_and_outlives_its_first_ttl(
    make_store: StoreFactory,
) -> None:
    web, lb = make_store(), make_store()
    started = time.monotonic()
    web.publish_record("exports", "web-1", b'{"v":1}', ttl=8)
    assert lb.records("exports") == {"web-1": b'{"v":1}'}
    time.sleep(3)
    web.publish_record("exports", "web-1", b'{"v":1}', ttl=8)  # the next run: nothing new
    assert not lb.wait(1.0)
    # Past the first TTL (8 s after the first publish), before the renewed one runs out.
    time.sleep(max(0.0, started + 9.5 - time.monotonic()))
    assert lb.records("exports") == {"web-1": b'{"v":1}'}
    # A changed record is written: it wakes a waiting node.
    web.publish_record("exports", "web-1", b'{"v":2}', ttl=8)
    assert lb.wait(10)
    assert lb.records("exports") == {"web-1": b'{"v":2}'}


def test_a_record_past_its_ttl_is_published_again_and_wakes(make_store: StoreFactory) -> None:
    """An identical record whose first publish ran out is news again: it had dropped out."""
    web, lb = make_store(), make_store()
    web.publish_record("exports", "web-1", b"{}", ttl=1)
    wait_for(lambda: "web-1" not in lb.records("exports"), timeout=30, what="the expiry")
    web.publish_record("exports", "web-1", b"{}", ttl=60)
    assert lb.wait(10)
    assert lb.records("exports") == {"web-1": b"{}"}


def test_an_identical_republish_costs_two_requests_and_no_write(etcd: EtcdServer) -> None:
    web = EtcdStore([etcd.url], timeout=5.0)
    record = b'{"member":{"host":"web-1","port":8080}}'
    before = web.requests.snapshot()
    web.publish_record("exports", "web-1", record, ttl=600)
    assert spent(web, before) == {"range": 1, "lease_grant": 1, "put": 1}
    before = web.requests.snapshot()
    web.publish_record("exports", "web-1", record, ttl=600)
    assert spent(web, before) == {"range": 1, "lease_keepalive": 1}
    # Another TTL (the configuration changed) is a new lease: written as a change.
    before = web.requests.snapshot()
    web.publish_record("exports", "web-1", record, ttl=900)
    assert spent(web, before) == {
        "range": 1,
        "lease_keepalive": 1,  # the renewal that found the lease's other TTL
        "lease_grant": 1,
        "put": 1,
        "lease_revoke": 1,
    }
    before = web.requests.snapshot()
    web.publish_record("exports", "web-1", record + b" ", ttl=900)
    assert spent(web, before) == {"range": 1, "lease_grant": 1, "put": 1, "lease_revoke": 1}
    web.close()


# --------------------------------------------------------------------------- narrowed waits


def wait_in_thread(
    store: Store, watched: Watched, timeout: float
) -> tuple[threading.Thread, list[bool]]:
    woke: list[bool] = []
    thread = threading.Thread(target=lambda: woke.append(store.wait(timeout, watched)))
    thread.start()
    return thread, woke


def test_a_collector_is_woken_by_exports_and_pushes_only(etcd: EtcdServer) -> None:
    collector = EtcdStore([etcd.url], timeout=5.0)
    other = EtcdStore([etcd.url], timeout=5.0)
    watched = Watched(exports=True, revision="src")
    collector.records("exports")
    # What the rest of the fleet writes all the time: states, slots, versions, failures, run
    # summaries and facts, and another branch's pushed revision.
    other.publish("shop", "api", state("api-1", "deploying"))
    assert other.acquire_slot("shop", "api", "slots", "api-1", 1, 60)
    other.note_version("shop", "api", "2")
    other.record_failure("shop", "api", state("api-1", "failed"))
    other.publish_record("summary", "api-1", b'{"result":"ok"}', ttl=60)
    other.publish_record("facts", "api-1", b'{"os":"debian"}', ttl=60)
    other.push_revision("another-branch", "a" * 40)
    before = collector.requests.snapshot()
    assert not collector.wait(1.0, watched)
    assert spent(collector, before) == {"watch": 1}  # one stream for every watched range
    assert collector.woke_for == frozenset()

    other.publish_record("exports", "web-1", b"{}", ttl=60)
    assert collector.wait(10, watched)
    assert collector.woke_for == {"exports"}
    collector.records("exports")
    other.push_revision("src", "b" * 40)
    assert collector.wait(10, watched)
    assert collector.woke_for == {"revision"}
    collector.close()
    other.close()


def test_a_wait_holds_one_watch_stream(etcd: EtcdServer) -> None:
    """A collector's wait watches the exports records and the pushed revision on one stream; a
    waiting component's app keys are more ranges than one request carries through etcd's
    gateway, so its wait watches the whole store on one stream (and judges the events)."""
    store = EtcdStore([etcd.url], timeout=5.0)
    store.records("exports")
    for watched, ranges in [
        (Watched(exports=True, revision="src"), 2),
        (Watched(apps=frozenset({"shop", "blog"}), exports=True, revision="src"), 1),
    ]:
        streams = etcd_metric(etcd, "etcd_debugging_mvcc_watch_stream_total")
        watchers = etcd_metric(etcd, "etcd_debugging_mvcc_watcher_total")
        thread, woke = wait_in_thread(store, watched, 30)
        wait_for(
            lambda n=watchers + ranges: etcd_metric(etcd, "etcd_debugging_mvcc_watcher_total") == n,
            timeout=20,
            what="the wait's watchers",
        )
        assert etcd_metric(etcd, "etcd_debugging_mvcc_watch_stream_total") == streams + 1
        store.close()
        thread.join()
        assert woke == [False]
        store = EtcdStore([etcd.url], timeout=5.0)
        store.records("exports")
        wait_for(
            lambda n=streams: etcd_metric(etcd, "etcd_debugging_mvcc_watch_stream_total") == n,
            timeout=20,
            what="the closed stream to go",
        )


def test_a_waiting_component_wakes_for_its_own_app_only(etcd: EtcdServer) -> None:
    waiter = EtcdStore([etcd.url], timeout=5.0)
    other = EtcdStore([etcd.url], timeout=5.0)
    watched = Watched(apps=frozenset({"shop"}), exports=True)
    waiter.states("shop", "api")
    # Another app's rollout: an app whose name starts with this one's, too.
    for app in ("blog", "shopping"):
        other.publish(app, "api", state("api-1", "deploying"))
        assert other.acquire_slot(app, "api", "slots", "api-1", 1, 60)
        other.note_version(app, "api", "2")
        other.record_failure(app, "api", state("api-1", "failed"))
        other.release_slot(app, "api", "slots", "api-1")
    assert not waiter.wait(1.0, watched)

    # Its own app: each of states, slots, versions and failures is news.
    changes = [
        lambda: other.publish("shop", "db", state("db-1")),
        lambda: other.acquire_slot("shop", "api", "slots", "api-2", 1, 60),
        lambda: other.release_slot("shop", "api", "slots", "api-2"),
        lambda: other.note_version("shop", "api", "2"),
        lambda: other.record_failure("shop", "api", state("api-2", "failed")),
    ]
    for number, change in enumerate(changes):
        waiter.states("shop", "api")
        change()
        assert waiter.wait(10, watched), f"change {number}"
        assert waiter.woke_for == {"apps"}
    waiter.close()
    other.close()


def test_a_local_store_wait_takes_a_part_of_the_store(make_store: StoreFactory) -> None:
    """Both stores wake for what a narrowed wait names (the local store for more)."""
    waiter, other = make_store(), make_store()
    watched = Watched(apps=frozenset({"shop"}))
    waiter.states("shop", "db")
    other.publish_record("summary", "db-1", b"{}", ttl=60)
    assert not waiter.wait(0.5, watched)
    other.publish("shop", "db", state("db-1"))
    assert waiter.wait(10, watched)
    assert waiter.woke_for in (None, {"apps"})


def test_a_rewound_wait_sees_a_change_made_before_a_later_read(make_store: StoreFactory) -> None:
    """A daemon decides (reads), then reads again while it finishes its run: a change another
    node made in between is news for the wait after the run, once rewound to the decision."""
    waiter, other = make_store(), make_store()
    watched = Watched(apps=frozenset({"shop"}), exports=True)
    waiter.holders("shop", "api", "1")
    decided = waiter.position()
    other.publish("shop", "api", state("api-2"))  # e.g. a slot freed while the run went on
    waiter.records("exports")  # the end of the run: the count moves past that change
    assert not waiter.wait(0.5, watched)
    waiter.rewind(decided)
    assert waiter.wait(10, watched)
    assert not waiter.wait(0.5, watched)  # reported once


def test_interrupt_ends_a_wait_so_it_can_watch_something_else(etcd: EtcdServer) -> None:
    """A collecting daemon whose component starts to wait widens its watch at once: the wait
    under way (the exports alone) ends, and the next one watches the app's keys too."""
    waiter, other = EtcdStore([etcd.url], timeout=5.0), EtcdStore([etcd.url], timeout=5.0)
    waiter.records("exports")
    thread, woke = wait_in_thread(waiter, Watched(exports=True), 60)
    wait_for(lambda: waiter._watching is not None, what="the wait's watch")
    waiter.interrupt()
    thread.join(timeout=20)
    assert not thread.is_alive() and woke == [False]
    other.publish("shop", "api", state("api-2"))
    assert waiter.wait(10, Watched(apps=frozenset({"shop"}), exports=True))
    waiter.close()
    other.close()
