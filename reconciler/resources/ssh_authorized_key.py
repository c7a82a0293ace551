"""ssh_authorized_key: one public key, with its options, in a user's ``authorized_keys``.

The title is the key's comment, by which its line is found (as in Puppet). The file and its
``.ssh`` directory get what sshd's StrictModes requires: owned by the user, 0600 and 0700. With
``exclusive``, the file keeps only the keys the catalog declares for it (Puppet's
``purge_ssh_keys``). Every path is reached through the root without following a symlink the
user could have planted in their home.
"""

from __future__ import annotations

import binascii
import errno
import os
import re
import stat
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, cast

from reconciler.errors import ResourceError
from reconciler.fs import Place
from reconciler.resources._accounts import check_name, users
from reconciler.resources._path import check_path_title, text_diff
from reconciler.resources.base import Attr, Change, Context, Resource, register

Ensure = Literal["present", "absent"]
KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
)
# One option: a name, and a double-quoted value in which a quote is escaped (sshd's syntax).
OPTION = re.compile(r'[A-Za-z0-9-]+(="(?:[^"\\]|\\.)*")?\Z')
FILE_MODE, DIR_MODE = 0o600, 0o700
MAX_KEYS_FILE = 1024 * 1024


def _control(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def key_problem(kind: str, key: str) -> str | None:
    """Why ``key`` is not the base64 of a public key of type ``kind``, or None."""
    try:
        blob = binascii.a2b_base64(key.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return "is not base64"
    if len(blob) < 4:
        return "is too short to be a public key"
    (length,) = struct.unpack(">I", blob[:4])
    named = blob[4 : 4 + length]
    if len(named) != length or named != kind.encode():
        return f"is not a {kind} key (it names {named[:40].decode(errors='replace')!r})"
    return None


@dataclass(frozen=True)
class KeyLine:
    options: str
    type: str
    key: str
    comment: str


def parse_line(line: str) -> KeyLine | None:
    """The parts of an authorized_keys line; None for a comment, a blank or an odd line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    options = ""
    if text.split(None, 1)[0] not in KEY_TYPES:
        quoted, end = False, len(text)
        for i, c in enumerate(text):
            if c == '"' and (i == 0 or text[i - 1] != "\\"):
                quoted = not quoted
            elif c in " \t" and not quoted:
                end = i
                break
        options, text = text[:end], text[end:].strip()
    fields = text.split(None, 2)
    if len(fields) < 2:
        return None
    return KeyLine(options, fields[0], fields[1], fields[2].strip() if len(fields) > 2 else "")


@register
class SshAuthorizedKey(Resource):
    type = "ssh_authorized_key"
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "user": Attr("str", required=True, doc="whose key it is; owns the file"),
        "type": Attr("str", choices=KEY_TYPES),
        "key": Attr("str", doc="the public key, base64"),
        "options": Attr("strlist", default=[], doc='from="10.0.0.0/8", no-pty...'),
        "target": Attr("str", doc="default: the user's home/.ssh/authorized_keys"),
        "exclusive": Attr("bool", default=False),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        if not title.strip() or _control(title):
            problems.append((None, f"the title {title!r} (the key's comment) must be one line"))
        problems += [("user", m) for _, m in check_name(str(attrs.get("user") or ""))]
        kind, key = attrs.get("type"), attrs.get("key")
        if attrs.get("ensure") != "absent":
            for name, value in (("type", kind), ("key", key)):
                if value is None:
                    problems.append((name, f"needed unless ensure is absent ({name} is not set)"))
        if kind is not None and key is not None:
            why = key_problem(str(kind), str(key))
            if why:
                problems.append(("key", f"the key {why}"))
        for option in cls._options(attrs):
            if _control(option) or not OPTION.match(option):
                problems.append(
                    ("options", f'{option!r} is not an option like no-pty or from="10.0.0.0/8"')
                )
        target = attrs.get("target")
        if target is not None:
            problems += [("target", m) for _, m in check_path_title(str(target))]
        return problems

    @staticmethod
    def _options(attrs: Mapping[str, Any]) -> list[str]:
        value = attrs.get("options") or []
        return [str(v) for v in (value if isinstance(value, list) else [value])]

    @property
    def ensure(self) -> Ensure:
        return cast(Ensure, self.attrs["ensure"])

    @property
    def user(self) -> str:
        return str(self.attrs["user"])

    def autorequire(self) -> list[str]:
        return [f"user:{self.user}"]

    def managed_paths(self) -> list[str]:
        target = self.attrs.get("target")
        return [str(target)] if target is not None else []

    def serial_key(self) -> str:
        target = self.attrs.get("target")
        return f"ssh_authorized_keys:{target or '~' + self.user}"

    def line(self) -> str:
        options = ",".join(self._options(self.attrs))
        body = f"{self.attrs['type']} {self.attrs['key']} {self.title.strip()}"
        return f"{options} {body}" if options else body

    def target(self, ctx: Context) -> tuple[str, int, int, bool]:
        """The file (as written), the user's uid and gid, and whether it is the default one."""
        entry = users(ctx).get(self.user)
        if entry is None:
            raise ResourceError(f"no user {self.user!r} in {ctx.root.path('/etc/passwd')}")
        target = self.attrs.get("target")
        if target is not None:
            return str(target), entry.uid, entry.gid, False
        if not entry.home.startswith("/"):
            raise ResourceError(f"{self.user}'s home {entry.home!r} is not an absolute path")
        return entry.home.rstrip("/") + "/.ssh/authorized_keys", entry.uid, entry.gid, True

    def _kept(self, ctx: Context, path: str) -> set[str] | None:
        """With exclusive: the comments of every present key the catalog declares for this
        file. None without exclusive (other keys are left alone)."""
        if not self.attrs.get("exclusive"):
            return None
        kept = {self.title.strip()}
        for other in ctx.catalog_resources:
            if isinstance(other, SshAuthorizedKey) and other.ensure == "present":
                try:
                    if other.target(ctx)[0] == path:
                        kept.add(other.title.strip())
                except ResourceError:
                    continue
        return kept

    def _edit(self, text: str, kept: set[str] | None) -> tuple[str, str | None, list[str]]:
        """The new content, this key's old line, and the lines exclusive removes."""
        want = None if self.ensure == "absent" else self.line()
        out: list[str] = []
        old: str | None = None
        purged: list[str] = []
        for line in text.splitlines():
            parsed = parse_line(line)
            if parsed is not None and parsed.comment == self.title.strip():
                if old is None:
                    old = line
                    if want is not None:
                        out.append(line if parse_line(want) == parsed else want)
                # else: a second line with this comment, dropped
            elif parsed is not None and kept is not None and parsed.comment not in kept:
                purged.append(line)
            else:
                out.append(line)
        if old is None and want is not None:
            out.append(want)
        new = "\n".join(out) + ("\n" if out else "")
        return (text if new.splitlines() == text.splitlines() else new), old, purged

    def _ssh_dir(self, ctx: Context, path: str, uid: int, gid: int, apply: bool) -> list[Change]:
        """The default target's .ssh directory: there, a directory, the user's, 0700."""
        directory = os.path.dirname(path)
        place = ctx.root.locate(directory)
        if place.dir is None:
            raise ResourceError(f"{self.user}'s home {os.path.dirname(directory)} does not exist")
        st = place.lstat()
        if st is None:
            if apply:
                place.mkdir(DIR_MODE)
                place.set_attrs(DIR_MODE, uid, gid, directory=True)
                ctx.sync_dir(place.host.parent)
            return [Change(".ssh", None, f"directory {DIR_MODE:04o} owned by {self.user}")]
        if stat.S_ISLNK(st.st_mode):
            raise ResourceError(f"{directory} is a symlink: not followed")
        if not stat.S_ISDIR(st.st_mode):
            raise ResourceError(f"{directory} is not a directory")
        return self._attrs(place, st, directory, DIR_MODE, uid, gid, apply)

    def _attrs(
        self,
        place: Place,
        st: os.stat_result,
        written: str,
        mode: int,
        uid: int,
        gid: int,
        apply: bool,
        directory: bool = True,
    ) -> list[Change]:
        changes = []
        name = os.path.basename(written)
        if st.st_mode & 0o7777 != mode:
            changes.append(Change(f"{name} mode", f"{st.st_mode & 0o7777:04o}", f"{mode:04o}"))
        if (st.st_uid, st.st_gid) != (uid, gid):
            changes.append(Change(f"{name} owner", f"{st.st_uid}:{st.st_gid}", f"{uid}:{gid}"))
        if changes and apply:
            place.set_attrs(mode, uid, gid, directory=directory)
        return changes

    def _read(self, place: Place, path: str) -> tuple[bytes | None, os.stat_result | None]:
        st = place.lstat()
        if st is None:
            return None, None
        if stat.S_ISLNK(st.st_mode):
            raise ResourceError(f"{path} is a symlink: not followed")
        if not stat.S_ISREG(st.st_mode):
            raise ResourceError(f"{path} is not a regular file")
        if st.st_size > MAX_KEYS_FILE:
            raise ResourceError(f"{path} is {st.st_size} bytes: too large for authorized_keys")
        try:
            return place.read()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ResourceError(f"{path} is a symlink: not followed") from None
            raise ResourceError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        path, uid, gid, default = self.target(ctx)
        changes: list[Change] = []
        if default and self.ensure == "present":
            changes += self._ssh_dir(ctx, path, uid, gid, apply)
        if changes and not apply and changes[0].before is None:
            # No .ssh yet: the file will be new; nothing below it can be read.
            place, raw, st = None, None, None
        else:
            place = ctx.root.locate(path)
            if place.dir is None and self.ensure == "absent":
                return changes
            if place.dir is None:
                raise ResourceError(f"the directory of {path} does not exist")
            raw, st = self._read(place, path)
        if raw is None and self.ensure == "absent":
            return changes
        try:
            text = (raw or b"").decode()
        except UnicodeDecodeError:
            raise ResourceError(f"{path} is not UTF-8 text") from None
        new, old, purged = self._edit(text, self._kept(ctx, path))
        if place is not None and st is not None and self.ensure == "present":
            changes += self._attrs(place, st, path, FILE_MODE, uid, gid, apply, directory=False)
        if raw is not None and new == text:
            return changes
        want = None if self.ensure == "absent" else self.line()
        diff = None if self.sensitive else text_diff(path, raw or b"", new.encode())
        if old != want:
            changes.append(Change("key", self._shown(old), self._shown(want), diff))
            diff = None
        changes += [Change("purged", self._shown(line), None, diff) for line in purged]
        if apply:
            place = ctx.root.locate(path)
            if raw is not None:
                try:
                    ctx.backup(place, path, raw)
                except OSError as exc:
                    raise ResourceError(
                        f"{path}: backup failed, not changed: {exc.strerror or exc}"
                    ) from None
            try:
                ctx.write_file(place, new.encode(), FILE_MODE, uid, gid)
            except OSError as exc:
                raise ResourceError(
                    f"{path}: cannot write: {os.strerror(exc.errno or 0)}"
                ) from None
            ctx.fingerprints.pop(path, None)
        return changes

    def _shown(self, line: str | None) -> str | None:
        return None if line is None else self.show(line)
