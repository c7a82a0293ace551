"""directory: a directory's presence, mode and owner; optionally purge what nothing manages."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import ClassVar

from reconciler import fs as _fs
from reconciler.errors import ResourceError
from reconciler.resources._path import PathResource, owner_changes, parse_mode
from reconciler.resources.base import Attr, Change, Context, Resource, register


def backup_tree(ctx: Context, place: _fs.Place, written: str) -> None:
    """Save every regular file below the directory at ``place`` to the backup store (before it
    is removed). Descriptor-based: a symlink inside is never followed."""
    top = place.name
    for dirpath, _, filenames, dirfd in os.fwalk(top, dir_fd=place.fd):
        below = dirpath[len(top) :].lstrip("/")
        for name in filenames:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dirfd)
            except OSError:
                continue  # a symlink, a socket: nothing to keep
            with open(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = f"{below}/{name}" if below else name
                ctx.backups.save_open(f, st, f"{written}/{rel}")  # a chunk at a time


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
        place, st = self.place(ctx)
        if self.attrs.get("ensure") == "absent":
            if st is None:
                return []
            if not stat.S_ISDIR(st.st_mode):
                raise ResourceError(f"{self.path} is not a directory; not removed")
            if apply:
                try:
                    backup_tree(ctx, place, self.path)
                except OSError as exc:
                    raise ResourceError(
                        f"{self.path}: backup failed, not removed: {exc.strerror or exc}"
                    ) from None
                place.rmtree()
                ctx.root.forget()
                ctx.sync_dir(place.host.parent)
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
        purge = self._unmanaged(ctx, place) if self.attrs.get("purge") and st is not None else []
        changes += [Change("purged", f"{self.path}/{name}", None) for name in purge]
        if not changes or not apply:
            return changes
        try:
            self._apply(ctx, place, st, mode, uid, gid, purge)
        except FileNotFoundError:
            raise ResourceError(f"{self.path}: the parent directory does not exist") from None
        except OSError as exc:
            raise ResourceError(f"{self.path}: {exc.strerror or exc}") from None
        return changes

    def _apply(
        self,
        ctx: Context,
        place: _fs.Place,
        st: os.stat_result | None,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        purge: list[str],
    ) -> None:
        if st is None:
            place.mkdir(0o700)  # nobody else can enter it until it has its owner and mode
        if mode is None and st is None:
            mode = 0o755
        if uid is not None or gid is not None or mode is not None:
            place.set_attrs(mode, uid, gid, directory=True)
        for name in purge:
            entry = place.child(name)
            written = f"{self.path}/{name}"
            est = entry.lstat()
            if est is None:
                continue
            if stat.S_ISDIR(est.st_mode):
                backup_tree(ctx, entry, written)
                entry.rmtree()
                ctx.root.forget()
            else:
                if stat.S_ISREG(est.st_mode):
                    ctx.backup(entry, written)
                entry.unlink()
                if stat.S_ISLNK(est.st_mode):
                    ctx.root.forget()
        if purge or st is None:
            ctx.sync_dir(place.host.parent if st is None else place.host)

    def _unmanaged(self, ctx: Context, place: _fs.Place) -> list[str]:
        prefix = self.path.rstrip("/") + "/"
        keep: set[str] = set()
        for path in ctx.catalog_paths:
            if path.startswith(prefix):
                keep.add(path[len(prefix) :].split("/", 1)[0])
        return sorted(
            name for name in place.listdir() if name not in keep and _fs.TMP_MARK not in name
        )
