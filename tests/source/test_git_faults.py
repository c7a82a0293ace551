"""Faults of git sources: stalled remotes, submodules, hooks, damaged mirrors, missing refs and
oversized repositories. Real git, real `git daemon` and TCP servers on 127.0.0.1, the real CLI."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from reconciler.errors import ModelError, SignatureError, SourceError
from reconciler.source import MAX_FILE_BYTES, MAX_FILES, DirectorySnapshot, GitSnapshot
from reconciler.source.git import MAX_GIT_OUTPUT, FetchTimeout, Mirror, TooLarge, git_process
from reconciler.source.verify import Verify, verify_commit
from tests.conftest import CLI, commit_all, git, write_tree
from tests.daemon.conftest import GitServer, wait_for
from tests.source.servers import (
    Recorder,
    StallProxy,
    blob,
    commit_tree,
    git_in,
    mktree,
    processes_mentioning,
    tree_of,
)

BASE = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": "resources:\n  - file: /etc/x\n    content: x\n",
}
ELSEWHERE_SHA = "0123456789abcdef0123456789abcdef01234567"  # a commit no repository here holds


@pytest.fixture
def proxy(server: GitServer) -> Iterator[StallProxy]:
    p = StallProxy(server.port)
    yield p
    p.close()


def daemon_config(tmp_path: Path, cli: CLI, url: str, timeout: str = "2s") -> str:
    """A configuration for ``apply --config``: the remote, its branch and the fetch timeout."""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"node: n1\nroot: {cli.root}\nstate_dir: {cli.state}\nfacts_dirs: []\n"
        f"source:\n  url: {url}\n  branch: production\n  timeout: {timeout}\n"
    )
    return str(path)


def leftovers(source: Path) -> list[str]:
    """What a fetch must not leave behind: temporary clones, partial packs, lock files."""
    found = [p.name for p in source.glob("*.tmp")]
    mirror = source / "mirror.git"
    found += [str(p) for p in mirror.glob("objects/pack/tmp_*")]
    found += [str(p) for p in mirror.glob("objects/??/tmp_obj_*")]
    found += [str(p) for p in mirror.rglob("*.lock")]
    return found


@contextlib.contextmanager
def mirror_lock(source: Path) -> Iterator[None]:
    """Hold the mirror's lock: no fetch is under way meanwhile, and none starts."""
    with open(source / "mirror.lock", "a") as lock:
        wait_for(lambda: _try_lock(lock), 30, "the mirror's lock")
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def motd(cli: CLI) -> str:
    path = cli.root / "etc/motd"
    return path.read_text() if path.exists() else ""


def many_files(version: str) -> dict[str, str]:
    """A change that makes a pack of a few hundred objects (kept as a pack, by index-pack)."""
    files = {f"files/data/{n}.txt": f"{version} {n}\n" * 50 for n in range(150)}
    files["profiles/app.yaml"] = (
        "params: {motd: 'version 1'}\n".replace("version 1", version)
        + 'resources:\n  - file: /etc/motd\n    content: "{{ params.motd }}\\n"\n'
    )
    return files


