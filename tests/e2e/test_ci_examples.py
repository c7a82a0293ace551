"""The CI examples (reconciler/examples/ci/): their steps run as the CI would run them, on a real
git repository with two commits, so that the examples cannot drift from the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from reconciler.review.render import MARKDOWN_LIMIT
from tests.conftest import commit_all, write_tree
from tests.e2e.test_diff import BASE, NODES

CI = Path(__file__).resolve().parents[2] / "reconciler" / "examples" / "ci"
WORKTREE = Path(__file__).resolve().parents[2]


# Each node's memory: db-1 has less than the others.
MEMORY = {"web-1": 4096, "web-2": 4096, "web-3": 4096, "db-1": 1024}


def control_repo(tmp_path: Path, change: dict[str, str]) -> tuple[Path, str, str]:
    """A control repo with its nodes' facts in review-facts/ (as `reconciler facts --all --out`
    writes them, with their `_reconciler` key), and a change: (repo, base, head)."""
    facts = {
        f"review-facts/{node}.yaml": (
            "_reconciler: {taken: '2026-12-01T03:00:00Z', withheld: [], dropped: []}\n"
            f"node: {node}\nos: {{family: Debian}}\nmemory_mb: {MEMORY[node]}\n"
        )
        for node in NODES
    }
    repo = write_tree(tmp_path / "repo", {**BASE, **facts})
    base = commit_all(repo, "base")
    write_tree(repo, change)
    head = commit_all(repo, "change")
    return repo, base, head


def path_with_reconciler(tmp_path: Path) -> str:
    """PATH with a ``reconciler`` command, as `pip install` puts it there."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
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
    def workflow(self) -> dict[Any, Any]:
        loaded: dict[Any, Any] = yaml.safe_load((CI / "github-actions.yml").read_text())
        return loaded

    def run_review(
        self, tmp_path: Path, change: dict[str, str]
    ) -> tuple[Path, int, dict[str, str]]:
        repo, code, outputs, _ = self.run_review_step(tmp_path, change)
        return repo, code, outputs

    def run_review_step(
        self, tmp_path: Path, change: dict[str, str]
    ) -> tuple[Path, int, dict[str, str], subprocess.CompletedProcess[str]]:
        """Run the job's step that runs reconciler, with the job's and the step's environment
        (its ${{ }} expressions given the pull request's commits), in GitHub's bash; return
        the repo, the step's exit code, what it wrote to GITHUB_OUTPUT and what it printed."""
        repo, base, head = control_repo(tmp_path, change)
        job = self.workflow()["jobs"]["review"]
        expressions = {
            "github.event.pull_request.base.sha": base,
            "github.event.pull_request.head.sha": head,
        }
        output = tmp_path / "github-output"
        output.touch()
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
    def job(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
        return dict(loaded["reconciler-review"])

    def run_script(self, tmp_path: Path, change: dict[str, str]) -> tuple[Path, int]:
        repo, code, _ = self.run_script_output(tmp_path, change)
        return repo, code

    def run_script_output(
        self, tmp_path: Path, change: dict[str, str]
    ) -> tuple[Path, int, subprocess.CompletedProcess[str]]:
        """The job's script as the runner runs it (one shell, stopping at the first failing
        line), with the merge request's variables, up to the line that posts the note; then
        the lines after it."""
        repo, base, head = control_repo(tmp_path, change)
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
