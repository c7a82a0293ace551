"""apt_repository: an apt source in deb822 form and the key that signs it.

The source is ``/etc/apt/sources.list.d/<name>.sources``; its signing key is
``/etc/apt/keyrings/<name>.asc`` (ASCII-armored) or ``<name>.gpg`` (binary), named by the
source's ``Signed-By:`` so that the key is trusted for this repository only. Both are written
atomically, with backups, through the root. When either changes, the package lists are marked
stale: the next ``package`` transaction runs ``apt-get update`` first, and every ``package`` of
the catalog is applied after every ``apt_repository``.
"""

from __future__ import annotations

import hashlib
import re
import stat
from collections.abc import Mapping
from typing import Any, ClassVar

from reconciler.errors import ResourceError
from reconciler.fs import Place
from reconciler.resources._path import text_diff
from reconciler.resources.base import Attr, Change, Context, Resource, register
from reconciler.resources.package import mark_lists_stale

SOURCES_DIR = "/etc/apt/sources.list.d"
KEYRINGS_DIR = "/etc/apt/keyrings"
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*\Z")
URI = re.compile(
    r"(https?|file|mirror\+https?|mirror\+file|cdrom|tor\+https?)://[^\s\x00-\x1f\x7f]+\Z"
)
WORD = re.compile(r"[A-Za-z0-9_.~/+][A-Za-z0-9_.~/+:-]*\Z")  # a suite or a component
ARCH = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
ARMORED = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
MAX_KEY = 1024 * 1024


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def _key_bytes(key: Any) -> bytes | None:
    if key is None:
        return None
    return key if isinstance(key, bytes) else str(key).encode()


