"""mount with real tmpfs mounts under a temporary directory (the tests run as root) and a
table of its own there (``target``), so the machine's /etc/fstab is never touched."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ModelError, ResourceError
from reconciler.fs import BackupStore, Root
from reconciler.model.catalog import Compiler
from reconciler.resources.base import Context
from reconciler.resources.mount import Mount, live_mount
from reconciler.resources.runner import Runner
from reconciler.source import DirectorySnapshot
from tests.conftest import need, write_tree
from tests.resources.conftest import make
from tests.resources.mounts import tmpfs

FSTAB = "# /etc/fstab: static file system information.\nproc /proc proc defaults 0 0\n"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Context, Path]]:
    """A context on the live system (root /) and a directory whose mounts are undone after."""
    need("mount")
    with tmpfs(tmp_path / "probe"):  # skips when the kernel refuses a mount here
        pass
    state = tmp_path / "state"
    ctx = Context(Root("/"), state, BackupStore(state), Runner())
    base = tmp_path / "m"
    (base / "mnt").mkdir(parents=True)
    (base / "fstab").write_text(FSTAB)
    try:
        yield ctx, base
    finally:
        while live_mount(str(base / "mnt")) is not None:
            subprocess.run(["umount", "-l", str(base / "mnt")], check=True)


def tmpfs_mount(base: Path, **attrs: Any) -> Mount:
    values = {"device": "tmpfs", "fstype": "tmpfs", "options": "size=1m", "target": f"{base}/fstab"}
    resource = make(Mount, f"{base}/mnt", **{**values, **attrs})
    assert isinstance(resource, Mount)
    return resource


def flags(path: Path) -> frozenset[str]:
    found = live_mount(str(path))
    assert found is not None, f"nothing mounted at {path}"
    return found.flags


class TestLive:
    def test_mounted_plans_then_mounts_and_writes_the_entry(
        self, live: tuple[Context, Path]
    ) -> None:
        ctx, base = live
        resource = tmpfs_mount(base)
        planned = resource.check_apply(ctx, apply=False)
        assert [c.property for c in planned] == ["fstab", "mounted"]
        assert planned[0].diff is not None and f"+tmpfs\t{base}/mnt\ttmpfs" in planned[0].diff
        assert live_mount(str(base / "mnt")) is None  # the plan changed nothing
        assert (base / "fstab").read_text() == FSTAB

        assert resource.check_apply(ctx, apply=True) == planned
        mounted = live_mount(str(base / "mnt"))
        assert mounted is not None and mounted.fstype == "tmpfs"
        assert (base / "fstab").read_text() == FSTAB + f"tmpfs\t{base}/mnt\ttmpfs\tsize=1m\t0\t0\n"
        assert ctx.backups.entries(f"{base}/fstab")  # the old table is kept
        assert resource.check_apply(ctx, apply=False) == []

    def test_an_option_change_remounts(self, live: tuple[Context, Path]) -> None:
        ctx, base = live
        tmpfs_mount(base).check_apply(ctx, apply=True)
        assert "rw" in flags(base / "mnt")
        read_only = tmpfs_mount(base, options="size=1m,ro")
        changes = read_only.check_apply(ctx, apply=True)
        assert [(c.property, c.after) for c in changes][-1] == ("remounted", "size=1m,ro")
        assert "ro" in flags(base / "mnt")
        assert "\tsize=1m,ro\t" in (base / "fstab").read_text()
        # Remounted writable by hand: the next run sees the flag and remounts.
        subprocess.run(["mount", "-o", "remount,rw", str(base / "mnt")], check=True)
        assert [c.property for c in read_only.check_apply(ctx, apply=True)] == ["remounted"]
        assert "ro" in flags(base / "mnt")
        assert read_only.check_apply(ctx, apply=False) == []

    def test_unmounted_keeps_the_entry_and_absent_removes_it(
        self, live: tuple[Context, Path]
    ) -> None:
        ctx, base = live
        tmpfs_mount(base).check_apply(ctx, apply=True)
        entry = f"tmpfs\t{base}/mnt\ttmpfs\tsize=1m\t0\t0\n"
        changes = tmpfs_mount(base, ensure="unmounted").check_apply(ctx, apply=True)
        assert [(c.property, c.after) for c in changes] == [("mounted", "unmounted")]
        assert live_mount(str(base / "mnt")) is None
        assert (base / "fstab").read_text() == FSTAB + entry

        tmpfs_mount(base).check_apply(ctx, apply=True)
        absent = make(Mount, f"{base}/mnt", ensure="absent", target=f"{base}/fstab")
        changes = absent.check_apply(ctx, apply=True)
        assert [c.property for c in changes] == ["mounted", "fstab"]
        assert live_mount(str(base / "mnt")) is None
        assert (base / "fstab").read_text() == FSTAB  # the comment and other lines stay
        assert absent.check_apply(ctx, apply=False) == []

    def test_present_manages_only_the_entry(self, live: tuple[Context, Path]) -> None:
        ctx, base = live
        present = tmpfs_mount(base, ensure="present", dump=1, **{"pass": 2})
        assert [c.property for c in present.check_apply(ctx, apply=True)] == ["fstab"]
        assert live_mount(str(base / "mnt")) is None  # not mounted
        assert f"tmpfs\t{base}/mnt\ttmpfs\tsize=1m\t1\t2\n" in (base / "fstab").read_text()
        tmpfs_mount(base, dump=1, **{"pass": 2}).check_apply(ctx, apply=True)
        assert present.check_apply(ctx, apply=True) == []  # and mounted stays mounted
        assert live_mount(str(base / "mnt")) is not None

    def test_a_changed_entry_replaces_the_old_line_and_duplicates(
        self, live: tuple[Context, Path]
    ) -> None:
        ctx, base = live
        (base / "fstab").write_text(
            FSTAB + f"tmpfs  {base}/mnt/  tmpfs  size=2m  0  0\ntmpfs {base}/mnt tmpfs ro 0 0\n"
        )
        tmpfs_mount(base, ensure="present").check_apply(ctx, apply=True)
        assert (base / "fstab").read_text() == FSTAB + f"tmpfs\t{base}/mnt\ttmpfs\tsize=1m\t0\t0\n"

    def test_a_missing_mount_point_fails_naming_it(self, live: tuple[Context, Path]) -> None:
        ctx, base = live
        (base / "mnt").rmdir()
        with pytest.raises(ResourceError, match=r"mount point .*/mnt is not a directory"):
            tmpfs_mount(base).check_apply(ctx, apply=True)

    def test_a_failing_mount_fails_with_its_output(self, live: tuple[Context, Path]) -> None:
        ctx, base = live
        with pytest.raises(ResourceError, match=r"mount -t nosuchfs .* failed \(exit"):
            tmpfs_mount(base, fstype="nosuchfs").check_apply(ctx, apply=True)


class TestRoot:
    def test_under_root_only_the_entry_is_managed(self, ctx: Context) -> None:
        root = ctx.root.prefix
        (root / "mnt").mkdir()
        present = make(Mount, "/mnt", device="UUID=abc", fstype="ext4", ensure="present")
        present.check_apply(ctx, apply=True)
        assert (root / "etc/fstab").read_text() == "UUID=abc\t/mnt\text4\tdefaults\t0\t0\n"
        assert (root / "etc/fstab").stat().st_mode & 0o777 == 0o644
        assert live_mount(str(root / "mnt")) is None
        for ensure in ("mounted", "unmounted"):
            resource = make(Mount, "/mnt", device="UUID=abc", fstype="ext4", ensure=ensure)
            with pytest.raises(ResourceError, match=f"ensure {ensure} .* under --root"):
                resource.check_apply(ctx, apply=False)
        make(Mount, "/mnt", ensure="absent").check_apply(ctx, apply=True)
        assert (root / "etc/fstab").read_text() == ""

    def test_a_symlinked_table_is_not_followed(self, ctx: Context, tmp_path: Path) -> None:
        outside = tmp_path / "outside"
        outside.write_text("keep\n")
        (ctx.root.prefix / "etc/fstab").symlink_to(outside)
        resource = make(Mount, "/mnt", device="tmpfs", fstype="tmpfs", ensure="present")
        with pytest.raises(ResourceError, match="symlink"):
            resource.check_apply(ctx, apply=True)
        assert outside.read_text() == "keep\n"


def compile_mount(tmp_path: Path, body: str) -> None:
    profile = "resources:\n  - mount: /srv/data\n" + body
    repo = write_tree(
        tmp_path / "repo",
        {
            "nodes.yaml": "default: all\n",
            "roles/all.yaml": "profiles: [p]\n",
            "profiles/p.yaml": profile,
        },
    )
    Compiler(DirectorySnapshot(repo)).compile("n1", {})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    device: '-oremount'\n    fstype: ext4\n", r"device.*must not start with '-'"),
        (
            "    device: /dev/sdb1\n    fstype: ext4\n    options: 'rw,x-a b'\n",
            r"options.*whitespace",
        ),
        ('    device: /dev/sdb1\n    fstype: ext4\n    options: "rw\\n/ x"\n', r"options.*control"),
        ("    device: /dev/sdb1\n    fstype: 'ext4;rm'\n", r"fstype.*not a filesystem type"),
        ("    device: /dev/sdb1\n    fstype: ext4\n    options: 'rw,,ro'\n", r"options.*empty"),
        ("    device: /dev/sdb1\n    fstype: ext4\n    dump: 12\n", r"dump.*from 0 to 9"),
        ("    device: /dev/sdb1\n    fstype: ext4\n    pass: -1\n", r"pass.*from 0 to 9"),
        ("    fstype: ext4\n", r"device.*needed unless ensure is absent"),
        ("    device: /dev/sdb1\n    fstype: ext4\n    ensure: up\n", r"ensure.*must be one of"),
        ("    device: /dev/sdb1\n    fstype: ext4\n    target: etc/fstab\n", r"target.*absolute"),
    ],
)
def test_bad_values_are_refused_naming_the_attribute(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        compile_mount(tmp_path, body)
