"""file: a regular file's presence, content, mode and owner."""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from reconciler.errors import ReconcilerError, ResourceError
from reconciler.resources import _fs
from reconciler.resources.base import Attr, Change, Context, Fingerprint, Resource, register

MAX_DIFF_BYTES = 256 * 1024


def parse_mode(value: Any) -> int | None:
    if value is None:
        return None
    text = str(value)
    if not text or any(c not in "01234567" for c in text) or int(text, 8) > 0o7777:
        raise ValueError(f'{value!r} is not an octal mode like "0644"')
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
    lines = difflib.unified_diff(
        a.splitlines(keepends=True), b.splitlines(keepends=True), path, path, n=2
    )
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


def displace(ctx: Context, host: Path, written: str) -> None:
    """Move a directory out of the way into the backup area (``force``): never rm -rf."""
    aside = (
        ctx.backups.base
        / "displaced"
        / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{host.name}"
    )
    aside.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.move(str(host), str(aside))
    ctx.log("displaced", path=written, to=str(aside))


@register
class File(Resource):
    type = "file"
    inline = True
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "content": Attr("any", doc="the file's content (source: and template: become this)"),
        "mode": Attr("mode"),
        "owner": Attr("str"),
        "group": Attr("str"),
        "backup": Attr("bool", default=True),
        "force": Attr("bool", default=False),
        "replace": Attr("bool", default=True),
    }

    def __init__(self, title: str, attrs: Mapping[str, Any], sensitive: bool = False) -> None:
        super().__init__(title, attrs, sensitive)
        content = self.attrs.get("content")
        self._data: bytes | None = (
            None
            if content is None
            else content
            if isinstance(content, bytes)
            else str(content).encode()
        )
        self._sha = hashlib.sha256(self._data).hexdigest() if self._data is not None else None
        self._mode = parse_mode(self.attrs.get("mode"))
        self._digest: str | None = None

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems = check_path_title(title)
        try:
            parse_mode(attrs.get("mode"))
        except ValueError as exc:
            problems.append(("mode", str(exc)))
        content = attrs.get("content")
        if content is not None and not isinstance(content, str | bytes | int | float):
            problems.append(("content", "must be text"))
        return problems

    def autorequire(self) -> list[str]:
        return parent_dir_id(self.title)

    def managed_paths(self) -> list[str]:
        return [self.title]

    def desired_digest(self) -> str:
        if self._digest is None:
            rest = sorted((k, repr(v)) for k, v in self.attrs.items() if k != "content")
            self._digest = "sha256:" + hashlib.sha256(repr((self._sha, rest)).encode()).hexdigest()
        return self._digest

    def pruned(self) -> Resource:
        return File(self.title, {**self.attrs, "ensure": "absent", "content": None, "backup": True})

    def _show_digest(self, sha: str | None) -> str | None:
        return None if sha is None else f"sha256:{sha}"

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        host = ctx.root.path(self.title)
        try:
            st: os.stat_result | None = os.lstat(host)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            raise ResourceError(f"{self.title}: a parent is not a directory") from None
        if self.attrs.get("ensure") == "absent":
            return self._absent(ctx, host, st, apply)
        if st is not None and not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory"
                if stat.S_ISDIR(st.st_mode)
                else "a symlink"
                if stat.S_ISLNK(st.st_mode)
                else "not a regular file"
            )
            if not self.attrs.get("force"):
                raise ResourceError(f"{self.title} is {kind}; set force: true to replace it")
            if apply:
                if stat.S_ISDIR(st.st_mode):
                    displace(ctx, host, self.title)
                else:
                    os.unlink(host)
                st = None
            else:
                return [Change("ensure", kind.removeprefix("a "), "file")]
        changes: list[Change] = []
        if st is None:
            changes.append(Change("ensure", "absent", "present"))
            if self._data is not None:
                changes.append(Change("content", None, self._show_digest(self._sha)))
        elif (
            self._data is not None
            and self.attrs.get("replace", True)
            and not self._content_in_sync(ctx, st)
        ):
            old = host.read_bytes()
            old_sha = hashlib.sha256(old).hexdigest()
            if old_sha != self._sha:
                diff = None if self.sensitive else text_diff(self.title, old, self._data)
                changes.append(Change("content", f"sha256:{old_sha}", f"sha256:{self._sha}", diff))
            else:
                self._remember(ctx, st)
        if self._mode is not None and st is not None and (st.st_mode & 0o7777) != self._mode:
            changes.append(Change("mode", f"{st.st_mode & 0o7777:04o}", f"{self._mode:04o}"))
        owners, uid, gid = owner_changes(self, ctx, st)
        changes += owners
        if not changes or not apply:
            return changes
        rewrite = st is None or any(c.property == "content" for c in changes)
        if rewrite:
            if st is not None and self.attrs.get("backup", True):
                ctx.backups.save(host, self.title, sync=ctx.sync_dir)
            data = self._data if self._data is not None else b""
            if self._data is None and st is not None:
                data = host.read_bytes()
            mode: int | None = self._mode
            if st is None:  # a new file: nothing to keep from an old one
                mode = 0o644 if mode is None else mode
                uid, gid = (-1 if uid is None else uid), (-1 if gid is None else gid)
            try:
                _fs.atomic_write(host, data, mode, uid, gid, sync=ctx.sync_dir)
            except FileNotFoundError:
                raise ResourceError(f"{self.title}: the parent directory does not exist") from None
            except OSError as exc:
                raise ResourceError(f"{self.title}: cannot write: {exc.strerror}") from None
        else:
            if uid is not None or gid is not None:
                os.lchown(host, -1 if uid is None else uid, -1 if gid is None else gid)
            if self._mode is not None:
                os.chmod(host, self._mode)
        self._remember(ctx, os.lstat(host))
        return changes

    def _content_in_sync(self, ctx: Context, st: os.stat_result) -> bool:
        known = ctx.fingerprints.get(self.title)
        return (
            known is not None
            and known.sha256 == self._sha
            and (known.size, known.mtime_ns, known.ctime_ns, known.inode)
            == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        )

    def _remember(self, ctx: Context, st: os.stat_result) -> None:
        if self._sha is not None and stat.S_ISREG(st.st_mode):
            ctx.fingerprints[self.title] = Fingerprint(
                st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, self._sha
            )

    def _absent(
        self, ctx: Context, host: Path, st: os.stat_result | None, apply: bool
    ) -> list[Change]:
        if st is None:
            return []
        if stat.S_ISDIR(st.st_mode):
            if not self.attrs.get("force"):
                raise ResourceError(f"{self.title} is a directory; set force: true to remove it")
            if apply:
                displace(ctx, host, self.title)
            return [Change("ensure", "directory", "absent")]
        if apply:
            if stat.S_ISREG(st.st_mode) and self.attrs.get("backup", True):
                try:
                    ctx.backups.save(host, self.title, sync=ctx.sync_dir)
                except OSError as exc:
                    raise ReconcilerError(
                        f"{self.title}: backup failed, not removed: {exc}"
                    ) from None
            os.unlink(host)
            ctx.sync_dir(host.parent)
            ctx.fingerprints.pop(self.title, None)
        return [Change("ensure", "present", "absent")]
