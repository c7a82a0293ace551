"""The CI examples (reconciler/examples/ci/): their steps run as the CI would run them, on a real
git repository with two commits and a module served by a real git daemon on 127.0.0.1, so that
the examples cannot drift from the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.review.render import MARKDOWN_LIMIT
from tests.conftest import commit_all, write_tree
from tests.daemon.conftest import GitServer
from tests.e2e.test_diff import BASE, NODES
from tests.e2e.test_modules import module_url, new_bare, serve_module

CI = Path(__file__).resolve().parents[2] / "reconciler" / "examples" / "ci"
WORKTREE = Path(__file__).resolve().parents[2]


# Each node's memory: db-1 has less than the others.
MEMORY = {"web-1": 4096, "web-2": 4096, "web-3": 4096, "db-1": 1024}


# A module the web role uses, pinned in modules.yaml.
MODULE = {
    "profiles/banner.yaml": """
        resources:
          - file: /etc/banner
            content: "from the module\\n"
    """,
}


@pytest.fixture
def module(server: GitServer, tmp_path: Path) -> tuple[GitServer, dict[str, str]]:
    """The module served by git daemon, and the control repo's files that pin and use it."""
    new_bare(server, "common")
    sha = serve_module(server, tmp_path, MODULE, "common")
    files = {
        "modules.yaml": f"modules:\n  common:\n    url: {module_url(server, 'common')}\n"
        f"    commit: {sha}\n",
        "roles/web.yaml": "profiles: [motd, site, common/banner]\n",
    }
    return server, files


def control_repo(
    tmp_path: Path, change: dict[str, str], module: dict[str, str]
) -> tuple[Path, str, str]:
    """A control repo with a module, its nodes' facts in review-facts/ (as `reconciler facts
    --all --out` writes them, with their `_reconciler` key), and a change: (repo, base, head)."""
    facts = {
        f"review-facts/{node}.yaml": (
            "_reconciler: {taken: '2026-12-01T03:00:00Z', withheld: [], dropped: []}\n"
            f"node: {node}\nos: {{family: Debian}}\nmemory_mb: {MEMORY[node]}\n"
        )
        for node in NODES
    }
    repo = write_tree(tmp_path / "repo", {**BASE, **module, **facts})
    base = commit_all(repo, "base")
    write_tree(repo, change)
    head = commit_all(repo, "change")
    return repo, base, head


def path_with_reconciler(tmp_path: Path) -> str:
    """PATH with a ``reconciler`` command, as `pip install` puts it there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    command = bin_dir / "reconciler"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m reconciler.cli "$@"\n')
    command.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def environment(tmp_path: Path, extra: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": path_with_reconciler(tmp_path),
        "PYTHONPATH": str(WORKTREE),
        "HOME": str(tmp_path),
        **extra,
    }


MOTD_CHANGED = {"profiles/motd.yaml": BASE["profiles/motd.yaml"].replace("hello", "hello there")}
MOTD_BROKEN = {"profiles/motd.yaml": BASE["profiles/motd.yaml"].replace("params.message", "x.y")}
# An assertion only db-1's facts fail: a host's facts would not find it.
DB_ASSERTS = {
    "roles/db.yaml": """profiles: [motd]
assert:
  - that: "facts.memory_mb >= 2048"
    message: "{{ node }} has {{ facts.memory_mb }} MiB, a database needs 2048"
