"""``reconciler diff``: a real git repository with two commits, facts of several nodes, the real
CLI in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler.model.secrets import encrypt_age
from reconciler.resources.base import digest
from tests.conftest import CLI, commit_all, git, write_tree

AGE_RECIPIENT = "age1v5vdvgrfkwddeueq9939yn25stvjzrrdnd8d6r6ystz7smx4lpwsl7d25m"  # the demo key

BASE = {
    "nodes.yaml": """
        nodes:
          - match: "web-*"
            role: web
          - match: "db-*"
            role: db
        default: db
    """,
    "roles/web.yaml": "profiles: [motd, site]\n",
    "roles/db.yaml": "profiles: [motd]\n",
    "profiles/motd.yaml": """
        params:
          message: hello
        resources:
          - file: /etc/motd
            content: "{{ params.message }}\\nsecond line\\n"
    """,
    "profiles/site.yaml": """
        params:
          password: hunter2-first
          port: 80
        sensitive_params: [password]
        resources:
          - file: /etc/site.conf
            content: "port={{ params.port }}\\n"
            mode: "0644"
          - file: /etc/site.password
            content: "{{ params.password }}\\n"
          - file: /etc/old.conf
            content: "old\\n"
    """,
    "apps/shop.yaml": """
        version: "1.0"
        components:
          - name: db
            nodes: {role: db}
            resources:
              - file: /etc/shop-db
                content: "{{ app.version }}\\n"
          - name: api
            nodes: {role: web}
            requires: [db]
            max_parallel: 2
            resources:
              - file: /etc/shop-api
                content: "{{ app.version }}\\n"
    """,
}

NODES = ("web-1", "web-2", "web-3", "db-1")


def facts_dir(tmp_path: Path, nodes: tuple[str, ...] = NODES) -> Path:
    """Each node's facts, as `reconciler facts` prints them: its own name, address, uptime."""
    directory = tmp_path / "facts"
    directory.mkdir()
    for index, node in enumerate(nodes):
        (directory / f"{node}.yaml").write_text(
            f"node: {node}\nhostname: {node}\nos: {{family: Debian, name: Debian}}\n"
            f"processors: {{count: 2}}\n"
            f"networking: {{ip: 192.0.2.{index + 1}}}\nuptime_seconds: {1000 + index}\n"
        )
    return directory


def two_commits(tmp_path: Path, change: dict[str, str]) -> Path:
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    write_tree(repo, change)
    commit_all(repo, "change")
    return repo


def diff(cli: CLI, repo: Path, facts: Path, *args: str, check: int | None = None) -> Any:
    return cli(
        "diff", f"--repo={repo}", "--from=HEAD~1", "--to=HEAD", f"--facts-dir={facts}", *args,
        check=check,
    )  # fmt: skip


SITE_CHANGED = {
    "profiles/site.yaml": """
        params:
          password: hunter2-second
          port: 8080
        sensitive_params: [password]
        resources:
          - file: /etc/site.conf
            content: "port={{ params.port }}\\n"
            mode: "0600"
          - file: /etc/site.password
            content: "{{ params.password }}\\n"
          - file: /etc/new.conf
            content: "new\\n"
    """,
}


ISSUE_ADDED = """
    params:
      message: hello
    resources:
      - file: /etc/motd
        content: "{{ params.message }}\\nsecond line\\n"
      - file: /etc/issue
        content: "hi\\n"
"""


