"""etcd with authentication: each node's user and role exactly as docs/security.md writes them.

Real etcd users and roles, set up through the v3 JSON gateway (/v3/auth/...), as an operator
would with etcdctl: the role's permissions are the `etcdctl role grant-permission web-1 ...`
lines of the docs, with each node's name for web-1. A line the docs drop or get wrong makes
these tests fail.
"""

from __future__ import annotations

import json
import re
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from reconciler.apps import fleet as fleetview
from reconciler.apps.store import (
    RECORD_KINDS,
    ComponentState,
    EtcdStore,
    StoreError,
    source_key,
)
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


SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
GRANT = re.compile(
    r"etcdctl role grant-permission web-1 --prefix=true (read|write|readwrite) (/reconciler/(?:\S+/)?)"
)


def documented_grants(node: str) -> list[tuple[str, str]]:
    """The (permission, prefix) pairs docs/security.md grants node ``web-1``, for ``node``."""
    grants: list[tuple[str, str]] = []
    for number, line in enumerate(SECURITY_DOC.read_text().splitlines(), 1):
        if not line.startswith("etcdctl role grant-permission"):
            continue
        found = GRANT.fullmatch(line)
        assert found, f"docs/security.md:{number}: not a grant this test can apply: {line!r}"
        prefix = found[2].replace("/web-1/", f"/{node}/")
        grants.append((found[1].upper(), prefix))
    assert grants, "docs/security.md grants no etcd permission"
    return grants


def add_node(etcd: EtcdServer, node: str) -> None:
    """A user and a role for one node, with exactly the permissions the docs grant."""
    call(etcd, "auth/user/add", {"name": node, "password": f"pw-{node}"})
    call(etcd, "auth/role/add", {"name": node})
    for kind, prefix in documented_grants(node):
        grant(etcd, node, kind, prefix)
    call(etcd, "auth/user/grant", {"user": node, "role": node})


def enable_auth(etcd: EtcdServer) -> None:
    call(etcd, "auth/user/add", {"name": "root", "password": "pw-root"})
    call(etcd, "auth/role/add", {"name": "root"})
    call(etcd, "auth/user/grant", {"user": "root", "role": "root"})
    call(etcd, "auth/enable", {})


NODES = ("web-1", "web-10", "lb-1", "db-1", "api-1", "api-2")


@pytest.fixture
def secured(etcd: EtcdServer) -> EtcdServer:
    for node in NODES:
        add_node(etcd, node)
    enable_auth(etcd)
    return etcd


def store(etcd: EtcdServer, node: str | None) -> EtcdStore:
    if node is None:
        return EtcdStore([etcd.url])
    return EtcdStore([etcd.url], username=node, password=f"pw-{node}")


def use_etcd_user(config: Path, url: str, node: str) -> None:
    """Point a node's configuration at etcd, as the node's own etcd user."""
    password = config.parent / "etcd.password"
    password.write_text(f"pw-{node}\n")
    text = config.read_text().split("coordination:")[0]
    config.write_text(
        text
        + textwrap.dedent(
            f"""\
            coordination:
              backend: etcd
              endpoints: [{url}]
              username: {node}
              password_file: {password}
            """
        )
    )


def test_the_documented_role_allows_everything_a_node_does(secured: EtcdServer) -> None:
    web1, web10 = store(secured, "web-1"), store(secured, "web-10")
    # An app component's rollout: states, slots, versions and kept failures.
    web1.note_version("shop", "api", "1.0")
    assert web1.acquire_slot("shop", "api", "*", "web-1", 1, ttl=30)
    assert not web10.acquire_slot("shop", "api", "*", "web-10", 1, ttl=30)
    assert web10.holders("shop", "api", "*") == ["web-1"]
    failed = ComponentState("web-1", "1.0", "failed", "abc", 1.0, "exit 3")
    web1.record_failure("shop", "api", failed)
    web1.publish("shop", "api", failed)
    assert web10.failures("shop", "api") == [failed]
    assert web10.states("shop", "api") == {"web-1": failed}
    assert web10.components("shop") == ["api"]
    web1.release_slot("shop", "api", "*", "web-1")
    web1.clear_failure("shop", "api", "1.0", "web-1")
    assert web10.failures("shop", "api") == []
    web10.note_version("shop", "api", "2.0")
    web10.forget_version("shop", "api", "1.0")
    assert list(web1.versions("shop", "api")) == ["2.0"]
    # Its own records of every kind.
    for kind in RECORD_KINDS:
        web1.publish_record(kind, "web-1", b'{"node":"web-1"}', ttl=60)
        assert web10.records(kind) == {"web-1": b'{"node":"web-1"}'}
        web1.withdraw_record(kind, "web-1")
    # A watch of the whole store (a waiting component, collected exports) and a push.
    assert web1.wait(0.5) is False  # nothing changed but its own writes: no refused watch
    source = source_key("git://example/control.git", "production")
    assert web1.pushed_revision(source) is None
    assert web10.push_revision(source, "a" * 40)
    assert web1.watch_revision(source, 10) == "a" * 40
    web10.publish("shop", "api", ComponentState("web-10", "2.0", "deploying", "def", 2.0, ""))
    assert web1.wait(10) is True


def test_a_watch_etcd_refuses_is_an_error_not_a_change(etcd: EtcdServer) -> None:
    # Reads granted prefix by prefix do not cover the whole of /reconciler/: etcd cancels a
    # watch of it as it creates it. That is no change (it woke the daemon over and over).
    call(etcd, "auth/user/add", {"name": "web-1", "password": "pw-web-1"})
    call(etcd, "auth/role/add", {"name": "web-1"})
    for kind in (*RECORD_KINDS, "apps", "slots", "failures", "versions"):
        grant(etcd, "web-1", "READWRITE", f"/reconciler/{kind}/")
    call(etcd, "auth/user/grant", {"user": "web-1", "role": "web-1"})
    enable_auth(etcd)
    web1 = store(etcd, "web-1")
    assert web1.records("exports") == {}
    with pytest.raises(StoreError, match=r"etcd refused the watch: .*permission denied"):
        web1.wait(5)
    with pytest.raises(StoreError, match=r"etcd refused the watch: .*permission denied"):
        web1.watch_revision(source_key("git://example/control.git", None), 5)


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
