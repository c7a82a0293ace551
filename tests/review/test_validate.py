"""``validate_fleet``: every node's catalog compiled at one revision with that node's own facts,
classified by the revision's nodes.yaml, once per distinct input, in one process or several."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ReconcilerError
from reconciler.model.modules import with_modules
from reconciler.review import load_facts_dir
from reconciler.review.fleet import FleetCheck, validate_fleet
from reconciler.review.withheld import review_facts
from reconciler.source import open_snapshot
from tests.conftest import commit_all, write_tree

FILES = {
    "nodes.yaml": """
        nodes:
          - match: "web-*"
            role: web
          - match: "db-*"
            role: db
    """,
    "roles/web.yaml": """
        profiles: [base, web]
        assert:
          - that: "facts.memory_mb >= 1024"
            message: "a web server needs 1024 MiB, {{ facts.memory_mb }} here"
    """,
    "roles/db.yaml": "profiles: [base]\n",
    "profiles/base.yaml": """
        resources:
          - file: /etc/motd
            content: "{{ facts.os.family }}\\n"
    """,
    "profiles/web.yaml": """
        resources:
          - file: /etc/web/disk.conf
            content: "big\\n"
            when: "facts.disk.size_gb > 100"
    """,
}

# web-4's memory fails the role's assertion; db-9 has a name nodes.yaml has no entry for;
# web-3 has no disk fact, which the `when:` reads.
NODES: dict[str, dict[str, Any]] = {
    "web-1": {"os": {"family": "Debian"}, "memory_mb": 2048, "disk": {"size_gb": 200}},
    "web-2": {"os": {"family": "Debian"}, "memory_mb": 2048, "disk": {"size_gb": 200}},
    "web-3": {"os": {"family": "Debian"}, "memory_mb": 2048},
    "web-4": {"os": {"family": "Debian"}, "memory_mb": 512, "disk": {"size_gb": 50}},
    "db-1": {"os": {"family": "RedHat"}, "memory_mb": 512},
    "db-2": {"os": {"family": "Debian"}, "memory_mb": 512},
}


def facts_of(nodes: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {node: {**facts, "node": node} for node, facts in nodes.items()}


def check(repo: Path, ref: str | None, tmp_path: Path, **options: Any) -> FleetCheck:
    facts = options.pop("facts", facts_of(NODES))
    snapshot = with_modules(open_snapshot(str(repo), ref, tmp_path / "state"), tmp_path, 60)
    try:
        return validate_fleet(snapshot, facts, tmp_path / "state", **options)
    finally:
        close = getattr(snapshot, "close", None)
        if close is not None:
            close()


def shown(result: FleetCheck) -> dict[str, tuple[str | None, int, list[str]]]:
    return {n.node: (n.role, n.resources, [str(p) for p in n.problems]) for n in result.nodes}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = write_tree(tmp_path / "repo", FILES)
    commit_all(repo, "base")
    return repo


class TestEveryNode:
    def test_each_node_with_its_own_facts_its_failures_with_file_and_line(
        self, repo: Path, tmp_path: Path
    ) -> None:
        result = check(repo, "HEAD", tmp_path, workers=1)
        nodes = shown(result)
        assert nodes["web-1"] == ("web", 2, [])  # the motd and the disk file
        assert nodes["web-2"] == ("web", 2, [])
        assert nodes["db-1"] == ("db", 1, []) and nodes["db-2"] == ("db", 1, [])
        assert nodes["web-3"] == (
            "web",
            0,
            ["profiles/web.yaml:4, key 'when': expression error: 'dict object' has no attribute "
             "'disk'"],
        )  # fmt: skip
        assert nodes["web-4"] == (
            "web",
            0,
            ["roles/web.yaml:3, key 'assert': assertion failed: a web server needs 1024 MiB, "
             "512 here"],
        )  # fmt: skip
        assert [n.node for n in result.failed()] == ["web-3", "web-4"]
        # web-1 and web-2 agree on every fact the repo reads (os, memory_mb, disk): one catalog
        # for both; db-1 and db-2 differ in os.family: 5 catalogs for 6 nodes
        assert result.compiles == 5

    def test_a_node_nodes_yaml_gives_no_role_is_a_failure_naming_nodes_yaml(
        self, repo: Path, tmp_path: Path
    ) -> None:
        facts = facts_of({**NODES, "cache-1": {"os": {"family": "Debian"}, "memory_mb": 1}})
        result = check(repo, "HEAD", tmp_path, facts=facts, workers=1)
        cache = next(n for n in result.nodes if n.node == "cache-1")
        assert cache.role is None and cache.failed
        assert "nodes.yaml" in str(cache.problems[0])
        assert "cache-1" in str(cache.problems[0])

    def test_only_the_named_nodes_or_the_nodes_of_a_role(self, repo: Path, tmp_path: Path) -> None:
        named = check(repo, "HEAD", tmp_path, nodes=["db-1", "web-4"], workers=1)
        assert [n.node for n in named.nodes] == ["db-1", "web-4"]
        assert named.compiles == 2
        by_role = check(repo, "HEAD", tmp_path, role="db", workers=1)
        assert [n.node for n in by_role.nodes] == ["db-1", "db-2"]
        with pytest.raises(ReconcilerError, match=r"no facts for node\(s\) web-9"):
            check(repo, "HEAD", tmp_path, nodes=["web-1", "web-9"], workers=1)

    @pytest.mark.parametrize("ref", ["HEAD", None], ids=["commit", "working-tree"])
    def test_parallel_and_serial_give_the_same_result(
        self, repo: Path, tmp_path: Path, ref: str | None
    ) -> None:
        # A change not committed: the working tree is read, by every worker, as it is now.
        write_tree(repo, {"roles/db.yaml": FILES["roles/web.yaml"].replace("web", "db")})
        serial = check(repo, ref, tmp_path, workers=1)
        parallel = check(repo, ref, tmp_path, workers=2)
        assert shown(parallel) == shown(serial)
        assert parallel.compiles == serial.compiles
        db_failed = [n.node for n in serial.failed() if n.node.startswith("db-")]
        assert db_failed == ([] if ref == "HEAD" else ["db-1", "db-2"])


def test_the_reconciler_key_of_an_export_is_not_a_fact(tmp_path: Path) -> None:
    """`reconciler facts --all --out` writes a `_reconciler` key beside the facts: kept (it
    names the facts left out), never compiled with as a fact."""
    directory = write_tree(
        tmp_path / "facts",
        {
            "web-1.yaml": """
                _reconciler: {taken: '2026-12-01T03:00:00Z', withheld: [], dropped: []}
                node: elsewhere
                os: {family: Debian}
            """,
        },
    )
    loaded = load_facts_dir(directory)
    assert loaded["web-1"]["_reconciler"]["taken"] == "2026-12-01T03:00:00Z"
    assert review_facts("web-1", loaded["web-1"]).facts == {
        "node": "web-1",
        "os": {"family": "Debian"},
    }


def test_a_bad_facts_file_is_named_with_its_line(tmp_path: Path) -> None:
    directory = write_tree(
        tmp_path / "facts",
        {"web-1.yaml": "os: {family: Debian}\n", "web-2.yaml": "os: {family: Debian\nx: 1\n"},
    )
    with pytest.raises(ReconcilerError) as raised:
        load_facts_dir(directory)
    message = str(raised.value)
    assert message.startswith(f"facts of node web-2: {directory / 'web-2.yaml'}:")