@register
class AptRepository(Resource):
    type = "apt_repository"
    inline = True
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "uris": Attr("strlist", doc="the repository's URLs (http, https, file)"),
        "suites": Attr("strlist", doc="suites (bookworm), or one path ending in / (flat)"),
        "components": Attr("strlist", doc="components (main contrib); none for a flat one"),
        "architectures": Attr("strlist", doc="only these architectures; default: apt's"),
        "key": Attr("any", doc="the signing key (key_source: becomes this)"),
    }
    # Attributes the compiler reads from files/ into another attribute.
    file_attributes: ClassVar[Mapping[str, str]] = {"key_source": "key"}
    # Every resource of these types in the catalog is applied after every apt_repository.
    precedes: ClassVar[tuple[str, ...]] = ("package",)

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        if not NAME.match(title):
            problems.append((None, f"{title!r} is not a repository name (a-z, 0-9, '.', '_', '-')"))
        if attrs.get("ensure", "present") == "absent":
            return problems
        uris, suites = _strings(attrs.get("uris")), _strings(attrs.get("suites"))
        components = _strings(attrs.get("components"))
        for key, values in (("uris", uris), ("suites", suites)):
            if not values:
                problems.append((key, "required for a present repository"))
        for uri in uris:
            if not URI.match(uri):
                problems.append(
                    ("uris", f"{uri!r} is not an http, https or file URL without spaces")
                )
        for key, values in (("suites", suites), ("components", components)):
            for value in values:
                if not WORD.match(value):
                    problems.append((key, f"{value!r} is not a suite or component name"))
        flat = [s for s in suites if s.endswith("/")]
        if flat and components:
            problems.append(("components", "a flat repository (suite ending in /) has none"))
        if suites and not flat and not components:
            problems.append(("components", "required unless the suite is a path ending in /"))
        for arch in _strings(attrs.get("architectures")):
            if not ARCH.match(arch):
                problems.append(("architectures", f"{arch!r} is not an architecture name"))
        data = _key_bytes(attrs.get("key"))
        if data is not None:
            if len(data) > MAX_KEY:
                problems.append(("key", f"larger than {MAX_KEY} bytes"))
            elif data.lstrip().startswith(b"-----"):
                if not data.lstrip().startswith(ARMORED.encode()):
                    problems.append(("key", f"an armored key must start with {ARMORED}"))
            elif not data or data[0] & 0x80 == 0:
                problems.append(("key", "neither an ASCII-armored nor a binary OpenPGP key"))
        return problems

    @property
    def key(self) -> bytes | None:
        return _key_bytes(self.attrs.get("key"))

    def key_path(self, key: bytes) -> str:
        suffix = "asc" if key.lstrip().startswith(ARMORED.encode()) else "gpg"
        return f"{KEYRINGS_DIR}/{self.title}.{suffix}"

    @property
    def sources_path(self) -> str:
        return f"{SOURCES_DIR}/{self.title}.sources"

    def managed_paths(self) -> list[str]:
        return [self.sources_path, *(self.key_path(k) for k in [self.key] if k is not None)]

    def sources(self) -> bytes:
        """The deb822 text of the source."""
        fields = [
            ("Types", ["deb"]),
            ("URIs", _strings(self.attrs.get("uris"))),
            ("Suites", _strings(self.attrs.get("suites"))),
            ("Components", _strings(self.attrs.get("components"))),
            ("Architectures", _strings(self.attrs.get("architectures"))),
            ("Signed-By", [self.key_path(self.key)] if self.key is not None else []),
        ]
        lines = [f"# Managed by reconciler ({self.identity})"]
        lines += [f"{name}: {' '.join(values)}" for name, values in fields if values]
        return ("\n".join(lines) + "\n").encode()

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        wanted: dict[str, bytes | None] = {
            f"{KEYRINGS_DIR}/{self.title}.asc": None,
            f"{KEYRINGS_DIR}/{self.title}.gpg": None,
            self.sources_path: None,
        }
        if self.attrs.get("ensure") != "absent":
            key = self.key
            if key is not None:
                wanted[self.key_path(key)] = key
            wanted[self.sources_path] = self.sources()
        changes: list[Change] = []
        for path, data in wanted.items():
            changes += self._converge(ctx, path, data, apply)
        if changes:
            if apply:
                mark_lists_stale(ctx)
            changes.append(Change("package lists", None, "refreshed before the next install"))
        return changes

    def _converge(self, ctx: Context, path: str, data: bytes | None, apply: bool) -> list[Change]:
        """One file of the repository to its content (None: absent)."""
        place = ctx.root.locate(path)
        st = place.lstat()
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise ResourceError(f"{path} is not a regular file; not replaced")
        old: bytes | None = None
        if st is not None:
            try:
                old = place.read_bytes()
            except OSError as exc:
                raise ResourceError(f"{path}: cannot read: {exc.strerror}") from None
        if old == data and (data is None or st is None or st.st_mode & 0o777 == 0o644):
            return []
        what = "sources" if path.endswith(".sources") else "key"
        if data is None:
            change = Change(what, path, "absent")
        elif old == data:
            change = Change(f"{what} mode", f"{st.st_mode & 0o777:04o}" if st else None, "0644")
        else:
            diff = text_diff(path, old or b"", data) if what == "sources" else None
            change = Change(what, _sha(old) if old is not None else "absent", _sha(data), diff)
        if not apply:
            return [change]
        try:
            if old is not None:
                ctx.backup(place, path, data=old)
            if data is None:
                place.unlink()
                ctx.sync_dir(place.host.parent)
            else:
                if place.dir is None:
                    place = self._make_parent(ctx, path)
                ctx.write_file(place, data, 0o644, None, None)
        except OSError as exc:
            raise ResourceError(f"{path}: cannot write: {exc.strerror or exc}") from None
        return [change]

    @staticmethod
    def _make_parent(ctx: Context, path: str) -> Place:
        """/etc/apt/keyrings made when missing (apt older than 2.4 has none); the place of
        ``path`` in it."""
        parent, _, name = path.rpartition("/")
        directory = ctx.root.locate(parent)
        if directory.dir is None:
            raise ResourceError(f"{parent.rpartition('/')[0]} does not exist: is apt installed?")
        directory.mkdir(0o755)
        ctx.sync_dir(directory.host.parent)
        return directory.child(name)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
