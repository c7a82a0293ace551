"""artifact: a release archive (or file) put in place from a URL, verified by its sha256.

The download goes to the state directory (bounded in size and time) and is verified before
anything is unpacked. A ``file://`` URL names a file on the node, inside the root: it is opened
as managed files are, through its directory held open, with no symlink followed out of the root
and none at the file itself. A checksum mismatch names only the expected digest: the actual one
would tell something about a file that is not shown. Unpacking refuses absolute names, ``..``, links leading out and devices,
judging names alone (zip: links refused). The result is assembled beside the destination and
swapped in with renames, so a failed download or a bad archive leaves the destination as it was.
All of that goes through the destination's parent directory opened race-free inside the root
(``_fs.Place``), as file changes do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import posixpath
import re
import shutil
import stat
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from reconciler import fs as _fs
from reconciler.errors import PathEscape, ResourceError
from reconciler.resources._path import PathResource
from reconciler.resources.base import Attr, Change, Context, Resource, register

if TYPE_CHECKING:  # imported where used: a run without artifacts does not load them
    import tarfile
    import zipfile

MARKER = ".reconciler-artifact"
CHUNK = 1 << 20
_SHA = re.compile(r"[0-9a-f]{64}\Z")


def download(url: str, dest: Path, limit: int, timeout: float, shown: str | None = None) -> None:
    """Fetch ``url`` into ``dest``, at most ``limit`` bytes; partial files are removed.

    ``shown``: the URL as messages show it (a digest for a sensitive artifact, whose messages
    then give only the kind of failure, since the reason may quote the URL or its path)."""
    import urllib.error
    import urllib.request

    name = url if shown is None else shown
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
            declared = response.headers.get("Content-Length") if response.headers else None
            if declared and declared.isdigit() and int(declared) > limit:
                raise ResourceError(f"{name}: larger than {limit} bytes")
            total = 0
            while chunk := response.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise ResourceError(f"{name}: larger than {limit} bytes")
                out.write(chunk)
            if declared and declared.isdigit() and total != int(declared):
                raise ResourceError(
                    f"{name}: download failed: truncated ({total} of {declared} bytes)"
                )
            out.flush()
            os.fsync(out.fileno())
    except ResourceError:
        dest.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        dest.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        if shown is not None and not isinstance(reason, str):  # an HTTP reason is just words
            reason = getattr(reason, "strerror", None) or type(reason).__name__
        raise ResourceError(f"{name}: download failed: {reason}") from None


def copy_local(root: _fs.Root, url: str, dest: Path, limit: int, shown: str | None = None) -> None:
    """Copy the regular file a ``file://`` URL names inside ``root`` into ``dest``, at most
    ``limit`` bytes; ``shown`` as for ``download``."""
    name = url if shown is None else shown
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ResourceError(f"{name}: refused: a file URL names a file on this node, not a host")
    try:
        place = root.locate(urllib.parse.unquote(parts.path))
        fd = place.open(os.O_RDONLY | os.O_NONBLOCK)
    except PathEscape as exc:
        why = "the path leads out of the root" if shown is not None else str(exc)
        raise ResourceError(f"{name}: refused: {why}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ResourceError(f"{name}: refused: a symlink, not followed") from None
        raise ResourceError(
            f"{name}: download failed: {os.strerror(exc.errno or errno.EIO)}"
        ) from None
    try:
        with open(fd, "rb") as source, open(dest, "wb") as out:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise ResourceError(f"{name}: refused: not a regular file")
            total = 0
            while chunk := source.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    raise ResourceError(f"{name}: larger than {limit} bytes")
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except ResourceError:
        dest.unlink(missing_ok=True)
        raise
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise ResourceError(
            f"{name}: download failed: {os.strerror(exc.errno or errno.EIO)}"
        ) from None


def _check_name(name: str) -> None:
    parts = posixpath.normpath(name).split("/")
    if name.startswith("/") or ".." in parts or "\\" in name:
        raise ResourceError(f"unsafe archive refused: member {name!r} would leave the destination")


def _unsafe(name: str, why: str) -> ResourceError:
    return ResourceError(f"unsafe archive refused: member {name!r} {why}")


def _check_tar(members: list[tarfile.TarInfo]) -> None:
    """Refuse what could reach outside the destination, judging names alone.

    Names are resolved lexically, which is exact here: the destination is a fresh directory
    holding only the archive's members, and no member and no link target may pass through a
    link of the archive (a link to ``.`` followed by ``..`` would climb out unseen). This
    never looks at the filesystem, whose paths a local user might be swapping meanwhile.
    """
    links = {posixpath.normpath(m.name) for m in members if m.issym() or m.islnk()}

    def walk(member: str, path: str) -> None:
        stack: list[str] = []
        for part in path.split("/"):
            if stack and "/".join(stack) in links:
                raise _unsafe(member, f"passes through the link {'/'.join(stack)!r}")
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise _unsafe(member, "leads out of the destination")
                stack.pop()
            else:
                stack.append(part)

    for m in members:
        _check_name(m.name)
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise _unsafe(m.name, "is a device, a fifo or another special file")
        walk(m.name, posixpath.normpath(m.name))
        if m.issym() or m.islnk():
            if m.linkname.startswith("/"):
                raise _unsafe(m.name, f"links to the absolute path {m.linkname!r}")
            base = posixpath.dirname(m.name) if m.issym() else ""
            walk(m.name, posixpath.join(base, m.linkname))


def _tar_attrs(member: tarfile.TarInfo, _dest: str) -> tarfile.TarInfo:
    """The attributes a release's files get: no owner from the archive, no setuid, setgid or
    sticky bit, no write for group and others (as tarfile's ``data`` filter)."""
    changes: dict[str, Any] = {"uid": None, "gid": None, "uname": None, "gname": None}
    if member.isdir() or member.issym():
        changes["mode"] = None  # the default: 0755 less the umask
    else:
        mode = member.mode & 0o755
        if not mode & 0o100:
            mode &= ~0o111  # executable by others only if by its owner
        changes["mode"] = mode | 0o600
    return member.replace(**changes, deep=False)


def _safe_zip(archive: zipfile.ZipFile, into: Path) -> None:
    for info in archive.infolist():
        name = info.filename
        mode = info.external_attr >> 16
        _check_name(name)
        if stat.S_ISLNK(mode):
            raise ResourceError(f"unsafe archive refused: member {name!r} is a symlink")
    archive.extractall(into)


def unpack(path: Path, kind: str, into: Path, name: str) -> None:
    import tarfile
    import zipfile

    try:
        if kind in ("tar.gz", "tar"):
            with tarfile.open(path, "r:gz" if kind == "tar.gz" else "r:") as tar:
                _check_tar(tar.getmembers())
                tar.extractall(into, filter=_tar_attrs)
        elif kind == "zip":
            with zipfile.ZipFile(path) as archive:
                _safe_zip(archive, into)
        else:
            shutil.copyfile(path, into / name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ResourceError(f"cannot unpack the artifact: {exc}") from None


@register
class Artifact(PathResource):
    type = "artifact"
    inline = False  # downloads are slow: they go to the pool
    secret_attributes = ("url",)
    attributes: ClassVar[Mapping[str, Attr]] = {
        "url": Attr("str", required=True),
        "sha256": Attr("str", required=True),
        "extract": Attr("str", default="none", choices=("tar.gz", "tar", "zip", "none")),
        "timeout": Attr("int", default=300),
        "max_size": Attr("int", default=1 << 30, doc="bytes"),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems = super().validate(title, attrs)
        scheme = urllib.parse.urlsplit(str(attrs.get("url", ""))).scheme
        if scheme not in ("http", "https", "file"):
            problems.append(("url", "must be an http, https or file URL"))
        if not _SHA.match(str(attrs.get("sha256", "")).lower()):
            problems.append(("sha256", "must be 64 hexadecimal digits"))
        return problems

    @property
    def sha(self) -> str:
        return str(self.attrs["sha256"]).lower()

    def pruned(self) -> Resource | None:
        return None  # a release directory is removed with a directory resource, deliberately

    def _installed(self, place: _fs.Place) -> str | None:
        try:
            return place.child(MARKER).read_bytes().decode().split()[0]
        except (OSError, UnicodeDecodeError, IndexError):
            return None

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        place, st = self.place(ctx)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ResourceError(f"{self.path} exists and is not a directory")
        installed = self._installed(place) if st is not None else None
        if installed == self.sha:
            return []
        change = Change("sha256", installed, self.sha)
        if not apply:
            return [change]
        blob = self._fetch(ctx)
        # Everything below goes through the destination's parent directory, held open: a
        # directory on the way swapped for a symlink meanwhile leads nowhere else.
        parent = place.fd
        staging = _fs.temp_name(place.name)
        os.mkdir(staging, 0o755, dir_fd=parent)
        try:
            fd = os.open(staging, _fs.O_DIR, dir_fd=parent)
            try:
                # The descriptor's /proc link is that very directory, whatever its path now.
                into = Path(f"/proc/self/fd/{fd}")
                url = str(self.attrs["url"])
                name = posixpath.basename(urllib.parse.urlsplit(url).path) or "artifact"
                unpack(blob, str(self.attrs["extract"]), into, name)
                marker = os.open(
                    MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=fd
                )
                with open(marker, "w") as f:
                    f.write(f"{self.sha} {url}\n")
            finally:
                os.close(fd)
            if st is not None:
                old = _fs.temp_name(place.name + ".old")
                os.rename(place.name, old, src_dir_fd=parent, dst_dir_fd=parent)
                try:
                    os.rename(staging, place.name, src_dir_fd=parent, dst_dir_fd=parent)
                except OSError:
                    # put the previous release back
                    os.rename(old, place.name, src_dir_fd=parent, dst_dir_fd=parent)
                    raise
                shutil.rmtree(old, dir_fd=parent)
            else:
                os.rename(staging, place.name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(staging, dir_fd=parent)
            raise
        ctx.sync_dir(place.host.parent)
        return [change]

    def _fetch(self, ctx: Context) -> Path:
        """The verified release in the state directory's cache, downloaded if need be."""
        cache = ctx.state_dir / "artifacts"
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        blob = cache / self.sha
        if not blob.exists() or _sha256(blob) != self.sha:
            part = cache / f"{self.sha}.part"
            url = str(self.attrs["url"])
            shown = self.show(url) if self.sensitive else None
            if urllib.parse.urlsplit(url).scheme == "file":
                copy_local(ctx.root, url, part, int(self.attrs["max_size"]), shown)
            else:
                download(
                    url, part, int(self.attrs["max_size"]), float(self.attrs["timeout"]), shown
                )
            if _sha256(part) != self.sha:
                part.unlink(missing_ok=True)
                raise ResourceError(f"checksum mismatch: expected sha256 {self.sha}")
            os.replace(part, blob)
        return blob


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
