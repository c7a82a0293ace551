"""etcd with authentication: each node's user may write its exports only under its own prefix.

Real etcd users and roles, set up through the v3 JSON gateway (/v3/auth/...), as an operator
would with etcdctl.
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from reconciler.apps import fleet as fleetview
from reconciler.apps.store import RECORD_KINDS, EtcdStore, StoreError
from tests.apps.conftest import EtcdServer
from tests.apps.test_exports import FILES, Fleet, ok
from tests.apps.test_fleet import summary
from tests.conftest import write_tree


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def call(etcd: EtcdServer, path: str, body: dict[str, Any], token: str | None = None) -> Any:
    request = urllib.request.Request(
        f"{etcd.url}/v3/{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    if token:
        request.add_header("Authorization", token)
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.load(resp)


def grant(etcd: EtcdServer, role: str, kind: str, prefix: str) -> None:
    perm = {"permType": kind, "key": _b64(prefix), "range_end": _b64(_end(prefix))}
    call(etcd, "auth/role/grant", {"name": role, "perm": perm})


def add_node(etcd: EtcdServer, node: str) -> None:
    """A user and a role for one node: its own prefix of each kind of record (exports, summary,
    facts), the apps' states and slots, and reading every node's records."""
    call(etcd, "auth/user/add", {"name": node, "password": f"pw-{node}"})
    call(etcd, "auth/role/add", {"name": node})
    for kind in RECORD_KINDS:
        grant(etcd, node, "READWRITE", f"/reconciler/{kind}/{node}/")
        grant(etcd, node, "READ", f"/reconciler/{kind}/")
    grant(etcd, node, "READWRITE", "/reconciler/apps/")
    grant(etcd, node, "READWRITE", "/reconciler/slots/")
    call(etcd, "auth/user/grant", {"user": node, "role": node})


@pytest.fixture
def secured(etcd: EtcdServer) -> EtcdServer:
    for node in ("web-1", "web-10", "lb-1"):
        add_node(etcd, node)
    call(etcd, "auth/user/add", {"name": "root", "password": "pw-root"})
    call(etcd, "auth/role/add", {"name": "root"})
    call(etcd, "auth/user/grant", {"user": "root", "role": "root"})
    call(etcd, "auth/enable", {})
    return etcd


def store(etcd: EtcdServer, node: str | None) -> EtcdStore:
    if node is None:
        return EtcdStore([etcd.url])
    return EtcdStore([etcd.url], username=node, password=f"pw-{node}")


def test_a_node_writes_only_its_own_exports(secured: EtcdServer) -> None:
    web1, web10, lb = store(secured, "web-1"), store(secured, "web-10"), store(secured, "lb-1")
    web1.publish_record("exports", "web-1", b'{"v":1}', ttl=60)
    web10.publish_record("exports", "web-10", b'{"v":10}', ttl=60)
    with pytest.raises(StoreError, match="permission denied"):
        web1.publish_record("exports", "web-10", b'{"v":"forged"}', ttl=60)  # a prefix of web-1's
    with pytest.raises(StoreError, match="permission denied"):
        web10.withdraw_record("exports", "web-1")
    assert lb.records("exports") == {"web-1": b'{"v":1}', "web-10": b'{"v":10}'}
    with pytest.raises(StoreError):
        store(secured, None).records("exports")  # no user: nothing
    with pytest.raises(StoreError, match="authentication failed"):
        EtcdStore([secured.url], username="web-1", password="wrong").records("exports")


def test_a_node_writes_only_its_own_facts(secured: EtcdServer) -> None:
    web1, web10 = store(secured, "web-1"), store(secured, "web-10")
    web10.publish_record("facts", "web-10", b'{"node":"web-10"}', ttl=60)
    with pytest.raises(StoreError, match="permission denied"):
        web1.publish_record("facts", "web-10", b'{"node":"forged"}', ttl=60)
    with pytest.raises(StoreError, match="permission denied"):
        web1.withdraw_record("facts", "web-10")
    assert web1.records("facts") == {"web-10": b'{"node":"web-10"}'}


def test_a_node_cannot_forge_another_nodes_run_summary(secured: EtcdServer) -> None:
    web1, web10, lb = store(secured, "web-1"), store(secured, "web-10"), store(secured, "lb-1")
    fleetview.publish(web1, summary("web-1"))
    with pytest.raises(StoreError, match="permission denied"):
        fleetview.publish(web1, summary("web-10", result="failed"))  # a prefix of web-1's
    with pytest.raises(StoreError, match="permission denied"):
        web10.withdraw_record("summary", "web-1")
    # web-1 may write only under its own name: a record there naming web-10 is left out.
    web1.publish_record("summary", "web-1", fleetview.encode(summary("web-10")), ttl=60)
    warnings: list[str] = []
    assert fleetview.read(lb, warnings.append) == []
    assert warnings == [
        "the run summary of node 'web-1' is left out: it names node 'web-10', "
        "not the node it is stored under"
    ]


def test_nodes_exchange_exports_as_their_etcd_users(tmp_path: Path, secured: EtcdServer) -> None:
    fleet = Fleet(tmp_path)
    write_tree(fleet.repo, FILES)
    for node in ("web-1", "lb-1"):
        (tmp_path / f"{node}.password").write_text(f"pw-{node}\n")
        config = fleet.config(node)
        text = config.read_text().split("coordination:")[0]
        config.write_text(
            text
            + textwrap.dedent(
                f"""\
                coordination:
                  backend: etcd
                  endpoints: [{secured.url}]
                  username: {node}
                  password_file: {tmp_path / f"{node}.password"}
                """
            )
        )
    ok(fleet.apply("web-1"))
    ok(fleet.apply("lb-1"))
    assert fleet.read("lb-1", "etc/haproxy.cfg").startswith("server web-1 ")
    # Each node published its facts as its own user too, and every node can read them.
    assert sorted(store(secured, "web-10").records("facts")) == ["lb-1", "web-1"]
    # Each run published its summary under the node's own prefix, as its etcd user.
    shown = fleet.cli("fleet", "--config", str(fleet.config("lb-1")), "--format", "json")
    assert [r["node"] for r in json.loads(shown.stdout)] == ["lb-1", "web-1"], shown.stderr
