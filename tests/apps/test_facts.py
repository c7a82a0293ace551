"""Facts published to the coordination store after each run, and ``reconciler facts --all``.

Nodes applied with ``apply --config`` share one local store (the app tests' Fleet); a daemon
publishes through a real etcd on 127.0.0.1. Each node reads its own facts directory.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.apps.facts import (
    LAST,
    META_KEY,
    decode,
    facts_record,
    fleet_facts,
    fleet_published,
)
from reconciler.apps.store import MAX_RECORD, CoordinationConfig, EtcdStore, LocalStore, Store
from tests.apps.conftest import EtcdServer, StoreFactory
from tests.apps.test_rollout_local import Fleet
from tests.conftest import commit_all, wait_for, write_tree
from tests.daemon.conftest import Daemon, GitServer

CANARY = "canary-db-secret-4711"  # a fact a sensitive parameter is set from
PIECE = "canary-piece-0815"  # a fact a sensitive parameter is built around
FILES = {
    "nodes.yaml": "nodes:\n  - match: 'db-*'\n    role: db\ndefault: base\n",
    "roles/base.yaml": "profiles: [base]\n",
    "roles/db.yaml": "profiles: [base, db]\n",
    "profiles/base.yaml": textwrap.dedent(
        """\
        params:
          region: "{{ facts.site.region }}"
        resources:
          - file: /etc/region
            content: "{{ params.region }}\\n"
        """
    ),
    "profiles/db.yaml": textwrap.dedent(
        """\
        params:
          password: "{{ facts.site.db_password }}"
          dsn: "postgres://app:{{ facts.site.token }}@{{ node }}/app?{{ facts.architecture }}"
        sensitive_params: [password, dsn]
        resources:
          - file: /etc/db.conf
            content: "password={{ params.password }}\\ndsn={{ params.dsn }}\\n"
        """
    ),
}
VOLATILE = (("uptime_seconds",), ("memory", "available_bytes"))
NAN = float("nan")


class FactsFleet(Fleet):
    """The app tests' Fleet, each node with a facts directory and ``coordination.facts_ttl``,
    sharing a local store or (``etcd``) a real etcd."""

    def __init__(
        self, tmp: Path, facts_ttl: str = "1h", extra: str = "", etcd: EtcdServer | None = None
    ) -> None:
        super().__init__(tmp)
        self.facts_ttl = facts_ttl
        self.extra = extra
        self.etcd = etcd

    def config(self, node: str) -> Path:
        path = self.tmp / node / "config.yaml"
        if not path.exists():
            super().config(node)
            facts_dir = self.facts_dir(node)
            text = path.read_text().replace("facts_dirs: []", f"facts_dirs: [{facts_dir}]")
            if self.etcd is not None:
                text = text.split("coordination:")[0] + (
                    f"coordination:\n  backend: etcd\n  endpoints: [{self.etcd.url}]\n"
                )
            text += f"  facts_ttl: {self.facts_ttl}\n{self.extra}"
            path.write_text(text)
        return path

    def facts_dir(self, node: str) -> Path:
        return self.tmp / node / "facts.d"

    def set_facts(self, node: str, facts: dict[str, Any]) -> None:
        self.facts_dir(node).mkdir(parents=True, exist_ok=True)
        (self.facts_dir(node) / "site.yaml").write_text(yaml.safe_dump(facts))

    def coordination_config(self) -> CoordinationConfig:
        if self.etcd is not None:
            return CoordinationConfig(backend="etcd", endpoints=(self.etcd.url,))
        return CoordinationConfig(path=self.coordination)

    def store(self) -> Store:
        return (
            EtcdStore([self.etcd.url]) if self.etcd is not None else LocalStore(self.coordination)
        )

    def record(self, node: str) -> dict[str, Any] | None:
        raw = self.store().records("facts").get(node)
        return None if raw is None else dict(json.loads(raw))

    def written(self, node: str) -> bytes:
        """The local store's file of the node's record, its expiry included."""
        return (self.coordination / "facts" / f"{node}.json").read_bytes()

    def stored_files(self) -> list[Path]:
        """Every file the store keeps its data in: etcd's data directory, or the local one."""
        base = self.etcd.data_dir if self.etcd is not None else self.coordination
        return [p for p in base.rglob("*") if p.is_file()]


def ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode in (0, 2), (done.returncode, done.stdout, done.stderr)


def site(region: str = "eu-west", **more: Any) -> dict[str, Any]:
    return {"site": {"region": region, "db_password": CANARY, "token": PIECE, **more}}


@pytest.fixture(params=["local", "etcd"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> FactsFleet:
    etcd = request.getfixturevalue("etcd") if request.param == "etcd" else None
    fleet = FactsFleet(tmp_path, etcd=etcd)
    write_tree(fleet.repo, FILES)
    for node in ("web-1", "db-1"):
        fleet.set_facts(node, site())
    return fleet


def without_volatile(facts: dict[str, Any]) -> dict[str, Any]:
    facts = json.loads(json.dumps(facts))
    for path in VOLATILE:
        where = facts
        for key in path[:-1]:
            where = where[key]
        assert path[-1] in where, path  # taken, and shown: only left out of the comparison
        del where[path[-1]]
    return facts


def test_facts_all_writes_each_nodes_facts_as_reconciler_facts_prints_them(
    fleet: FactsFleet, tmp_path: Path
) -> None:
    before = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ok(fleet.apply("web-1"))
    ok(fleet.apply("db-1"))
    after = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = tmp_path / "review" / "facts"
    done = fleet.cli("facts", "--all", "--config", str(fleet.config("web-1")), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 node(s) written" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["db-1.yaml", "web-1.yaml"]

    web = yaml.safe_load((out / "web-1.yaml").read_text())
    meta = web.pop(META_KEY)
    assert before <= meta["taken"] <= after
    assert meta == {"taken": meta["taken"], "withheld": [], "dropped": []}
    printed = fleet.cli("facts", "--config", str(fleet.config("web-1")))
    assert printed.returncode == 0, printed.stderr
    assert without_volatile(web) == without_volatile(yaml.safe_load(printed.stdout))
    assert web["site"]["db_password"] == CANARY  # web-1's catalog does not make it sensitive

    # The same, for a library user (what `reconciler diff --config` compiles with).
    facts = fleet_facts(fleet.coordination_config())
    assert sorted(facts) == ["db-1", "web-1"]
    # with what was left out, under the same key: a review puts placeholders there
    assert facts["web-1"] == {**web, META_KEY: meta} and facts["db-1"]["node"] == "db-1"

    done = fleet.cli("facts", "--all", "--config", str(fleet.config("web-1")), "--out", str(out))
    assert done.returncode == 1 and "not a new or empty directory" in done.stderr


def test_facts_all_without_out_prints_a_yaml_stream_or_json(fleet: FactsFleet) -> None:
    ok(fleet.apply("web-1"))
    ok(fleet.apply("db-1"))
    config = str(fleet.config("db-1"))
    stream = fleet.cli("facts", "--all", "--config", config)
    assert stream.returncode == 0, stream.stderr
    documents = list(yaml.safe_load_all(stream.stdout))
    assert [d["node"] for d in documents] == ["db-1", "web-1"]
    assert all(d[META_KEY]["taken"].endswith("Z") for d in documents)
    as_json = fleet.cli("facts", "--all", "--config", config, "--format", "json")
    assert json.loads(as_json.stdout) == {d["node"]: d for d in documents}
    for wrong, says in (
        (["--all"], "give --config FILE"),
        (["--all", "--config", config, "--node", "x"], "not with --all"),
        (["--out", "somewhere", "--config", config], "--out DIR goes with --all"),
        (["--all", "--config", config, "--out", "d", "--format", "json"], "writes YAML"),
    ):
        done = fleet.cli("facts", *wrong)
        assert done.returncode == 1 and says in done.stderr, (wrong, done.stderr)


REGION = """\
    resources:
      - file: /etc/region
        content: "WORD {{ facts.site.region }}\\n"
    """
DB_IN_EU = """\
    profiles: [base]
    assert:
      - that: "facts.site.region == 'eu-west'"
        message: "databases stay in eu-west, not {{ facts.site.region }}"
    """


def test_diff_and_validate_compile_each_node_with_the_facts_it_published(
    fleet: FactsFleet,
) -> None:
    """`diff --config` and `validate --all --config` read every node's facts from the store the
    nodes published them to: web-1 in eu-west, db-1 in us-east."""
    repo, config = str(fleet.repo), str(fleet.config("web-1"))
    done = fleet.cli("validate", "--repo", repo, "--all", "--config", config)
    assert done.returncode == 1
    assert "no node has published its facts to the coordination store of" in done.stderr
    write_tree(
        fleet.repo,
        {"roles/db.yaml": "profiles: [base]\n", "profiles/base.yaml": REGION.replace("WORD", "in")},
    )
    fleet.set_facts("web-1", site("eu-west"))
    fleet.set_facts("db-1", site("us-east"))
    ok(fleet.apply("web-1"))
    ok(fleet.apply("db-1"))
    commit_all(fleet.repo, "base")
    write_tree(
        fleet.repo,
        {"roles/db.yaml": DB_IN_EU, "profiles/base.yaml": REGION.replace("WORD", "region")},
    )
    head = commit_all(fleet.repo, "change")

    diff = ("diff", "--repo", repo, "--from", "HEAD~1", "--to", "HEAD", "--config", config)
    done = fleet.cli(*diff, "--format", "json")
    assert done.returncode == 4, done.stderr
    nodes = {n["node"]: n for n in json.loads(done.stdout)["nodes"]}
    assert sorted(nodes) == ["db-1", "web-1"]
    (change,) = nodes["web-1"]["resources"]
    assert (change["id"], change["attributes"][0]["from"], change["attributes"][0]["to"]) == (
        "file:/etc/region",
        "in eu-west\n",
        "region eu-west\n",
    )
    assert nodes["db-1"]["status"] == "failed"
    assert nodes["db-1"]["errors"]["to"] == [
        {
            "message": "assertion failed: databases stay in eu-west, not us-east",
            "file": "roles/db.yaml",
            "line": 3,
            "key": "assert",
        }
    ]

    done = fleet.cli("validate", "--repo", repo, "--all", "--config", config)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "reconciler: 1 of 2 node(s) fail to compile with their facts:",
        "  node db-1 (role db):",
        "    roles/db.yaml:3, key 'assert': assertion failed: databases stay in eu-west, not "
        "us-east",
    ]
    assert done.stdout.startswith("1 of 2 node(s) compile with their facts (1 of role base)")
    done = fleet.cli("validate", "--repo", repo, "--all", "--config", config, "--role", "base")
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(f"{repo}: valid ({head})\n")


def test_sensitive_facts_never_leave_the_node(fleet: FactsFleet, tmp_path: Path) -> None:
    fleet.set_facts("db-primary", site())
    ok(fleet.apply("db-primary"))
    assert (
        CANARY in (tmp_path / "db-primary/root/etc/db.conf").read_text()
    )  # it is used, on the node
    record = fleet.record("db-primary")
    assert record is not None
    assert record["withheld"] == ["site.db_password", "site.token"]
    assert record["facts"]["site"] == {"region": "eu-west"}
    assert record["facts"]["trusted"]["node"] == "db-primary"
    # The node's name and its architecture are in the DSN too, but they name the record or
    # the agent computed them: not secrets.
    assert record["facts"]["node"] == "db-primary"
    assert record["facts"]["architecture"] == record["facts"]["trusted"]["architecture"]
    # Nowhere in the store, nor in what this node keeps of what it published.
    stored = fleet.stored_files()
    assert any(b"site.db_password" in path.read_bytes() for path in stored)  # the record is there
    for path in [*stored, tmp_path / "db-primary/state" / LAST]:
        raw = path.read_bytes()
        assert CANARY.encode() not in raw and PIECE.encode() not in raw, path
    printed = fleet.cli("facts", "--all", "--config", str(fleet.config("db-primary")))
    assert CANARY not in printed.stdout and PIECE not in printed.stdout
    assert "- site.db_password" in printed.stdout  # named under _reconciler.withheld


def test_a_review_compiles_with_placeholders_for_the_withheld_facts(
    fleet: FactsFleet, tmp_path: Path
) -> None:
    """db-primary withheld site.db_password and site.token, which its catalog reads: `diff` and
    `validate` compile it with placeholders (from the store, or from `facts --all --out`),
    name them, and never show them but as digests."""
    fleet.set_facts("db-primary", site())
    ok(fleet.apply("db-primary"))
    commit_all(fleet.repo, "base")
    write_tree(
        fleet.repo, {"profiles/base.yaml": FILES["profiles/base.yaml"] + "    mode: '0600'\n"}
    )
    commit_all(fleet.repo, "change")
    repo, config = str(fleet.repo), str(fleet.config("db-primary"))
    out = tmp_path / "review-facts"
    exported = fleet.cli("facts", "--all", "--config", config, "--out", str(out))
    assert exported.returncode == 0, exported.stderr
    note = "compiled with withheld facts: site.db_password, site.token"
    for given in (["--config", config], ["--facts-dir", str(out)]):
        done = fleet.cli("diff", "--repo", repo, "--from", "HEAD~1", "--to", "HEAD", *given)
        assert done.returncode == 2, done.stderr
        # db.conf reads both placeholders at both revisions: no change; the region file's mode
        assert done.stdout.splitlines()[2:6] == [
            "node db-primary: role db",
            f"  {note}",
            "  ~ file:/etc/region   (profiles/base.yaml:4)",
            "      mode: 0600",
        ], done.stdout
        shown = fleet.cli(
            "diff", "--repo", repo, "--from", "HEAD~1", "--to", "HEAD", *given, "--format", "json"
        ).stdout
        assert json.loads(shown)["nodes"][0]["withheld_facts"] == [
            "site.db_password",
            "site.token",
        ]
        validate = ["validate", "--repo", repo, "--state-dir", str(tmp_path / "review-state")]
        checked = fleet.cli(*validate, *(["--all", *given] if "--config" in given else given))
        assert checked.returncode == 0, checked.stderr
        assert f"node db-primary: {note}" in checked.stdout.splitlines()
        for text in (done.stdout, shown, checked.stdout, checked.stderr):
            assert CANARY not in text and PIECE not in text and "<withheld" not in text


def test_facts_are_bounded_the_largest_dropped_first(fleet: FactsFleet) -> None:
    big = "x" * (MAX_RECORD["facts"] + 1024)
    fleet.set_facts("web-1", site(big=big, medium="m" * 20_000, small="s"))
    done = fleet.apply("web-1")
    ok(done)
    assert "facts published without 1 of the largest" in done.stderr and "site.big" in done.stderr
    raw = fleet.store().records("facts")["web-1"]
    assert len(raw) <= MAX_RECORD["facts"]
    published = decode("web-1", raw)
    assert published.dropped == ["site.big"]
    assert published.facts["site"]["medium"] == "m" * 20_000
    assert published.facts["site"]["small"] == "s"


def test_unchanged_facts_are_republished_only_to_renew_their_lease(tmp_path: Path) -> None:
    fleet = FactsFleet(tmp_path, facts_ttl="1h")
    write_tree(fleet.repo, FILES)
    fleet.set_facts("web-1", site())
    ok(fleet.apply("web-1"))
    first = fleet.record("web-1")
    assert first is not None
    written = fleet.written("web-1")
    ok(fleet.apply("web-1"))  # uptime and free memory moved; nothing else did
    assert fleet.record("web-1") == first
    assert fleet.written("web-1") == written  # no write at all, not even of the expiry

    fleet.set_facts("web-1", site(region="eu-north"))
    ok(fleet.apply("web-1"))
    changed = fleet.record("web-1")
    assert changed is not None and changed["facts"]["site"]["region"] == "eu-north"

    config = fleet.config("web-1")
    config.write_text(config.read_text().replace("facts_ttl: 1h", "facts_ttl: 4s"))
    written = fleet.written("web-1")
    ok(fleet.apply("web-1"))  # another lease: written at once
    assert fleet.written("web-1") != written
    short = fleet.record("web-1")
    assert short is not None and short["taken"] >= changed["taken"]
    time.sleep(2.1)  # past half of the 4s lease: the next run renews it
    ok(fleet.apply("web-1"))
    renewed = fleet.record("web-1")
    assert renewed is not None and renewed["taken"] > short["taken"]

    time.sleep(4.2)  # the node stopped: its facts drop out with the lease
    assert fleet.record("web-1") is None
    done = fleet.cli("facts", "--all", "--config", str(config))
    assert done.returncode == 0 and done.stdout == ""


def test_plan_and_publish_facts_false_publish_nothing(tmp_path: Path) -> None:
    fleet = FactsFleet(tmp_path, extra="  publish_facts: false\n")
    write_tree(fleet.repo, FILES)
    fleet.set_facts("web-1", site())
    fleet.set_facts("web-2", site())
    ok(fleet.apply("web-1"))  # publish_facts: false
    fleet.extra = ""  # web-2's configuration, written at its first command, publishes
    ok(fleet.apply("web-2", "plan"))
    assert LocalStore(fleet.coordination).records("facts") == {}
    ok(fleet.apply("web-2", "apply", "--noop"))  # a noop run's facts hold all the same
    assert list(LocalStore(fleet.coordination).records("facts")) == ["web-2"]


def test_a_forged_or_malformed_record_is_left_out_with_a_warning(fleet: FactsFleet) -> None:
    ok(fleet.apply("web-1"))
    store = fleet.store()
    genuine = store.records("facts")["web-1"]
    good = json.loads(genuine)
    deep: Any = "bottom"
    for _ in range(80):
        deep = {"d": deep}
    forged = {
        "web-2": json.dumps(good).encode(),  # web-1's record under web-2's name
        "web-3": b"{not json",
        "web-4": json.dumps({**good, "node": "web-4", "taken": "yesterday"}).encode(),
        "web-5": json.dumps(
            {**good, "node": "web-5", "facts": {"node": "web-5", "x": deep}}
        ).encode(),
        "web-6": json.dumps(
            {**good, "node": "web-6", "facts": {"node": "web-6", "x": NAN}}
        ).encode(),
        "web-7": json.dumps(
            {**good, "node": "web-7", "facts": {**good["facts"], "node": "web-7"}, "dropped": 3}
        ).encode(),
        ".hidden": json.dumps({**good, "node": ".hidden"}).encode(),
    }
    for node, raw in forged.items():
        store.publish_record("facts", node, raw, ttl=60)
    warnings: list[str] = []
    found = fleet_published(fleet.coordination_config(), warnings.append)
    assert list(found) == ["web-1"]
    assert found["web-1"].facts == good["facts"]
    said = "\n".join(warnings)
    for node in forged:
        assert f"facts of node {node!r} left out" in said, (node, said)
    assert "names node 'web-1', not the node it is published under" in said
    assert "nested more than 64 levels" in said
    assert "a name starting with '.'" in said
    done = fleet.cli("facts", "--all", "--config", str(fleet.config("web-1")))
    assert done.returncode == 0
    assert [d["node"] for d in yaml.safe_load_all(done.stdout)] == ["web-1"]
    assert "warning: facts of node 'web-3' left out: " in done.stderr


def test_the_record_is_data_within_its_bounds() -> None:
    facts: dict[str, Any] = {
        "node": "n1",
        META_KEY: {"taken": "forged"},
        "when": datetime.date(2026, 12, 1),
        "blob": b"\x00\xff",
        "ratio": float("nan"),
        "keys": {"hunter2-as-a-key": 1, "fine": [1, 2.5, None, True]},
    }
    for _ in range(70):
        facts = {**facts, "deep": {"d": facts.get("deep", 0)}}
    raw, published = facts_record("n1", facts, "2026-12-01T03:00:00Z", lambda t: "hunter2" in t)
    assert decode("n1", raw) == published
    assert published.facts["when"] == "2026-12-01"
    assert published.facts["keys"] == {"fine": [1, 2.5, None, True]}
    assert published.withheld == ["keys.<sensitive name>"]
    assert META_KEY not in published.facts
    assert {"_reconciler", "blob", "ratio"} <= set(published.dropped)
    assert any(p.startswith("deep.d.d.d.") for p in published.dropped)
    with pytest.raises(ValueError, match="do not fit"):
        facts_record("n1", {"node": "n" * 5000}, "2026-12-01T03:00:00Z", lambda t: False, 1000)


def test_a_daemon_publishes_its_facts_to_etcd_and_they_expire(
    tmp_path: Path, server: GitServer, etcd: EtcdServer
) -> None:
    facts_dir = write_tree(tmp_path / "facts.d", {"site.yaml": "site: {rack: r12}\n"})
    daemon = Daemon(tmp_path / "node", server.url)
    text = daemon.config.read_text().replace("facts_dirs: []", f"facts_dirs: [{facts_dir}]")
    daemon.config.write_text(
        text
        + textwrap.dedent(
            f"""\
            coordination:
              backend: etcd
              endpoints: [{etcd.url}]
              facts_ttl: 2s
            """
        )
    )
    store = EtcdStore([etcd.url])
    try:
        daemon.start()
        wait_for(lambda: "node-1" in store.records("facts"), timeout=60, what="facts in etcd")
        published = decode("node-1", store.records("facts")["node-1"])
        assert published.facts["site"] == {"rack": "r12"}
        config = tmp_path / "reviewer.yaml"
        config.write_text(f"coordination:\n  backend: etcd\n  endpoints: [{etcd.url}]\n")
        out = tmp_path / "out"
        argv = ["facts", "--all", "--config", str(config), "--out", str(out)]
        done = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert yaml.safe_load((out / "node-1.yaml").read_text())["site"] == {"rack": "r12"}
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
    assert "facts not published" not in daemon.logs()
    wait_for(lambda: store.records("facts") == {}, timeout=30, what="the lease to run out")
    store.close()


def test_a_store_away_warns_and_never_fails_the_run(tmp_path: Path) -> None:
    away = EtcdServer(tmp_path / "never-started")  # its port: nobody listens there
    fleet = FactsFleet(tmp_path, etcd=away)
    write_tree(fleet.repo, FILES)
    fleet.set_facts("web-1", site())
    done = fleet.apply("web-1")
    assert done.returncode == 2, done.stderr  # applied all the same
    assert "warning: facts not published: StoreError: etcd unreachable" in done.stderr
    assert fleet.read("web-1", "etc/region") == "eu-west\n"
    assert not (tmp_path / "web-1/state" / LAST).exists()  # the next run tries again
    done = fleet.cli("facts", "--all", "--config", str(fleet.config("web-1")))
    assert done.returncode == 1 and "etcd unreachable" in done.stderr, done.stderr


def test_facts_are_no_news_for_a_waiting_node(make_store: StoreFactory) -> None:
    waiter, other = make_store(), make_store()
    waiter.states("shop", "api")  # a read: the wait counts from here
    other.publish_record("facts", "web-2", b'{"node":"web-2"}', ttl=60)
    assert waiter.wait(1.0) is False  # a waiting component has nothing to learn from facts
    assert set(waiter.records("facts")) == {"web-2"}
    other.publish_record("exports", "web-2", b"{}", ttl=60)
    assert waiter.wait(5.0) is True
