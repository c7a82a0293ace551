"""mount: a filesystem's entry in fstab and, on the live system, whether it is mounted.

As in Puppet: ``present`` is the fstab entry only, ``mounted`` the entry and a live mount,
``unmounted`` the entry and no live mount, ``absent`` neither. The live state is read from
``/proc/self/mountinfo``; ``mount``, ``umount`` and ``mount -o remount`` run as argv lists.
Under ``--root`` only the fstab entry is managed: ``mounted`` and ``unmounted`` are refused.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

from reconciler.errors import ResourceError
from reconciler.resources._path import check_path_title, text_diff
from reconciler.resources.base import Attr, Change, Context, Resource, register

Ensure = Literal["mounted", "unmounted", "present", "absent"]
ENSURES: tuple[Ensure, ...] = ("mounted", "unmounted", "present", "absent")
TIMEOUT = 60.0
MOUNTINFO = Path("/proc/self/mountinfo")
FSTYPE = re.compile(r"[a-z0-9][a-z0-9_.+-]*\Z")
# Per-mount flags the kernel shows in mountinfo: an option naming one is checked live.
FLAGS = {
    "ro": ("ro", "rw"),
    "rw": ("rw", "ro"),
    "nosuid": ("nosuid", None),
    "nodev": ("nodev", None),
    "noexec": ("noexec", None),
    "noatime": ("noatime", None),
    "suid": (None, "nosuid"),
    "dev": (None, "nodev"),
    "exec": (None, "noexec"),
}


def _bad_field(value: str) -> str | None:
    """Why a value cannot be one field of an fstab line or an argument of mount, or None."""
    if not value:
        return "must not be empty"
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return f"{value!r} must not contain whitespace or control characters"
    if value.startswith("-"):
        return f"{value!r} must not start with '-' (it would be read as an option)"
    return None


def _unescape(field: str) -> str:
    """A field of fstab or mountinfo with its octal escapes (\\040 for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class LiveMount:
    source: str
    fstype: str
    flags: frozenset[str]  # the per-mount flags (rw, nosuid, relatime...)


def live_mount(path: str) -> LiveMount | None:
    """What is mounted at ``path`` now (the top of a stack of mounts), from mountinfo."""
    found = None
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split(" ")
        if len(fields) < 10 or "-" not in fields[6:]:
            continue
        sep = fields.index("-", 6)
        if _unescape(fields[4]) == path:
            found = LiveMount(
                _unescape(fields[sep + 2]), fields[sep + 1], frozenset(fields[5].split(","))
            )
    return found


@register
class Mount(Resource):
    type = "mount"
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="mounted", choices=ENSURES),
        "device": Attr("str", doc="what to mount: /dev/sdb1, UUID=..., tmpfs, host:/export"),
        "fstype": Attr("str", doc="ext4, xfs, tmpfs, nfs..."),
        "options": Attr("str", default="defaults"),
        "dump": Attr("int", default=0),
        "pass": Attr("int", default=0),
        "target": Attr("str", default="/etc/fstab", doc="the file system table"),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems = check_path_title(title)
        bad = _bad_field(title)
        if bad and not problems:
            problems.append((None, f"the mount point {bad}"))
        ensure = attrs.get("ensure")
        for key in ("device", "fstype", "options"):
            value = attrs.get(key)
            if value is None:
                if ensure != "absent":
                    problems.append((key, f"needed unless ensure is absent ({key} is not set)"))
                continue
            bad = _bad_field(str(value))
            if bad:
                problems.append((key, bad))
        fstype = attrs.get("fstype")
        if fstype is not None and not FSTYPE.match(str(fstype)):
            problems.append(("fstype", f"{fstype!r} is not a filesystem type like ext4"))
        options = attrs.get("options")
        if options is not None and "" in str(options).split(","):
            problems.append(("options", f"{options!r} has an empty option"))
        for key in ("dump", "pass"):
            value = attrs.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 9:
                problems.append((key, f"must be a whole number from 0 to 9, not {value!r}"))
        target = str(attrs.get("target") or "")
        problems += [("target", message) for _, message in check_path_title(target)]
        return problems

    @property
    def path(self) -> str:
        return self.title.rstrip("/") or "/"

    @property
    def ensure(self) -> Ensure:
        return cast(Ensure, self.attrs["ensure"])

    def autorequire(self) -> list[str]:
        return [f"directory:{self.path}", f"file:{self.attrs['target']}"]

    def serial_key(self) -> str:
        return f"file:{self.attrs['target']}"

    def managed_paths(self) -> list[str]:
        return [str(self.attrs["target"])]

    def entry(self) -> str:
        a = self.attrs
        return (
            f"{a['device']}\t{self.path}\t{a['fstype']}\t{a['options']}\t{a['dump']}\t{a['pass']}"
        )

    def _edit(self, text: str) -> tuple[str, str | None]:
        """The table with this mount point's entry as desired, and the entry it had."""
        lines = text.splitlines()
        want = None if self.ensure == "absent" else self.entry()
        out: list[str] = []
        old: str | None = None
        for line in lines:
            fields = line.split()
            ours = len(fields) >= 2 and not line.lstrip().startswith("#")
            if not ours or (_unescape(fields[1]).rstrip("/") or "/") != self.path:
                out.append(line)
            elif old is None:
                old = line
                if want is not None:
                    # The same fields keep the line as it is written (its spacing).
                    out.append(line if fields == want.split("\t") else want)
            # else: a second entry for the same mount point, dropped
        if old is None and want is not None:
            out.append(want)
        new = "\n".join(out) + ("\n" if out else "")
        return (text if new.splitlines() == lines else new), old

    def _fstab(self, ctx: Context, apply: bool) -> tuple[list[Change], str | None]:
        target = str(self.attrs["target"])
        place = ctx.root.locate(target)
        try:
            raw = place.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ResourceError(f"{target} is a symlink: not followed") from None
            raise ResourceError(f"{target}: cannot read: {exc.strerror or exc}") from None
        if raw is None and self.ensure == "absent":
            return [], None
        try:
            text = (raw or b"").decode()
        except UnicodeDecodeError:
            raise ResourceError(f"{target} is not UTF-8 text") from None
        new, old = self._edit(text)
        if raw is not None and new == text:
            return [], old
        data = new.encode()
        want = None if self.ensure == "absent" else self.entry()
        diff = text_diff(target, raw or b"", data)
        if apply:
            if raw is not None:
                try:
                    ctx.backup(place, target, raw)
                except OSError as exc:
                    raise ResourceError(
                        f"{target}: backup failed, not changed: {exc.strerror or exc}"
                    ) from None
            try:
                ctx.write_file(place, data, None if raw is not None else 0o644, None, None)
            except OSError as exc:
                raise ResourceError(
                    f"{target}: cannot write: {os.strerror(exc.errno or 0)}"
                ) from None
            ctx.fingerprints.pop(target, None)
        shown = [None if line is None else " ".join(line.split()) for line in (old, want)]
        return [Change("fstab", shown[0], shown[1], diff)], old

    def _command(self, ctx: Context, argv: list[str]) -> None:
        result = ctx.runner.run(argv, timeout=TIMEOUT)
        if result.timed_out:
            raise ResourceError(f"{argv[0]} {self.path} timed out after {TIMEOUT:.0f} s")
        if result.returncode != 0:
            raise ResourceError(
                f"{' '.join(argv)} failed (exit {result.returncode}): {result.tail(5)}"
            )

    def _options_differ(self, live: LiveMount) -> list[str]:
        """The options asked for that the live mount's flags contradict."""
        wrong = []
        for option in str(self.attrs["options"]).split(","):
            has, lacks = FLAGS.get(option, (None, None))
            if (has is not None and has not in live.flags) or (lacks in live.flags):
                wrong.append(option)
        return wrong

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        live_managed = ctx.root.prefix == Path("/")
        if not live_managed and self.ensure in ("mounted", "unmounted"):
            raise ResourceError(
                f"mount {self.path}: ensure {self.ensure} manages the live mount, which cannot "
                f"be done under --root {ctx.root.prefix}; use present or absent to manage only "
                f"the fstab entry"
            )
        # mountinfo shows the mount point with its symlinks resolved.
        host = os.path.realpath(self.path)
        live = live_mount(host) if live_managed else None
        changes: list[Change] = []
        if self.ensure == "absent" and live is not None:
            changes.append(Change("mounted", "mounted", "unmounted"))
            if apply:
                self._command(ctx, ["umount", "--", host])
        fstab, old = self._fstab(ctx, apply)
        changes += fstab
        if self.ensure == "unmounted" and live is not None:
            changes.append(Change("mounted", "mounted", "unmounted"))
            if apply:
                self._command(ctx, ["umount", "--", host])
        if self.ensure != "mounted":
            return changes
        a = self.attrs
        if live is None:
            if not os.path.isdir(host):
                raise ResourceError(
                    f"the mount point {host} is not a directory (manage it with a directory "
                    f"resource)"
                )
            changes.append(Change("mounted", "unmounted", "mounted"))
            if apply:
                argv = ["mount", "-t", str(a["fstype"]), "-o", str(a["options"])]
                self._command(ctx, [*argv, "--", str(a["device"]), host])
            return changes
        old_options = old.split()[3] if old is not None and len(old.split()) > 3 else None
        wrong = self._options_differ(live)
        if wrong or (fstab and old_options != a["options"]):
            was = ",".join(sorted(live.flags)) if wrong else old_options
            changes.append(Change("remounted", was, str(a["options"])))
            if apply:
                argv = ["mount", "-t", str(a["fstype"]), "-o", f"remount,{a['options']}"]
                self._command(ctx, [*argv, "--", str(a["device"]), host])
        return changes
