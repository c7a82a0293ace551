"""The real CLI, run as a subprocess against temporary roots and real git repositories."""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from reconciler.demo import DEMO_AGE_KEY, copy_example
from tests.conftest import CLI, commit_all, git, place_releases, tree_hash, write_tree

FACTS = "facts.yaml"


def example_copy(tmp_path: Path) -> Path:
    return copy_example(tmp_path / "control-repo")  # its module a git repository beside it, pinned


def facts_file(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / FACTS
    releases = place_releases(tmp_path / "root")  # the example app's, in the CLI's root
    os_facts = {"family": "Debian", "name": "Debian"}
    path.write_text(json.dumps({"os": os_facts, "shop_releases": releases, **extra}))
    return path


def db_keys(tmp_path: Path) -> str:
    """A configuration giving db-1 the example's demo age identity (a key file of mode 0600), as
    `reconciler demo` does: the db role's data holds an encrypted value."""
    key = tmp_path / "demo-age.key"
    key.touch(mode=0o600)
    key.write_bytes(DEMO_AGE_KEY.read_bytes())
    config = tmp_path / "db-1.yaml"
    config.write_text(f"node: db-1\nsecrets:\n  age_identity: {key}\n")
    return f"--config={config}"


class TestExampleRepo:
    def test_apply_converges_then_nothing_to_change(self, cli: CLI, tmp_path: Path) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        first = cli.run("apply", repo, "--node", "web-1", "--facts", facts, check=2)
        assert "Applied:" in first.stdout
        site = (cli.root / "etc/nginx/sites-available/site.conf").read_text()
        assert "listen 8081;" in site  # the per-node data level wins over the role's 8080
        assert "server_name canary.example.com;" in site
        assert (
            os.readlink(cli.root / "etc/nginx/sites-enabled/site.conf")
            == "../sites-available/site.conf"
        )
        assert (cli.root / "etc/sudoers.d/50-admins").read_text().splitlines()[1] == (
            "%sysadmins ALL=(ALL:ALL) ALL"
        )
        assert oct((cli.root / "etc/sudoers.d/50-admins").stat().st_mode & 0o7777) == "0o440"
        # a defined type used once per item of data, and the nginx profile's defaults
        assert (cli.root / "etc/motd.d/20-backups").read_text() == (
            "Backups run nightly at 02:00 UTC.\n"
        )
        assert sorted(p.name for p in (cli.root / "etc/motd.d").iterdir()) == [
            "10-support",
            "20-backups",
        ]
        assert oct((cli.root / "etc/nginx").stat().st_mode & 0o7777) == "0o755"
        # the notify reached the refreshonly exec exactly once
        assert (cli.root / "var/log/nginx-reload.log").read_text() == "nginx reloaded\n"
        before = tree_hash(cli.root)
        cli.run("apply", repo, "--node", "web-1", "--facts", facts, check=0)
        assert tree_hash(cli.root) == before
        assert (cli.root / "var/log/nginx-reload.log").read_text() == "nginx reloaded\n"

    def test_db_role_edits_lines_without_fighting_the_file(self, cli: CLI, tmp_path: Path) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        keys = db_keys(tmp_path)
        done = cli.run("apply", repo, keys, "--node", "db-1", "--facts", facts, check=2)
        conf = (cli.root / "etc/postgresql/postgresql.conf").read_text()
        assert "max_connections = 200\n" in conf
        assert "#max_connections" not in conf
        # The encrypted value of data/roles/db.yaml, decrypted with the demo key, never shown.
        password = cli.root / "etc/postgresql/shop.password"
        assert password.read_text() == "shop-demo-password\n"
        assert oct(password.stat().st_mode & 0o7777) == "0o600"
        assert "shop-demo-password" not in done.stdout + done.stderr
        cli.run("apply", repo, keys, "--node", "db-1", "--facts", facts, check=0)

    def test_db_node_without_the_age_identity_applies_nothing(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        done = cli.run("apply", repo, "--node", "db-1", "--facts", facts, check=1)
        assert "data/roles/db.yaml:" in done.stdout + done.stderr
        assert "postgres.shop_password" in done.stdout + done.stderr
        assert "no age identity (secrets.age_identity" in done.stdout + done.stderr
        assert not (cli.root / "etc/postgresql").exists()

    def test_validate_passes(self, cli: CLI, tmp_path: Path) -> None:
        repo = str(example_copy(tmp_path))
        nodes = ["--node", "web-1", "--node", "db-1", "--node", "lb-1"]
        done = cli("validate", "--repo", repo, "--state-dir", str(cli.state), *nodes, check=0)
        assert "web-1: role web" in done.stdout
        assert "db-1: role db" in done.stdout
        assert "lb-1: role lb" in done.stdout


class TestValidate:
    def test_lists_every_problem_of_the_revision_at_once(self, cli: CLI, tmp_path: Path) -> None:
        repo = write_tree(
            tmp_path / "repo",
            {
                "nodes.yaml": 'nodes:\n  - match: "web-*"\n    role: web\n',
                "roles/web.yaml": "profils: [nginx]\n",
                "profiles/nginx.yaml": """
                    params:
                      port: 80
                    resources:
                      - file: /etc/nginx/nginx.conf
                        tempalte: nginx.conf.j2
                    """,
                "templates/nginx.conf.j2": "listen {{ params.port }};\n",
                "data/common.yaml": "nginx:\n  prot: 8080\n",
            },
        )
        facts = str(facts_file(tmp_path))
        done = cli("validate", "--repo", str(repo), "--facts", facts, "--node", "web-1", check=1)
        assert done.stderr.splitlines()[1:] == [
            "  data/common.yaml:2, key 'nginx.prot': profile 'nginx' has no parameter 'prot' "
            "(profiles/nginx.yaml) (did you mean 'port'?)",
            "  profiles/nginx.yaml:5, key 'tempalte': unknown attribute 'tempalte' for file "
            "(did you mean 'template'?)",
            "  roles/web.yaml:1, key 'profils': unknown key 'profils' in a role "
            "(did you mean 'profiles'?)",
        ]
        assert "3 problem(s)" in done.stderr.splitlines()[0]
        # The node's role names no profile, so only the role's own problem is the node's.
        plan = cli.run("plan", repo, "--node", "web-1", "--facts", facts, check=1)
        assert plan.stderr.splitlines()[1:] == done.stderr.splitlines()[3:]


class TestPlan:
    def test_plan_shows_drift_with_a_diff_and_changes_nothing(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        cli.run("apply", repo, "--node", "web-1", "--facts", facts, check=2)
        motd = cli.root / "etc/motd"
        motd.write_text(motd.read_text().replace("reverted", "kept forever"))
        before = tree_hash(cli.root)
        plan = cli.run("plan", repo, "--node", "web-1", "--facts", facts, check=2)
        assert tree_hash(cli.root) == before
        assert "~ file:/etc/motd  (drift)" in plan.stdout
        assert (
            "-Debian server managed by reconciler: local changes are kept forever." in plan.stdout
        )
        assert "+Debian server managed by reconciler: local changes are reverted." in plan.stdout
        assert "Plan: 1 to change" in plan.stdout

    def test_a_new_revision_is_not_drift_and_its_refresh_neither(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        cli.run("apply", repo, "--node", "web-1", "--facts", facts, check=2)
        node_data = repo / "data/nodes/web-1.yaml"
        node_data.write_text(node_data.read_text().replace("8081", "9000"))
        plan = cli.run("plan", repo, "--node", "web-1", "--facts", facts, check=2)
        assert "~ file:/etc/nginx/sites-available/site.conf\n" in plan.stdout
        assert "-    listen 8081;" in plan.stdout and "+    listen 9000;" in plan.stdout
        assert "~ exec:reload-nginx\n    refreshed:" in plan.stdout
        assert "(drift)" not in plan.stdout

    def test_plan_on_a_fresh_root_lists_everything_and_writes_nothing(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        before = tree_hash(cli.root)
        plan = cli.run(
            "plan", repo, "--node", "web-1", "--facts", facts, "--format", "json", check=2
        )
        report = json.loads(plan.stdout)
        assert report["noop"] is True
        # everything, the two refreshonly execs included: their notifiers would change
        assert report["summary"]["would_change"] == report["summary"]["total"] == 17
        refreshed = [r for r in report["resources"] if r["id"].startswith("exec:")]
        assert {c["property"] for r in refreshed for c in r["changes"]} == {"refreshed"}
        assert tree_hash(cli.root) == before
        assert not cli.state.exists()

    def test_plan_of_lines_in_a_file_not_created_yet_is_known_after_apply(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        """db-1's lines edit postgresql.conf, which a file resource of the same run creates."""
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        keys = db_keys(tmp_path)
        plan = cli.run("plan", repo, keys, "--node", "db-1", "--facts", facts, check=2)
        assert "~ line:max_connections\n    known after apply: file:/etc/postgresql/" in plan.stdout
        assert "failed" not in plan.stdout
        cli.run("apply", repo, keys, "--node", "db-1", "--facts", facts, check=2)
        cli.run("plan", repo, keys, "--node", "db-1", "--facts", facts, check=0)


class TestReports:
    def test_a_report_keeps_at_most_a_mebibyte_of_diffs(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        def repo(version: str) -> Path:
            body = "".join(f"line {i} of version {version}\n" for i in range(400))
            resources = "".join(
                f"  - file: /srv/f{n}\n    content: {json.dumps(body)}\n" for n in range(150)
            )
            return make_repo(
                {
                    "nodes.yaml": "default: app\n",
                    "roles/app.yaml": "profiles: [app]\n",
                    "profiles/app.yaml": "resources:\n" + resources,
                },
                name=f"repo-{version}",
            )

        cli.run("apply", repo("a"), "--node", "n1", check=2)
        cli.run("apply", repo("b"), "--node", "n1", check=2)
        newest = sorted((cli.state / "reports").glob("*.json"))[-1]
        changes = [c for r in json.loads(newest.read_text())["resources"] for c in r["changes"]]
        kept = [c["diff"] for c in changes if "diff" in c]
        assert 0 < sum(map(len, kept)) <= 1 << 20
        assert any(c.get("diff_omitted") for c in changes)
        assert newest.stat().st_size < 2 << 20

    def test_json_report_follows_the_spec(self, cli: CLI, tmp_path: Path) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        done = cli.run(
            "apply", repo, "--node", "web-1", "--facts", facts, "--format", "json", check=2
        )
        report = json.loads(done.stdout)
        assert {
            "node",
            "revision",
            "branch",
            "noop",
            "started",
            "duration_seconds",
            "summary",
            "resources",
        } <= set(report)
        assert report["node"] == "web-1"
        assert report["summary"]["total"] == len(report["resources"])
        motd = next(r for r in report["resources"] if r["id"] == "file:/etc/motd")
        assert motd["status"] == "changed"
        assert motd["error"] is None
        ensure = motd["changes"][0]
        assert ensure["property"] == "ensure" and ensure["corrective"] is False
        saved = sorted((cli.state / "reports").glob("*.json"))
        assert len(saved) == 1 and json.loads(saved[0].read_text())["run_id"] == report["run_id"]

    def test_drift_repair_is_corrective_and_backed_up(self, cli: CLI, tmp_path: Path) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        cli.run("apply", repo, "--node", "web-1", "--facts", facts, check=2)
        motd = cli.root / "etc/motd"
        motd.write_text("hacked\n")
        done = cli.run(
            "apply", repo, "--node", "web-1", "--facts", facts, "--format", "json", check=2
        )
        report = json.loads(done.stdout)
        changed = [r for r in report["resources"] if r["status"] == "changed"]
        assert [r["id"] for r in changed] == ["file:/etc/motd"]
        assert changed[0]["changes"][0]["corrective"] is True
        index = (cli.state / "backups/index.jsonl").read_text().splitlines()
        entry = json.loads(index[-1])
        assert entry["path"] == "/etc/motd"
        stored = cli.state / "backups/objects" / entry["sha256"][:2] / entry["sha256"]
        assert stored.read_text() == "hacked\n"

    def test_temporaries_left_by_a_killed_run_are_removed(self, cli: CLI, tmp_path: Path) -> None:
        repo = example_copy(tmp_path)
        facts = str(facts_file(tmp_path))
        cli.run("apply", repo, "--node", "web-1", "--facts", facts, check=2)
        stray = cli.root / "etc/sudoers.d/.50-admins.reconciler-tmp-999-0"
        stray.write_text("half a file")
        cli.run("plan", repo, "--node", "web-1", "--facts", facts, check=0)
        assert stray.exists()  # plan changes nothing
        cli.run("apply", repo, "--node", "web-1", "--facts", facts, check=0)
        assert not stray.exists()

    def test_status_reads_the_last_report(self, cli: CLI, tmp_path: Path) -> None:
        repo = example_copy(tmp_path)
        cli.run("apply", repo, "--node", "web-1", "--facts", str(facts_file(tmp_path)), check=2)
        done = cli("status", "--state-dir", str(cli.state), check=0)
        assert "node:      web-1 (role web)" in done.stdout
        data = json.loads(
            cli("status", "--state-dir", str(cli.state), "--format", "json", check=0).stdout
        )
        assert data["node"] == "web-1"


class TestFailures:
    REPO = {
        "nodes.yaml": "default: app\n",
        "roles/app.yaml": "profiles: [app]\n",
        "profiles/app.yaml": """
            resources:
              - exec: broken
                command: "echo about to fail; exit 3"
              - file: /etc/needs-broken
                content: "x\\n"
                require: exec:broken
              - file: /etc/independent
                content: "y\\n"
            """,
    }

    def test_content_failing_validate_cmd_is_not_written_and_restarts_nothing(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        def repo(port: str) -> Path:
            return make_repo(
                {
                    "nodes.yaml": "default: app\n",
                    "roles/app.yaml": "profiles: [app]\n",
                    "profiles/app.yaml": f"""
                        resources:
                          - file: /etc/app.conf
                            content: "port = {port}\\n"
                            validate_cmd: "grep -qx 'port = [0-9]*' %"
                            notify: exec:restart-app
                          - exec: restart-app
                            command: "echo restarted >> $RECONCILER_ROOT/var/log/restarts"
                            refreshonly: true
                        """,
                },
                name=f"repo-{port}",
            )

        cli.run("apply", repo("80"), "--node", "n1", check=2)
        restarts = cli.root / "var/log/restarts"
        assert restarts.read_text() == "restarted\n"
        done = cli.run("apply", repo("eighty"), "--node", "n1", check=4)
        assert "error: /etc/app.conf: validate_cmd exited 1; not replaced" in done.stdout
        assert (cli.root / "etc/app.conf").read_text() == "port = 80\n"
        assert restarts.read_text() == "restarted\n"  # no refresh from a failed change

    def test_failure_skips_dependents_only(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = make_repo(self.REPO)
        done = cli.run("apply", repo, "--node", "n1", "--format", "json", check=6)
        results = {r["id"]: r for r in json.loads(done.stdout)["resources"]}
        assert results["exec:broken"]["status"] == "failed"
        assert "about to fail" in results["exec:broken"]["error"]
        assert results["file:/etc/needs-broken"]["status"] == "skipped"
        assert "DependencyFailed" in results["file:/etc/needs-broken"]["error"]
        assert results["file:/etc/independent"]["status"] == "changed"
        assert not (cli.root / "etc/needs-broken").exists()
        assert (cli.root / "etc/independent").read_text() == "y\n"
        cli.run("apply", repo, "--node", "n1", check=4)  # failures only, nothing else to change

    def test_bad_repo_exits_1_naming_file_and_line(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {**self.REPO, "profiles/app.yaml": "resources:\n  - file: /etc/a\n    mode: [\n"}
        )
        before = tree_hash(cli.root)
        done = cli.run("apply", repo, "--node", "n1", check=1)
        assert re.search(r"profiles/app.yaml:[34]: invalid YAML", done.stderr)
        assert tree_hash(cli.root) == before

    def test_a_broken_revision_applies_nothing(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **self.REPO,
                "profiles/app.yaml": "resources:\n  - file: /etc/good\n    content: ok\n"
                "  - file: /etc/bad\n    content: '{{ undefined_name }}'\n",
            }
        )
        done = cli.run("apply", repo, "--node", "n1", check=1)
        assert (
            "profiles/app.yaml:5, key 'content': expression error: 'undefined_name' is undefined"
            in done.stderr
        )
        assert not (cli.root / "etc/good").exists()

    def test_lock_held_exits_1(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = make_repo(self.REPO)
        cli.state.mkdir()
        with open(cli.state / "run.lock", "w") as lock:
            lock.write("4242\n")
            lock.flush()
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = cli.run("apply", repo, "--node", "n1", check=1)
        assert "another run holds the lock" in done.stderr
        assert "pid 4242" in done.stderr


class TestGitSources:
    def test_ref_reads_the_commit_not_the_working_tree(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: app\n",
                "roles/app.yaml": "profiles: [app]\n",
                "profiles/app.yaml": "resources:\n  - file: /etc/version\n    content: committed\n",
            }
        )
        sha = commit_all(repo)
        (repo / "profiles/app.yaml").write_text(
            "resources:\n  - file: /etc/version\n    content: uncommitted\n"
        )
        done = cli.run("apply", repo, "--ref", "main", "--node", "n1", "--format", "json", check=2)
        assert (cli.root / "etc/version").read_text() == "committed"
        assert json.loads(done.stdout)["revision"] == sha
        assert json.loads(done.stdout)["branch"] == "main"
        cli.run("apply", repo, "--node", "n1", check=2)  # the working tree, for authors
        assert (cli.root / "etc/version").read_text() == "uncommitted"

    def test_url_is_fetched_into_a_mirror(
        self, cli: CLI, make_repo: Callable[..., Path], tmp_path: Path
    ) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: app\n",
                "roles/app.yaml": "profiles: [app]\n",
                "profiles/app.yaml": "resources:\n  - file: /etc/from-git\n    content: v1\n",
            }
        )
        commit_all(repo)
        bare = tmp_path / "remote.git"
        git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
        url = f"file://{bare}"
        cli.run("apply", url, "--node", "n1", check=2)
        assert (cli.root / "etc/from-git").read_text() == "v1"
        (repo / "profiles/app.yaml").write_text(
            "resources:\n  - file: /etc/from-git\n    content: v2\n"
        )
        commit_all(repo)
        git(repo, "push", "-q", str(bare), "main")
        cli.run("apply", url, "--node", "n1", check=2)
        assert (cli.root / "etc/from-git").read_text() == "v2"

    def test_hooks_and_submodules_never_run(
        self, cli: CLI, make_repo: Callable[..., Path], tmp_path: Path
    ) -> None:
        marker = tmp_path / "hook-ran"
        repo = make_repo(
            {
                "nodes.yaml": "default: app\n",
                "roles/app.yaml": "profiles: [app]\n",
                "profiles/app.yaml": "resources:\n  - file: /etc/x\n    content: x\n",
                ".gitmodules": '[submodule "evil"]\n\tpath = evil\n\turl = ext::sh -c touch% '
                + str(marker)
                + "\n",
            }
        )
        commit_all(repo)
        hook = repo / ".git/hooks/post-checkout"
        hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
        hook.chmod(0o755)
        cli.run("apply", repo, "--ref", "main", "--node", "n1", check=2)
        cli.run("apply", f"file://{repo}", "--node", "n1", check=0)
        assert not marker.exists()

    def test_forbidden_url_schemes(self, cli: CLI) -> None:
        for url in ("ext::sh -c touch% /tmp/pwned", "-u/tmp/x", "ftp://example.com/repo.git"):
            done = cli.run("apply", url, "--node", "n1", check=1)
            assert "not allowed" in done.stderr or "neither" in done.stderr


class TestPrune:
    def repo(
        self, make_repo: Callable[..., Path], files: list[str], prune: str = "prune: true\n"
    ) -> Path:
        resources = "".join(f"  - file: /etc/{f}\n    content: {f}\n" for f in files)
        return make_repo(
            {
                "reconciler.yaml": prune,
                "nodes.yaml": "default: app\n",
                "roles/app.yaml": "profiles: [app]\n",
                "profiles/app.yaml": "resources:\n" + resources,
            }
        )

    def test_removed_resource_is_pruned_and_backed_up(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = self.repo(make_repo, ["a", "b", "c"])
        cli.run("apply", repo, "--node", "n1", check=2)
        self.repo(make_repo, ["a", "b"])
        done = cli.run("apply", repo, "--node", "n1", "--format", "json", check=2)
        assert not (cli.root / "etc/c").exists()
        assert (cli.root / "etc/a").exists()
        assert any(
            r["id"] == "file:/etc/c" and r["status"] == "changed"
            for r in json.loads(done.stdout)["resources"]
        )
        assert '"path":"/etc/c"' in (cli.state / "backups/index.jsonl").read_text().replace(" ", "")

    def test_left_alone_without_prune(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = self.repo(make_repo, ["a", "b", "c"], prune="prune: false\n")
        cli.run("apply", repo, "--node", "n1", check=2)
        self.repo(make_repo, ["a", "b"], prune="prune: false\n")
        cli.run("apply", repo, "--node", "n1", check=0)
        assert (cli.root / "etc/c").exists()

    def test_mass_prune_is_refused(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = self.repo(make_repo, ["a", "b", "c"])
        cli.run("apply", repo, "--node", "n1", check=2)
        self.repo(make_repo, ["a"])
        done = cli.run("apply", repo, "--node", "n1", check=4)
        assert "MassPrune: refusing to prune 2 of 3" in done.stdout
        assert (cli.root / "etc/b").exists() and (cli.root / "etc/c").exists()
        self.repo(make_repo, ["a"], prune="prune: true\nallow_mass_prune: true\n")
        cli.run("apply", repo, "--node", "n1", check=2)
        assert not (cli.root / "etc/b").exists() and not (cli.root / "etc/c").exists()

    def test_empty_catalog_is_never_pruned(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = self.repo(make_repo, ["a"])
        cli.run("apply", repo, "--node", "n1", check=2)
        self.repo(make_repo, [])
        (repo / "profiles/app.yaml").write_text("resources: []\n")
        done = cli.run("apply", repo, "--node", "n1", check=4)
        assert "EmptyCatalog" in done.stdout
        assert (cli.root / "etc/a").exists()


class TestSensitive:
    def test_content_never_shown(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: app\n",
                "roles/app.yaml": "profiles: [app]\n",
                "profiles/app.yaml": "resources:\n  - file: /etc/secret\n    content: 'hunter2-old\\n'\n    sensitive: true\n",
            }
        )
        cli.run("apply", repo, "--node", "n1", check=2)
        (repo / "profiles/app.yaml").write_text(
            "resources:\n  - file: /etc/secret\n    content: 'hunter2-new\\n'\n    sensitive: true\n"
        )
        plan = cli.run("plan", repo, "--node", "n1", check=2)
        applied = cli.run("apply", repo, "--node", "n1", "--format", "json", check=2)
        reports = "".join(p.read_text() for p in (cli.state / "reports").glob("*.json"))
        for text in (plan.stdout, plan.stderr, applied.stdout, applied.stderr, reports):
            assert "hunter2" not in text
        assert "sha256:" in plan.stdout


class TestExplainAndFacts:
    def test_explain_names_level_file_and_line(self, cli: CLI, tmp_path: Path) -> None:
        repo = example_copy(tmp_path)
        sha = commit_all(repo)
        facts = str(facts_file(tmp_path))
        done = cli(
            "explain",
            "nginx.port",
            "--node",
            "web-1",
            "--repo",
            str(repo),
            "--ref",
            "main",
            "--facts",
            facts,
            check=0,
        )
        assert "nginx.port = 8081" in done.stdout
        assert (
            f"set by data level 'nodes/{{node}}.yaml': data/nodes/web-1.yaml:3 at {sha}"
            in done.stdout
        )
        done = cli(
            "explain",
            "nginx.port",
            "--node",
            "web-2",
            "--repo",
            str(repo),
            "--facts",
            facts,
            check=0,
        )
        assert "nginx.port = 8080" in done.stdout
        assert "data/roles/web.yaml:2" in done.stdout
        done = cli(
            "explain",
            "nginx.nope",
            "--node",
            "web-2",
            "--repo",
            str(repo),
            "--facts",
            facts,
            check=1,
        )
        assert "has no parameter 'nope'" in done.stderr

    def test_facts_command(self, cli: CLI, tmp_path: Path) -> None:
        extra = tmp_path / "extra.yaml"
        extra.write_text("datacenter: ams1\n")
        data = json.loads(
            cli("facts", "--format", "json", "--facts", str(extra), "--node", "n9", check=0).stdout
        )
        assert data["datacenter"] == "ams1"
        assert data["node"] == "n9"
        assert data["processors"]["count"] >= 1


class TestAccounts:
    def test_user_is_created_after_its_groups_under_the_root(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        etc = cli.root / "etc"
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (etc / "group").write_text("root:x:0:\n")
        (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
        (etc / "gshadow").write_text("root:*::\n")
        repo = make_repo(
            {
                "nodes.yaml": "default: app\n",
                "roles/app.yaml": "profiles: [app]\n",
                "profiles/app.yaml": """
                    resources:
                      - user: app
                        uid: 2001
                        gid: app
                        groups: [deploy]
                        home: /srv/app
                        shell: /bin/sh
                      - group: deploy
                      - group: app
                        gid: 2001
                    """,
            }
        )
        done = cli.run("apply", repo, "--node", "n1", "--format", "json", check=2)
        order = [r["id"] for r in json.loads(done.stdout)["resources"]]
        assert order.index("user:app") > order.index("group:app")
        assert order.index("user:app") > order.index("group:deploy")
        assert "app:x:2001:2001::/srv/app:/bin/sh" in (etc / "passwd").read_text()
        assert ":app\n" in (etc / "group").read_text()
        cli.run("apply", repo, "--node", "n1", check=0)


class TestStateDir:
    def test_a_state_dir_others_can_write_is_refused(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: app\n",
                "roles/app.yaml": "profiles: [app]\n",
                "profiles/app.yaml": "resources:\n  - file: /etc/x\n    content: x\n",
            }
        )
        cli.state.mkdir()
        cli.state.chmod(0o777)
        done = cli.run("apply", repo, "--node", "n1", check=1)
        assert f"{cli.state}: refusing a state directory owned by uid" in done.stderr
        assert "mode 0777" in done.stderr
        assert not (cli.root / "etc/x").exists()
        os.chown(cli.state, 4321, 4321)
        cli.state.chmod(0o700)
        done = cli.run("apply", repo, "--node", "n1", check=1)
        assert "owned by uid 4321" in done.stderr
        os.chown(cli.state, 0, 0)
        cli.run("apply", repo, "--node", "n1", check=2)
