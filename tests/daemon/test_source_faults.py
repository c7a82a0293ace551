"""The daemon against remotes that stall, break or hold hostile content, and a damaged mirror:
it stays up, keeps enforcing the last good revision, counts the failure and tries again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.source import MAX_FILES
from tests.conftest import commit_all, git, write_tree
from tests.daemon.conftest import REPO, Daemon, GitServer, wait_for
from tests.source.servers import (
    Recorder,
    StallProxy,
    blob,
    commit_tree,
    mktree,
    processes_mentioning,
    tree_of,
)
from tests.source.test_git_faults import (
    DAMAGE,
    damage,
    dotgit_files,
    leftovers,
    loose,
    lose_object,
    many_files,
    mirror_lock,
    submodule_repo,
)


def motd(d: Daemon) -> str:
    path = d.root / "etc/motd"
    return path.read_text() if path.exists() else ""


def errors(d: Daemon) -> float:
    return d.metric("reconciler_source_fetches_total", result="error")


def with_timeout(d: Daemon, timeout: str) -> None:
    d.config.write_text(d.config.read_text().replace("timeout: 5s", f"timeout: {timeout}"))


def heals(d: Daemon, content: str) -> None:
    """The last good revision is enforced: a tampered /etc/motd is put back."""
    (d.root / "etc/motd").write_text("tampered\n")
    wait_for(lambda: motd(d) == content, 30, "the last good revision enforced")


@pytest.fixture
def started(tmp_path: Path, server: GitServer) -> Iterator[Daemon]:
    d = Daemon(tmp_path, server.url)
    d.start()
    wait_for(d.ready, what="/readyz")
    yield d
    d.stop()
    d.notify.close()


class TestStalledRemote:
    """A2."""

    def test_a_stalled_fetch_is_cut_off_and_retried(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        proxy = StallProxy(server.port)
        d = Daemon(tmp_path, proxy.url("control.git"))
        with_timeout(d, "2s")
        try:
            d.start()
            wait_for(d.ready, what="/readyz")
            proxy.mode = "mid-pack"
            server.push(many_files("version 2"))
            wait_for(lambda: proxy.stalled.is_set() and errors(d) >= 1, 30, "a stalled fetch")
            assert "git fetch did not finish within source.timeout (2s)" in d.logs()
            assert "FetchFailed" in d.logs()
            assert motd(d) == "version 1\n"
            heals(d, "version 1\n")  # and so the run lock is free
            proxy.mode = "silent"  # now even ls-remote gets no answer
            failed = errors(d)
            wait_for(lambda: errors(d) >= failed + 1, 60, "a silent remote given up on")
            assert "git ls-remote did not finish within source.timeout (2s)" in d.logs()
            with mirror_lock(d.state / "source"):
                assert not leftovers(d.state / "source")
                assert not processes_mentioning(d.state / "source")
            assert d.get("/healthz")[0] == 200
            proxy.mode = "pass"
            wait_for(lambda: motd(d) == "version 2\n", 90, "applied once the remote answers")
        finally:
            d.stop()
            d.notify.close()
            proxy.close()


class TestDamagedMirror:
    """A11."""

    @pytest.mark.parametrize("kind", DAMAGE)
    def test_an_unreadable_last_good_revision_is_fetched_into_a_fresh_clone(
        self, started: Daemon, kind: str
    ) -> None:
        mirror = started.state / "source" / "mirror.git"
        with mirror_lock(started.state / "source"):
            (mirror / "this-is-the-old-mirror").write_text("")
            damage(kind, mirror, "production")
        heals(started, "version 1\n")
        assert not (mirror / "this-is-the-old-mirror").exists()
        assert "the last good revision is not in the mirror" in started.logs()
        assert git(mirror, "rev-parse", "production")  # a repository again

    def test_a_failed_fresh_clone_keeps_the_last_good_revision_enforced(
        self, started: Daemon, server: GitServer
    ) -> None:
        d = started
        bad = server.push({"profiles/app.yaml": "resources: [\n"}, "broken")
        wait_for(
            lambda: d.metric("reconciler_revisions_rejected_total", reason="parse") >= 1,
            what="the broken revision rejected",
        )
        source = d.state / "source"
        with mirror_lock(source):  # an object of the fetched commit is lost from the mirror
            lose_object(
                source / "mirror.git", git(server.bare, "rev-parse", f"{bad}:profiles/app.yaml")
            )
        # The next revision reaches the remote, which has lost one of its objects meanwhile:
        # it cannot send it, to the mirror or to a fresh clone.
        third_motd = REPO["profiles/app.yaml"].replace("version 1", "version 3")
        write_tree(server.work, {"profiles/app.yaml": third_motd})
        third = commit_all(server.work, "third")
        git(server.work, "push", "-q", str(server.bare), "HEAD:refs/staging/third")
        lost = git(server.bare, "rev-parse", f"{third}:profiles/app.yaml")
        saved = lose_object(server.bare, lost)
        failed = errors(d)
        git(server.bare, "update-ref", "refs/heads/production", third)
        wait_for(lambda: "and a fresh clone failed too" in d.logs(), 30, "the fresh clone failing")
        wait_for(lambda: errors(d) > failed, what="the failed fetch counted")
        with mirror_lock(source):
            assert sorted(p.name for p in source.iterdir()) == ["mirror.git", "mirror.lock"]
        heals(d, "version 1\n")
        assert d.get("/healthz")[0] == 200
        loose(server.bare, lost).write_bytes(saved)  # the remote is mended
        wait_for(lambda: motd(d) == "version 3\n", 90, "the next revision applied")


class TestMissingRefs:
    """A12."""

    def test_a_missing_branch_fails_the_fetch_until_it_appears(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        d = Daemon(tmp_path, server.url)
        d.config.write_text(d.config.read_text().replace("branch: production", "branch: staging"))
        try:
            d.start()
            wait_for(lambda: d.get("/healthz")[0] == 200, what="/healthz")
            wait_for(lambda: errors(d) >= 2, 30, "the fetch failing, and retried")
            assert "ref not found: branch 'staging' (the remote has 'production')" in d.logs()
            assert d.get("/healthz")[0] == 200 and not d.ready()
            git(server.work, "push", "-q", str(server.bare), "HEAD:refs/heads/staging")
            wait_for(lambda: motd(d) == "version 1\n", 60, "applied once the branch exists")
        finally:
            d.stop()
            d.notify.close()

    def test_an_empty_repository_fails_the_fetch_until_it_has_the_branch(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        empty = server.base / "empty.git"
        git(server.base, "init", "-q", "--bare", str(empty))
        d = Daemon(tmp_path, f"git://127.0.0.1:{server.port}/empty.git")
        try:
            d.start()
            wait_for(lambda: d.get("/healthz")[0] == 200, what="/healthz")
            wait_for(lambda: errors(d) >= 2, 30, "the fetch failing, and retried")
            assert "empty repository (no branch 'production')" in d.logs()
            assert d.get("/healthz")[0] == 200 and not d.ready()
            git(server.work, "push", "-q", str(empty), "HEAD:refs/heads/production")
            wait_for(lambda: motd(d) == "version 1\n", 60, "applied once the branch exists")
        finally:
            d.stop()
            d.notify.close()


class TestHostileContent:
    """A7, A8, A13: what a revision holds never runs, never reaches elsewhere, never grows the
    daemon without bound; a revision that cannot be read safely is rejected like a broken one."""

    def test_submodules_hooks_and_a_huge_tree(self, tmp_path: Path, server: GitServer) -> None:
        marker = tmp_path / "ran"
        recorder = Recorder()
        repo = submodule_repo(tmp_path, marker, recorder)
        crafted = server.base / "crafted.git"
        git(tmp_path, "clone", "-q", "--bare", str(repo), str(crafted))
        git(crafted, "branch", "-m", "main", "production")
        d = Daemon(tmp_path, f"git://127.0.0.1:{server.port}/crafted.git")
        try:
            d.start()
            wait_for(d.ready, what="/readyz")
            assert (d.root / "etc/x").read_text() == "x"
            mirror = d.state / "source" / "mirror.git"
            assert not (mirror / "modules").exists()

            def rejected(sha: str) -> str:
                return str(json.loads(d.get("/status")[1])["rejected"].get(sha, ""))

            # hooks as tree entries: .git, its case variants, a nested .git
            files = {
                path: ("100644", git(repo, "show", f"main:{path}").encode() + b"\n")
                for path in ("nodes.yaml", "roles/app.yaml", "profiles/app.yaml", ".gitmodules")
            }
            dotgit = commit_tree(repo, tree_of(repo, {**files, **dotgit_files(marker)}))
            git(repo, "push", "-q", str(crafted), "main:production")
            why = wait_for(lambda: rejected(dotgit), 30, "the .git tree rejected")
            assert "the commit's tree is refused" in why
            # a tree with more entries than the loader reads
            empty = blob(repo, b"")
            crowd = mktree(repo, [("100644", empty, f"f{n:06d}") for n in range(MAX_FILES + 1)])
            huge = commit_tree(repo, tree_of(repo, {**files, "files": ("040000", crowd.encode())}))
            git(repo, "push", "-q", str(crafted), "main:production")
            why = wait_for(lambda: rejected(huge), 60, "the huge tree rejected")
            assert f"more than {MAX_FILES} files and directories" in why
            wait_for(
                lambda: d.metric("reconciler_revisions_rejected_total", reason="parse") >= 2,
                what="both rejections counted",
            )
            (d.root / "etc/x").write_text("tampered")
            wait_for(lambda: (d.root / "etc/x").read_text() == "x", 30, "last good enforced")
            assert d.get("/healthz")[0] == 200
            assert not marker.exists()
            assert recorder.accepted == 0
        finally:
            d.stop()
            d.notify.close()
            recorder.close()
