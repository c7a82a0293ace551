"""The fleet view: run summaries published after every run with a coordination store, read by
``reconciler fleet`` and ``reconciler apps status``.

Nodes are applied one after another with their own ``--config``, sharing one local store (as
daemons on one machine do); the store's own tests run the record kinds against etcd too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from reconciler.apps import fleet
from reconciler.apps.store import MAX_RECORD, ComponentState, CoordinationConfig, LocalStore
from reconciler.cli import FLEET_STATES
from reconciler.config import load_config
from reconciler.reconcile import OutcomeKind, RunOptions, reconcile
from tests.apps.conftest import StoreFactory
from tests.apps.test_rollout_local import Fleet, control_repo
from tests.conftest import seed_root, write_tree

REPO = {
    "nodes.yaml": """
        nodes:
          - match: "bad-*"
            role: bad
        default: web
        """,
    "roles/web.yaml": "profiles: [web]\n",
    "roles/bad.yaml": "profiles: [web, bad]\n",
    "profiles/web.yaml": """
        resources:
          - file: /etc/motd
            content: "hello\\n"
        """,
    "profiles/bad.yaml": """
        resources:
          - exec: broken
            command: "echo about to fail; exit 3"
        """,
}


def summary(node: str = "web-1", **changes: object) -> fleet.RunSummary:
    values: dict[str, object] = {
        "node": node,
        "role": "web",
        "revision": "3f2c1a9d0b7e4c55a1f0d2e8b9c3a7f6e5d4c3b2",
        "branch": "production",
        "ended": 1000.0,
        "result": "in_sync",
        "drifted": 0,
        "changed": 0,
        "failed": 0,
        "noop": False,
        "suspended": False,
        "version": "0.1.0",
        "ttl": 3600.0,
        "message": "",
        **changes,
    }
    return fleet.RunSummary(**values)  # type: ignore[arg-type]


@pytest.fixture
def nodes(tmp_path: Path) -> Fleet:
    f = Fleet(tmp_path)
    write_tree(f.repo, REPO)
    return f


def listed(done: object) -> dict[str, list[str]]:
    """``reconciler fleet``'s lines by node (the first column)."""
    lines = str(getattr(done, "stdout", "")).splitlines()
    assert lines[0].split()[:2] == ["NODE", "ROLE"], lines
    return {
        line.split()[0]: line.split() for line in lines[1:] if not line.split()[0].endswith(":")
    }


