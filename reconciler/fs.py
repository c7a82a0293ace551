"""Safe filesystem helpers: managed paths opened race-free, atomic writes, the backup store.

A managed path is resolved once, by ``Root.locate``, into a ``Place``: its parent directory,
opened component by component from the root (``openat`` with ``O_NOFOLLOW|O_DIRECTORY``), and
its last name. Every read and change goes through that directory descriptor and the name
(``dir_fd``, never following a symlink at the name), never through the path string again, so a
directory swapped for a symlink after the path was checked cannot redirect a write. A symlink on
the way is followed only when it belongs to root (or to the user the agent runs as: nobody less
privileged could have planted it) and only inside the root: its target is walked the same way,
an absolute one from the root, and ``..`` never climbs above the root. A symlink owned by anyone
else is refused (PathEscape, naming it and its owner).

Content is replaced atomically: a temporary file in the same directory gets its final owner and
mode before any byte is written, then it is written, fsynced and renamed over the target (both
names relative to the one open directory), and the directory is fsynced. Old content goes to a
content-addressed backup store first; retention prunes the store at the end of an apply run.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import grp
import hashlib
import itertools
import json
import os
import pwd
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from reconciler.errors import PathEscape, ReconcilerError, ResourceError

TMP_MARK = ".reconciler-tmp-"
_serial = itertools.count()
# Symlinks followed while resolving one path, at most (the kernel's own limit).
MAX_SYMLINKS = 40
# Directories a Root keeps open at once (a run resolves each directory once).
MAX_OPEN_DIRS = 256
# The largest managed file the agent reads (to compare or back it up), unless the daemon's
# reconcile.max_file_size says otherwise: past it a resource fails alone.
MAX_FILE_SIZE = 64 * 1024 * 1024
CHUNK = 1024 * 1024  # files are compared, hashed and copied this much at a time
O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_name(name: str) -> str:
    """A temporary name beside ``name``: unique in this process, and O_EXCL guards the rest."""
    return f".{name}{TMP_MARK}{os.getpid()}-{next(_serial)}"


class Dir:
    """An open directory (an O_PATH descriptor), closed when the last reference to it goes."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def at(cls, path: Path) -> Dir:
        """A directory named by a host path (the state directory): trusted as it resolves."""
        return cls(os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))

    def __del__(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(Exception):  # at interpreter exit os may be torn down
                os.close(fd)


class Root:
    """The directory every managed path lives under (``/`` on a real node)."""

    def __init__(self, prefix: str | Path = "/") -> None:
        self.prefix = Path(os.path.realpath(prefix))
        self._prefix = str(self.prefix).rstrip("/")
        # Resolved parents, per run: a catalog has many files in few directories.
        self._parents: dict[str, str] = {}
        # Owners whose symlinks are followed: root, and the agent's own user.
        self.trusted_uids = frozenset({0, os.geteuid()})
        self._top: Dir | None = None
        # Directories opened by locate, by their path as written (a Root lives for one run).
        self._dirs: dict[str, Dir] = {}
        self._lock = threading.Lock()

    @staticmethod
    def parts(written: str) -> list[str]:
        """The components of an absolute path as written; PathEscape if it could leave."""
        if not isinstance(written, str) or "\0" in written:
            raise PathEscape(f"{written!r} is not a valid path")
        if not written.startswith("/"):
            raise PathEscape(f"{written!r} must be an absolute path")
        parts = [p for p in written.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PathEscape(f"{written!r} must not contain '..'")
        return parts

    def path(self, written: str) -> Path:
        """The host path of an absolute path as written in the repo; PathEscape if it leaves.

        For reading and for commands (a working directory): the path is checked now, after
        resolving symlinks as the host does, and may change after. Resources that change a
        path use ``locate``.
        """
        parts = self.parts(written)
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

    def locate(self, written: str) -> Place:
        """The place of a path as written: its parent directory opened race-free, its name.

        PathEscape when the way there has a symlink this root does not follow, ResourceError
        when something on the way is not a directory. A missing directory on the way is not an
        error here (a plan may be about to create it): the place then has no directory.
        """
        parts = self.parts(written)
        if not parts:
            return Place(self, (), self._root_dir(), ".", self.prefix, "/")
        parent = tuple(parts[:-1])
        host = self._prefix + "/" + "/".join(parts)
        return Place(self, parent, self.directory(parent, written), parts[-1], host, written)

    def directory(self, parts: Sequence[str], written: str = "") -> Dir | None:
        """The directory at ``parts`` (components as written), opened once per run; None if
        some directory on the way does not exist."""
        key = "/".join(parts)
        found = self._dirs.get(key)
        if found is not None:
            return found
        try:
            found = Dir(self._walk(parts, written or "/" + key))
        except FileNotFoundError:
            return None
        with self._lock:
            while len(self._dirs) >= MAX_OPEN_DIRS:
                del self._dirs[next(iter(self._dirs))]  # each is closed once no place uses it
            self._dirs[key] = found
        return found

    def forget(self) -> None:
        """Drop the directories opened so far: a directory or symlink on some path changed."""
        with self._lock:
            self._dirs.clear()

    def _root_dir(self) -> Dir:
        if self._top is None:
            with self._lock:
                if self._top is None:
                    self._top = Dir.at(self.prefix)
        return self._top

    def _walk(self, parts: Sequence[str], written: str) -> int:
        """Open the directory at ``parts`` one component at a time; return its descriptor."""
        anchor = self._root_dir()  # held: the descriptor stays open while the walk uses it
        top = anchor.fd
        opened: list[int] = []  # below the root, innermost last
        trail: list[str] = []  # the names of ``opened``, for messages
        todo = list(reversed(parts))  # the next component last
        hops = 0
        try:
            while todo:
                name = todo.pop()
                if name in ("", "."):
                    continue
                if name == "..":  # only from a symlink's target; never above the root
                    if opened:
                        os.close(opened.pop())
                        trail.pop()
                    continue
                here = opened[-1] if opened else top
                try:
                    fd = os.open(name, O_DIR, dir_fd=here)
                except NotADirectoryError:
                    where = "/" + "/".join([*trail, name])
                    st = os.stat(name, dir_fd=here, follow_symlinks=False)
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise PathEscape(
                            f"{written}: too many symlinks on the way (at {where})"
                        ) from None
                    if stat.S_ISDIR(st.st_mode):
                        todo.append(name)  # a directory again by now: open it
                        continue
                    if not stat.S_ISLNK(st.st_mode):
                        raise ResourceError(f"{written}: {where} is not a directory") from None
                    if st.st_uid not in self.trusted_uids:
                        raise PathEscape(
                            f"{written}: {where} is a symlink owned by uid {st.st_uid}: not "
                            f"followed (only symlinks owned by {self._trusted()} are)"
                        ) from None
                    try:
                        target = os.readlink(name, dir_fd=here)
                    except OSError as exc:
                        if exc.errno != errno.EINVAL:
                            raise
                        todo.append(name)  # not a symlink any more by now: open it again
                        continue
                    if target.startswith("/"):  # absolute: from the root, not the host's /
                        while opened:
                            os.close(opened.pop())
                        trail.clear()
                    todo.extend(reversed(target.split("/")))
                    continue
                opened.append(fd)
                trail.append(name)
            return opened.pop() if opened else os.dup(top)
        finally:
            for fd in opened:
                os.close(fd)

    def _trusted(self) -> str:
        others = sorted(self.trusted_uids - {0})
        return "root" + "".join(f" or uid {uid}" for uid in others)


class Place:
    """A path under the root: its parent directory, held open, and its last name.

    Every operation is relative to the directory descriptor and does not follow a symlink at
    the name. ``dir`` is None when a directory on the way does not exist: the path then has
    nothing (``lstat`` is None) and a change fails with FileNotFoundError.
    """

    __slots__ = ("_host", "dir", "name", "parent", "root", "written")

    def __init__(
        self,
        root: Root | None,
        parent: tuple[str, ...],
        directory: Dir | None,
        name: str,
        host: Path | str,
        written: str,
    ) -> None:
        self.root = root
        self.parent = parent
        self.dir = directory
        self.name = name
        self._host = host
        self.written = written

    @property
    def host(self) -> Path:
        """The host path, for messages and for what works by path: made when first asked
        for, since a check of a file in sync never needs it."""
        host = self._host
        if isinstance(host, str):
            host = self._host = Path(host)
        return host

    @classmethod
    def at(cls, path: Path) -> Place:
        """The place of a host path outside any root (the state directory): trusted."""
        return cls(None, (), Dir.at(path.parent), path.name, path, str(path))

    @property
    def fd(self) -> int:
        if self.dir is None:
            raise FileNotFoundError(
                errno.ENOENT, "the parent directory does not exist", str(self.host.parent)
            )
        return self.dir.fd

    def lstat(self) -> os.stat_result | None:
        if self.dir is None:
            return None
        try:
            return os.stat(self.name, dir_fd=self.dir.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open(self, flags: int, mode: int = 0o600) -> int:
        return os.open(self.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def read(self) -> tuple[bytes, os.stat_result]:
        """The content of the regular file here, and its stat (ELOOP for a symlink)."""
        fd = self.open(os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.host))
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.host))
            return f.read(), st

    def read_bytes(self) -> bytes:
        return self.read()[0]

    def open_regular(self) -> tuple[BinaryIO, os.stat_result]:
        """The regular file here, open for reading, and its stat (ELOOP for a symlink)."""
        fd = self.open(os.O_RDONLY | os.O_NONBLOCK)
        f = open(fd, "rb")  # noqa: SIM115 - the caller closes it
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            f.close()
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.host))
            raise OSError(errno.EINVAL, "not a regular file", str(self.host))
        return f, st

    def readlink(self) -> str:
        return os.readlink(self.name, dir_fd=self.fd)

    def unlink(self) -> None:
        os.unlink(self.name, dir_fd=self.fd)

    def mkdir(self, mode: int) -> None:
        os.mkdir(self.name, mode, dir_fd=self.fd)

    def listdir(self) -> list[str]:
        fd = self.open(os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def child(self, name: str) -> Place:
        """The place of ``name`` inside the directory here (which must not be a symlink)."""
        inner = Dir(os.open(self.name, O_DIR, dir_fd=self.fd))
        return Place(
            self.root,
            (*self.parent, self.name),
            inner,
            name,
            self.host / name,
            self.written.rstrip("/") + "/" + name,
        )

    def rmtree(self) -> None:
        """Remove the directory here and everything in it (descriptor-based: never follows a
        symlink out of it)."""
        shutil.rmtree(self.name, dir_fd=self.fd)

    def symlink(self, target: str) -> None:
        """Make the name a symlink to ``target``, replacing what is there (not a directory)."""
        tmp = temp_name(self.name)
        fd = self.fd
        os.symlink(target, tmp, dir_fd=fd)
        try:
            os.replace(tmp, self.name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise

    def set_attrs(
        self, mode: int | None, uid: int | None, gid: int | None, directory: bool = False
    ) -> None:
        """Set the owner, then the mode, of what is here (never through a symlink)."""
        uid = -1 if uid is None else uid
        gid = -1 if gid is None else gid
        try:
            fd = self.open(os.O_RDONLY | os.O_NONBLOCK | (os.O_DIRECTORY if directory else 0))
        except PermissionError:  # not readable by this user: an O_PATH handle, by /proc
            fd = self.open(os.O_PATH)
            try:
                if uid != -1 or gid != -1:
                    os.chown(self.name, uid, gid, dir_fd=self.fd, follow_symlinks=False)
                if mode is not None:
                    os.chmod(f"/proc/self/fd/{fd}", mode)
            finally:
                os.close(fd)
            return
        try:
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def fsync_dir(self) -> None:
        """fsync the directory the name is in (its entries)."""
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Staged:
    """A temporary file written beside its target, to be renamed over it, or discarded.

    Both names are relative to the target's directory. That directory is named as the root
    resolves it (again, from the run's open directories, at commit) rather than held open by
    each staged file: a batch of thousands holds no more descriptors than the root does. A file
    staged beside a host path (the state directory) holds its directory instead.
    """

    __slots__ = ("_dir", "_parent", "_root", "name", "target", "tmp_name")

    def __init__(self, place: Place, tmp_name: str) -> None:
        self._root = place.root
        self._parent = place.parent
        self._dir = place.dir if place.root is None else None
        self.tmp_name = tmp_name
        self.name = place.name
        self.target = place.host

    @property
    def tmp(self) -> Path:
        return self.target.parent / self.tmp_name

    def _directory(self) -> Dir:
        found = self._dir if self._root is None else self._root.directory(self._parent)
        if found is None:
            raise FileNotFoundError(
                errno.ENOENT, "the parent directory does not exist", str(self.target.parent)
            )
        return found

    def commit(self) -> None:
        """Rename the temporary over the target, inside the one directory."""
        directory = self._directory()
        os.replace(self.tmp_name, self.name, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)

    def discard(self) -> None:
        with contextlib.suppress(OSError, ReconcilerError):
            os.unlink(self.tmp_name, dir_fd=self._directory().fd)


def fsync_dir(directory: Path) -> None:
    """fsync a directory (its entries) or a file (its data): whatever the path is."""
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _final_attrs(
    place: Place, mode: int | None, uid: int | None, gid: int | None
) -> tuple[int, int, int]:
    """The owner and mode a replacement gets: those asked for, else the old file's (0644 and
    the caller's for a new file)."""
    old = place.lstat() if mode is None or uid is None or gid is None else None
    return (
        mode if mode is not None else (old.st_mode & 0o7777 if old is not None else 0o644),
        uid if uid is not None else (old.st_uid if old is not None else -1),
        gid if gid is not None else (old.st_gid if old is not None else -1),
    )


def stage_at(
    place: Place,
    data: bytes,
    mode: int | None,
    uid: int | None,
    gid: int | None,
    fsync: bool = False,
) -> Staged:
    """Write ``data`` to a temporary file beside the place; return it staged for the rename.

    The temporary is created with mode 0600 (nobody else can open it), then gets its final
    owner and mode, and only then its content. When mode, uid or gid is None the existing
    file's is kept. Without ``fsync`` the engine makes a batch of staged files durable with one
    syncfs before renaming each over its target: atomic_write's guarantee for a fraction of the
    cost.
    """
    mode, uid, gid = _final_attrs(place, mode, uid, gid)
    directory = place.fd
    tmp = temp_name(place.name)
    fd = os.open(
        tmp,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=directory,
    )
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
            os.unlink(tmp, dir_fd=directory)
        raise
    return Staged(place, tmp)


def write_at(
    place: Place,
    data: bytes,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    sync: Callable[[Path], None] | None = None,
) -> None:
    """Replace the file at ``place`` with ``data`` atomically; on any error it is untouched.

    ``sync`` makes the rename durable (default: fsync the directory now); the engine passes
    one that fsyncs each directory once at the end of the run.
    """
    staged = stage_at(place, data, mode, uid, gid, fsync=True)
    try:
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    if sync is None:
        place.fsync_dir()
    else:
        sync(place.host.parent)


def atomic_write(
    path: Path,
    data: bytes,
    mode: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    sync: Callable[[Path], None] | None = None,
) -> None:
    """write_at for a host path outside any root (the state directory, the app store)."""
    write_at(Place.at(path), data, mode, uid, gid, sync)


def stage_write(
    path: Path,
    data: bytes,
    mode: int | None,
    uid: int | None,
    gid: int | None,
    fsync: bool = False,
) -> Path:
    """stage_at for a host path outside any root; return the temporary's path."""
    return stage_at(Place.at(path), data, mode, uid, gid, fsync).tmp


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


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(CHUNK):
        yield chunk


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# Retention of the backup store: every path keeps its newest KEEP_VERSIONS backups, and every
# backup younger than KEEP_DAYS is kept whatever its rank.
KEEP_VERSIONS = 10
KEEP_DAYS = 30
_DAY = 86400.0


class BackupStore:
    """Content-addressed copies of replaced or removed files, under ``<state>/backups``."""

    def __init__(
        self, state_dir: Path, keep_versions: int = KEEP_VERSIONS, keep_days: float = KEEP_DAYS
    ) -> None:
        self.base = state_dir / "backups"
        self.objects = self.base / "objects"
        self.index = self.base / "index.jsonl"
        self.keep_versions = keep_versions
        self.keep_days = keep_days
        # The index's size after the last prune; a prune finding it unchanged (and recent)
        # has nothing new to consider.
        self.marker = self.base / "pruned"

    def save(
        self,
        source: Path | Place,
        path_as_written: str,
        sync: Callable[[Path], None] | None = None,
        staged: bool = False,
        data: bytes | None = None,
    ) -> str:
        """Store the file's content and metadata; raises when it cannot (the caller aborts).

        ``source`` is a managed file's place, or a host path. ``data``: its content as the
        caller just read it.
        """
        if data is None:
            # Copied a chunk at a time: a big file costs no more memory than a small one.
            if isinstance(source, Place):
                f, st = source.open_regular()
            else:
                f = open(source, "rb")  # noqa: SIM115 - closed below
                st = os.fstat(f.fileno())
            with f:
                return self.save_open(f, st, path_as_written, sync, staged)
        if isinstance(source, Place):
            found = source.lstat()
            if found is None:
                raise FileNotFoundError(errno.ENOENT, "vanished", str(source.host))
            st = found
        else:
            st = os.lstat(source)
        return self.save_data(data, st, path_as_written, sync, staged)

    def save_open(
        self,
        f: BinaryIO,
        st: os.stat_result,
        path_as_written: str,
        sync: Callable[[Path], None] | None = None,
        staged: bool = False,
    ) -> str:
        """Store the rest of an open file, a chunk at a time, with the mode and owner of ``st``."""
        sha = self._store(_chunks(f), sync, staged)
        return self._record(sha, st, path_as_written, sync, staged)

    def _store(
        self, chunks: Iterator[bytes], sync: Callable[[Path], None] | None, staged: bool
    ) -> str:
        """Copy a content into the store under its sha256, computed while it is copied."""
        self.objects.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.objects / temp_name("incoming")
        h = hashlib.sha256()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                for chunk in chunks:
                    h.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                if not staged:
                    os.fsync(fd)
            finally:
                os.close(fd)
            sha = h.hexdigest()
            target = self.objects / sha[:2] / sha
            if target.exists():
                tmp.unlink()
                return sha
            target.parent.mkdir(exist_ok=True, mode=0o700)
            os.rename(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        if not staged:
            (fsync_dir if sync is None else sync)(target.parent)
        return sha

    def save_data(
        self,
        data: bytes,
        st: os.stat_result,
        path_as_written: str,
        sync: Callable[[Path], None] | None = None,
        staged: bool = False,
    ) -> str:
        """Store a content with the mode and owner of ``st``.

        The content is fsynced before this returns. ``sync`` (the run's deferred fsync) makes
        the object's name and the index line durable with the run's other renames: they are
        written before the file they back up is replaced, and the filesystem's journal keeps
        that order. ``staged``: nothing is fsynced here; the engine syncs the filesystem
        before it renames the staged replacement into place.
        """
        sha = hashlib.sha256(data).hexdigest()
        target = self.objects / sha[:2] / sha
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if staged:
                stage_at(Place.at(target), data, 0o600, -1, -1).commit()
            else:
                atomic_write(target, data, 0o600, -1, -1, sync=sync)
        return self._record(sha, st, path_as_written, sync, staged)

    def _record(
        self,
        sha: str,
        st: os.stat_result,
        path_as_written: str,
        sync: Callable[[Path], None] | None,
        staged: bool,
    ) -> str:
        """Add the index line of a stored content."""
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
        for _, entry in self._lines():
            if entry is not None and (path is None or entry.get("path") == path):
                found.append(entry)
        return found

    def _lines(self) -> list[tuple[str, dict[str, Any] | None]]:
        try:
            lines = self.index.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out: list[tuple[str, dict[str, Any] | None]] = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None  # a torn last line after a crash
            out.append((line, entry if isinstance(entry, dict) else None))
        return out

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

    def prune(self, now: float | None = None) -> int:
        """Apply the retention: drop the index lines it does not keep, then the objects no
        kept line refers to. Return how many lines were dropped.

        Kept: the newest ``keep_versions`` backups of every path, and every backup younger than
        ``keep_days``. The index is rewritten atomically before any object is removed, so a
        crash leaves at worst objects nothing refers to (removed by a later prune), never a
        line without its object. Cheap when nothing was backed up since the last prune that
        day: one stat and one small read.
        """
        now = time.time() if now is None else now
        self._sweep_displaced(now)
        try:
            size = os.stat(self.index).st_size
        except FileNotFoundError:
            return 0
        daily = True
        try:
            recorded = int(self.marker.read_text().split()[0])
            daily = now - os.stat(self.marker).st_mtime >= _DAY
            if recorded == size and not daily:
                return 0
        except (OSError, ValueError, IndexError):
            pass
        lines = self._lines()
        kept: list[str] = []
        referenced: set[str] = set()
        ranks: dict[str, int] = {}
        for line, entry in reversed(lines):
            if entry is None:
                continue
            rank = ranks[str(entry.get("path"))] = ranks.get(str(entry.get("path")), 0) + 1
            if rank <= self.keep_versions or now - _taken_at(entry) < self.keep_days * _DAY:
                kept.append(line)
                referenced.add(str(entry.get("sha256")))
        dropped = len(lines) - len(kept)
        if dropped:
            body = "".join(line + "\n" for line in reversed(kept)).encode()
            atomic_write(self.index, body, 0o600, -1, -1)
            size = len(body)
        if dropped or daily:
            self._sweep(referenced)
        atomic_write(self.marker, f"{size}\n".encode(), 0o600, -1, -1)
        return dropped

    def _sweep_displaced(self, now: float) -> None:
        """Remove what ``force`` moved aside more than ``keep_days`` ago (the time is the
        first part of its name, as displace writes it)."""
        area = self.base / "displaced"
        with contextlib.suppress(FileNotFoundError), os.scandir(area) as entries:
            for entry in entries:
                try:
                    moved = calendar.timegm(time.strptime(entry.name[:16], "%Y%m%dT%H%M%SZ"))
                except ValueError:
                    continue
                if now - moved < self.keep_days * _DAY:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _sweep(self, referenced: set[str]) -> None:
        """Remove the objects no index line refers to."""
        with contextlib.suppress(FileNotFoundError), os.scandir(self.objects) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                left = False
                with os.scandir(shard.path) as objects:
                    for obj in objects:
                        if obj.name in referenced or TMP_MARK in obj.name:
                            left = True
                            continue
                        with contextlib.suppress(OSError):
                            os.unlink(obj.path)
                if not left:
                    with contextlib.suppress(OSError):
                        os.rmdir(shard.path)


def _taken_at(entry: dict[str, Any]) -> float:
    """When a backup was taken (seconds since the epoch); 0 when the line does not say."""
    try:
        return float(calendar.timegm(time.strptime(str(entry["time"]), "%Y-%m-%dT%H:%M:%SZ")))
    except (KeyError, ValueError):
        return 0.0


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
