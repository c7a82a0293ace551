"""sysctl: a kernel parameter, set in a file of /etc/sysctl.d and, on the node itself, live.

The file line ``key = value`` is what sets the value at boot. Without ``--root`` the live value
(``/proc/sys/...``) is also checked and set, then read back: a kernel that does not take the
value fails the resource. Under ``--root`` there is no live kernel of that tree: only the file
is managed, and plan and apply say so.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from reconciler.errors import ResourceError
from reconciler.resources._textfile import content_change, read_text, replace
from reconciler.resources.base import Attr, Change, Context, Resource, register

SYSCTL_D = "/etc/sysctl.d"
PROC_SYS = Path("/proc/sys")
KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
SETTING = re.compile(r"\s*-?\s*([^=#;\s][^=]*?)\s*=\s*(.*?)\s*$")
FILE_ONLY = "only the file under --root: the live value is not read or set"


def normal(value: str) -> str:
    """A value as the kernel shows it, for comparing: fields separated by single spaces."""
    return " ".join(value.split())


@register
class Sysctl(Resource):
    type = "sysctl"
    secret_attributes = ("value",)
    attributes: ClassVar[Mapping[str, Attr]] = {
        "value": Attr("str", doc="the value; several fields separated by spaces"),
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "target": Attr("str", doc="the file; default /etc/sysctl.d/<key>.conf"),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        if not KEY.fullmatch(title):
            problems.append((None, f"{title!r} is not a sysctl key like net.ipv4.ip_forward"))
        value = attrs.get("value")
        if value is None:
            if attrs.get("ensure") != "absent":
                problems.append(("value", "a sysctl needs its value"))
        elif CONTROL.search(str(value)) or not str(value).strip():
            problems.append(("value", "must be a single line, not empty"))
        target = attrs.get("target")
        if target is not None:
            text = str(target)
            if not text.startswith("/") or ".." in text.split("/") or "\0" in text:
                problems.append(("target", f"{text!r} must be an absolute path without '..'"))
        return problems

    @property
    def path(self) -> str:
        return str(self.attrs.get("target") or f"{SYSCTL_D}/{self.title}.conf")

    def autorequire(self) -> list[str]:
        return [f"directory:{SYSCTL_D}"]

    def serial_key(self) -> str:
        # Several keys may share one file: they edit it one after another.
        return f"file:{self.path}"

    def _edit(self, text: str) -> str:
        want = (
            None
            if self.attrs.get("ensure") == "absent"
            else f"{self.title} = {str(self.attrs['value']).strip()}"
        )
        out: list[str] = []
        placed = False
        for line in text.splitlines():
            setting = SETTING.match(line)
            if setting is None or setting.group(1).replace("/", ".") != self.title:
                out.append(line)
            elif want is not None and not placed:
                out.append(
                    line if normal(setting.group(2)) == normal(want.split("=", 1)[1]) else want
                )
                placed = True
        if want is not None and not placed:
            out.append(want)
        return "\n".join(out) + "\n" if out else ""

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        live = ctx.root.prefix == Path("/")
        path = self.path
        place = ctx.root.locate(path)
        old, _ = read_text(ctx, place, path)
        changes: list[Change] = []
        new = (
            None if old is None and self.attrs.get("ensure") == "absent" else self._edit(old or "")
        )
        if new is not None and new != old:
            change = content_change(self, path, old, new)
            if not live:
                change = Change(f"content ({FILE_ONLY})", change.before, change.after, change.diff)
            changes.append(change)
        proc = PROC_SYS / self.title.replace(".", "/")
        current = None
        if live and self.attrs.get("ensure") != "absent":
            current = self._read_live(proc)
            want = normal(str(self.attrs["value"]))
            if current != want:
                changes.append(Change("value", self.show(current), self.show(want)))
        if not changes or not apply:
            return changes
        if new is not None and new != old:
            replace(
                ctx,
                place,
                path,
                old is not None,
                new,
                None if old is not None else 0o644,
                None,
                None,
            )
        if any(c.property == "value" for c in changes):
            self._write_live(proc)
        return changes

    def _read_live(self, proc: Path) -> str:
        try:
            return normal(proc.read_text())
        except FileNotFoundError:
            raise ResourceError(f"the kernel has no parameter {self.title}") from None
        except OSError as exc:
            raise ResourceError(f"{self.title}: cannot read {proc}: {exc.strerror}") from None

    def _write_live(self, proc: Path) -> None:
        want = normal(str(self.attrs["value"]))
        try:
            with proc.open("w") as f:
                f.write(want + "\n")
        except OSError as exc:
            raise ResourceError(
                f"{self.title}: the kernel refused {self.show(want)}: {exc.strerror}"
            ) from None
        now = self._read_live(proc)
        if now != want:
            raise ResourceError(
                f"{self.title}: set to {self.show(want)}, the kernel reads back {self.show(now)}"
            )
