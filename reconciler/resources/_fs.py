"""Safe filesystem helpers: the one path-joining function, atomic writes, the backup store.

Every path a resource manages goes through ``Root.path``, which refuses relative paths, ``..``
and NUL bytes, and checks after resolving symlinks that the parent stays inside the root.
Content is replaced atomically: a temporary file in the same directory gets its final owner and
mode before any byte is written, then it is written, fsynced and renamed over the target, and
the directory is fsynced. Old content goes to a content-addressed backup store first.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import itertools
import json
import os
import pwd
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.errors import PathEscape, ResourceError

TMP_MARK = ".reconciler-tmp-"
_serial = itertools.count()


def temp_name(name: str) -> str:
    """A temporary name beside ``name``: unique in this process, and O_EXCL guards the rest."""
    return f".{name}{TMP_MARK}{os.getpid()}-{next(_serial)}"


class Root:
    """The directory every managed path lives under (``/`` on a real node)."""

    def __init__(self, prefix: str | Path = "/") -> None:
        self.prefix = Path(os.path.realpath(prefix))
        self._prefix = str(self.prefix).rstrip("/")
        # Resolved parents, per run: a catalog has many files in few directories.
        self._parents: dict[str, str] = {}

    def path(self, written: str) -> Path:
        """The host path of an absolute path as written in the repo; PathEscape if it leaves."""
        if not isinstance(written, str) or "\0" in written:
            raise PathEscape(f"{written!r} is not a valid path")
        if not written.startswith("/"):
            raise PathEscape(f"{written!r} must be an absolute path")
        parts = [p for p in written.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PathEscape(f"{written!r} must not contain '..'")
        if not parts:
            return self.prefix
        parent = self._prefix + "/" + "/".join(parts[:-1]) if len(parts) > 1 else self._prefix
        real = self._parents.get(parent)
        if real is None:
            real = os.path.realpath(parent)
            if real != self._prefix and not real.startswith(self._prefix + "/"):
                raise PathEscape(
                    f"{written!r} leaves the root {self.prefix} through a symlink (to {real})"
                )
            if os.path.isdir(real):  # only what exists can be cached: it may be created later
                self._parents[parent] = real
        return Path(parent + "/" + parts[-1])

    def contains(self, host: Path) -> bool:
        real = Path(os.path.realpath(host))
        return real == self.prefix or self.prefix in real.parents


def fsync_dir(directory: Path) -> None:
    """fsync a directory (its entries) or a file (its data): whatever the path is."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path,
    data: bytes,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    sync: Callable[[Path], None] | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically; on any error the old file is untouched.

    ``sync`` makes the rename durable (default: fsync the directory now); the engine passes
    one that fsyncs each directory once at the end of the run.
    """
    tmp = stage_write(path, data, mode, uid, gid, fsync=True)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    (sync or fsync_dir)(path.parent)


def stage_write(
    path: Path,
    data: bytes,
    mode: int | None,
    uid: int | None,
    gid: int | None,
    fsync: bool = False,
) -> Path:
    """Write ``data`` to a temporary file beside ``path``; return the temporary's path.

    The temporary gets its final owner and mode before any byte is written. When mode, uid
    or gid is None the existing file's is kept (0644 and the caller's for a new file).
    Without ``fsync`` the engine makes a batch of staged files durable with one syncfs before
    renaming each over its target: atomic_write's guarantee for a fraction of the cost.
    """
    old: os.stat_result | None = None
    if mode is None or uid is None or gid is None:
        with contextlib.suppress(FileNotFoundError):
            old = os.lstat(path)
    mode = mode if mode is not None else (old.st_mode & 0o7777 if old is not None else 0o644)
    uid = uid if uid is not None else (old.st_uid if old is not None else -1)
    gid = gid if gid is not None else (old.st_gid if old is not None else -1)
    tmp = path.parent / temp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def syncfs(path: Path) -> None:
    """Flush every dirty page of the filesystem holding ``path`` (syncfs(2); else sync(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc_syncfs is None or _libc_syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _find_syncfs() -> Callable[[int], int] | None:
    try:
        import ctypes

        func: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
        return func
    except (OSError, AttributeError):
        return None


_libc_syncfs = _find_syncfs()


def remove_stray_temporaries(directory: Path) -> int:
    """Remove temporary files a killed run left in a directory; return how many."""
    removed = 0
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if TMP_MARK in entry.name and entry.name.startswith("."):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class BackupStore:
    """Content-addressed copies of replaced or removed files, under ``<state>/backups``."""

    def __init__(self, state_dir: Path) -> None:
        self.base = state_dir / "backups"
        self.objects = self.base / "objects"
        self.index = self.base / "index.jsonl"

    def save(
        self,
        host_path: Path,
        path_as_written: str,
        sync: Callable[[Path], None] | None = None,
        staged: bool = False,
        data: bytes | None = None,
    ) -> str:
        """Store the file's content and metadata; raises when it cannot (the caller aborts).

        The content is fsynced before this returns. ``sync`` (the run's deferred fsync) makes
        the object's name and the index line durable with the run's other renames: they are
        written before the file they back up is replaced, and the filesystem's journal keeps
        that order. ``staged``: nothing is fsynced here; the engine syncs the filesystem
        before it renames the staged replacement into place.
        """
        st = os.lstat(host_path)
        if data is None:
            with open(host_path, "rb") as f:
                data = f.read()
        sha = hashlib.sha256(data).hexdigest()
        target = self.objects / sha[:2] / sha
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if staged:
                os.replace(stage_write(target, data, 0o600, -1, -1), target)
            else:
                atomic_write(target, data, 0o600, -1, -1, sync=sync)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "path": path_as_written,
            "sha256": sha,
            "mode": f"{st.st_mode & 0o7777:04o}",
            "uid": st.st_uid,
            "gid": st.st_gid,
        }
        with open(self.index, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            if sync is None and not staged:
                os.fsync(f.fileno())
        if sync is not None:
            sync(self.index)
        return sha

    def entries(self, path: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        try:
            lines = self.index.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return found
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a torn last line after a crash
            if path is None or entry.get("path") == path:
                found.append(entry)
        return found

    def restore(self, sha: str, dest: Path) -> None:
        """Write a backed-up content back with its recorded mode and owner."""
        meta = next((e for e in reversed(self.entries()) if e.get("sha256") == sha), None)
        data = (self.objects / sha[:2] / sha).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            raise ResourceError(f"backup {sha} is corrupted")
        mode = int(meta["mode"], 8) if meta else None
        uid = int(meta["uid"]) if meta else None
        gid = int(meta["gid"]) if meta else None
        atomic_write(dest, data, mode, uid, gid)


# -- owners -------------------------------------------------------------------------------------


def _lookup(root: Root, table: str, name: str) -> int | None:
    if root.prefix == Path("/"):
        try:
            return pwd.getpwnam(name).pw_uid if table == "passwd" else grp.getgrnam(name).gr_gid
        except KeyError:
            return None
    try:
        lines = (root.prefix / "etc" / table).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name:
            return int(fields[2])
    return None


def _resolve(root: Root, table: str, value: str | int, what: str) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    found = _lookup(root, table, str(value))
    if found is None:
        raise ResourceError(f"no {what} named {value!r}")
    return found


def resolve_uid(root: Root, owner: str | int) -> int:
    return _resolve(root, "passwd", owner, "user")


def resolve_gid(root: Root, group: str | int) -> int:
    return _resolve(root, "group", group, "group")


def name_of_uid(root: Root, uid: int) -> str:
    return _name_of(root, "passwd", uid)


def name_of_gid(root: Root, gid: int) -> str:
    return _name_of(root, "group", gid)


def _name_of(root: Root, table: str, ident: int) -> str:
    if root.prefix == Path("/"):
        try:
            return pwd.getpwuid(ident).pw_name if table == "passwd" else grp.getgrgid(ident).gr_name
        except KeyError:
            return str(ident)
    try:
        for line in (root.prefix / "etc" / table).read_text().splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[2] == str(ident):
                return fields[0]
    except OSError:
        pass
    return str(ident)
