"""artifact: a release archive (or file) put in place from a URL, verified by its sha256.

The download goes to the state directory (bounded in size and time) and is verified before
anything is unpacked. Unpacking refuses absolute names, ``..``, links and devices (tarfile's
``data`` filter; the same checks for zip). The result is assembled beside the destination and
swapped in with renames, so a failed download or a bad archive leaves the destination as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from reconciler.errors import ResourceError
from reconciler.resources import _fs
from reconciler.resources._path import PathResource
from reconciler.resources.base import Attr, Change, Context, Resource, register

MARKER = ".reconciler-artifact"
CHUNK = 1 << 20
_SHA = re.compile(r"[0-9a-f]{64}\Z")


def download(url: str, dest: Path, limit: int, timeout: float, shown: str | None = None) -> None:
    """Fetch ``url`` into ``dest``, at most ``limit`` bytes; partial files are removed.

    ``shown``: the URL as messages show it (a digest for a sensitive artifact, whose messages
    then give only the kind of failure, since the reason may quote the URL or its path)."""
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


def _check_name(name: str) -> None:
    parts = posixpath.normpath(name).split("/")
    if name.startswith("/") or ".." in parts or "\\" in name:
        raise ResourceError(f"unsafe archive refused: member {name!r} would leave the destination")


def _safe_zip(archive: zipfile.ZipFile, into: Path) -> None:
    for info in archive.infolist():
        name = info.filename
        mode = info.external_attr >> 16
        _check_name(name)
        if stat.S_ISLNK(mode):
            raise ResourceError(f"unsafe archive refused: member {name!r} is a symlink")
    archive.extractall(into)


def unpack(path: Path, kind: str, into: Path, name: str) -> None:
    try:
        if kind in ("tar.gz", "tar"):
            with tarfile.open(path, "r:gz" if kind == "tar.gz" else "r:") as tar:
                for member in tar.getmembers():
                    _check_name(member.name)
                # The data filter also refuses links leading out, devices, and unsafe modes.
                tar.extractall(into, filter="data")
        elif kind == "zip":
            with zipfile.ZipFile(path) as archive:
                _safe_zip(archive, into)
        else:
            shutil.copyfile(path, into / name)
    except tarfile.FilterError as exc:
        raise ResourceError(f"unsafe archive refused: {exc}") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ResourceError(f"cannot unpack the artifact: {exc}") from None


@register
class Artifact(PathResource):
    type = "artifact"
    inline = False  # downloads are slow: they go to the pool
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

    def _installed(self, host: Path) -> str | None:
        try:
            return (host / MARKER).read_text().split()[0]
        except (OSError, IndexError):
            return None

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        host, st = self.locate(ctx)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ResourceError(f"{self.path} exists and is not a directory")
        installed = self._installed(host) if st is not None else None
        if installed == self.sha:
            return []
        change = Change("sha256", installed, self.sha)
        if not apply:
            return [change]
        cache = ctx.state_dir / "artifacts"
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        blob = cache / self.sha
        if not blob.exists() or _sha256(blob) != self.sha:
            part = cache / f"{self.sha}.part"
            download(
                str(self.attrs["url"]),
                part,
                int(self.attrs["max_size"]),
                float(self.attrs["timeout"]),
                shown=self.show(str(self.attrs["url"])) if self.sensitive else None,
            )
            got = _sha256(part)
            if got != self.sha:
                part.unlink(missing_ok=True)
                raise ResourceError(f"checksum mismatch: got sha256 {got}, expected {self.sha}")
            os.replace(part, blob)
        staging = host.parent / _fs.temp_name(host.name)
        try:
            staging.mkdir(mode=0o755)
            name = (
                posixpath.basename(urllib.parse.urlsplit(str(self.attrs["url"])).path) or "artifact"
            )
            unpack(blob, str(self.attrs["extract"]), staging, name)
            (staging / MARKER).write_text(f"{self.sha} {self.attrs['url']}\n")
            if st is not None:
                old = host.parent / _fs.temp_name(host.name + ".old")
                os.rename(host, old)
                try:
                    os.rename(staging, host)
                except OSError:
                    os.rename(old, host)  # put the previous release back
                    raise
                shutil.rmtree(old)
            else:
                os.rename(staging, host)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
            raise
        ctx.sync_dir(host.parent)
        return [change]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
