"""host: one entry of /etc/hosts (an address, a name, its aliases), keyed by the name.

The line whose first name is the title is the entry: it is replaced when it differs, added when
there is none, removed with ``ensure: absent``. Every other line and comment stays as it is.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from reconciler.resources._textfile import content_change, read_text, replace
from reconciler.resources.base import Attr, Change, Context, Resource, register

HOSTS = "/etc/hosts"
# A host name: labels of letters, digits, '-' and '_' (seen in the wild), never a leading '-'.
HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(\.(?!-)[A-Za-z0-9_-]{1,63})*\.?")


def names_of(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(item) for item in (value if isinstance(value, list) else [value])]


def entry_name(line: str) -> str | None:
    """The first name of a hosts line (None for a comment or a blank line)."""
    fields = line.split("#", 1)[0].split()
    return fields[1] if len(fields) > 1 else None


@register
class Host(Resource):
    type = "host"
    inline = True
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "ip": Attr("str", doc="the address, IPv4 or IPv6"),
        "host_aliases": Attr("strlist", doc="other names of the address"),
        "target": Attr("str", default=HOSTS, doc="the hosts file"),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        if not HOST_NAME.fullmatch(title):
            problems.append((None, f"{title!r} is not a host name"))
        ip = attrs.get("ip")
        if ip is None:
            if attrs.get("ensure") != "absent":
                problems.append(("ip", "a host entry needs its address"))
        else:
            try:
                ipaddress.ip_address(str(ip))
            except ValueError:
                problems.append(("ip", f"{ip!r} is not an IPv4 or IPv6 address"))
        for alias in names_of(attrs.get("host_aliases")):
            if not HOST_NAME.fullmatch(alias):
                problems.append(("host_aliases", f"{alias!r} is not a host name"))
        target = str(attrs.get("target") or "")
        if not target.startswith("/") or ".." in target.split("/") or "\0" in target:
            problems.append(("target", f"{target!r} must be an absolute path without '..'"))
        return problems

    @property
    def path(self) -> str:
        return str(self.attrs.get("target") or HOSTS)

    def autorequire(self) -> list[str]:
        return [f"file:{self.path}"]

    def serial_key(self) -> str:
        # The entries (and lines) of one file are edited one after another.
        return f"file:{self.path}"

    def entry(self) -> str:
        return "\t".join(
            [
                str(self.attrs["ip"]),
                " ".join([self.title, *names_of(self.attrs.get("host_aliases"))]),
            ]
        )

    def _edit(self, text: str) -> str:
        want = None if self.attrs.get("ensure") == "absent" else self.entry()
        out: list[str] = []
        placed = False
        for line in text.splitlines():
            if entry_name(line) != self.title:
                out.append(line)
            elif want is not None and not placed:
                out.append(line if line.split() == want.split() else want)
                placed = True
        if want is not None and not placed:
            out.append(want)
        return "\n".join(out) + "\n" if out else ""

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        path = self.path
        place = ctx.root.locate(path)
        old, _ = read_text(ctx, place, path)
        if old is None and self.attrs.get("ensure") == "absent":
            return []
        new = self._edit(old or "")
        if new == old:
            return []
        changes = [Change("ensure", "absent", "present")] if old is None else []
        changes.append(content_change(self, path, old, new))
        if apply:
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
        return changes
