"""A state directory or a local repository prepared by someone else: git never runs a program
of theirs, and nothing in them is used before they are checked. The real CLI, real git, a real
`git daemon` on 127.0.0.1, and files owned by the unprivileged user ``nobody``."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest

from tests.conftest import CLI, commit_all, git, write_tree
from tests.daemon.conftest import GitServer

NOBODY = pwd.getpwnam("nobody")
COMMANDS = ("apply", "plan")
BASE = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": "resources:\n  - file: /etc/x\n    content: x\n",
}


def chown_tree(top: Path, uid: int, gid: int) -> None:
    os.chown(top, uid, gid)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.chown(Path(dirpath) / name, uid, gid, follow_symlinks=False)


def plant_command(git_dir: Path, elsewhere: Path, marker: Path) -> None:
    """An alternate object store and a command git runs to list its refs on a fetch, a
    file-system monitor, and a proxy command for git:// URLs."""
    git(elsewhere.parent, "init", "-q", "--bare", str(elsewhere))
    (git_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
    (git_dir / "objects" / "info" / "alternates").write_text(f"{elsewhere / 'objects'}\n")
    git(git_dir, "config", "core.alternateRefsCommand", f"touch {marker}; echo")
    git(git_dir, "config", "core.fsmonitor", f"touch {marker}; echo")
    proxy = git_dir / "proxy.sh"  # would carry git:// through a program
    proxy.write_text(f'#!/bin/sh\ntouch {marker}\nexec nc 127.0.0.1 "$2"\n')
    proxy.chmod(0o755)
    git(git_dir, "config", "core.gitProxy", str(proxy))


def planted_mirror(state: Path, tmp_path: Path, marker: Path) -> Path:
    """The state directory a previous run would have left, with a mirror someone tampered."""
    mirror = state / "source" / "mirror.git"
    mirror.parent.mkdir(parents=True)
    state.chmod(0o700)
    git(tmp_path, "init", "-q", "--bare", str(mirror))
    plant_command(mirror, tmp_path / "elsewhere.git", marker)
    return mirror


class TestPlantedMirror:
    @pytest.mark.parametrize("command", COMMANDS)
    def test_a_mirror_of_another_user_is_refused_before_git_runs_there(
        self, cli: CLI, server: GitServer, tmp_path: Path, command: str
    ) -> None:
        marker = tmp_path / "ran"
        mirror = planted_mirror(cli.state, tmp_path, marker)
        chown_tree(mirror, NOBODY.pw_uid, NOBODY.pw_gid)
        done = cli.run(command, server.url, "--ref", "production", "--node", "n1", check=1)
        assert "refusing" in done.stderr and "owned by uid 65534" in done.stderr
        assert str(mirror) in done.stderr
        assert "Traceback" not in done.stderr
        assert not marker.exists()
        assert not (cli.root / "etc/x").exists()

    @pytest.mark.parametrize("command", COMMANDS)
    def test_a_state_dir_of_another_user_is_refused_with_a_local_repo_too(
        self, cli: CLI, tmp_path: Path, command: str
    ) -> None:
        marker = tmp_path / "ran"
        repo = write_tree(tmp_path / "repo", BASE)
        commit_all(repo)
        planted_mirror(cli.state, tmp_path, marker)
        chown_tree(cli.state, NOBODY.pw_uid, NOBODY.pw_gid)
        done = cli.run(command, repo, "--ref", "main", "--node", "n1", check=1)
        assert f"{cli.state}: refusing a state directory owned by uid 65534" in done.stderr
        assert not marker.exists()

    def test_a_group_writable_cache_is_refused(self, cli: CLI, tmp_path: Path) -> None:
        repo = write_tree(tmp_path / "repo", BASE)
        cache = cli.state / "cache" / "yaml"
        cache.mkdir(parents=True)
        cli.state.chmod(0o700)
        cache.chmod(0o775)
        done = cli.run("plan", repo, "--node", "n1", check=1)
        assert f"{cache}: refusing a state directory owned by uid 0 with mode 0775" in done.stderr

    @pytest.mark.parametrize("command", COMMANDS)
    def test_settings_that_run_programs_are_pinned_in_our_own_mirror(
        self, cli: CLI, server: GitServer, tmp_path: Path, command: str
    ) -> None:
        """Even in a mirror of ours (an older version's, restored from a backup), a command in
        its configuration is never run: every such setting is pinned on git's command line."""
        marker = tmp_path / "ran"
        cli.run("apply", server.url, "--ref", "production", "--node", "n1", check=2)
        mirror = cli.state / "source" / "mirror.git"
        plant_command(mirror, tmp_path / "elsewhere.git", marker)
        server.push({"profiles/app.yaml": BASE["profiles/app.yaml"].replace("x\n", "y\n")})
        cli.run(command, server.url, "--ref", "production", "--node", "n1", check=2)
        assert not marker.exists()


class TestLocalRepository:
    @pytest.mark.parametrize("command", COMMANDS)
    def test_a_repository_of_another_user_is_refused(
        self, cli: CLI, tmp_path: Path, command: str
    ) -> None:
        marker = tmp_path / "ran"
        repo = write_tree(tmp_path / "repo", BASE)
        commit_all(repo)
        plant_command(repo / ".git", tmp_path / "elsewhere.git", marker)
        chown_tree(repo, NOBODY.pw_uid, NOBODY.pw_gid)
        done = cli.run(command, repo, "--ref", "main", "--node", "n1", check=1)
        assert f"{repo / '.git'}: the repository belongs to uid 65534" in done.stderr
        assert not marker.exists()
        assert not (cli.root / "etc/x").exists()

    @pytest.mark.parametrize("ref", ["../../secret", "refs/heads/../../../secret"])
    def test_a_head_pointing_outside_the_repository_is_refused(
        self, cli: CLI, tmp_path: Path, ref: str
    ) -> None:
        (tmp_path / "secret").write_text("0123456789abcdef-not-yours\n")
        repo = write_tree(tmp_path / "repo", BASE)
        commit_all(repo)
        (repo / ".git" / "HEAD").write_text(f"ref: {ref}\n")
        done = cli.run("plan", repo, "--node", "n1", "--format", "json", check=1)
        assert "points outside the repository" in done.stderr
        assert "not-yours" not in done.stdout + done.stderr

    def test_a_head_that_is_a_link_out_is_refused(self, cli: CLI, tmp_path: Path) -> None:
        (tmp_path / "secret").write_text("0123456789abcdef-not-yours\n")
        repo = write_tree(tmp_path / "repo", BASE)
        commit_all(repo)
        (repo / ".git" / "HEAD").unlink()
        (repo / ".git" / "HEAD").symlink_to(tmp_path / "secret")
        for args in ((), ("--ref", "main")):
            done = cli.run("plan", repo, "--node", "n1", *args, check=1)
            assert "HEAD points outside the repository" in done.stderr
            assert "not-yours" not in done.stdout + done.stderr
        shutil.rmtree(repo)