""",
}


class TestGitHubActions:
    @pytest.fixture(autouse=True)
    def _with_module(self, module: tuple[GitServer, dict[str, str]]) -> None:
        self.server, self.module = module

    def workflow(self) -> dict[Any, Any]:
        loaded: dict[Any, Any] = yaml.safe_load((CI / "github-actions.yml").read_text())
        return loaded

    def run_review(
        self, tmp_path: Path, change: dict[str, str]
    ) -> tuple[Path, int, dict[str, str]]:
        repo, code, outputs, _ = self.run_review_step(tmp_path, change)
        return repo, code, outputs

    def run_review_step(
        self,
        tmp_path: Path,
        change: dict[str, str],
        made: tuple[Path, str, str] | None = None,
    ) -> tuple[Path, int, dict[str, str], subprocess.CompletedProcess[str]]:
        """Run the job's step that runs reconciler, with the job's and the step's environment
        (its ${{ }} expressions given the pull request's commits), in GitHub's bash; return
        the repo, the step's exit code, what it wrote to GITHUB_OUTPUT and what it printed.
        ``made``: the repo and commits of an earlier run, run again in the same workspace."""
        repo, base, head = made or control_repo(tmp_path, change, self.module)
        job = self.workflow()["jobs"]["review"]
        expressions = {
            "github.event.pull_request.base.sha": base,
            "github.event.pull_request.head.sha": head,
        }
        output = tmp_path / "github-output"
        output.write_text("")
        steps = [s for s in job["steps"] if re.search(r"^\s*reconciler ", s.get("run", ""), re.M)]
        assert len(steps) == 1
        for step in steps:
            script = step["run"]
            env = {**job.get("env", {}), "GITHUB_OUTPUT": str(output)}
            for key, value in step.get("env", {}).items():
                found = re.fullmatch(r"\$\{\{\s*(\S+)\s*\}\}", str(value))
                env[key] = expressions[found.group(1)] if found else str(value)
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
                cwd=repo,
                env=environment(tmp_path, env),
                capture_output=True,
                text=True,
                timeout=300,
            )
        outputs = dict(
            line.split("=", 1) for line in output.read_text().splitlines() if "=" in line
        )
        return repo, done.returncode, outputs, done

    def test_the_review_step_writes_the_markdown_the_next_step_posts(self, tmp_path: Path) -> None:
        repo, code, outputs, done = self.run_review_step(tmp_path, MOTD_CHANGED)
        assert (code, outputs) == (0, {"status": "2"}), done.stderr
        # validate compiled every node of review-facts/ with its own facts
        assert "4 of 4 node(s) compile with their facts (1 of role db, 3 of role web)" in (
            done.stdout
        )
        posted = (repo / "reconciler-diff.md").read_text()
        assert "+from the module" not in posted  # the module's file is the same at both
        assert posted.startswith("### reconciler diff ")
        assert "**4** of 4 node(s) change" in posted
        assert "+hello there" in posted
        assert len(posted) <= MARKDOWN_LIMIT
        steps = self.workflow()["jobs"]["review"]["steps"]
        post = next(s for s in steps if s.get("name") == "Post the diff")
        assert post["run"] == 'gh pr comment "$PR" --body-file reconciler-diff.md'
        # posted for every status but 1 (could not run), even when the review step failed
        assert post["if"] == (
            '${{ !cancelled() && contains(fromJSON(\'["0", "2", "4"]\'), '
            "steps.review.outputs.status) }}"
        )
        assert self.workflow()["permissions"]["pull-requests"] == "write"

    def test_a_catalog_failing_at_the_head_fails_the_job_after_posting(
        self, tmp_path: Path
    ) -> None:
        repo, code, outputs = self.run_review(tmp_path, MOTD_BROKEN)
        assert (code, outputs) == (1, {"status": "4"})  # validate fails the step
        assert "**4** fail(s) to compile" in (repo / "reconciler-diff.md").read_text()
        steps = self.workflow()["jobs"]["review"]["steps"]
        names = [s.get("name") for s in steps]
        fail = steps[names.index("Fail when a catalog does not compile")]
        assert fail["if"] == "steps.review.outputs.status == '4'"
        assert names.index("Post the diff") < names.index("Fail when a catalog does not compile")

    def test_a_node_whose_own_facts_fail_an_assertion_is_named(self, tmp_path: Path) -> None:
        repo, code, outputs, done = self.run_review_step(tmp_path, DB_ASSERTS)
        assert (code, outputs) == (1, {"status": "4"})
        assert "1 of 4 node(s) fail to compile with their facts" in done.stderr
        assert (
            "  node db-1 (role db):\n    roles/db.yaml:3, key 'assert': assertion failed: "
            "db-1 has 1024 MiB, a database needs 2048"
        ) in done.stderr
        assert "web-" not in done.stderr
        posted = (repo / "reconciler-diff.md").read_text()
        assert "**1** fail(s) to compile" in posted


class TestGitLabCI:
    @pytest.fixture(autouse=True)
    def _with_module(self, module: tuple[GitServer, dict[str, str]]) -> None:
        self.server, self.module = module

    def job(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
        return dict(loaded["reconciler-review"])

    def run_script(self, tmp_path: Path, change: dict[str, str]) -> tuple[Path, int]:
        repo, code, _ = self.run_script_output(tmp_path, change)
        return repo, code

    def run_script_output(
        self,
        tmp_path: Path,
        change: dict[str, str],
        made: tuple[Path, str, str] | None = None,
    ) -> tuple[Path, int, subprocess.CompletedProcess[str]]:
        """The job's script as the runner runs it (one shell, stopping at the first failing
        line), with the merge request's variables, up to the line that posts the note; then
        the lines after it. ``made``: the repo and commits of an earlier run, run again."""
        repo, base, head = made or control_repo(tmp_path, change, self.module)
        job = self.job()
        script: list[str] = job["script"]
        post = next(i for i, line in enumerate(script) if line.startswith("curl "))
        shell = "\n".join([*script[:post], 'echo "posting $status"', *script[post + 1 :]])
        variables = {
            **{k: str(v) for k, v in job["variables"].items()},
            "CI_MERGE_REQUEST_DIFF_BASE_SHA": base,
            "CI_COMMIT_SHA": head,
        }
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", shell],
            cwd=repo,
            env=environment(tmp_path, variables),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "posting" in done.stdout, (done.stdout, done.stderr)
        return repo, done.returncode, done

    def test_the_script_writes_the_markdown_it_posts(self, tmp_path: Path) -> None:
        repo, code = self.run_script(tmp_path, MOTD_CHANGED)
        assert code == 0
        posted = (repo / "reconciler-diff.md").read_text()
        assert "**4** of 4 node(s) change" in posted
        assert "+hello there" in posted
        job = self.job()
        assert job["artifacts"]["paths"] == ["reconciler-diff.md"]
        assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
        curl = next(line for line in job["script"] if line.startswith("curl "))
        assert '"body@reconciler-diff.md"' in curl
        assert "/merge_requests/$CI_MERGE_REQUEST_IID/notes" in curl

    def test_a_catalog_failing_at_the_head_fails_the_job_after_posting(
        self, tmp_path: Path
    ) -> None:
        repo, code = self.run_script(tmp_path, MOTD_BROKEN)
        assert code == 1
        assert "**4** fail(s) to compile" in (repo / "reconciler-diff.md").read_text()

    def test_a_node_whose_own_facts_fail_an_assertion_fails_the_job_after_posting(
        self, tmp_path: Path
    ) -> None:
        _, code, done = self.run_script_output(tmp_path, DB_ASSERTS)
        assert code == 1
        assert "posting 4" in done.stdout
        assert "node db-1 (role db):" in done.stderr
        assert "roles/db.yaml:3, key 'assert': assertion failed: db-1 has 1024 MiB" in done.stderr


def commands(script: str) -> list[str]:
    """Each `reconciler ...` command of a script, its continued lines joined."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("reconciler ")]


