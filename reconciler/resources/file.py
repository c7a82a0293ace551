"""file: a regular file's presence, content, mode and owner."""

from __future__ import annotations

import hashlib
import os
import shlex
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from reconciler import fs as _fs
from reconciler.errors import ReconcilerError, ResourceError
from reconciler.fs import Place
from reconciler.resources._path import (
    MAX_DIFF_BYTES,
    PathResource,
    displace,
    kind_of,
    owner_changes,
    parse_mode,
    text_diff,
)
from reconciler.resources.base import Attr, Change, Context, Fingerprint, Resource, register

VALIDATE_TIMEOUT = 60.0  # seconds for validate_cmd


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


# repr(sorted (name, repr(value))) of the attributes but content, by their values: a catalog's
# files mostly share them (mode, owner, backup), and a digest of each is taken every run. Only
# text, booleans and None are kept: no two of those are equal with different reprs.
_SHOWN: dict[tuple[tuple[str, Any], ...], str] = {}


def _attributes_shown(attrs: Mapping[str, Any]) -> str:
    items = tuple((k, v) for k, v in attrs.items() if k != "content")
    plain = all(v is None or v.__class__ is str or v.__class__ is bool for _, v in items)
    if plain:
        known = _SHOWN.get(items)
        if known is not None:
            return known
    shown = repr(sorted((k, repr(v)) for k, v in items))
    if plain and len(_SHOWN) < 4096:
        _SHOWN[items] = shown
    return shown


