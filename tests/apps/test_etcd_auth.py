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

from reconciler.apps.store import RECORD_KINDS, EtcdStore, StoreError
from tests.apps.conftest import EtcdServer
from tests.apps.test_exports import FILES, Fleet, ok
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
