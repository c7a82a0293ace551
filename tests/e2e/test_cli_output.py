"""What the command line prints, as a user reads it: a command's output indented under its
error, the revision `status` shows, a closed pipe, and the defaults it says it used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import reconciler
from tests.conftest import CLI, commit_all

SOURCE = Path(reconciler.__file__).resolve().parents[1]  # the reconciler the tests run

FAILING_EXEC = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": """
        resources:
          - exec: broken
            command: "echo one; echo two; echo three; exit 3"
        """,
}
MOTD = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": 'resources:\n  - file: /etc/motd\n    content: "managed\\n"\n',
}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler.cli", *args]


def environment() -> dict[str, str]:
    """The CLI's environment wherever it runs from (another working directory)."""
    path = os.pathsep.join(p for p in (str(SOURCE), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "NO_COLOR": "1", "PYTHONPATH": path}


class TestFailedExecOutput:
    def test_apply_and_status_indent_the_output_under_the_error(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        done = cli.run("apply", make_repo(FAILING_EXEC), "--node", "n1", check=4)
        assert (
            "! exec:broken\n"
            "    error: exited 3 (expected [0]):\n"
            "      one\n"
            "      two\n"
            "      three\n"
            "Applied: 0 changed, 1 failed"
        ) in done.stdout
        status = cli("status", "--state-dir", str(cli.state), check=0).stdout
        assert (
            "  failed       exec:broken: exited 3 (expected [0]):\n"
            "      one\n      two\n      three\n"
        ) in status


class TestStatusRevision:
    def test_a_working_tree_is_named_without_a_branch_placeholder(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        cli.run("apply", make_repo(MOTD), "--node", "n1", check=2)
        status = cli("status", "--state-dir", str(cli.state), check=0).stdout
        assert "revision:  working tree\n" in status
        assert "(-)" not in status

    def test_a_git_revision_is_named_with_its_branch(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(MOTD)
        head = commit_all(repo)
        cli.run("apply", repo, "--ref", "main", "--node", "n1", check=2)
        status = cli("status", "--state-dir", str(cli.state), check=0).stdout
        assert f"revision:  {head} (main)\n" in status


class TestClosedPipe:
    def pipeline(self, cli: CLI, repo: Path, reader: str) -> list[subprocess.CompletedProcess[str]]:
        """`status`, `status --format json` and `plan`, each piped to ``reader`` by bash; the
        exit status of reconciler (not of the reader) as the return code."""
        shown = " ".join(command())
        state = f"--state-dir {cli.state}"
        done = []
        for line in (
            f"{shown} status {state}",
            f"{shown} status {state} --format json",
            f"{shown} plan --repo {repo} --node n1 --root {cli.root} {state}",
        ):
            done.append(
                subprocess.run(
                    ["bash", "-c", f"{line} | {reader}; exit ${{PIPESTATUS[0]}}"],
                    capture_output=True,
                    text=True,
                    env=environment(),
                    timeout=120,
                )
            )
        return done

    def test_a_reader_gone_before_the_output_ends_the_command_quietly(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        """`| true`: the reader has exited before reconciler writes, as `head` may have."""
        repo = make_repo(MOTD)
        cli.run("apply", repo, "--node", "n1", check=2)
        (cli.root / "etc/motd").write_text("by hand\n")
        for done in self.pipeline(cli, repo, "true"):
            assert done.stderr == "", done.stderr
            assert done.returncode == 141  # as SIGPIPE ends other tools

    def test_status_and_plan_piped_to_head(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = make_repo(MOTD)
        cli.run("apply", repo, "--node", "n1", check=2)
        (cli.root / "etc/motd").write_text("by hand\n")
        status, status_json, plan = self.pipeline(cli, repo, "head -1")
        assert status.stdout == "node:      n1 (role app)\n"
        assert status_json.stdout == "{\n"
        assert plan.stdout == "~ file:/etc/motd  (drift)\n"
        for done in (status, status_json, plan):
            assert done.stderr == "", done.stderr
            assert done.returncode in (0, 2, 141)  # 141 when the reader left first


class TestDefaultsSaid:
    def test_validate_without_repo_asks_for_one_instead_of_reading_the_current_directory(
        self, make_repo: Callable[..., Path]
    ) -> None:
        here = make_repo(MOTD)  # a valid repo, which validate used to read silently
        for args in (("validate",), ("explain", "app.motd", "--node", "n1")):
            done = subprocess.run(
                command(*args), cwd=here, capture_output=True, text=True, env=environment()
            )
            assert done.returncode == 1, done
            assert done.stderr == (
                "reconciler: no control repo: give --repo PATH|URL or --config FILE\n"
            )

    def test_explain_without_node_says_which_node_it_used(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo({**MOTD, "profiles/app.yaml": "params: {port: 80}\nresources: []\n"})
        this_host = json.loads(cli("facts", "--format", "json", check=0).stdout)["node"]
        done = cli("explain", "app.port", "--repo", str(repo), check=0)
        assert (
            f"reconciler: no --node given: explaining for this host, node {this_host}\n"
            == done.stderr
        )
        assert done.stdout.startswith(f"app.port = 80   (node {this_host})")
        done = cli("explain", "app.port", "--repo", str(repo), "--node", "n1", check=0)
        assert done.stderr == ""


class TestStatusAfterARunThatStoppedEarly:
    def test_status_says_why_and_shows_the_last_run_that_checked_resources(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(MOTD)
        cli.run("apply", repo, "--node", "n1", check=2)
        (repo / "profiles/app.yaml").write_text("resources: [\n")  # a broken revision
        cli.run("apply", repo, "--node", "n1", check=1)
        status = cli("status", "--state-dir", str(cli.state), check=0).stdout
        lines = status.splitlines()
        assert lines[0].endswith(": stopped before its resources"), status
        assert "profiles/app.yaml" in lines[1], status
        assert "the last run that checked resources:" in status
        assert "node:      n1 (role app)" in status
        assert "resources: total 1, in_sync 0, changed 1" in status
