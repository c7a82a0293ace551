from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.resources.base import Context
from reconciler.resources.file import File
from tests.conftest import tree_hash
from tests.resources.conftest import make


def root_of(ctx: Context) -> Path:
    return ctx.root.prefix


class TestFile:
    def test_create_then_in_sync(self, ctx: Context) -> None:
        f = make(File, "/etc/motd", content="hello\n", mode="0640")
        planned = f.check_apply(ctx, apply=False)
        assert [c.property for c in planned] == ["ensure", "content"]
        assert not (root_of(ctx) / "etc/motd").exists()
        f.check_apply(ctx, apply=True)
        assert (root_of(ctx) / "etc/motd").read_text() == "hello\n"
        assert (root_of(ctx) / "etc/motd").stat().st_mode & 0o7777 == 0o640
        assert f.check_apply(ctx, apply=False) == []

    def test_noop_changes_nothing(self, ctx: Context) -> None:
        (root_of(ctx) / "etc/motd").write_text("old\n")
        before = tree_hash(root_of(ctx))
        changes = make(File, "/etc/motd", content="new\n", mode="0600").check_apply(ctx, False)
        assert {c.property for c in changes} == {"content", "mode"}
        assert tree_hash(root_of(ctx)) == before

    def test_diff_and_digests_but_no_diff_when_sensitive(self, ctx: Context) -> None:
        (root_of(ctx) / "etc/conf").write_text("a=1\n")
        change = make(File, "/etc/conf", content="a=2\n").check_apply(ctx, False)[0]
        assert change.before and change.before.startswith("sha256:")
        assert change.diff and "-a=1" in change.diff and "+a=2" in change.diff
        secret = make(File, "/etc/conf", sensitive=True, content="a=2\n").check_apply(ctx, False)[0]
        assert secret.diff is None

    def test_old_content_is_backed_up_before_replace(self, ctx: Context) -> None:
        (root_of(ctx) / "etc/conf").write_text("precious\n")
        make(File, "/etc/conf", content="new\n").check_apply(ctx, True)
        entry = ctx.backups.entries("/etc/conf")[-1]
        stored = ctx.backups.objects / entry["sha256"][:2] / entry["sha256"]
        assert stored.read_text() == "precious\n"

    def test_fingerprint_skips_reads_but_sees_every_change(self, ctx: Context) -> None:
        f = make(File, "/etc/conf", content="abc\n")
        f.check_apply(ctx, True)
        assert "/etc/conf" in ctx.fingerprints
        path = root_of(ctx) / "etc/conf"
        st = path.stat()
        path.write_text("xyz\n")  # same size
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: ctime still moves
        fresh = make(File, "/etc/conf", content="abc\n")
        assert [c.property for c in fresh.check_apply(ctx, False)] == ["content"]

    def test_desired_digests_stay_what_the_inventory_holds(self) -> None:
        """The inventory keeps each file's desired digest to tell a repair of drift from a
        new revision: the same attributes must give the same digest, run after run and
        across versions, or every file would look newly changed once."""
        attrs = {
            "ensure": "present", "content": "hello\n", "mode": "0644", "owner": None,
            "group": None, "backup": True, "force": False, "replace": True, "validate_cmd": None,
        }  # fmt: skip
        checked = {**attrs, "validate_cmd": ["/usr/bin/check", "%"], "owner": "1000"}
        for _ in range(2):  # the second time from what the first one kept
            assert File("/etc/motd", attrs).desired_digest() == (
                "sha256:20551aa009619c873c8dae8a81fb872ab808f046e380539793510952fd3a9de7"
            )
            assert File("/etc/motd", checked).desired_digest() == (
                "sha256:347f14de3dd01236377cbbdd470072b957c53cbd14038edf0f616c0c56cd6e8f"
            )
        assert File("/etc/motd", {**attrs, "mode": "0600"}).desired_digest() != (
            File("/etc/motd", attrs).desired_digest()
        )

    def test_owner_by_name_from_the_roots_passwd(self, ctx: Context) -> None:
        (root_of(ctx) / "etc/passwd").write_text(
            "root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/srv:/bin/sh\n"
        )
        (root_of(ctx) / "etc/group").write_text("root:x:0:\napp:x:1234:\n")
        make(File, "/etc/app.conf", content="x", owner="app", group="app").check_apply(ctx, True)
        st = (root_of(ctx) / "etc/app.conf").stat()
        assert (st.st_uid, st.st_gid) == (1234, 1234)
        with pytest.raises(ResourceError, match="no user named 'nobody-here'"):
            make(File, "/etc/x", content="x", owner="nobody-here").check_apply(ctx, False)

    def test_directory_in_the_way_needs_force_and_is_moved_aside(self, ctx: Context) -> None:
        (root_of(ctx) / "etc/thing").mkdir()
        (root_of(ctx) / "etc/thing/inside").write_text("keep me")
        with pytest.raises(ResourceError, match="force"):
            make(File, "/etc/thing", content="x").check_apply(ctx, True)
        make(File, "/etc/thing", content="x", force=True).check_apply(ctx, True)
        assert (root_of(ctx) / "etc/thing").read_text() == "x"
        moved = list((ctx.backups.base / "displaced").rglob("inside"))
        assert [p.read_text() for p in moved] == ["keep me"]

    def test_replace_false_creates_but_never_rewrites(self, ctx: Context) -> None:
        f = make(File, "/etc/seed", content="seed\n", replace=False)
        f.check_apply(ctx, True)
        (root_of(ctx) / "etc/seed").write_text("edited by a line resource\n")
        assert (
            make(File, "/etc/seed", content="seed\n", replace=False).check_apply(ctx, False) == []
        )

    def test_absent_removes_with_backup(self, ctx: Context) -> None:
        (root_of(ctx) / "etc/old").write_text("bye\n")
        make(File, "/etc/old", ensure="absent").check_apply(ctx, True)
        assert not (root_of(ctx) / "etc/old").exists()
        assert ctx.backups.entries("/etc/old")

    def test_missing_parent_is_a_clear_error(self, ctx: Context) -> None:
        with pytest.raises(ResourceError, match="parent directory does not exist"):
            make(File, "/nowhere/deep/file", content="x").check_apply(ctx, True)