@register
class File(PathResource):
    type = "file"
    content_from_repo = True
    secret_attributes = ("content",)
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "content": Attr("any", doc="the file's content (source: and template: become this)"),
        "mode": Attr("mode"),
        "owner": Attr("str"),
        "group": Attr("str"),
        "backup": Attr("bool", default=True),
        "force": Attr("bool", default=False),
        "replace": Attr("bool", default=True),
        "validate_cmd": Attr(
            "argv", doc="a command that checks the new content first; % is the file to check"
        ),
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
        self._seen: tuple[tuple[int, int, int, int], bytes | None, Change | None] | None = None

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems = super().validate(title, attrs)
        content = attrs.get("content")
        if content is not None and not isinstance(content, str | bytes | int | float):
            problems.append(("content", "must be text"))
        check = attrs.get("validate_cmd")
        if check is not None and "%" not in (check if isinstance(check, str) else "".join(check)):
            problems.append(("validate_cmd", "must name the file to check with %"))
        return problems

    @classmethod
    def managed(
        cls, path: str, ensure: str, content: str | bytes | None, sensitive: bool = False
    ) -> File:
        """A root-owned 0644 file that another type writes through the file code (its unit
        file, its ruleset): atomic, backed up, diffed, never forced over what is in its way."""
        attrs = {
            "ensure": ensure,
            "content": content,
            "mode": "0644",
            "owner": None,
            "group": None,
            "backup": True,
            "force": False,
            "replace": True,
            "validate_cmd": None,
        }
        return cls(path, attrs, sensitive)

    def desired_digest(self) -> str:
        """The content's digest and every other attribute: what the inventory keeps."""
        if self._digest is None:
            shown = f"({self._sha!r}, {_attributes_shown(self.attrs)})"  # repr of that tuple
            self._digest = "sha256:" + hashlib.sha256(shown.encode()).hexdigest()
        return self._digest

    def pruned(self) -> Resource:
        return File(self.title, {**self.attrs, "ensure": "absent", "content": None, "backup": True})

    def _show_digest(self, sha: str | None) -> str | None:
        return None if sha is None else f"sha256:{sha}"

    def _move_aside(self, ctx: Context, place: Place, kind: str) -> None:
        """What is in the file's way goes to the backup store, never rm -rf."""
        try:
            displace(ctx, place, self.title)
        except OSError as exc:
            raise ResourceError(f"{self.title}: cannot move {kind} aside: {exc.strerror}") from None

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        place, st = self.place(ctx)
        if self.attrs.get("ensure") == "absent":
            return self._absent(ctx, place, st, apply)
        if st is not None and not stat.S_ISREG(st.st_mode):
            # A symlink (left by a hand edit, or planted), a fifo: moved aside, never followed.
            # Only a directory, whose whole tree would go, needs force.
            kind = kind_of(st)
            if stat.S_ISDIR(st.st_mode) and not self.attrs.get("force"):
                raise ResourceError(f"{self.title} is {kind}; set force: true to replace it")
            if not apply:
                return [Change("ensure", kind.removeprefix("a "), "file")]
            self._move_aside(ctx, place, kind)
            st = None
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
            change = self._content_change(ctx, place, st)
            if change is not None:
                changes.append(change)
            else:
                self._remember(ctx, st)
        if self._mode is not None and st is not None and (st.st_mode & 0o7777) != self._mode:
            changes.append(Change("mode", f"{st.st_mode & 0o7777:04o}", f"{self._mode:04o}"))
        owners, uid, gid = owner_changes(self, ctx, st)
        changes += owners
        if not changes or not apply:
            return changes
        rewrite = st is None or any(c.property == "content" for c in changes)
        try:
            if rewrite:
                self._rewrite(ctx, place, st, uid, gid)
            else:
                place.set_attrs(self._mode, uid, gid)
        except FileNotFoundError:
            raise ResourceError(f"{self.title}: the parent directory does not exist") from None
        except OSError as exc:
            raise ResourceError(f"{self.title}: cannot write: {exc.strerror}") from None
        if ctx.staging is None:
            now = place.lstat()
            if now is not None:
                self._remember(ctx, now)
        return changes

    def _rewrite(
        self,
        ctx: Context,
        place: Place,
        st: os.stat_result | None,
        uid: int | None,
        gid: int | None,
    ) -> None:
        """Back the old content up (or give up), then write the new one beside and rename."""
        if st is not None and self.attrs.get("backup", True):
            self._check_size(ctx, st.st_size)
            seen = self._seen
            try:
                ctx.backup(place, self.title, seen[1] if seen and seen[0] == _key(st) else None)
            except OSError as exc:
                raise ResourceError(
                    f"{self.title}: backup failed, not replaced: {exc.strerror or exc}"
                ) from None
        self._seen = None
        data = self._data if self._data is not None else b""
        mode: int | None = self._mode
        if st is None:  # a new file: nothing to keep from an old one
            mode = 0o644 if mode is None else mode
            uid, gid = (-1 if uid is None else uid), (-1 if gid is None else gid)
        if self.attrs.get("validate_cmd") is None:
            ctx.write_file(place, data, mode, uid, gid)
            return
        staged = _fs.stage_at(place, data, mode, uid, gid, fsync=True)
        try:
            self._check_content(ctx, staged.tmp)
            staged.commit()
        except BaseException:
            staged.discard()
            raise
        ctx.sync_dir(place.host.parent)

    def _check_content(self, ctx: Context, path: Path) -> None:
        """Run validate_cmd on the new content, written beside the file: the file is replaced
        only when it exits 0."""
        command = self.attrs["validate_cmd"]
        if isinstance(command, str):
            argv = ["/bin/sh", "-c", command.replace("%", shlex.quote(str(path)))]
        else:
            argv = [str(part).replace("%", str(path)) for part in command]
        result = ctx.runner.run(argv, timeout=VALIDATE_TIMEOUT)
        if result.timed_out:
            raise ResourceError(f"{self.title}: validate_cmd timed out; not replaced")
        if result.returncode != 0:
            tail = "" if self.sensitive or not result.output.strip() else ":\n" + result.tail()
            raise ResourceError(
                f"{self.title}: validate_cmd exited {result.returncode}; not replaced{tail}"
            )

    def committed(self, ctx: Context, target: Path) -> None:
        # The bytes just renamed into place are the desired content: record the fingerprint, so
        # the re-check need not read them back.
        now = ctx.root.locate(self.path).lstat()
        if now is not None:
            self._remember(ctx, now)

    def _content_change(self, ctx: Context, place: Place, st: os.stat_result) -> Change | None:
        """The content change against the file as it is, read once per state of the file: the
        check, the apply that follows it and the backup share one read and one diff.

        The file is read a chunk at a time, hashed as it goes: only a file small enough to
        diff is kept in memory."""
        seen = self._seen
        if seen is not None and seen[0] == _key(st):
            return seen[2]
        self._check_size(ctx, st.st_size)
        assert self._data is not None
        h = hashlib.sha256()
        kept: list[bytes] | None = [] if st.st_size <= MAX_DIFF_BYTES else None
        size = 0
        try:
            f, _ = place.open_regular()
            with f:
                while chunk := f.read(_fs.CHUNK):
                    size += len(chunk)
                    self._check_size(ctx, size)  # it grew while it was read
                    h.update(chunk)
                    if kept is not None and size <= MAX_DIFF_BYTES:
                        kept.append(chunk)
                    else:
                        kept = None
        except OSError as exc:
            raise ResourceError(f"{self.title}: cannot read: {exc.strerror}") from None
        old_sha = h.hexdigest()
        change = None
        old = None if kept is None else b"".join(kept)
        if old_sha != self._sha:
            diff = None
            if not self.sensitive and old is not None:
                diff = text_diff(self.title, old, self._data)
            change = Change("content", f"sha256:{old_sha}", f"sha256:{self._sha}", diff)
        self._seen = (_key(st), old, change) if change is not None else None
        return change

    def _check_size(self, ctx: Context, size: int) -> None:
        """A managed file past the limit is neither read nor backed up: this resource fails,
        the others go on."""
        if size > ctx.max_file_size:
            raise ResourceError(
                f"{self.title}: the file is {size} bytes, more than the limit of "
                f"{ctx.max_file_size} bytes (reconcile.max_file_size); not read, not replaced"
            )

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
        self, ctx: Context, place: Place, st: os.stat_result | None, apply: bool
    ) -> list[Change]:
        if st is None:
            return []
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
            kind = kind_of(st)
            if stat.S_ISDIR(st.st_mode) and not self.attrs.get("force"):
                raise ResourceError(f"{self.title} is {kind}; set force: true to remove it")
            if apply:
                self._move_aside(ctx, place, kind)
            return [Change("ensure", kind.removeprefix("a "), "absent")]
        if apply:
            if stat.S_ISREG(st.st_mode) and self.attrs.get("backup", True):
                self._check_size(ctx, st.st_size)
                try:
                    ctx.backup(place, self.title)
                except OSError as exc:
                    raise ReconcilerError(
                        f"{self.title}: backup failed, not removed: {exc}"
                    ) from None
            try:
                place.unlink()
            except OSError as exc:
                raise ResourceError(f"{self.title}: cannot remove: {exc.strerror}") from None
            ctx.sync_dir(place.host.parent)
            ctx.fingerprints.pop(self.title, None)
        return [Change("ensure", "present", "absent")]