class TestStalledRemote:
    """A2: a remote that accepts the connection and then stalls."""

    def test_a_timeout_kills_everything_git_started(self, tmp_path: Path) -> None:
        # git runs a helper (ssh, git-remote-https, an alias here) that outlives a killed git
        # unless its whole process group goes.
        alias = f"alias.stall=!sh -c 'sleep 300; : {tmp_path}'"
        with pytest.raises(FetchTimeout, match="timed out after 1s"):
            git_process(["stall"], None, 1, config=[alias])
        wait_for(lambda: not processes_mentioning(tmp_path), 10, "no process left")

    def test_a_remote_that_never_answers_is_cut_off_at_the_timeout(
        self, cli: CLI, tmp_path: Path, proxy: StallProxy
    ) -> None:
        config = daemon_config(tmp_path, cli, proxy.url("control.git"))
        proxy.mode = "silent"
        done = cli("apply", "--config", config, check=1)
        assert "did not finish within source.timeout (2s); aborted" in done.stderr
        assert proxy.accepted >= 1
        assert not leftovers(cli.state / "source")
        assert not (cli.state / "source" / "mirror.git").exists()
        wait_for(lambda: not processes_mentioning(cli.state), 10, "no git process left")
        proxy.mode = "pass"  # the next attempt goes through
        cli("apply", "--config", config, check=2)
        assert motd(cli) == "version 1\n"

    def test_a_first_clone_stalled_mid_pack_leaves_no_directory(
        self, cli: CLI, tmp_path: Path, proxy: StallProxy
    ) -> None:
        config = daemon_config(tmp_path, cli, proxy.url("control.git"))
        proxy.mode = "mid-pack"
        done = cli("apply", "--config", config, check=1)
        assert proxy.stalled.is_set()
        assert "git fetch did not finish within source.timeout (2s)" in done.stderr
        assert sorted(p.name for p in (cli.state / "source").iterdir()) == ["mirror.lock"]
        wait_for(lambda: not processes_mentioning(cli.state), 10, "no git process left")
        proxy.mode = "pass"
        cli("apply", "--config", config, check=2)
        assert motd(cli) == "version 1\n"

    def test_a_fetch_stalled_mid_pack_is_cut_off_and_cleaned_up(
        self, cli: CLI, tmp_path: Path, server: GitServer, proxy: StallProxy
    ) -> None:
        config = daemon_config(tmp_path, cli, proxy.url("control.git"))
        cli("apply", "--config", config, check=2)
        server.push(many_files("version 2"))
        proxy.mode = "mid-pack"
        done = cli("apply", "--config", config, check=1)
        assert proxy.stalled.is_set()
        assert "git fetch did not finish within source.timeout (2s)" in done.stderr
        assert motd(cli) == "version 1\n"  # nothing of the new revision applied
        assert not leftovers(cli.state / "source")
        wait_for(lambda: not processes_mentioning(cli.state), 10, "no git process left")
        with open(cli.state / "run.lock", "a") as lock:  # the run lock is free
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
        proxy.mode = "pass"
        cli("apply", "--config", config, check=2)
        assert motd(cli) == "version 2\n"


def fake_ssh(tmp_path: Path, before: str) -> Path:
    """An ``ssh`` for ``GIT_SSH_COMMAND`` that runs ``before`` (a shell snippet), then serves the
    command git asks the remote host for (its last argument) from this machine."""
    script = tmp_path / "bin" / "ssh"  # named ssh: git passes it OpenSSH's options
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\n{before}\nwhile [ $# -gt 1 ]; do shift; done\nexec sh -c "$1"\n')
    script.chmod(0o755)
    return script


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its reaper has ended too)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def end_pids(pids: Path) -> None:
    """End the processes whose pids a test's helpers wrote, one a line, to ``pids``."""
    if pids.exists():
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