def cached_state(repo: Path, state_dir: str) -> Path:
    """The module's mirror in the state directory the example names, in the job's workspace."""
    mirror = repo / state_dir / "modules" / "common" / "mirror.git"
    assert mirror.is_dir(), sorted(p.name for p in repo.iterdir())
    return mirror


def test_github_keeps_the_modules_in_the_workspace_and_caches_them(
    tmp_path: Path, module: tuple[GitServer, dict[str, str]]
) -> None:
    """Both commands fetch the module into STATE_DIR in the workspace, which actions/cache keeps:
    with the state restored, the next run needs no module server."""
    review = TestGitHubActions()
    review.server, review.module = module
    repo, code, outputs, done = review.run_review_step(tmp_path, MOTD_CHANGED)
    assert (code, outputs) == (0, {"status": "2"}), done.stderr
    job = review.workflow()["jobs"]["review"]
    state_dir = job["env"]["STATE_DIR"]
    cached_state(repo, state_dir)
    # every command reads and writes the mirrors there (a default of /var/lib/reconciler
    # would be written on the runner, and never cached)
    review_step = next(s for s in job["steps"] if s.get("id") == "review")
    found = commands(review_step["run"])
    assert [c.split()[1] for c in found] == ["diff", "validate"]
    assert all('--state-dir "$STATE_DIR"' in c for c in found), found
    cache = next(s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/cache@"))
    assert cache["with"]["path"] == state_dir
    assert "hashFiles('modules.yaml')" in cache["with"]["key"]
    review.server.stop()
    base, head = (git_rev(repo, "HEAD~1"), git_rev(repo, "HEAD"))
    _, code, outputs, done = review.run_review_step(tmp_path, {}, (repo, base, head))
    assert (code, outputs) == (0, {"status": "2"}), done.stderr
    assert "4 of 4 node(s) compile with their facts" in done.stdout


def test_gitlab_keeps_the_modules_in_the_workspace_and_caches_them(
    tmp_path: Path, module: tuple[GitServer, dict[str, str]]
) -> None:
    review = TestGitLabCI()
    review.server, review.module = module
    repo, code, done = review.run_script_output(tmp_path, MOTD_CHANGED)
    assert code == 0, done.stderr
    job = review.job()
    state_dir = job["variables"]["STATE_DIR"]
    cached_state(repo, state_dir)
    assert [p.rstrip("/") for p in job["cache"]["paths"]] == [state_dir]
    found = commands("\n".join(job["script"]))
    assert [c.split()[1] for c in found] == ["diff", "validate"]
    assert all('--state-dir "$STATE_DIR"' in c for c in found), found
    review.server.stop()
    base, head = (git_rev(repo, "HEAD~1"), git_rev(repo, "HEAD"))
    _, code, done = review.run_script_output(tmp_path, {}, (repo, base, head))
    assert code == 0, done.stderr
    assert "posting 2" in done.stdout


def git_rev(repo: Path, ref: str) -> str:
    from tests.conftest import git

    return git(repo, "rev-parse", ref)
