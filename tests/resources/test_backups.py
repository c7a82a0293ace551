"""The backup store: old content first, an exact restore, no change when the old
content cannot be kept, and retention.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from reconciler.errors import ReconcilerError, ResourceError
from reconciler.fs import TMP_MARK, BackupStore
from reconciler.reconcile import RunOptions, run
from reconciler.resources.base import Context
from reconciler.resources.directory import Directory
from reconciler.resources.file import File
from reconciler.resources.line import Line
from reconciler.resources.symlink import Symlink
from tests.conftest import seed_root, write_tree
from tests.resources.conftest import make
from tests.resources.mounts import tmpfs

DAY = 86400


def objects(store: BackupStore) -> set[str]:
    return {p.name for p in store.objects.rglob("*") if p.is_file()}


class TestRestore:
    def test_restore_reproduces_bytes_mode_and_owner(self, tmp_path: Path) -> None:
        store = BackupStore(tmp_path / "state")
        original = tmp_path / "f"
        original.write_bytes(b"\x00binary\xffcontent\n" * 100)
        original.chmod(0o640)
        owner = (1234, 4321) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
        os.chown(original, *owner)
        before = original.stat()
        sha = store.save(original, "/etc/f")
        original.write_text("replaced")
        original.chmod(0o666)
        if os.geteuid() == 0:
            os.chown(original, 0, 0)
        store.restore(sha, original)
        after = original.stat()
        assert original.read_bytes() == b"\x00binary\xffcontent\n" * 100
        assert (after.st_mode, after.st_uid, after.st_gid) == (
            before.st_mode,
            before.st_uid,
            before.st_gid,
        )

    def test_a_corrupted_object_is_refused(self, tmp_path: Path) -> None:
        store = BackupStore(tmp_path / "state")
        f = tmp_path / "f"
        f.write_text("good")
        sha = store.save(f, "/f")
        (store.objects / sha[:2] / sha).write_text("bad")
        with pytest.raises(ResourceError, match="corrupted"):
            store.restore(sha, f)
        assert f.read_text() == "good"


class TestBackupFailureAborts:
    """When the old content cannot be kept, it is not replaced or removed."""

    @pytest.fixture
    def broken(self, ctx: Context) -> Context:
        ctx.backups.base.mkdir(parents=True)
        ctx.backups.objects.write_text("a file where the objects directory should be")
        return ctx

    def test_file_replace_and_removal(self, broken: Context) -> None:
        conf = broken.root.prefix / "etc/conf"
        conf.write_text("precious\n")
        with pytest.raises(ResourceError, match="backup failed, not replaced"):
            make(File, "/etc/conf", content="new\n").check_apply(broken, True)
        with pytest.raises(ReconcilerError, match="backup failed, not removed"):
            make(File, "/etc/conf", ensure="absent").check_apply(broken, True)
        assert conf.read_text() == "precious\n"
        assert [p.name for p in conf.parent.iterdir() if TMP_MARK in p.name] == []

    def test_line_symlink_and_directory(self, broken: Context) -> None:
        root = broken.root.prefix
        (root / "etc/conf").write_text("a=1\n")
        (root / "srv/data").mkdir()
        (root / "srv/data/keep").write_text("keep\n")
        with pytest.raises(ResourceError, match="backup failed, not changed"):
            make(Line, "b=2", path="/etc/conf").check_apply(broken, True)
        with pytest.raises(ResourceError, match="backup failed, not replaced"):
            make(Symlink, "/etc/conf", target="x", force=True).check_apply(broken, True)
        with pytest.raises(ResourceError, match="backup failed, not removed"):
            make(Directory, "/srv/data", ensure="absent").check_apply(broken, True)
        assert (root / "etc/conf").read_text() == "a=1\n"
        assert (root / "srv/data/keep").read_text() == "keep\n"

    def test_a_full_backup_disk_fails_the_resource_and_keeps_the_file(self, tmp_path: Path) -> None:
        """A real 64 KiB tmpfs for the backups, filled: ENOSPC from the kernel."""
        root = seed_root(tmp_path / "root")
        state = tmp_path / "state"
        state.mkdir(mode=0o700)

        def repo(version: str) -> Path:
            return write_tree(
                tmp_path / f"repo-{version}",
                {
                    "nodes.yaml": "default: n\n",
                    "roles/n.yaml": "profiles: [p]\n",
                    "profiles/p.yaml": f"""
                        resources:
                          - file: /srv/big
                            content: "{version * 30000}"
                          - file: /srv/small
                            content: "{version}"
                    """,
                },
            )

        options = RunOptions(repo=str(repo("a")), node="n", root=root, state_dir=state)
        report, _ = run(options)
        assert not report.failed
        with tmpfs(state / "backups", "64k") as backups:
            (backups / "ballast").write_bytes(b"\0" * (48 * 1024))
            options.repo = str(repo("b"))
            report, _ = run(options)
            results = {r.id: r for r in report.resources}
            big = results["file:/srv/big"]
            assert big.status == "failed"
            assert big.error and "backup failed, not replaced" in big.error, big.error
            assert "No space left on device" in big.error
            assert results["file:/srv/small"].status == "changed"
        assert (root / "srv/big").read_text() == "a" * 30000
        assert (root / "srv/small").read_text() == "b"
        assert [p.name for p in (root / "srv").iterdir() if TMP_MARK in p.name] == []


class TestRetention:
    def test_keeps_the_newest_versions_of_each_path_and_everything_recent(
        self, tmp_path: Path
    ) -> None:
        store = BackupStore(tmp_path / "state", keep_versions=3, keep_days=30)
        f = tmp_path / "f"
        shas = []
        for i in range(6):
            f.write_text(f"v{i}")
            shas.append(store.save(f, "/etc/a"))
        f.write_text("v0")
        store.save(f, "/etc/b")  # the same content as /etc/a's oldest version
        with open(store.index, "a") as index:
            index.write('{"time": "2026-')  # a torn line
        assert store.prune() == 1  # everything is recent: only the torn line goes
        assert len(store.entries("/etc/a")) == 6

        assert store.prune(now=time.time() + 31 * DAY) == 3
        assert [e["sha256"] for e in store.entries("/etc/a")] == shas[3:]
        assert [e["sha256"] for e in store.entries("/etc/b")] == [shas[0]]
        assert objects(store) == {shas[0], *shas[3:]}  # v0 stays: /etc/b still refers to it

    def test_a_prune_with_nothing_new_leaves_the_index_alone(self, tmp_path: Path) -> None:
        store = BackupStore(tmp_path / "state", keep_versions=1, keep_days=0)
        f = tmp_path / "f"
        f.write_text("x")
        store.save(f, "/x")
        assert store.prune() == 0
        inode = store.index.stat().st_ino
        assert store.prune() == 0
        assert store.index.stat().st_ino == inode
        f.write_text("y")
        store.save(f, "/x")
        assert store.prune() == 1  # something new: considered at once
        assert len(store.entries("/x")) == 1

    def test_an_apply_run_prunes_and_a_plan_does_not(self, tmp_path: Path) -> None:
        root = seed_root(tmp_path / "root")
        state = tmp_path / "state"
        store = BackupStore(state)
        f = tmp_path / "f"
        for i in range(store.keep_versions + 5):
            f.write_text(f"old {i}")
            store.save(f, "/etc/old")
        lines = [json.loads(line) for line in store.index.read_text().splitlines()]
        for entry in lines:
            entry["time"] = "2000-01-01T00:00:00Z"
        store.index.write_text("".join(json.dumps(e) + "\n" for e in lines))
        repo = write_tree(
            tmp_path / "repo",
            {
                "nodes.yaml": "default: n\n",
                "roles/n.yaml": "profiles: [p]\n",
                "profiles/p.yaml": 'resources:\n  - file: /etc/motd\n    content: "hi\\n"\n',
            },
        )
        options = RunOptions(repo=str(repo), node="n", root=root, state_dir=state)
        run(options, plan=True)
        assert len(store.entries("/etc/old")) == store.keep_versions + 5
        run(options)
        assert len(store.entries("/etc/old")) == store.keep_versions
        assert len(objects(store)) == store.keep_versions
