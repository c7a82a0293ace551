"""``reconciler validate --facts-dir``: the repo's files checked, then every node's catalog compiled
with that node's own facts, through the real CLI in a subprocess."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import CLI, write_tree

FILES = {
    "nodes.yaml": """
        nodes:
          - match: "web-*"
            role: web
          - match: "db-*"
            role: db
    """,
    "roles/web.yaml": """
        profiles: [base]
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
}


def facts_dir(tmp_path: Path, memory: dict[str, int]) -> Path:
    """One <node>.yaml per node, as `reconciler facts --all --out` writes them."""
    return write_tree(
        tmp_path / "facts",
        {
            f"{node}.yaml": (
                "_reconciler: {taken: '2026-12-01T03:00:00Z', withheld: [], dropped: []}\n"
                f"node: {node}\nos: {{family: Debian}}\nmemory_mb: {mb}\n"
            )
            for node, mb in memory.items()
        },
    )


FLEET = {"web-1": 2048, "web-2": 2048, "db-1": 512}


def validate(
    cli: CLI, repo: Path, *args: str, check: int | None = None
) -> subprocess.CompletedProcess[str]:
    return cli("validate", f"--repo={repo}", f"--state-dir={cli.state}", *args, check=check)


class TestEveryNode:
    def test_every_node_compiles_with_its_facts_exit_0(self, cli: CLI, tmp_path: Path) -> None:
        repo = write_tree(tmp_path / "repo", FILES)
        facts = facts_dir(tmp_path, FLEET)
        done = validate(cli, repo, f"--facts-dir={facts}", check=0)
        assert done.stdout.splitlines() == [
            "3 of 3 node(s) compile with their facts (1 of role db, 2 of role web); "
            "2 distinct catalog(s) compiled",
            f"{repo}: valid (working tree)",
        ]
        assert done.stderr == ""

    def test_a_role_no_node_has_is_said_not_compiled(self, cli: CLI, tmp_path: Path) -> None:
        repo = write_tree(tmp_path / "repo", {**FILES, "roles/cache.yaml": "profiles: [base]\n"})
        facts = facts_dir(tmp_path, FLEET)
        done = validate(cli, repo, f"--facts-dir={facts}", check=0)
        assert done.stderr == "reconciler: warning: no node has role(s) cache: not compiled\n"
        # its file is checked all the same
        write_tree(repo, {"roles/cache.yaml": "profiles: [nothing]\n"})
        done = validate(cli, repo, f"--facts-dir={facts}", check=1)
        assert "roles/cache.yaml:1" in done.stderr and "'nothing'" in done.stderr

    def test_nodes_whose_facts_fail_an_assertion_are_named_with_file_and_line(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        """The db role passes with any memory; web-3 and web-4 have too little for theirs."""
        repo = write_tree(tmp_path / "repo", FILES)
        facts = facts_dir(tmp_path, {**FLEET, "web-3": 512, "web-4": 512})
        done = validate(cli, repo, f"--facts-dir={facts}", check=1)
        assert done.stderr.splitlines() == [
            "reconciler: 2 of 5 node(s) fail to compile with their facts:",
            "  2 nodes web-3, web-4 (role web):",
            "    roles/web.yaml:3, key 'assert': assertion failed: a web server needs 1024 MiB, "
            "512 here",
        ]
        assert done.stdout.splitlines() == [
            "3 of 5 node(s) compile with their facts (1 of role db, 2 of role web); "
            "3 distinct catalog(s) compiled"
        ]
        # only the nodes asked for
        done = validate(cli, repo, f"--facts-dir={facts}", "--role=db", check=0)
        assert done.stdout.startswith("1 of 1 node(s) compile with their facts (1 of role db)")
        done = validate(cli, repo, f"--facts-dir={facts}", "--node=web-1", check=0)
        assert done.stdout.startswith("1 of 1 node(s) compile with their facts (1 of role web)")
        done = validate(cli, repo, f"--facts-dir={facts}", "--node=web-4", check=1)
        assert "  node web-4 (role web):" in done.stderr

    def test_a_problem_of_a_file_is_listed_once_not_under_every_node(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        repo = write_tree(
            tmp_path / "repo",
            {
                **FILES,
                "profiles/base.yaml": FILES["profiles/base.yaml"].rstrip(" ")
                + "            mdoe: x\n",
            },
        )
        facts = facts_dir(tmp_path, {**FLEET, "web-3": 512})
        done = validate(cli, repo, f"--facts-dir={facts}", check=1)
        lines = done.stderr.splitlines()
        assert lines[0] == f"reconciler: {repo}: 1 problem(s):"
        assert lines[1].startswith("  profiles/base.yaml:4, key 'mdoe': unknown attribute 'mdoe'")
        assert lines[2] == "reconciler: 4 of 4 node(s) fail to compile with their facts:"
        assert lines[3:] == [
            "  node db-1 (role db):",
            "    and 1 problem(s) listed above",
            "  2 nodes web-1, web-2 (role web):",
            "    and 1 problem(s) listed above",
            "  node web-3 (role web):",
            "    roles/web.yaml:3, key 'assert': assertion failed: a web server needs 1024 MiB, "
            "512 here",
            "    and 1 problem(s) listed above",
        ]

    def test_a_node_nodes_yaml_gives_no_role_fails(self, cli: CLI, tmp_path: Path) -> None:
        repo = write_tree(tmp_path / "repo", FILES)
        facts = facts_dir(tmp_path, {**FLEET, "cache-1": 4096})
        done = validate(cli, repo, f"--facts-dir={facts}", check=1)
        assert "  node cache-1 (no role):\n    nodes.yaml" in done.stderr


class TestCouldNotRun:
    def test_a_bad_facts_file_is_named_with_its_line(self, cli: CLI, tmp_path: Path) -> None:
        repo = write_tree(tmp_path / "repo", FILES)
        facts = facts_dir(tmp_path, FLEET)
        (facts / "web-2.yaml").write_text("os: {family: Debian\nmemory_mb: 1\n")
        done = validate(cli, repo, f"--facts-dir={facts}", check=1)
        assert done.stderr.startswith(f"reconciler: facts of node web-2: {facts / 'web-2.yaml'}:")
        assert done.stdout == ""

    def test_options_that_do_not_go_together(self, cli: CLI, tmp_path: Path) -> None:
        repo = write_tree(tmp_path / "repo", FILES)
        facts = facts_dir(tmp_path, FLEET)
        for args, says in (
            (["--role=web"], "--role goes with --facts-dir or --all"),
            (
                [f"--facts-dir={facts}", f"--facts={facts / 'web-1.yaml'}"],
                "--facts is for this host's facts, not with",
            ),
            ([f"--facts-dir={facts}", "--role=cache"], "no node has role 'cache'"),
            ([f"--facts-dir={facts}", "--node=web-9"], "no facts for node(s) web-9"),
            (["--all"], "--all reads the coordination store: give --config FILE"),
        ):
            done = validate(cli, repo, *args, check=1)
            assert f"reconciler: {says}" in done.stderr, (args, done.stderr)


def test_withheld_facts_are_placeholders_named_under_the_node_they_fail(
    cli: CLI, tmp_path: Path
) -> None:
    """A fact the node withheld (named under `_reconciler`) is compiled as a placeholder: a
    catalog that only passes it on compiles; one that computes with it fails, and the node's
    entry says which facts were placeholders."""
    repo = write_tree(
        tmp_path / "repo",
        {
            **FILES,
            "roles/db.yaml": """
                profiles: [base]
                assert:
                  - that: "facts.site.port > 1024"
                    message: "an unprivileged port"
            """,
        },
    )
    facts = facts_dir(tmp_path, FLEET)
    for node in ("web-1", "db-1"):
        text = (facts / f"{node}.yaml").read_text()
        (facts / f"{node}.yaml").write_text(
            text.replace("withheld: []", "withheld: [site.port]") + "site: {}\n"
        )
    done = validate(cli, repo, f"--facts-dir={facts}", check=1)
    assert done.stderr.splitlines()[:3] == [
        "reconciler: 1 of 3 node(s) fail to compile with their facts:",
        "  node db-1 (role db):",
        "    compiled with withheld facts: site.port",
    ]
    assert "roles/db.yaml:3, key 'that': expression error: '>' not supported" in done.stderr
    assert done.stdout.splitlines()[0] == "node web-1: compiled with withheld facts: site.port"