class TestGitHelpers:
    """git runs through the one process runner: what its helpers (ssh here) start is bounded
    in time like any command's."""

    def test_a_stalling_helper_and_its_child_holding_the_output_end_at_the_timeout(
        self, tmp_path: Path, remote: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, bare = remote
        pids = tmp_path / "pids"
        # The helper starts a child that keeps git's output open, then never answers.
        ssh = fake_ssh(
            tmp_path, f"echo $$ >> {pids}\nsleep 300 &\necho $! >> {pids}\nexec sleep 301"
        )
        monkeypatch.setenv("GIT_SSH_COMMAND", str(ssh))
        mirror = Mirror(f"ssh://git.example{bare}", tmp_path / "state" / "source", 1)
        started = time.monotonic()
        try:
            with pytest.raises(FetchTimeout, match=r"did not finish within source.timeout \(1s\)"):
                mirror.fetch("main")
            assert time.monotonic() - started < 1 + 5
            helper, child = (int(pid) for pid in pids.read_text().split())
            wait_for(lambda: gone(helper) and gone(child), 2, "the helper and its child ended")
        finally:
            end_pids(pids)
        assert not leftovers(mirror.directory)

    def test_a_process_a_helper_leaves_holding_stderr_does_not_hold_up_the_fetch(
        self, tmp_path: Path, remote: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _, bare = remote
        pids = tmp_path / "pids"
        # Left behind in a session of its own, with git's stderr, as an ssh connection master
        # can be: outside git's process group, so it is neither killed nor waited for.
        ssh = fake_ssh(tmp_path, f"setsid sleep 60 </dev/null >/dev/null &\necho $! >> {pids}")
        monkeypatch.setenv("GIT_SSH_COMMAND", str(ssh))
        mirror = Mirror(f"ssh://git.example{bare}", tmp_path / "state" / "source", 30)
        try:
            started = time.monotonic()
            commit, branch = mirror.fetch("main")
            elapsed = time.monotonic() - started
        finally:
            end_pids(pids)
        assert (commit, branch) == (git(bare, "rev-parse", "main"), "main")
        assert mirror.has_commit(commit)
        assert elapsed < 10, f"the fetch took {elapsed:.1f}s"
        assert len(pids.read_text().split()) >= 2  # ls-remote and fetch went through the helper

    def test_a_command_whose_output_passes_the_cap_fails_instead_of_being_cut(
        self, tmp_path: Path, remote: tuple[Path, Path]
    ) -> None:
        _, bare = remote
        # A commit object larger than git's output cap: verify reads the commit whole.
        tree = git(bare, "rev-parse", "main^{tree}")
        who = "A <a@example.com> 0 +0000"
        body = f"tree {tree}\nauthor {who}\ncommitter {who}\n\n".encode()
        huge = git_in(
            bare, body + b"x" * MAX_GIT_OUTPUT, "hash-object", "-t", "commit", "-w", "--stdin"
        )
        with pytest.raises(SignatureError) as caught:
            verify_commit(bare, huge, Verify("ssh", allowed_signers=tmp_path / "signers"))
        assert f"git cat-file printed more than {MAX_GIT_OUTPUT} bytes" in str(caught.value)
        assert caught.value.why == "unverifiable"


def submodule_repo(tmp_path: Path, marker: Path, recorder: Recorder) -> Path:
    """A repository whose .gitmodules would run a program or contact another host, if anything
    initialised its submodules: a name that climbs out of .git/modules, a URL that is an option,
    a transport helper, an ``update = !command``, a host of its own."""
    repo = tmp_path / "submodules"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    gitmodules = (
        '[submodule "../../../../../../modules/evil"]\n'
        "\tpath = evil1\n"
        f"\turl = git://127.0.0.1:{recorder.port}/evil.git\n"
        '[submodule "dash"]\n'
        "\tpath = evil2\n"
        f"\turl = --upload-pack=touch {marker};false\n"
        '[submodule "ext"]\n'
        "\tpath = evil3\n"
        f"\turl = ext::sh -c touch% {marker}\n"
        "\tupdate = !touch " + str(marker) + "\n"
    )
    files: dict[str, tuple[str, bytes]] = {
        path: ("100644", content.encode()) for path, content in BASE.items()
    }
    files[".gitmodules"] = ("100644", gitmodules.encode())
    for name in ("evil1", "evil2", "evil3"):
        files[name] = ("160000", ELSEWHERE_SHA.encode())
    commit_tree(repo, tree_of(repo, files))
    return repo


class TestSubmodules:
    """A7: .gitmodules never makes anything initialise, fetch or contact anything."""

    def test_submodules_are_never_initialised_nor_fetched(self, cli: CLI, tmp_path: Path) -> None:
        marker = tmp_path / "submodule-ran"
        recorder = Recorder()
        try:
            repo = submodule_repo(tmp_path, marker, recorder)
            bare = tmp_path / "submodules.git"
            git(tmp_path, "clone", "-q", "--bare", str(repo), str(bare))
            first = cli.run("apply", repo, "--ref", "main", "--node", "n1", check=2)
            second = cli.run("apply", f"file://{bare}", "--node", "n1", check=0)
            assert (cli.root / "etc/x").read_text() == "x"
            assert not marker.exists()
            assert recorder.accepted == 0
            mirror = cli.state / "source" / "mirror.git"
            assert mirror.is_dir() and not (mirror / "modules").exists()
            assert not list(tmp_path.rglob("evil*"))
            for done in (first, second):
                assert done.stderr.lower().count("submodule") <= 1
        finally:
            recorder.close()


HOOK = "#!/bin/sh\ntouch {marker}\n"


def dotgit_files(marker: Path) -> dict[str, tuple[str, bytes]]:
    """Canary hooks under ``.git``, case variants of it and a nested ``.git``, and a
    configuration that names them, as tree entries."""
    hook = HOOK.format(marker=marker).encode()
    files = {
        f"{where}/hooks/{name}": ("100755", hook)
        for where in (".git", ".GIT", ".Git", "files/sub/.git")
        for name in ("post-checkout", "post-merge", "reference-transaction")
    }
    files[".Git/config"] = (
        "100644",
        f"[core]\n\thooksPath = .Git/hooks\n\tfsmonitor = touch {marker}\n".encode(),
    )
    return files


def hook_repo(tmp_path: Path, marker: Path) -> Path:
    """A repository set to get a hook run by whatever checks it out, with a canary hook that
    touches ``marker``:

    - ``main``: hooks under ``files/``, a symlink ``a`` to ``.git`` beside a submodule at
      ``A/modules/x`` (the shape of CVE-2024-32002 on a case-insensitive file system);
    - ``dotgit``: hooks at ``.git/hooks``, ``.GIT/hooks``, ``.Git/hooks`` and
      ``files/sub/.git/hooks`` as tree entries, and a ``.Git/config`` naming them (git's index
      refuses such paths; ``git mktree`` writes them);
    - the repository's own ``.git``: live hooks, and a configuration that would run programs.
    """
    repo = tmp_path / "hooks"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    hook = HOOK.format(marker=marker).encode()
    base: dict[str, tuple[str, bytes]] = {p: ("100644", c.encode()) for p, c in BASE.items()}
    main = dict(base)
    main["files/sub/hooks/post-checkout"] = ("100755", hook)
    main["a"] = ("120000", b".git")
    main["A/modules/x"] = ("160000", ELSEWHERE_SHA.encode())
    main[".gitmodules"] = ("100644", b'[submodule "x"]\n\tpath = A/modules/x\n\turl = ./x\n')
    commit_tree(repo, tree_of(repo, main))
    commit_tree(repo, tree_of(repo, {**base, **dotgit_files(marker)}), branch="dotgit")
    for name in ("post-checkout", "reference-transaction", "post-index-change", "pre-auto-gc"):
        path = repo / ".git" / "hooks" / name
        path.write_text(HOOK.format(marker=marker))
        path.chmod(0o755)
    git(repo, "config", "core.fsmonitor", f"touch {marker}")
    git(repo, "config", "core.hooksPath", str(repo / ".git" / "hooks"))
    return repo


class TestHooks:
    """A8: a crafted tree never gets a hook run."""

    def test_the_canary_hook_is_live(self, tmp_path: Path) -> None:
        marker = tmp_path / "hook-ran"
        repo = hook_repo(tmp_path, marker)
        hook = tmp_path / "post-checkout"
        hook.write_bytes(
            subprocess.run(
                ["git", "-C", str(repo), "cat-file", "blob", "dotgit:.GIT/hooks/post-checkout"],
                capture_output=True,
                check=True,
            ).stdout
        )
        hook.chmod(0o755)
        subprocess.run([str(hook)], check=True)
        assert marker.exists()  # so that its absence below means that no hook ran

    def test_no_hook_runs_from_a_local_repo_or_a_mirror(self, cli: CLI, tmp_path: Path) -> None:
        marker = tmp_path / "hook-ran"
        repo = hook_repo(tmp_path, marker)
        bare = tmp_path / "hooks.git"
        git(tmp_path, "clone", "-q", "--bare", "--no-local", str(repo), str(bare))
        cli.run("apply", repo, "--ref", "main", "--node", "n1", check=2)
        cli.run("apply", f"file://{bare}", "--ref", "main", "--node", "n1", check=0)
        for source in (str(repo), f"file://{bare}"):
            done = cli.run("apply", source, "--ref", "dotgit", "--node", "n1", check=1)
            assert "the commit's tree is refused" in done.stderr and ".GIT" in done.stderr
        (cli.root / "etc/x").unlink()
        cli.run("apply", f"file://{bare}", "--ref", "main", "--node", "n1", check=2)
        assert (cli.root / "etc/x").read_text() == "x"
        assert not marker.exists()
        assert not [p for p in cli.root.rglob("*") if p.name.casefold() in (".git", "hooks")]

    def test_git_directories_are_never_read(self, tmp_path: Path) -> None:
        marker = tmp_path / "hook-ran"
        repo = hook_repo(tmp_path, marker)
        with pytest.raises(ModelError, match=r"'\.GIT' is inside a \.git directory|aliases Git"):
            GitSnapshot(repo / ".git", "dotgit", "dotgit", "crafted")
        snapshot = GitSnapshot(repo / ".git", "main", "main", "crafted")
        try:
            assert "files/sub/hooks/post-checkout" in snapshot.files()
            with pytest.raises(FileNotFoundError):
                snapshot.read("a/config")  # through the symlink to .git
        finally:
            snapshot.close()
        tree = tmp_path / "tree"
        write_tree(tree, {**BASE, "files/sub/.GIT/config": "[core]\n", "files/ok": "ok\n"})
        directory = DirectorySnapshot(tree)
        assert directory.files("files") == ["files/ok"]
        with pytest.raises(ModelError, match=r"inside a \.git directory"):
            directory.read("files/sub/.GIT/config")
        assert not marker.exists()


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """A work tree and the bare repository it pushes to."""
    work = write_tree(tmp_path / "work", BASE)
    commit_all(work, "first")
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    return work, bare


def loose(git_dir: Path, sha: str) -> Path:
    return git_dir / "objects" / sha[:2] / sha[2:]


def lose_object(git_dir: Path, sha: str) -> bytes:
    """Delete an object from a repository (unpacking its packs first); its loose file's bytes."""
    for pack in list(git_dir.glob("objects/pack/*.pack")):
        data = pack.read_bytes()
        for path in pack.parent.glob(pack.stem + ".*"):
            path.unlink()
        git_in(git_dir, data, "unpack-objects", "-q")
    path = loose(git_dir, sha)
    content = path.read_bytes()
    path.unlink()
    return content


def damage(kind: str, git_dir: Path, branch: str = "main") -> None:
    if kind == "truncated pack":
        git(git_dir, "repack", "-adq")
        (pack,) = git_dir.glob("objects/pack/*.pack")
        size = pack.stat().st_size
        pack.chmod(0o644)
        os.truncate(pack, size // 2)
    elif kind == "missing object":
        lose_object(git_dir, git(git_dir, "rev-parse", f"{branch}:nodes.yaml"))  # in all commits
    elif kind == "garbage in HEAD":
        (git_dir / "HEAD").write_bytes(b"\x00\xff not a ref\n")
    else:
        raise AssertionError(kind)


DAMAGE = ("truncated pack", "missing object", "garbage in HEAD")


class TestDamagedMirror:
    """A11: a damaged mirror is replaced by a fresh clone, checked before it takes its place."""

    @pytest.mark.parametrize("moved", [False, True], ids=["same head", "new head"])
    @pytest.mark.parametrize("kind", DAMAGE)
    def test_replaced_by_a_checked_fresh_clone(
        self, tmp_path: Path, remote: tuple[Path, Path], kind: str, moved: bool
    ) -> None:
        work, bare = remote
        mirror = Mirror(f"file://{bare}", tmp_path / "state" / "source", 30)
        first, _ = mirror.fetch("main")
        (mirror.git_dir / "this-is-the-old-mirror").write_text("")
        damage(kind, mirror.git_dir)
        assert not mirror.has_commit(first)
        expected = BASE["profiles/app.yaml"]
        if moved:
            expected = expected.replace("content: x", "content: y")
            write_tree(work, {"profiles/app.yaml": expected})
            commit_all(work, "second")
            git(work, "push", "-q", str(bare), "main")
        head, branch = mirror.fetch("main")
        assert head == git(bare, "rev-parse", "main") and branch == "main"
        assert not (mirror.git_dir / "this-is-the-old-mirror").exists()
        assert mirror.has_commit(head)
        snapshot = GitSnapshot(mirror.git_dir, head, branch, "fresh")
        try:
            assert snapshot.read("profiles/app.yaml").decode() == expected
        finally:
            snapshot.close()
        assert sorted(p.name for p in mirror.directory.iterdir()) == ["mirror.git", "mirror.lock"]
        done = subprocess.run(
            ["git", "--git-dir", str(mirror.git_dir), "fsck", "--no-dangling"],
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"},
        )
        assert done.returncode == 0, done.stderr

    def test_a_failed_fresh_clone_leaves_the_mirror_as_it_was(
        self, tmp_path: Path, remote: tuple[Path, Path]
    ) -> None:
        _, bare = remote
        mirror = Mirror(f"file://{bare}", tmp_path / "state" / "source", 30)
        mirror.fetch("main")
        (mirror.git_dir / "this-is-the-old-mirror").write_text("")
        damage("missing object", mirror.git_dir)
        damage("missing object", bare)  # the remote is broken too: it cannot send that object
        with pytest.raises(SourceError, match="and a fresh clone failed too"):
            mirror.fetch("main")
        assert (mirror.git_dir / "this-is-the-old-mirror").exists()
        assert sorted(p.name for p in mirror.directory.iterdir()) == ["mirror.git", "mirror.lock"]

    def test_a_damaged_mirror_fails_the_snapshot_not_the_run(
        self, tmp_path: Path, remote: tuple[Path, Path]
    ) -> None:
        _, bare = remote
        mirror = Mirror(f"file://{bare}", tmp_path / "state" / "source", 30)
        head, branch = mirror.fetch("main")
        damage("missing object", mirror.git_dir)
        with pytest.raises(SourceError, match="cannot be read whole"):
            GitSnapshot(mirror.git_dir, head, branch, "damaged")

    def test_leftovers_of_a_killed_fetch_are_removed_before_the_next(
        self, tmp_path: Path, remote: tuple[Path, Path]
    ) -> None:
        _, bare = remote
        mirror = Mirror(f"file://{bare}", tmp_path / "state" / "source", 30)
        mirror.fetch("main")
        (mirror.directory / "clone-abc123.tmp" / "objects").mkdir(parents=True)
        (mirror.directory / "old-abc123.tmp").mkdir()
        mirror.fetch("main")
        assert sorted(p.name for p in mirror.directory.iterdir()) == ["mirror.git", "mirror.lock"]


class TestMissingRefs:
    """A12: a missing branch or an empty repository is a clear error, never a crash."""

    def test_empty_repository(self, cli: CLI, tmp_path: Path) -> None:
        bare = tmp_path / "empty.git"
        git(tmp_path, "init", "-q", "--bare", str(bare))
        done = cli.run("apply", f"file://{bare}", "--node", "n1", check=1)
        assert "empty repository" in done.stderr and "Traceback" not in done.stderr
        done = cli.run("apply", f"file://{bare}", "--ref", "main", "--node", "n1", check=1)
        assert "empty repository (no branch 'main')" in done.stderr
        done = cli.run("apply", bare, "--node", "n1", check=1)  # a local bare repository
        assert "empty repository" in done.stderr and "Traceback" not in done.stderr
        assert not list((cli.state / "source").glob("*.tmp"))

    def test_missing_branch(self, cli: CLI, tmp_path: Path, remote: tuple[Path, Path]) -> None:
        work, bare = remote
        done = cli.run("apply", f"file://{bare}", "--ref", "nope", "--node", "n1", check=1)
        assert done.stderr.startswith(f"reconciler: FetchFailed: file://{bare}: ref not found")
        assert "ref not found: branch 'nope' (the remote has 'main')" in done.stderr
        done = cli.run("apply", work, "--ref", "nope", "--node", "n1", check=1)
        assert "ref not found: 'nope'" in done.stderr
        assert "Traceback" not in done.stderr
        assert not (cli.root / "etc/x").exists()

    def test_missing_branch_names_a_few_of_the_others(
        self, tmp_path: Path, remote: tuple[Path, Path]
    ) -> None:
        work, bare = remote
        for n in range(8):
            git(work, "push", "-q", str(bare), f"main:refs/heads/b{n}")
        mirror = Mirror(f"file://{bare}", tmp_path / "source", 30)
        with pytest.raises(SourceError) as caught:
            mirror.remote_head("nope")
        message = str(caught.value)
        assert message.endswith(", ...)") and "ref not found: branch 'nope'" in message
        assert len(re.findall(r"'b\d'|'main'", message)) == 5


def run_measured(argv: list[str]) -> tuple[int, str, int]:
    """Run a command; its exit status, standard error and peak resident memory in bytes."""
    with open(os.devnull, "wb") as devnull:
        proc = subprocess.Popen(argv, stdout=devnull, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss * 1024


class TestSizeCaps:
    """A13: a file above the size cap, or a tree with too many entries, stops the loader."""

    def test_a_file_above_the_cap_is_refused_before_it_is_read(
        self, cli: CLI, tmp_path: Path
    ) -> None:
        profile = "resources:\n  - file: /etc/big\n    source: big\n"
        repo = write_tree(
            tmp_path / "repo",
            {**BASE, "profiles/app.yaml": profile, "files/big": b"\0" * (MAX_FILE_BYTES + 1)},
        )
        commit_all(repo)
        message = f"files/big: file is larger than {MAX_FILE_BYTES} bytes"
        for args in (["--ref", "main"], []):  # the commit, then the working tree
            done = cli.run("apply", repo, *args, "--node", "n1", check=1)
            assert message in done.stderr
        assert not (cli.root / "etc/big").exists()

    def test_a_yaml_file_above_the_cap_is_refused(self, cli: CLI, tmp_path: Path) -> None:
        padding = b"# " + b"x" * MAX_FILE_BYTES + b"\n"
        repo = write_tree(
            tmp_path / "repo",
            {**BASE, "profiles/app.yaml": BASE["profiles/app.yaml"].encode() + padding},
        )
        commit_all(repo)
        done = cli.run("apply", repo, "--ref", "main", "--node", "n1", check=1)
        assert f"profiles/app.yaml: file is larger than {MAX_FILE_BYTES} bytes" in done.stderr

    def test_a_huge_tree_is_refused_with_bounded_memory(self, cli: CLI, tmp_path: Path) -> None:
        repo = tmp_path / "repo"
        git(tmp_path, "init", "-q", "-b", "main", str(repo))
        empty = blob(repo, b"")
        crowd = mktree(repo, [("100644", empty, f"f{n:06d}") for n in range(MAX_FILES + 1)])
        files = {p: ("100644", c.encode()) for p, c in BASE.items()}
        files["files"] = ("040000", crowd.encode())
        commit_tree(repo, tree_of(repo, files))
        code, err, peak = run_measured(
            [sys.executable, "-m", "reconciler.cli", "apply", f"--repo={repo}", "--ref", "main",
             "--node", "n1", "--root", str(cli.root), "--state-dir", str(cli.state)]
        )  # fmt: skip
        assert code == 1, err
        assert f"refused: it has more than {MAX_FILES} files and directories" in err
        assert peak < 200 * 1024 * 1024, f"peak resident memory {peak} bytes"

    def test_a_repository_larger_than_a_mirror_may_hold_is_not_fetched(
        self, tmp_path: Path, remote: tuple[Path, Path]
    ) -> None:
        work, bare = remote
        cap = 256 * 1024
        mirror = Mirror(f"file://{bare}", tmp_path / "state" / "source", 30, max_bytes=cap)
        first, _ = mirror.fetch("main")
        write_tree(work, {"files/big": os.urandom(4 * cap)})  # incompressible
        commit_all(work, "big")
        git(work, "push", "-q", str(bare), "main")
        with pytest.raises(TooLarge, match=f"larger than a mirror may hold \\({cap} bytes"):
            mirror.fetch("main")
        assert not leftovers(mirror.directory)
        snapshot = GitSnapshot(mirror.git_dir, first, "main", "the last good revision")
        try:
            assert snapshot.read("nodes.yaml") == BASE["nodes.yaml"].encode()
        finally:
            snapshot.close()
        fresh = Mirror(f"file://{bare}", tmp_path / "fresh" / "source", 30, max_bytes=cap)
        with pytest.raises(TooLarge):
            fresh.fetch("main")
        assert sorted(p.name for p in fresh.directory.iterdir()) == ["mirror.lock"]
