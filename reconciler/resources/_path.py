"""What the filesystem resource types share: paths as titles, modes, owners, diffs."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler import fs as _fs
from reconciler.resources.base import Change, Context, Resource, unified_diff

MAX_DIFF_BYTES = 256 * 1024


_MODES: dict[str, int] = {}  # modes already parsed: a catalog writes the same few many times


def parse_mode(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value)
    known = _MODES.get(text)
    if known is not None:
        return known
    if not text or any(c not in "01234567" for c in text) or int(text, 8) > 0o7777:
        raise ValueError(f'{value!r} is not an octal mode like "0644"')
    if len(_MODES) < 4096:
        _MODES[text] = int(text, 8)
    return int(text, 8)


def check_path_title(title: str) -> list[tuple[str | None, str]]:
    if not title.startswith("/"):
        return [(None, f"the path {title!r} must be absolute")]
    if ".." in title.split("/"):
        return [(None, f"the path {title!r} must not contain '..'")]
    if "\0" in title:
        return [(None, "the path must not contain NUL")]
    return []


def parent_dir_id(path: str) -> list[str]:
    parent = os.path.dirname(path.rstrip("/"))
    return [f"directory:{parent}"] if parent and parent != "/" else []


def text_diff(path: str, old: bytes, new: bytes) -> str | None:
    """A unified diff when both sides are small UTF-8 text; None otherwise."""
    if len(old) > MAX_DIFF_BYTES or len(new) > MAX_DIFF_BYTES:
        return None
    try:
        a, b = old.decode(), new.decode()
    except UnicodeDecodeError:
        return None
    lines = unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), path, path, 2)
    out = "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
    return out or None


def owner_changes(
    resource: Resource, ctx: Context, st: os.stat_result | None
) -> tuple[list[Change], int | None, int | None]:
    """Changes of owner and group against ``st`` (None: the object is to be created)."""
    changes: list[Change] = []
    uid = gid = None
    owner, group = resource.attrs.get("owner"), resource.attrs.get("group")
    if owner is not None:
        uid = _fs.resolve_uid(ctx.root, owner)
        if st is not None and st.st_uid != uid:
            changes.append(Change("owner", _fs.name_of_uid(ctx.root, st.st_uid), str(owner)))
    if group is not None:
        gid = _fs.resolve_gid(ctx.root, group)
        if st is not None and st.st_gid != gid:
            changes.append(Change("group", _fs.name_of_gid(ctx.root, st.st_gid), str(group)))
    return changes, uid, gid


def kind_of(st: os.stat_result) -> str:
    """What stands at a path, for messages: "a directory", "a symlink", "a regular file"..."""
    if stat.S_ISDIR(st.st_mode):
        return "a directory"
    if stat.S_ISLNK(st.st_mode):
        return "a symlink"
    if stat.S_ISREG(st.st_mode):
        return "a regular file"
    return "not a regular file"


def displace(ctx: Context, place: _fs.Place, written: str) -> None:
    """Move what stands at ``place`` (a directory, a symlink, a fifo...) into the backup area,
    out of the way of a file or a symlink: it is renamed there, never deleted.

    When the backup area is on another filesystem it is copied there first (a directory with
    its symlinks as symlinks) and only then removed from the managed path.
    """
    st = place.lstat()
    if st is None:
        return
    area = ctx.backups.base / "displaced"
    area.mkdir(parents=True, exist_ok=True, mode=0o700)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = f"{stamp}-{os.getpid()}-{next(_displaced)}-{place.name}"
    into = _fs.Dir.at(area)
    try:
        os.rename(place.name, aside, src_dir_fd=place.fd, dst_dir_fd=into.fd)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_aside(place, st, area / aside)
    ctx.root.forget()
    ctx.sync_dir(place.host.parent)
    ctx.sync_dir(area)
    ctx.log("displaced", path=written, to=str(area / aside))


_displaced = itertools.count()


def _copy_aside(place: _fs.Place, st: os.stat_result, dest: Path) -> None:
    """Copy what is at ``place`` to ``dest`` on another filesystem, then remove it there."""
    if stat.S_ISDIR(st.st_mode):
        fd = place.open(os.O_RDONLY | os.O_DIRECTORY)
        try:
            # The descriptor's /proc name is the directory itself, however its path changes.
            shutil.copytree(f"/proc/self/fd/{fd}", dest, symlinks=True)
        finally:
            os.close(fd)
        place.rmtree()
        return
    if stat.S_ISLNK(st.st_mode):
        os.symlink(place.readlink(), dest)
    elif stat.S_ISREG(st.st_mode):
        data, _ = place.read()
        _fs.atomic_write(dest, data, st.st_mode & 0o7777, -1, -1)
    else:  # a fifo, a socket, a device node: the node itself
        os.mknod(dest, st.st_mode, st.st_rdev)
    place.unlink()


class PathResource(Resource):
    """A resource whose title is an absolute path (file, directory, symlink)."""

    inline = True

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems = check_path_title(title)
        if "mode" in cls.attributes:
            try:
                parse_mode(attrs.get("mode"))
            except ValueError as exc:
                problems.append(("mode", str(exc)))
        return problems

    @property
    def path(self) -> str:
        return self.title.rstrip("/") or "/"

    def autorequire(self) -> list[str]:
        return parent_dir_id(self.path)

    def managed_paths(self) -> list[str]:
        return [self.path]

    def locate(self, ctx: Context) -> tuple[Path, os.stat_result | None]:
        """The host path (contained in the root) and what stands there now, if anything."""
        host = ctx.root.path(self.path)
        try:
            return host, os.lstat(host)
        except FileNotFoundError:
            return host, None

    def place(self, ctx: Context) -> tuple[_fs.Place, os.stat_result | None]:
        """The place of the path (its parent opened race-free inside the root) and what
        stands there now, if anything: what file, directory and symlink change through."""
        place = ctx.root.locate(self.path)
        return place, place.lstat()
