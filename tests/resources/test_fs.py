from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from reconciler import fs as _fs
from reconciler.errors import PathEscape
from reconciler.fs import BackupStore, Root, atomic_write


class TestRoot:
    def test_joins_under_the_prefix(self, tmp_path: Path) -> None:
        assert Root(tmp_path).path("/etc/motd") == tmp_path / "etc/motd"

    @pytest.mark.parametrize("bad", ["etc/motd", "/etc/../../x", "/etc/\0x"])
    def test_refuses_paths_that_could_leave(self, tmp_path: Path, bad: str) -> None:
        with pytest.raises(PathEscape):
            Root(tmp_path).path(bad)

    def test_refuses_a_symlinked_parent_that_leaves(self, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.mkdir()
        root = tmp_path / "root"
        root.mkdir()
        (root / "etc").symlink_to(outside)
        with pytest.raises(PathEscape, match="through a symlink"):
            Root(root).path("/etc/passwd")

    def test_allows_a_symlink_that_stays_inside(self, tmp_path: Path) -> None:
        (tmp_path / "usr/lib").mkdir(parents=True)
        (tmp_path / "lib").symlink_to("usr/lib")
        assert Root(tmp_path).path("/lib/x") == tmp_path / "lib/x"


class TestAtomicWrite:
    def test_sets_mode_before_content_and_leaves_no_temporary(self, tmp_path: Path) -> None:
        target = tmp_path / "f"
        atomic_write(target, b"new\n", 0o640, None, None)
        assert target.read_bytes() == b"new\n"
        assert target.stat().st_mode & 0o7777 == 0o640
        assert [p.name for p in tmp_path.iterdir()] == ["f"]

    def test_a_failing_write_leaves_the_old_file_intact(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ENOSPC is injected at os.write: this machine has no small filesystem to fill."""
        target = tmp_path / "f"
        target.write_bytes(b"old content\n")

        def full(fd: int, data: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        with pytest.raises(OSError, match="No space"):
            atomic_write(target, b"new content\n", None, None, None)
        monkeypatch.undo()
        assert target.read_bytes() == b"old content\n"
        assert [p.name for p in tmp_path.iterdir()] == ["f"]

    def test_stray_temporaries_are_removed(self, tmp_path: Path) -> None:
        (tmp_path / f".f{_fs.TMP_MARK}123-0").write_text("half")
        (tmp_path / "keep").write_text("x")
        assert _fs.remove_stray_temporaries(tmp_path) == 1
        assert [p.name for p in tmp_path.iterdir()] == ["keep"]


class TestBackups:
    def test_restore_gives_identical_bytes_and_mode(self, tmp_path: Path) -> None:
        store = BackupStore(tmp_path / "state")
        original = tmp_path / "f"
        original.write_bytes(b"\x00binary\xffcontent")
        original.chmod(0o600)
        sha = store.save(original, "/etc/f")
        original.write_text("replaced")
        original.chmod(0o644)
        store.restore(sha, original)
        assert original.read_bytes() == b"\x00binary\xffcontent"
        assert original.stat().st_mode & 0o7777 == 0o600
        assert [e["sha256"] for e in store.entries("/etc/f")] == [sha]
        assert store.entries("/etc/other") == []

    def test_a_torn_last_index_line_is_ignored(self, tmp_path: Path) -> None:
        store = BackupStore(tmp_path / "state")
        f = tmp_path / "f"
        f.write_text("x")
        store.save(f, "/f")
        with open(store.index, "a") as index:
            index.write('{"time": "2026-')
        assert len(store.entries()) == 1