class TestResources:
    def test_added_removed_and_changed_with_a_content_diff(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(tmp_path, SITE_CHANGED)
        done = diff(cli, repo, facts_dir(tmp_path), check=2)
        out = done.stdout
        # the three web nodes have the same changes: shown once, naming them
        assert "node web-1, web-2, web-3 (3 nodes): role web" in out
        assert "+ file:/etc/new.conf   (profiles/site.yaml:11)" in out
        assert "- file:/etc/old.conf" in out
        assert "~ file:/etc/site.conf" in out
        assert "    mode: 0644 -> 0600" in out
        assert "-port=80\n" in out and "+port=8080\n" in out
        assert "--- file:/etc/site.conf content (HEAD~1)" in out
        # db-1's catalog is the same at both revisions: counted, not listed
        assert "db-1" not in out.split("summary:")[0].replace("1 node(s) with the same", "")
        assert "1 node(s) with the same catalog at both revisions (not listed)" in out
        assert out.rstrip().endswith(
            "summary: 3 of 4 node(s) change, 0 fail(s) to compile at HEAD, 1 unchanged; "
            "resources: 3 added, 3 removed, 6 changed (4 catalogs compiled)"
        )

    def test_sensitive_values_are_never_shown_in_any_format(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(tmp_path, SITE_CHANGED)
        facts = facts_dir(tmp_path)
        outputs = [
            diff(cli, repo, facts, f"--format={fmt}", check=2).stdout
            for fmt in ("text", "json", "markdown")
        ]
        for out in outputs:
            assert "hunter2" not in out
            assert digest("hunter2-second\n") in out  # the change is shown as digests
        document = json.loads(outputs[1])
        web = next(n for n in document["nodes"] if n["node"] == "web-1")
        password = next(r for r in web["resources"] if r["id"] == "file:/etc/site.password")
        content = next(a for a in password["attributes"] if a["name"] == "content")
        assert content == {
            "name": "content",
            "from": digest("hunter2-first\n"),
            "to": digest("hunter2-second\n"),
            "encrypted": False,
        }

    def test_a_value_encrypted_in_data_is_compared_as_written(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        # The same plaintext encrypted twice: without keys the review cannot tell, and says so.
        first, second = (encrypt_age(b"db-password", [AGE_RECIPIENT]) for _ in range(2))
        repo = write_tree(
            tmp_path / "repo",
            {**BASE, "data/roles/db.yaml": f"motd:\n  message: {first}\n"},
        )
        commit_all(repo, "base")
        write_tree(repo, {"data/roles/db.yaml": f"motd:\n  message: {second}\n"})
        commit_all(repo, "encrypted again")
        facts = facts_dir(tmp_path)
        out = diff(cli, repo, facts, check=2).stdout
        assert "node db-1: role db" in out
        assert f"content: {digest(first + chr(10) + 'second line' + chr(10))}" in out
        assert "(encrypted: compared as written)" in out
        assert "note: values encrypted in data are compared as written" in out
        assert "db-password" not in out and first not in out
        document = json.loads(diff(cli, repo, facts, "--format=json", check=2).stdout)
        assert document["encrypted_compared_as_written"] is True

    def test_nothing_changes_exit_0(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(tmp_path, {"README.md": "a control repo\n"})
        done = diff(cli, repo, facts_dir(tmp_path), check=0)
        assert "4 node(s) with the same catalog at both revisions (not listed)" in done.stdout
        assert "web-1" not in done.stdout

    def test_only_named_nodes_and_roles(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(tmp_path, {"profiles/motd.yaml": ISSUE_ADDED})
        facts = facts_dir(tmp_path)
        out = diff(cli, repo, facts, "--node=web-2", "--node=db-1", check=2).stdout
        assert "node db-1: role db" in out and "node web-2: role web" in out
        assert "web-1" not in out and "web-3" not in out
        out = diff(cli, repo, facts, "--role=db", check=2).stdout
        assert "node db-1: role db" in out and "web-" not in out
        done = diff(cli, repo, facts, "--node=web-9", check=1)
        assert "no facts for node(s) web-9" in done.stderr


class TestRolesAndFailures:
    def test_a_node_whose_role_changes_shows_it(self, cli: CLI, tmp_path: Path) -> None:
        nodes = BASE["nodes.yaml"].replace('match: "web-*"', 'match: "web-[12]"')
        repo = two_commits(tmp_path, {"nodes.yaml": nodes})
        out = diff(cli, repo, facts_dir(tmp_path), check=2).stdout
        assert "node web-3: role db\n  role: web -> db\n" in out
        assert "  - file:/etc/site.conf" in out
        assert "  app shop/api: 1.0 -> (not run)" in out
        assert "  app shop/db: (not run) -> 1.0" in out
        assert "web-1" not in out.split("summary:")[0]

    def test_a_catalog_that_fails_at_to_exits_4_naming_file_and_line(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        broken = BASE["profiles/motd.yaml"].replace("params.message", "params.mesage")
        repo = two_commits(tmp_path, {"profiles/motd.yaml": broken})
        facts = facts_dir(tmp_path)
        done = diff(cli, repo, facts, check=4)
        assert "node db-1: role db\n  ! does not compile at HEAD:\n      profiles/motd.yaml:5" in (
            done.stdout
        )
        assert (
            "fail to compile at HEAD:\n  db-1, web-1, web-2, web-3 (4 nodes): profiles/motd.yaml:5"
        ) in done.stdout
        assert "4 fail(s) to compile at HEAD" in done.stdout
        document = json.loads(diff(cli, repo, facts, "--format=json", check=4).stdout)
        assert document["exit_code"] == 4
        error = document["nodes"][0]["errors"]["to"][0]
        assert (error["file"], error["line"]) == ("profiles/motd.yaml", 5)
        assert "mesage" in error["message"]

    def test_a_catalog_fixed_by_the_change_is_listed_with_the_old_problems(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        broken = BASE["profiles/motd.yaml"].replace("params.message", "params.mesage")
        repo = write_tree(tmp_path / "repo", {**BASE, "profiles/motd.yaml": broken})
        commit_all(repo, "broken")
        write_tree(repo, {"profiles/motd.yaml": BASE["profiles/motd.yaml"]})
        commit_all(repo, "fixed")
        out = diff(cli, repo, facts_dir(tmp_path), "--role=db", check=2).stdout
        assert (
            "node db-1: role db\n  did not compile at HEAD~1 (compiles now):\n"
            "      profiles/motd.yaml:5, key 'content': template error:"
        ) in out


class TestCouldNotRun:
    def test_a_bad_ref_exits_1(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(tmp_path, {"README.md": "x\n"})
        done = cli(
            "diff", f"--repo={repo}", "--from=HEAD", "--to=no-such-branch",
            f"--facts-dir={facts_dir(tmp_path)}", check=1,
        )  # fmt: skip
        assert "ref not found: 'no-such-branch'" in done.stderr
        assert done.stdout == ""

    def test_a_bad_facts_file_exits_1_naming_it(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(tmp_path, {"README.md": "x\n"})
        facts = facts_dir(tmp_path)
        (facts / "web-2.yaml").write_text("os: {family: Debian\nname: x\n")
        done = diff(cli, repo, facts, check=1)
        assert f"facts of node web-2: {facts / 'web-2.yaml'}:" in done.stderr
        (facts / "web-2.yaml").write_text("- a list\n")
        done = diff(cli, repo, facts, check=1)
        assert f"{facts / 'web-2.yaml'}:1: facts must be a mapping" in done.stderr

    def test_an_empty_facts_directory_exits_1(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(tmp_path, {"README.md": "x\n"})
        (tmp_path / "empty").mkdir()
        done = diff(cli, repo, tmp_path / "empty", check=1)
        assert "no <node>.yaml files" in done.stderr


class TestApps:
    def test_version_change_per_component_in_rollout_order(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(
            tmp_path, {"apps/shop.yaml": BASE["apps/shop.yaml"].replace('"1.0"', '"1.1"')}
        )
        facts = facts_dir(tmp_path, ("web-1", "web-2", "web-3", "db-1", "db-2"))
        out = diff(cli, repo, facts, check=2).stdout
        assert (
            "app rollouts, in order (each step once the steps it requires are healthy):\n"
            "  step 1: shop/db, 1 node(s) at a time\n"
            "    1. db-1 1.0 -> 1.1\n"
            "    2. db-2 1.0 -> 1.1\n"
            "  step 2: shop/api, after db, 2 node(s) at a time\n"
            "    1. web-1 1.0 -> 1.1, web-2 1.0 -> 1.1\n"
            "    2. web-3 1.0 -> 1.1\n"
        ) in out
        document = json.loads(diff(cli, repo, facts, "--format=json", check=2).stdout)
        assert [(r["component"], r["step"], r["max_parallel"]) for r in document["rollouts"]] == [
            ("db", 1, 1),
            ("api", 2, 2),
        ]
        assert document["rollouts"][1]["nodes"][0] == {
            "node": "web-1",
            "from": "1.0",
            "to": "1.1",
            "direction": "upgrade",
        }

    def test_an_older_version_is_a_downgrade(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(
            tmp_path, {"apps/shop.yaml": BASE["apps/shop.yaml"].replace('"1.0"', '"0.9"')}
        )
        out = diff(cli, repo, facts_dir(tmp_path), check=2).stdout
        assert "    1. db-1 1.0 -> 0.9 (downgrade)\n" in out


def check_schema(document: dict[str, Any]) -> None:
    """The documented schema, reconciler.diff/v1 (docs/cli.md)."""
    assert set(document) == {
        "schema", "repo", "from", "to", "summary", "nodes", "rollouts",
        "encrypted_compared_as_written", "exit_code",
    }  # fmt: skip
    assert document["schema"] == "reconciler.diff/v1"
    for side in ("from", "to"):
        assert set(document[side]) == {"ref", "commit"}
        assert len(document[side]["commit"]) == 40
    assert set(document["summary"]) == {
        "nodes", "changed", "failed", "unchanged", "resources_added", "resources_removed",
        "resources_changed", "catalogs_compiled",
    }  # fmt: skip
    assert all(isinstance(v, int) for v in document["summary"].values())
    for node in document["nodes"]:
        assert set(node) == {
            "node", "status", "role", "resources", "apps", "errors", "withheld_facts"
        }  # fmt: skip
        assert all(isinstance(p, str) for p in node["withheld_facts"])
        assert node["status"] in ("changed", "failed")
        assert set(node["role"]) == {"from", "to"}
        for resource in node["resources"]:
            assert set(resource) == {"id", "change", "where", "attributes"}
            assert resource["change"] in ("added", "removed", "changed")
            for attribute in resource["attributes"]:
                assert {"name", "from", "to", "encrypted"} <= set(attribute)
                assert set(attribute) <= {"name", "from", "to", "diff", "encrypted"}
        for app in node["apps"]:
            assert set(app) == {"component", "from", "to"}
        for problem in node["errors"]["from"] + node["errors"]["to"]:
            assert set(problem) == {"message", "file", "line", "key"}
    for rollout in document["rollouts"]:
        assert set(rollout) == {"app", "component", "step", "requires", "max_parallel", "nodes"}
        for move in rollout["nodes"]:
            assert set(move) == {"node", "from", "to", "direction"}
            assert move["direction"] in ("upgrade", "downgrade", "change", "new", "removed")


class TestFormats:
    def test_json_follows_the_documented_schema(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(
            tmp_path,
            {**SITE_CHANGED, "apps/shop.yaml": BASE["apps/shop.yaml"].replace('"1.0"', '"2.0"')},
        )
        document = json.loads(diff(cli, repo, facts_dir(tmp_path), "--format=json").stdout)
        check_schema(document)
        assert document["summary"]["nodes"] == 4
        assert document["summary"]["changed"] == 4
        site = next(
            r for r in document["nodes"][1]["resources"] if r["id"] == "file:/etc/site.conf"
        )
        content = next(a for a in site["attributes"] if a["name"] == "content")
        assert "-port=80\n+port=8080\n" in content["diff"]

    def test_markdown_has_collapsible_details_per_node(self, cli: CLI, tmp_path: Path) -> None:
        repo = two_commits(tmp_path, SITE_CHANGED)
        out = diff(cli, repo, facts_dir(tmp_path), "--format=markdown", check=2).stdout
        assert out.startswith("### reconciler diff `HEAD~1` → `HEAD`\n")
        assert "**3** of 4 node(s) change, **0** fail(s) to compile, 1 unchanged" in out
        assert (
            "<details><summary><code>web-1, web-2, web-3 (3 nodes)</code> (role web): "
            "1 added, 1 removed, 2 changed</summary>\n\n```diff\n"
        ) in out
        assert out.count("<details>") == out.count("</details>") == 1
        # a content diff's lines start their line, where the ```diff block colours them
        assert "\n    content:\n--- file:/etc/site.conf content (HEAD~1)\n" in out
        assert "\n-port=80\n+port=8080\n    mode: 0644 -> 0600\n" in out

    def test_markdown_is_bounded_and_says_what_it_left_out(self, tmp_path: Path) -> None:
        from reconciler.review.fleet import Request, diff_fleet
        from reconciler.review.render import to_markdown

        # Every node's motd names it: each node has its own changes, its own details.
        motd = BASE["profiles/motd.yaml"].replace(
            "{{ params.message }}", "{{ node }}: {{ params.message }}"
        )
        repo = write_tree(tmp_path / "repo", {**BASE, "profiles/motd.yaml": motd})
        commit_all(repo, "base")
        write_tree(repo, {"profiles/motd.yaml": motd.replace("hello", "hello there")})
        commit_all(repo, "change")
        nodes = tuple(f"db-{i}" for i in range(30))
        from reconciler.review import load_facts_dir

        facts = load_facts_dir(facts_dir(tmp_path, nodes))
        result = diff_fleet(Request(str(repo), "HEAD~1", "HEAD", facts, workers=1))
        whole = to_markdown(result)
        assert whole.count("<details>") == 30 and "not shown" not in whole
        cut = to_markdown(result, limit=4000)
        assert len(cut) <= 4000
        shown = cut.count("<details>")
        assert 0 < shown < 30
        assert (
            f"_{30 - shown} more node(s) not shown: this comment is cut at 4000 characters." in cut
        )


@pytest.mark.parametrize("workers", [1, 2])
def test_nodes_share_a_catalog_only_when_what_it_reads_agrees(tmp_path: Path, workers: int) -> None:
    """A catalog is compiled once for nodes whose role and read facts agree, in one process or
    several; a node whose read fact differs gets its own, with its own changes."""
    from reconciler.review import load_facts_dir
    from reconciler.review.fleet import Request, diff_fleet

    motd = BASE["profiles/motd.yaml"].replace(
        "{{ params.message }}", "{{ params.message }} on {{ facts.os.family }}"
    )
    repo = write_tree(tmp_path / "repo", {**BASE, "profiles/motd.yaml": motd})
    commit_all(repo, "base")
    write_tree(repo, {"profiles/motd.yaml": motd.replace("hello", "hi")})
    commit_all(repo, "change")
    facts = load_facts_dir(facts_dir(tmp_path))
    facts["web-3"]["os"] = {"family": "RedHat", "name": "Rocky"}
    result = diff_fleet(Request(str(repo), "HEAD~1", "HEAD", facts, workers=workers))
    # db-1; web-1 and web-2 (same role, same os); web-3: three catalogs at each revision
    assert result.compiles == 6
    by_node = {n.node: n for n in result.nodes}
    motd_diff = {
        node: next(c for c in by_node[node].resources if c.id == "file:/etc/motd").changes[0].diff
        for node in ("web-1", "web-3")
    }
    assert "+hi on Debian" in (motd_diff["web-1"] or "")
    assert "+hi on RedHat" in (motd_diff["web-3"] or "")


class TestTheExample:
    def test_the_bundled_example_with_its_module_and_an_encrypted_value(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        """The example control repo: a module pinned in modules.yaml (fetched into
        --state-dir), defined types, an app whose api consumes what the database produces,
        and an encrypted password for the db role, compared without any key."""
        from reconciler.demo import copy_example

        repo = copy_example(tmp_path / "control-repo")
        commit_all(repo, "example")
        (repo / "apps" / "shop.yaml").write_text(
            (repo / "apps" / "shop.yaml").read_text().replace('"1.4.2"', '"1.4.3"')
        )
        (repo / "data" / "roles" / "web.yaml").write_text(
            (repo / "data" / "roles" / "web.yaml").read_text().replace("port: 8080", "port: 8088")
        )
        commit_all(repo, "shop 1.4.3, web on 8088")
        facts = facts_dir(tmp_path, ("web-1", "web-2", "db-1", "lb-1"))
        state = tmp_path / "state"
        done = diff(cli, repo, facts, f"--state-dir={state}", "--format=json", check=2)
        assert (state / "modules" / "apache").is_dir()  # the module's mirror
        document = json.loads(done.stdout)
        check_schema(document)
        by_node = {n["node"]: n for n in document["nodes"]}
        assert set(by_node) == {"web-1", "web-2", "db-1", "lb-1"}
        # web-1 has its own port in data/nodes/web-1.yaml: only web-2 moves to 8088
        site = "file:/etc/nginx/sites-available/site.conf"

        def content(node: str, rid: str) -> dict[str, Any]:
            resource = next(r for r in by_node[node]["resources"] if r["id"] == rid)
            return next(a for a in resource["attributes"] if a["name"] == "content")

        assert "-    listen 8080;\n+    listen 8088;\n" in content("web-2", site)["diff"]
        assert site not in [r["id"] for r in by_node["web-1"]["resources"]]
        assert [(r["component"], r["step"]) for r in document["rollouts"]] == [
            ("database", 1),
            ("api", 2),
            ("lb", 3),
        ]
        # the api's environment names the database through a placeholder: no store is read
        env = content("web-1", "file:/etc/shop-api.env")
        assert "+SHOP_VERSION=1.4.3\n" in env["diff"]
        # db-1's password stays encrypted, and is not shown: its file did not change
        assert "ENC[AGE," not in done.stdout
        assert document["encrypted_compared_as_written"] is False


def test_a_remote_repo_is_fetched_into_the_state_dir(cli: CLI, tmp_path: Path) -> None:
    repo = two_commits(tmp_path, SITE_CHANGED)
    git_dir = repo / ".git"
    state = tmp_path / "state"
    base = git(repo, "rev-parse", "HEAD~1")  # a remote is asked for branches, tags or commits
    done = cli(
        "diff", f"--repo=file://{git_dir}", f"--from={base}", "--to=main",
        f"--facts-dir={facts_dir(tmp_path)}", f"--state-dir={state}", check=2,
    )  # fmt: skip
    assert "node web-1, web-2, web-3 (3 nodes): role web" in done.stdout
    assert (state / "source").is_dir()  # the mirror
