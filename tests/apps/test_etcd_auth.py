"""etcd with authentication: each node's user and role exactly as docs/security.md writes them.

Real etcd users and roles, set up through the v3 JSON gateway (/v3/auth/...), as an operator
would with etcdctl: the role's permissions are the `etcdctl role grant-permission web-1 ...`
lines of the docs, with each node's name for web-1. A line the docs drop or get wrong makes
these tests fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
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
from tests.apps.test_exports import FILES, LB_TEMPLATE, Fleet, ok
from tests.apps.test_fleet import summary
from tests.apps.test_rollout_local import OK, control_repo
from tests.conftest import wait_for, write_tree
from tests.daemon.conftest import Daemon, GitServer


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
        use_etcd_user(fleet.config(node), secured.url, node)
    ok(fleet.apply("web-1"))
    ok(fleet.apply("lb-1"))
    assert fleet.read("lb-1", "etc/haproxy.cfg").startswith("server web-1 ")
    # Each node published its facts as its own user too, and every node can read them.
    assert sorted(store(secured, "web-10").records("facts")) == ["lb-1", "web-1"]
    # Each run published its summary under the node's own prefix, as its etcd user.
    shown = fleet.cli("fleet", "--config", str(fleet.config("lb-1")), "--format", "json")
    assert [r["node"] for r in json.loads(shown.stdout)] == ["lb-1", "web-1"], shown.stderr


def test_an_app_rolls_out_under_the_documented_role(tmp_path: Path, secured: EtcdServer) -> None:
    fleet = Fleet(tmp_path)
    for node in ("db-1", "api-1", "api-2", "lb-1"):
        use_etcd_user(fleet.config(node), secured.url, node)
    admin = EtcdStore([secured.url], username="root", password="pw-root")
    outputs: list[str] = []

    def apply(node: str) -> subprocess.CompletedProcess[str]:
        done = fleet.apply(node)
        outputs.append(done.stdout + done.stderr)
        return done

    def version(node: str, component: str) -> str | None:
        path = tmp_path / node / "root" / "srv/shop" / component / "VERSION"
        return path.read_text().split()[-1] if path.exists() else None

    go = tmp_path / "go"
    control_repo(fleet.repo, "1.0", api_health=f"{OK} && until test -e {go}; do sleep 0.05; done")
    assert apply("db-1").returncode == 2
    # api-1 takes the only slot (max_parallel 1) and holds it while its health check waits.
    slow = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "apply", "--config", str(fleet.config("api-1")),
         "--repo", str(fleet.repo)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: admin.holders("shop", "api", "*") == ["api-1"], 60, "api-1's slot")
        held = apply("api-2")
        assert "all 1 slot(s) are taken (api-1)" in held.stdout, held.stdout
        assert version("api-2", "api") is None
    finally:
        go.touch()
        out, err = slow.communicate(timeout=120)
        outputs.append(out + err)
    assert slow.returncode == 2, (out, err)
    assert admin.holders("shop", "api", "*") == []  # given back
    assert apply("api-2").returncode == 2
    assert apply("lb-1").returncode == 2
    assert [version(n, c) for n, c in (("api-1", "api"), ("api-2", "api"), ("lb-1", "lb"))] == [
        "1.0",
        "1.0",
        "1.0",
    ]
    # 2.0 fails its health check on api-1: rolled back, the failure kept, api-2 halted.
    control_repo(fleet.repo, "2.0", api_health="exit 3", on_failure="rollback")
    assert apply("db-1").returncode == 2
    failed = apply("api-1")
    assert failed.returncode == 6 and "rolled back to 1.0" in failed.stdout, failed.stdout
    assert [(f.node, f.version) for f in admin.failures("shop", "api")] == [("api-1", "2.0")]
    assert "halted: api-1 failed at 2.0" in apply("api-2").stdout
    assert version("api-2", "api") == "1.0"
    # Fixed: api-1 deploys 2.0 and clears its failure; api-2 follows; 1.0 is forgotten.
    control_repo(fleet.repo, "2.0")
    assert apply("api-1").returncode == 2
    assert admin.failures("shop", "api") == []
    assert apply("api-2").returncode == 2
    assert version("api-2", "api") == "2.0"
    assert list(admin.versions("shop", "api")) == ["2.0"]
    assert {n: (s.state, s.version) for n, s in admin.states("shop", "api").items()} == {
        "api-1": ("healthy", "2.0"),
        "api-2": ("healthy", "2.0"),
    }
    for output in outputs:
        assert "permission denied" not in output and "could not" not in output, output


def test_daemons_watch_collect_and_push_under_the_documented_role(
    tmp_path: Path, secured: EtcdServer
) -> None:
    server = GitServer(tmp_path)
    server.start()
    server.push(FILES)
    daemons: dict[str, Daemon] = {}

    def haproxy() -> str:
        path = daemons["lb-1"].root / "etc/haproxy.cfg"
        return path.read_text() if path.exists() else ""

    try:
        for node in ("lb-1", "web-1"):  # lb-1 first: web-1's exports reach it through a watch
            (tmp_path / node).mkdir()
            d = daemons[node] = Daemon(
                tmp_path / node, server.url, node=node, poll_interval="1h", interval="1h"
            )
            (tmp_path / node / "etcd.password").write_text(f"pw-{node}\n")
            d.write_config(
                f"coordination:\n  backend: etcd\n  endpoints: [{secured.url}]\n"
                f"  username: {node}\n  password_file: {tmp_path / node / 'etcd.password'}\n"
            )
            d.start()
            wait_for(d.ready, timeout=60, what=f"{node} /readyz")
        lb, web = daemons["lb-1"], daemons["web-1"]
        # lb-1 watches the whole store (its catalog collects): web-1's record wakes it.
        wait_for(lambda: haproxy().startswith("server web-1 "), 60, "web-1 in lb-1's haproxy.cfg")
        assert "collected exports changed; checking" in lb.logs()
        # A webhook to web-1: it pushes the revision through the store, lb-1 polls and applies.
        sha = server.push({"templates/haproxy.cfg.j2": "# v2\n" + LB_TEMPLATE})
        body = f'{{"after": "{sha}"}}'.encode()
        assert web.post("/webhook", body, web.signed(body, "delivery-1")) == 202
        wait_for(lambda: haproxy().startswith("# v2\nserver web-1 "), 60, "the pushed revision")
        assert "new revision pushed to the store" in web.logs()
        assert "another node pushed a revision; polling now" in lb.logs()
        for d in daemons.values():
            assert "permission denied" not in d.logs() and "refused" not in d.logs()
    finally:
        for d in daemons.values():
            d.stop()
            d.notify.close()
        server.stop()
