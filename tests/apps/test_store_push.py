"""Pushed revisions in the coordination store: one key per source, watched by every daemon."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import urllib.request
from pathlib import Path

import pytest

from reconciler.apps.store import EtcdStore, LocalStore, Store, source_key
from tests.apps.conftest import EtcdServer, StoreFactory

SOURCE = source_key("git://127.0.0.1/control.git", "production")
FIRST = "1" * 40
SECOND = "2" * 40


def watching(store: Store, timeout: float = 30.0) -> concurrent.futures.Future[str | None]:
    """``store.watch_revision`` under way in another thread."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(store.watch_revision, SOURCE, timeout)
    pool.shutdown(wait=False)
    return future


def test_a_push_reaches_another_node_watching(make_store: StoreFactory) -> None:
    web1, web2 = make_store(), make_store()
    assert web2.pushed_revision(SOURCE) is None
    seen = watching(web2)
    assert web1.push_revision(SOURCE, FIRST)
    assert seen.result(timeout=30) == FIRST
    assert web2.pushed_revision(SOURCE) == FIRST


def test_a_push_made_between_a_read_and_the_watch_is_not_missed(make_store: StoreFactory) -> None:
    web1, web2 = make_store(), make_store()
    web2.pushed_revision(SOURCE)
    web1.push_revision(SOURCE, FIRST)
    assert web2.watch_revision(SOURCE, 30) == FIRST


def test_pushing_the_revision_already_there_wakes_nobody(make_store: StoreFactory) -> None:
    web1, web2, web3 = make_store(), make_store(), make_store()
    assert web1.push_revision(SOURCE, FIRST)
    assert web2.pushed_revision(SOURCE) == FIRST
    seen = watching(web2)
    assert not web3.push_revision(SOURCE, FIRST)  # the same revision: no write
    assert web3.push_revision(SOURCE, SECOND)
    assert seen.result(timeout=30) == SECOND  # the first news is the second revision


def test_a_node_is_not_woken_by_its_own_push(make_store: StoreFactory) -> None:
    web1, web2 = make_store(), make_store()
    web1.pushed_revision(SOURCE)
    seen = watching(web1)
    assert web1.push_revision(SOURCE, FIRST)
    assert web2.push_revision(SOURCE, SECOND)
    assert seen.result(timeout=30) == SECOND


def test_sources_are_apart(make_store: StoreFactory) -> None:
    web1, web2 = make_store(), make_store()
    staging = source_key("git://127.0.0.1/control.git", "staging")
    assert staging != SOURCE
    web1.push_revision(staging, FIRST)
    assert web2.pushed_revision(SOURCE) is None
    assert web2.pushed_revision(staging) == FIRST


def test_only_commit_ids_are_pushed(make_store: StoreFactory) -> None:
    store = make_store()
    for bad in ("", "main", "1234", "G" * 40, "1" * 65, "../../etc"):
        with pytest.raises(ValueError, match="commit id"):
            store.push_revision(SOURCE, bad)
    assert store.pushed_revision(SOURCE) is None


def test_interrupt_ends_a_watch(make_store: StoreFactory) -> None:
    store = make_store()
    store.pushed_revision(SOURCE)
    seen = watching(store, timeout=600)
    store.interrupt()
    assert seen.result(timeout=30) is None  # long before the watch's own 600 s


def test_a_value_that_is_no_commit_id_is_reported_as_none_of_them(
    tmp_path: Path, etcd: EtcdServer
) -> None:
    """What a node writes to the key by hand (not through push_revision) is checked on read."""
    local = LocalStore(tmp_path / "coordination", poll_interval=0.05)
    remote = EtcdStore([etcd.url], timeout=2.0)
    for store in (local, remote):
        store.pushed_revision(SOURCE)
    seen_local, seen_remote = watching(local), watching(remote)
    garbage = "$(reboot) " + "x" * 5000
    path = tmp_path / "coordination" / "revisions" / SOURCE
    path.parent.mkdir(parents=True)
    path.write_text(garbage)
    body = {"key": base64.b64encode(f"/reconciler/revisions/{SOURCE}".encode()).decode(),
            "value": base64.b64encode(garbage.encode()).decode()}  # fmt: skip
    urllib.request.urlopen(
        urllib.request.Request(f"{etcd.url}/v3/kv/put", data=json.dumps(body).encode()),
        timeout=5,
    ).close()
    assert seen_local.result(timeout=30) == ""
    assert seen_remote.result(timeout=30) == ""
    assert local.pushed_revision(SOURCE) == ""
    assert remote.pushed_revision(SOURCE) == ""
    local.close()
    remote.close()


def test_etcd_requests_are_counted_by_operation(etcd: EtcdServer) -> None:
    store = EtcdStore([etcd.url], timeout=2.0)
    store.pushed_revision(SOURCE)
    store.push_revision(SOURCE, FIRST)
    store.push_revision(SOURCE, FIRST)
    store.records("exports")
    assert store.watch_revision(SOURCE, 0.2) is None
    counts = store.requests.snapshot()
    assert {op: n for op, n in counts.items() if n} == {"range": 2, "txn": 2, "watch": 1}
    store.close()