class TestValidateCmd:
    """C9: the new content is checked by a real command before it replaces the file."""

    CHECK = "grep -qx 'port = [0-9]*' %"

    def test_content_that_passes_replaces_the_file(self, ctx: Context) -> None:
        conf = root_of(ctx) / "etc/app.conf"
        conf.write_text("port = 1\n")
        f = make(File, "/etc/app.conf", content="port = 2\n", validate_cmd=self.CHECK)
        f.check_apply(ctx, apply=True)
        assert conf.read_text() == "port = 2\n"
        assert f.check_apply(ctx, apply=False) == []

    def test_content_that_fails_leaves_the_old_file_and_no_temporary(self, ctx: Context) -> None:
        conf = root_of(ctx) / "etc/app.conf"
        conf.write_text("port = 1\n")
        check = ["/bin/sh", "-c", "echo 'line 1: bad port' >&2; exit 3", "sh", "%"]
        f = make(File, "/etc/app.conf", content="port = nine\n", validate_cmd=check)
        with pytest.raises(ResourceError, match="validate_cmd exited 3; not replaced") as exc:
            f.check_apply(ctx, apply=True)
        assert "line 1: bad port" in str(exc.value)
        assert conf.read_text() == "port = 1\n"
        assert sorted(os.listdir(root_of(ctx) / "etc")) == ["app.conf"]
        # A new file that fails its check is not created at all.
        g = make(File, "/etc/new.conf", content="nope\n", validate_cmd=self.CHECK)
        with pytest.raises(ResourceError, match="not replaced"):
            g.check_apply(ctx, apply=True)
        assert sorted(os.listdir(root_of(ctx) / "etc")) == ["app.conf"]

    def test_the_check_sees_the_new_content_under_an_awkward_name(self, ctx: Context) -> None:
        (root_of(ctx) / "etc/it's here").mkdir()
        f = make(File, "/etc/it's here/x", content="port = 7\n", validate_cmd=self.CHECK)
        f.check_apply(ctx, apply=True)
        assert (root_of(ctx) / "etc/it's here/x").read_text() == "port = 7\n"

    def test_a_check_without_percent_is_refused(self) -> None:
        problems = File.validate("/etc/x", {"validate_cmd": "true"})
        assert problems == [("validate_cmd", "must name the file to check with %")]
