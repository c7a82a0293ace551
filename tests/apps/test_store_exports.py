"""Per-node records in the coordination store (exports, run summaries, facts): one of each kind
per node, bounded, gone after their TTL."""

from __future__ import annotations

import base64
import json
import time
import urllib.request

import pytest

from reconciler.apps.store import MAX_RECORD, RECORD_KINDS, EtcdStore
from tests.apps.conftest import EtcdServer, StoreFactory
from tests.conftest import wait_for


def test_each_node_replaces_its_own_record(make_store: StoreFactory) -> None:
    web1, web2, lb = make_store(), make_store(), make_store()
    web1.publish_record("exports", "web-1", b'{"v":1}', ttl=60)
    web2.publish_record("exports", "web-2", b'{"v":2}', ttl=60)
    web1.publish_record("exports", "web-1", b'{"v":3}', ttl=60)
    assert lb.records("exports") == {"web-1": b'{"v":3}', "web-2": b'{"v":2}'}
    web2.withdraw_record("exports", "web-2")
    web2.withdraw_record("exports", "web-2")  # nothing left to withdraw: no error
    assert lb.records("exports") == {"web-1": b'{"v":3}'}


def test_a_record_drops_out_after_its_ttl(make_store: StoreFactory) -> None:
    web, lb = make_store(), make_store()
    web.publish_record("exports", "web-1", b"{}", ttl=1)
    assert "web-1" in lb.records("exports")
    # etcd rounds a lease up to its minimum TTL: bounded wait, not a timing assertion.
    wait_for(lambda: "web-1" not in lb.records("exports"), timeout=30, what="the record to expire")


def test_renewing_keeps_a_record(make_store: StoreFactory) -> None:
    web, lb = make_store(), make_store()
    web.publish_record("exports", "web-1", b"{}", ttl=1)
    web.publish_record("exports", "web-1", b'{"again":true}', ttl=600)
    time.sleep(2.5)  # past the first TTL (and etcd's minimum): the new lease holds it
    assert lb.records("exports") == {"web-1": b'{"again":true}'}


def test_publishing_wakes_a_waiting_node(make_store: StoreFactory) -> None:
    web, lb = make_store(), make_store()
    lb.records("exports")
    web.publish_record("exports", "web-1", b"{}", ttl=60)
    assert lb.wait(10)


def test_records_are_bounded(make_store: StoreFactory) -> None:
    store = make_store()
    with pytest.raises(ValueError, match="at most"):
        store.publish_record("exports", "web-1", b"x" * (MAX_RECORD["exports"] + 1), ttl=60)
    with pytest.raises(ValueError, match="ttl"):
        store.publish_record("exports", "web-1", b"{}", ttl=0)
    assert store.records("exports") == {}


def test_etcd_records_are_keys_on_a_lease_of_their_own(etcd: EtcdServer) -> None:
    store = EtcdStore([etcd.url])
    store.publish_record("exports", "web-1", b"{}", ttl=600)
    store.publish_record(
        "exports", "web-1", b"{}", ttl=600
    )  # the first lease is revoked, not leaked
    key = base64.b64encode(b"/reconciler/exports/web-1/record").decode()
    body = json.dumps({"key": key}).encode()
    with urllib.request.urlopen(f"{etcd.url}/v3/kv/range", body, timeout=5) as resp:
        kvs = json.load(resp)["kvs"]
    assert len(kvs) == 1 and kvs[0].get("lease")
    with urllib.request.urlopen(f"{etcd.url}/v3/lease/leases", b"{}", timeout=5) as resp:
        leases = json.load(resp).get("leases", [])
    assert [int(lease["ID"]) for lease in leases] == [int(kvs[0]["lease"])]


def test_kinds_are_apart(make_store: StoreFactory) -> None:
    web, lb = make_store(), make_store()
    for kind in RECORD_KINDS:
        web.publish_record(kind, "web-1", f'{{"kind":"{kind}"}}'.encode(), ttl=60)
    for kind in RECORD_KINDS:
        assert lb.records(kind) == {"web-1": f'{{"kind":"{kind}"}}'.encode()}
    web.withdraw_record("summary", "web-1")
    assert lb.records("summary") == {}
    assert lb.records("exports") == {"web-1": b'{"kind":"exports"}'}
    with pytest.raises(ValueError, match="kind"):
        web.publish_record("secrets", "web-1", b"{}", ttl=60)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at most"):
        web.publish_record("summary", "web-1", b"x" * (MAX_RECORD["summary"] + 1), ttl=60)
