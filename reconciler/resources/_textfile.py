"""Text files the cron, host and sysctl types write whole or edit line by line: read through
the root (bounded, never through a symlink), replaced atomically after a backup."""

from __future__ import annotations

import errno
import hashlib
import stat

from reconciler.errors import ResourceError
from reconciler.fs import Place
from reconciler.resources._path import text_diff
from reconciler.resources.base import Change, Context, Resource


def read_text(ctx: Context, place: Place, path: str) -> tuple[str | None, int | None]:
    """The text of the file at ``place`` and its mode, or (None, None) when there is none."""
    st = place.lstat()
    if st is None:
        return None, None
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise ResourceError(f"{path} is {kind}: not changed")
    if st.st_size > ctx.max_file_size:
        raise ResourceError(
            f"{path}: the file is {st.st_size} bytes, more than the limit of "
            f"{ctx.max_file_size} bytes (reconcile.max_file_size); not read, not edited"
        )
    try:
        data = place.read_bytes()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ResourceError(f"{path} is a symlink: not followed") from None
        raise ResourceError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return data.decode(), st.st_mode & 0o7777
    except UnicodeDecodeError:
        raise ResourceError(f"{path} is not UTF-8 text") from None


def content_change(resource: Resource, path: str, old: str | None, new: str) -> Change:
    """The change of a file's content from ``old`` (None: no file) to ``new``."""
    before = None if old is None else "sha256:" + hashlib.sha256(old.encode()).hexdigest()
    after = "sha256:" + hashlib.sha256(new.encode()).hexdigest()
    diff = None if resource.sensitive else text_diff(path, (old or "").encode(), new.encode())
    return Change("content", before, after, diff)


def replace(
    ctx: Context,
    place: Place,
    path: str,
    exists: bool,
    new: str,
    mode: int | None,
    uid: int | None,
    gid: int | None,
) -> None:
    """Back the old content up, then write the new one beside the file and rename it over."""
    if exists:
        try:
            ctx.backup(place, path)
        except OSError as exc:
            raise ResourceError(
                f"{path}: backup failed, not changed: {exc.strerror or exc}"
            ) from None
    try:
        ctx.write_file(place, new.encode(), mode, uid, gid)
    except FileNotFoundError:
        raise ResourceError(f"{path}: its directory does not exist") from None
    except OSError as exc:
        raise ResourceError(f"{path}: cannot write: {exc.strerror}") from None
    ctx.fingerprints.pop(path, None)


def remove(ctx: Context, place: Place, path: str) -> None:
    """Back the file up, then remove it."""
    try:
        ctx.backup(place, path)
        place.unlink()
    except OSError as exc:
        raise ResourceError(f"{path}: cannot remove: {exc.strerror or exc}") from None
    ctx.sync_dir(place.host.parent)
    ctx.fingerprints.pop(path, None)
