"""Classification through the real CLI: regular expressions in ``match:``, entries that match
on trusted facts only, and app components that choose their nodes by facts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CLI

ROLES = {
    "roles/web.yaml": "profiles: [web]\n",
    "roles/base.yaml": "profiles: []\n",
    "roles/linux.yaml": "profiles: []\n",
    "roles/spoofed.yaml": "profiles: []\n",
    "profiles/web.yaml": "resources:\n  - file: /etc/role\n    content: web\n",
}


def role_of(cli: CLI, repo: Path, node: str, *args: str) -> str:
    done = cli.run("plan", repo, "--node", node, "--format", "json", *args)
    assert done.returncode in (0, 2), done.stderr
    return str(json.loads(done.stdout)["role"])


class TestRegexMatch:
    def test_a_regex_between_slashes_matches_the_whole_name(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **ROLES,
                "nodes.yaml": """
                    nodes:
                      - match: "/web-[0-9]+/"
                        role: web
                      - match: "db-*"
                        role: linux
                    default: base
                """,
            }
        )
        assert role_of(cli, repo, "web-12") == "web"
        assert role_of(cli, repo, "web-12a") == "base"  # anchored: the whole name
        assert role_of(cli, repo, "xweb-1") == "base"
        assert role_of(cli, repo, "db-1") == "linux"  # still a glob without slashes

    def test_bad_and_exponential_regexes_are_refused_with_their_line(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **ROLES,
                "nodes.yaml": """
                    nodes:
                      - match: "/web-[0-9/"
                        role: web
                      - match: "/(a+)+b/"
                        role: web
                      - match: "/(x|xy)*z/"
                        role: web
                    default: base
                """,
            }
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert "nodes.yaml:2, key 'match': not a regular expression:" in done.stderr
        assert "nodes.yaml:4, key 'match': a repeated group that itself repeats" in done.stderr
        assert "nodes.yaml:6, key 'match': a repeated group that itself repeats" in done.stderr


class TestTrustedFacts:
    def test_fact_files_cannot_move_a_node_into_a_role_kept_for_trusted_facts(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **ROLES,
                "nodes.yaml": """
                    nodes:
                      - trusted: {kernel.name: Plan9}
                        role: spoofed
                      - trusted: {kernel.name: Linux}
                        role: linux
                    default: base
                """,
            }
        )
        facts = make_repo(
            {"facts.yaml": "kernel: {name: Plan9}\ntrusted: {kernel: {name: Plan9}}\n"},
            name="facts",
        )
        assert role_of(cli, repo, "n1", "--facts", str(facts / "facts.yaml")) == "linux"
        untrusted = make_repo(
            {"nodes.yaml": "nodes:\n  - facts: {kernel.name: Plan9}\n    role: spoofed\n"},
            name="repo",
        )
        assert role_of(cli, untrusted, "n1", "--facts", str(facts / "facts.yaml")) == "spoofed"


class TestAppComponentsByFacts:
    def test_a_component_runs_where_its_facts_hold(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **ROLES,
                "nodes.yaml": "default: base\n",
                "apps/shop.yaml": """
                    version: "1.0"
                    components:
                      - name: cache
                        nodes: {facts: {datacenter: east}, match: "/app-[0-9]+/"}
                        resources:
                          - file: /etc/shop-cache
                            content: "{{ app.version }}"
                """,
            }
        )
        east = make_repo(
            {"east.yaml": "datacenter: east\n", "west.yaml": "datacenter: west\n"}, "f"
        )
        cli.run("apply", repo, "--node", "app-1", "--facts", str(east / "west.yaml"), check=0)
        assert not (cli.root / "etc/shop-cache").exists()
        cli.run("apply", repo, "--node", "app-x", "--facts", str(east / "east.yaml"), check=0)
        assert not (cli.root / "etc/shop-cache").exists()
        cli.run("apply", repo, "--node", "app-1", "--facts", str(east / "east.yaml"), check=2)
        assert (cli.root / "etc/shop-cache").read_text() == "1.0"