class TestPublished:
    def test_every_apply_with_a_config_publishes_its_summary(self, nodes: Fleet) -> None:
        assert nodes.apply("web-1").returncode == 2
        assert nodes.apply("web-2").returncode == 2
        assert nodes.apply("bad-1").returncode == 6
        assert nodes.apply("web-1").returncode == 0  # its second run: in sync
        done = nodes.cli("fleet", "--config", str(nodes.config("web-1")))
        assert done.returncode == 6, done.stderr  # bad-1 failed, web-2 changed
        rows = listed(done)
        assert set(rows) == {"bad-1", "web-1", "web-2"}
        assert rows["web-1"][1:2] + rows["web-1"][5:] == ["web", "in_sync", "0/0/0", "no"]
        assert rows["web-2"][5:] == ["changed", "0/1/0", "no"]
        assert rows["bad-1"][1] == "bad" and rows["bad-1"][5:] == ["failed", "0/1/1", "no"]
        # A failed node's line is followed by why.
        assert "bad-1: failed: exec:broken" in done.stdout

    def test_filters_and_json(self, nodes: Fleet) -> None:
        for node in ("web-1", "bad-1"):
            nodes.apply(node)
        config = str(nodes.config("web-1"))
        failed = nodes.cli("fleet", "--config", config, "--state", "failed")
        assert failed.returncode == 4 and set(listed(failed)) == {"bad-1"}
        web = nodes.cli("fleet", "--config", config, "--role", "web", "--format", "json")
        assert web.returncode == 2, web.stderr
        [row] = json.loads(web.stdout)
        assert {k: row[k] for k in ("node", "role", "result", "changed", "failed", "stale")} == {
            "node": "web-1",
            "role": "web",
            "result": "changed",
            "changed": 1,
            "failed": 0,
            "stale": False,
        }
        assert row["revision"] is None  # a working tree
        none = nodes.cli("fleet", "--config", config, "--state", "suspended")
        assert none.returncode == 0 and none.stdout == ""
        assert "no node matches" in none.stderr

    def test_a_rejected_revision_and_a_suspended_node_are_shown(self, nodes: Fleet) -> None:
        nodes.apply("web-1")
        nodes.cli("suspend", "--reason", "maintenance", "--config", str(nodes.config("web-2")))
        assert nodes.apply("web-2").returncode == 2  # noop while suspended: would change
        (nodes.repo / "roles/web.yaml").write_text("profiles: [missing]\n")
        assert nodes.apply("web-1").returncode == 1
        done = nodes.cli("fleet", "--config", str(nodes.config("web-1")), "--format", "json")
        rows = {r["node"]: r for r in json.loads(done.stdout)}
        assert rows["web-1"]["result"] == "rejected"
        assert "missing" in rows["web-1"]["message"]
        assert rows["web-1"]["role"] is None  # not compiled
        assert rows["web-2"]["suspended"] is True and rows["web-2"]["noop"] is True
        assert rows["web-2"]["drifted"] == 1
        assert done.returncode == 6  # a failed node, and one that would change
        suspended = nodes.cli(
            "fleet", "--config", str(nodes.config("web-1")), "--state", "suspended"
        )
        assert set(listed(suspended)) == {"web-2"}

    def test_a_run_without_a_config_publishes_nothing(self, nodes: Fleet, tmp_path: Path) -> None:
        done = nodes.cli(
            "apply", "--repo", str(nodes.repo), "--node", "web-9",
            "--root", str(seed_root(tmp_path / "r9")), "--state-dir", str(tmp_path / "s9"),
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        nodes.apply("web-1")
        assert set(LocalStore(nodes.coordination).records("summary")) == {"web-1"}

    def test_only_a_configuration_naming_a_store_publishes(
        self, nodes: Fleet, tmp_path: Path
    ) -> None:
        config = nodes.config("web-1")
        bare = tmp_path / "bare.yaml"
        bare.write_text(config.read_text().split("coordination:")[0])
        assert load_config(bare).coordination.configured is False
        assert load_config(config).coordination.configured is True
        # The default store (apps and exports use it all the same) gets no summary.
        options = RunOptions(
            repo=str(nodes.repo),
            node="web-5",
            root=seed_root(tmp_path / "r5"),
            state_dir=tmp_path / "s5",
            coordination=CoordinationConfig(path=nodes.coordination),
        )
        assert reconcile(options).kind is OutcomeKind.CHANGED
        assert LocalStore(nodes.coordination).records("summary") == {}
        options.coordination = CoordinationConfig(path=nodes.coordination, configured=True)
        assert reconcile(options).kind is OutcomeKind.IN_SYNC
        assert set(LocalStore(nodes.coordination).records("summary")) == {"web-5"}
        # A plan publishes nothing.
        options.node = "web-6"
        assert reconcile(options, plan=True).ran
        assert set(LocalStore(nodes.coordination).records("summary")) == {"web-5"}

    def test_a_store_that_fails_is_a_warning_not_a_failed_run(self, nodes: Fleet) -> None:
        nodes.coordination.write_text("a file where the store's directory should be\n")
        done = nodes.apply("web-1")
        assert done.returncode == 2, done.stderr
        assert "warning: run summary not published" in done.stderr
        assert nodes.read("web-1", "etc/motd") == "hello\n"
        nodes.coordination.unlink()
        fleet_done = nodes.cli("fleet", "--config", str(nodes.config("web-1")))
        assert fleet_done.returncode == 0
        assert "no node has published a run summary" in fleet_done.stderr

    def test_a_malformed_or_foreign_record_is_left_out_with_a_warning(self, nodes: Fleet) -> None:
        nodes.apply("web-1")
        store = LocalStore(nodes.coordination)
        forged = fleet.encode(summary("web-1", result="failed"))
        store.publish_record("summary", "web-2", forged, ttl=60)  # names web-1
        store.publish_record("summary", "web-3", b'{"node": "web-3", "drifted": "lots"}', ttl=60)
        store.publish_record("summary", "web-4", b"[1, 2]", ttl=60)
        done = nodes.cli("fleet", "--config", str(nodes.config("web-1")), "--format", "json")
        assert [r["node"] for r in json.loads(done.stdout)] == ["web-1"]
        assert done.returncode == 2
        assert "node 'web-2' is left out: it names node 'web-1'" in done.stderr
        assert "node 'web-3' is left out" in done.stderr
        assert "node 'web-4' is left out: not a JSON object" in done.stderr

    def test_control_characters_in_a_record_never_reach_the_terminal(self, nodes: Fleet) -> None:
        store = LocalStore(nodes.coordination)
        odd = summary(
            "web-\x1b[2J1", ended=time.time(), result="failed", message="\x1b]0;owned\x07"
        )
        store.publish_record("summary", odd.node, fleet.encode(odd), ttl=60)
        done = nodes.cli("fleet", "--config", str(nodes.config("web-1")))
        assert done.returncode == 4
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout
        assert "web-\\x1b[2J1" in done.stdout  # shown as an escape

    def test_a_record_cannot_forge_a_line_of_the_fleet_view(self, nodes: Fleet) -> None:
        nodes.apply("web-1")
        store = LocalStore(nodes.coordination)
        forged_row = "web-9  web  3f2c1a9d0b7e  1s ago  in_sync  0/0/0  no"
        odd = summary(
            "web-2", ended=time.time(), result="failed", role="web\nweb-8  web",
            message=f"boom\n{forged_row}\r\n",
        )  # fmt: skip
        store.publish_record("summary", odd.node, fleet.encode(odd), ttl=60)
        done = nodes.cli("fleet", "--config", str(nodes.config("web-1")))
        assert done.returncode == 6  # web-1 changed, web-2 failed
        lines = done.stdout.splitlines()
        assert [line.split()[0] for line in lines] == ["NODE", "web-1", "web-2", "web-2:"]
        assert "web\\nweb-8" in lines[2]
        assert lines[3] == f"web-2: boom\\n{forged_row}\\r\\n"

    def test_the_states_the_cli_offers_are_the_fleet_views(self) -> None:
        assert FLEET_STATES == fleet.STATES


class TestRecord:
    def test_a_summary_round_trips_and_a_long_message_is_cut_to_fit(self) -> None:
        s = summary(message="x" * 100_000, result="failed", failed=2)
        raw = fleet.encode(s)
        assert len(raw) <= MAX_RECORD["summary"]
        back = fleet.decode("web-1", raw)
        assert back.message == "x" * fleet.MAX_MESSAGE
        assert back == summary(message="x" * fleet.MAX_MESSAGE, result="failed", failed=2)
        # Names too long for the bound are refused, never published cut.
        with pytest.raises(ValueError, match="at most 4096 bytes"):
            fleet.encode(summary(role="r" * 5000))

    @pytest.mark.parametrize(
        ("change", "why"),
        [
            ({"result": "great"}, "result must be one of"),
            ({"failed": -1}, "failed must be a whole number"),
            ({"changed": True}, "changed must be a whole number"),
            ({"suspended": "no"}, "suspended must be true or false"),
            ({"ended": "yesterday"}, "ended must be a finite number"),
            ({"ended": float("inf")}, "ended must be a finite number"),  # never stale
            ({"ttl": float("inf")}, "ttl must be a finite number"),
            ({"drifted": 10**300}, "drifted must be a whole number from 0 to"),
            ({"role": 7}, "role must be a string or null"),
            ({"node": "web-2"}, "it names node 'web-2'"),
            ({"message": ["<b>"]}, "message must be a string"),
        ],
    )
    def test_each_field_is_checked(self, change: dict[str, object], why: str) -> None:
        data = {**json.loads(fleet.encode(summary())), **change}
        with pytest.raises(ValueError, match=why):
            fleet.decode("web-1", json.dumps(data).encode())

    def test_rows_filter_and_go_stale_before_they_drop_out(self) -> None:
        found = [
            summary("web-2", ended=1000.0, result="changed", changed=3),
            summary("web-1", ended=1000.0),
            summary("db-1", role="db", ended=1000.0 - 3000, result="failed"),
        ]
        rows = fleet.fleet_rows(found, now=1100.0)
        assert [r.node for r in rows] == ["db-1", "web-1", "web-2"]
        assert [(r.stale, r.bad, round(r.age)) for r in rows] == [
            (True, True, 3100),
            (False, False, 100),
            (False, False, 100),
        ]
        assert fleet.exit_code(rows) == 6
        assert [r.node for r in fleet.fleet_rows(found, 1100.0, role="web")] == ["web-1", "web-2"]
        assert [r.node for r in fleet.fleet_rows(found, 1100.0, state="stale")] == ["db-1"]
        assert [r.node for r in fleet.fleet_rows(found, 1100.0, state="changed")] == ["web-2"]
        # In sync but not heard of for three quarters of its TTL: stale, exit 4.
        late = fleet.fleet_rows([summary(ended=1000.0)], now=1000.0 + 3600 * 0.8)
        assert late[0].stale and fleet.exit_code(late) == 4
        with pytest.raises(ValueError, match="a state is one of"):
            fleet.fleet_rows(found, state="sad")


class TestQuiet:
    def test_a_summary_is_no_news_for_wait_but_exports_are(self, make_store: StoreFactory) -> None:
        waiter, other = make_store(), make_store()
        waiter.states("shop", "api")  # a read: the wait counts from here
        other.publish_record("summary", "web-2", fleet.encode(summary("web-2")), ttl=60)
        assert waiter.wait(1.0) is False
        assert set(waiter.records("summary")) == {"web-2"}
        other.publish_record("exports", "web-2", b"{}", ttl=60)
        assert waiter.wait(5.0) is True


class TestAppsStatus:
    def test_each_component_on_every_node_and_what_waiting_nodes_wait_for(
        self, tmp_path: Path
    ) -> None:
        f = Fleet(tmp_path)
        control_repo(f.repo, "1.0")
        for node in ("api-2", "db-1", "api-1"):  # api-2 waits for db
            f.apply(node)
        f.apply("lb-1")  # waits for api-2
        config = str(f.config("db-1"))
        done = f.cli("apps", "status", "shop", "--config", config)
        assert done.returncode == 0, done.stderr
        text = done.stdout
        assert "shop/api:" in text and "shop/db:" in text and "shop/lb:" in text
        assert "db-1" in text and "healthy    1.0" in text
        lb = next(line for line in text.splitlines() if line.strip().startswith("lb-1"))
        assert "waiting" in lb and "waiting for api to be healthy at 1.0" in lb
        data = json.loads(
            f.cli("apps", "status", "shop", "--config", config, "--format", "json").stdout
        )
        by = {c["component"]: c for c in data["components"]}
        assert by["lb"]["nodes"]["lb-1"]["state"] == "waiting"
        assert by["api"]["nodes"]["api-1"]["state"] == "healthy"
        assert set(by["api"]["nodes"]) == {"api-1", "api-2"}
        assert by["api"]["nodes"]["api-2"]["message"] == "waiting for db to be healthy at 1.0"
        f.apply("api-2")

        # A failed deployment: exit 4, the failure kept until every node moved past it.
        control_repo(f.repo, "2.0", api_health="exit 1")
        f.apply("db-1")
        f.apply("api-1")
        failed = f.cli("apps", "status", "shop", "--config", config)
        assert failed.returncode == 4
        assert "failure kept: api-1 failed at 2.0" in failed.stdout
        api2 = f.apply("api-2")
        assert "halted: api-1 failed at 2.0" in api2.stdout
        again = f.cli("apps", "status", "shop", "--config", config).stdout
        line = next(x for x in again.splitlines() if x.strip().startswith("api-2"))
        assert "waiting" in line and "halted: api-1 failed at 2.0" in line
        assert "(runs 1.0)" in line

        unknown = f.cli("apps", "status", "nope", "--config", config)
        assert unknown.returncode == 1
        assert "no node has published a state of app 'nope'" in unknown.stderr

    def test_a_published_state_cannot_forge_a_line(self, tmp_path: Path) -> None:
        """Another node's state (version, message) is shown on its own line, escapes visible."""
        f = Fleet(tmp_path)
        control_repo(f.repo, "1.0")
        f.apply("db-1")
        forged = "  api-1                healthy    1.0"
        LocalStore(f.coordination).publish(
            "shop",
            "db",
            ComponentState("db-9", "1.0\x1b[2J", "waiting", "0" * 40, time.time(), f"x\n{forged}"),
        )
        done = f.cli("apps", "status", "shop", "--config", str(f.config("db-1")))
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert [line.split()[0] for line in lines] == ["shop/db:", "db-1", "db-9"]
        assert lines[2] == f"  db-9                 waiting    1.0\\x1b[2J  x\\n{forged}"


def test_a_record_runs_out_with_its_ttl(tmp_path: Path) -> None:
    f = Fleet(tmp_path, exports_ttl="1s")
    write_tree(f.repo, REPO)
    f.apply("web-1")
    assert set(LocalStore(f.coordination).records("summary")) == {"web-1"}
    deadline = time.monotonic() + 10
    while LocalStore(f.coordination).records("summary") and time.monotonic() < deadline:
        time.sleep(0.1)
    done = f.cli("fleet", "--config", str(f.config("web-1")))
    assert done.stdout == "" and "no node has published a run summary" in done.stderr
