"""Something other than a file where a file is desired, something other than a link where a
symlink is.

What stands there (a symlink, a fifo; a directory only with ``force``) is moved into
``<state>/backups/displaced/``, never deleted; a regular file in a symlink's way goes to the
backup store. Without ``force`` a directory fails the resource and nothing changes.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.fs import BackupStore, Root
from reconciler.resources.base import Context
from reconciler.resources.file import File
from reconciler.resources.runner import Runner
from reconciler.resources.symlink import Symlink
from tests.conftest import seed_root, tree_hash
from tests.resources.conftest import make
from tests.resources.mounts import tmpfs


def displaced(ctx: Context) -> list[Path]:
    area = ctx.backups.base / "displaced"
    return sorted(area.iterdir()) if area.exists() else []


def test_a_symlink_in_the_way_is_moved_aside_not_followed_without_force(ctx: Context) -> None:
    etc = ctx.root.prefix / "etc"
    (etc / "real.conf").write_text("the link's target\n")
    (etc / "app.conf").symlink_to("real.conf")
    before = tree_hash(ctx.root.prefix)
    planned = make(File, "/etc/app.conf", content="new\n").check_apply(ctx, False)
    assert [(c.property, c.before, c.after) for c in planned] == [("ensure", "symlink", "file")]
    assert tree_hash(ctx.root.prefix) == before and displaced(ctx) == []

    make(File, "/etc/app.conf", content="new\n").check_apply(ctx, True)
    assert not (etc / "app.conf").is_symlink()
    assert (etc / "app.conf").read_text() == "new\n"
    assert (etc / "real.conf").read_text() == "the link's target\n"  # not written through
    [aside] = displaced(ctx)
    assert aside.is_symlink() and os.readlink(aside) == "real.conf"
    assert make(File, "/etc/app.conf", content="new\n").check_apply(ctx, False) == []


def test_a_directory_in_the_way_is_moved_aside_whole(ctx: Context) -> None:
    etc = ctx.root.prefix / "etc"
    (etc / "thing/deep").mkdir(parents=True)
    (etc / "thing/deep/data").write_text("keep me")
    (etc / "thing/link").symlink_to("/etc/passwd")
    with pytest.raises(ResourceError, match="is a directory; set force: true"):
        make(File, "/etc/thing", content="x").check_apply(ctx, True)
    make(File, "/etc/thing", content="x", force=True).check_apply(ctx, True)
    assert (etc / "thing").read_text() == "x"
    [aside] = displaced(ctx)
    assert (aside / "deep/data").read_text() == "keep me"
    assert os.readlink(aside / "link") == "/etc/passwd"


def test_a_fifo_in_the_way_is_moved_aside_without_force(ctx: Context) -> None:
    fifo = ctx.root.prefix / "etc/pipe"
    os.mkfifo(fifo)
    make(File, "/etc/pipe", content="x").check_apply(ctx, True)
    assert fifo.read_text() == "x"
    [aside] = displaced(ctx)
    assert stat.S_ISFIFO(aside.lstat().st_mode)


def test_absent_moves_a_fifo_aside_and_a_directory_only_with_force(ctx: Context) -> None:
    os.mkfifo(ctx.root.prefix / "etc/pipe")
    make(File, "/etc/pipe", ensure="absent").check_apply(ctx, True)
    assert not os.path.lexists(ctx.root.prefix / "etc/pipe")
    [fifo] = displaced(ctx)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    fifo.unlink()
    (ctx.root.prefix / "etc/gone").mkdir()
    (ctx.root.prefix / "etc/gone/f").write_text("f")
    with pytest.raises(ResourceError, match="set force: true to remove it"):
        make(File, "/etc/gone", ensure="absent").check_apply(ctx, True)
    make(File, "/etc/gone", ensure="absent", force=True).check_apply(ctx, True)
    assert not (ctx.root.prefix / "etc/gone").exists()
    [aside] = displaced(ctx)
    assert (aside / "f").read_text() == "f"


def test_across_filesystems_it_is_copied_aside_then_removed(tmp_path: Path) -> None:
    """The state directory on another filesystem (a tmpfs): a rename cannot move it there."""
    root = seed_root(tmp_path / "root")
    (root / "etc/thing/sub").mkdir(parents=True)
    (root / "etc/thing/sub/data").write_bytes(b"\x00keep\xff")
    (root / "etc/thing/out").symlink_to(tmp_path)  # copied as a symlink, never followed
    (root / "etc/link").symlink_to("thing")
    with tmpfs(tmp_path / "state") as state:
        ctx = Context(root=Root(root), state_dir=state, backups=BackupStore(state), runner=Runner())
        make(File, "/etc/thing", content="x", force=True).check_apply(ctx, True)
        make(File, "/etc/link", content="y", force=True).check_apply(ctx, True)
        assert (root / "etc/thing").read_text() == "x"
        assert (root / "etc/link").read_text() == "y"
        thing, link = sorted(displaced(ctx), key=lambda p: p.name.endswith("link"))
        assert (thing / "sub/data").read_bytes() == b"\x00keep\xff"
        assert (thing / "out").is_symlink() and os.readlink(thing / "out") == str(tmp_path)
        assert link.is_symlink() and os.readlink(link) == "thing"


def test_what_was_moved_aside_goes_with_the_backup_retention(ctx: Context) -> None:
    """Kept for keep_days (30) like a backup, then removed by the prune of an apply run."""
    in_the_way = ctx.root.prefix / "etc/conf.d"
    (in_the_way / "sub").mkdir(parents=True)
    (in_the_way / "sub" / "x").write_text("x")
    os.symlink("/etc/passwd", in_the_way / "link")
    make(File, "/etc/conf.d", content="now a file\n", force=True).check_apply(ctx, apply=True)
    [aside] = displaced(ctx)
    ctx.backups.prune()
    assert displaced(ctx) == [aside]
    ctx.backups.prune(now=time.time() + 31 * 86400)
    assert displaced(ctx) == []
    assert os.path.exists("/etc/passwd")  # the symlink inside went, not what it pointed to


class TestSymlinkInTheWay:
    def test_a_directory_needs_force_then_is_moved_aside_whole(self, ctx: Context) -> None:
        etc = ctx.root.prefix / "etc"
        (etc / "current/deep").mkdir(parents=True)
        (etc / "current/deep/data").write_text("keep me")
        before = tree_hash(ctx.root.prefix)
        with pytest.raises(ResourceError, match="/etc/current is a directory; set force: true"):
            make(Symlink, "/etc/current", target="releases/2").check_apply(ctx, True)
        planned = make(Symlink, "/etc/current", target="releases/2", force=True)
        changes = planned.check_apply(ctx, False)
        assert [(c.property, c.before, c.after) for c in changes] == [
            ("ensure", "directory", "symlink")
        ]
        assert tree_hash(ctx.root.prefix) == before and displaced(ctx) == []
        make(Symlink, "/etc/current", target="releases/2", force=True).check_apply(ctx, True)
        assert os.readlink(etc / "current") == "releases/2"
        [aside] = displaced(ctx)
        assert (aside / "deep/data").read_text() == "keep me"

    def test_a_fifo_is_moved_aside_without_force(self, ctx: Context) -> None:
        os.mkfifo(ctx.root.prefix / "etc/pipe")
        make(Symlink, "/etc/pipe", target="elsewhere").check_apply(ctx, True)
        assert os.readlink(ctx.root.prefix / "etc/pipe") == "elsewhere"
        [aside] = displaced(ctx)
        assert stat.S_ISFIFO(aside.lstat().st_mode)

    def test_a_file_past_the_size_limit_is_neither_backed_up_nor_replaced(
        self, ctx: Context
    ) -> None:
        big = ctx.root.prefix / "etc/big"
        big.write_bytes(b"x" * 2048)
        ctx.max_file_size = 1024
        with pytest.raises(ResourceError, match=r"/etc/big: the file in the way is 2048 bytes"):
            make(Symlink, "/etc/big", target="x").check_apply(ctx, True)
        assert big.read_bytes() == b"x" * 2048 and ctx.backups.entries() == []
