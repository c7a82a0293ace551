"""directory: a directory's presence, mode and owner; optionally purge what nothing manages."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from reconciler.errors import ResourceError
from reconciler.resources import _fs
from reconciler.resources._path import PathResource, owner_changes, parse_mode
from reconciler.resources.base import Attr, Change, Context, Resource, register


def backup_tree(ctx: Context, host: Path, written: str) -> None:
    """Save every regular file below ``host`` to the backup store (before it is removed)."""
    for dirpath, _, filenames in os.walk(host):
        for name in filenames:
            path = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                ctx.backups.save(path, written + "/" + str(path.relative_to(host)))


@register
class Directory(PathResource):
    type = "directory"
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "mode": Attr("mode"),
        "owner": Attr("str"),
        "group": Attr("str"),
        "purge": Attr("bool", default=False),
    }

    def pruned(self) -> Resource:
        return Directory(self.title, {"ensure": "absent"})

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        host, st = self.locate(ctx)
        if self.attrs.get("ensure") == "absent":
            if st is None:
                return []
            if not stat.S_ISDIR(st.st_mode):
                raise ResourceError(f"{self.path} is not a directory; not removed")
            if apply:
                backup_tree(ctx, host, self.path)
                shutil.rmtree(host)
                ctx.sync_dir(host.parent)
            return [Change("ensure", "present", "absent")]
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ResourceError(f"{self.path} exists and is not a directory")
        mode = parse_mode(self.attrs.get("mode"))
        changes: list[Change] = []
        if st is None:
            changes.append(Change("ensure", "absent", "present"))
        elif mode is not None and (st.st_mode & 0o7777) != mode:
            changes.append(Change("mode", f"{st.st_mode & 0o7777:04o}", f"{mode:04o}"))
        owners, uid, gid = owner_changes(self, ctx, st)
        changes += owners
        purge = self._unmanaged(ctx, host) if self.attrs.get("purge") and st is not None else []
        changes += [Change("purged", f"{self.path}/{name}", None) for name in purge]
        if not changes or not apply:
            return changes
        if st is None:
            try:
                os.mkdir(host, 0o700)
            except FileNotFoundError:
                raise ResourceError(f"{self.path}: the parent directory does not exist") from None
        if uid is not None or gid is not None:
            os.lchown(host, -1 if uid is None else uid, -1 if gid is None else gid)
        if mode is not None or st is None:
            os.chmod(host, mode if mode is not None else 0o755)
        for name in purge:
            entry = host / name
            written = f"{self.path}/{name}"
            est = os.lstat(entry)
            if stat.S_ISDIR(est.st_mode):
                backup_tree(ctx, entry, written)
                shutil.rmtree(entry)
            else:
                if stat.S_ISREG(est.st_mode):
                    ctx.backup(entry, written)
                os.unlink(entry)
        if purge or st is None:
            ctx.sync_dir(host.parent if st is None else host)
        return changes

    def _unmanaged(self, ctx: Context, host: Path) -> list[str]:
        prefix = self.path.rstrip("/") + "/"
        keep: set[str] = set()
        for path in ctx.catalog_paths:
            if path.startswith(prefix):
                keep.add(path[len(prefix) :].split("/", 1)[0])
        return sorted(
            name for name in os.listdir(host) if name not in keep and _fs.TMP_MARK not in name
        )
