"""user: a user account, through useradd, usermod and userdel (with --prefix under --root).

Home directories are not created or removed: manage them with directory resources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from reconciler.resources import _accounts
from reconciler.resources.base import Attr, Change, Context, Resource, register
from reconciler.resources.group import run_tool


@register
class User(Resource):
    type = "user"
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "uid": Attr("int"),
        "gid": Attr("str", doc="the primary group: a name or a number"),
        "groups": Attr("strlist", doc="supplementary groups, exactly these"),
        "home": Attr("str"),
        "shell": Attr("str"),
        "system": Attr("bool", default=False),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems = _accounts.check_name(title)
        for key in ("home", "shell"):
            value = attrs.get(key)
            if value is not None and (
                not str(value).startswith("/") or ":" in str(value) or "\n" in str(value)
            ):
                problems.append((key, f"{value!r} must be an absolute path without ':'"))
        for group in _groups(attrs.get("groups")):
            problems += [("groups", m) for _, m in _accounts.check_name(group)]
        return problems

    def autorequire(self) -> list[str]:
        names = _groups(self.attrs.get("groups"))
        gid = self.attrs.get("gid")
        if gid is not None and not str(gid).isdigit():
            names.append(str(gid))
        return [f"group:{name}" for name in names]

    def pruned(self) -> Resource:
        return User(self.title, {"ensure": "absent"})

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        current = _accounts.users(ctx).get(self.title)
        prefix = _accounts.prefix_args(ctx)
        if self.attrs.get("ensure") == "absent":
            if current is None:
                return []
            if apply:
                run_tool(ctx, ["userdel", *prefix, "--", self.title])
            return [Change("ensure", "present", "absent")]
        table = _accounts.groups(ctx)
        wanted = self._wanted(table)
        if current is None:
            if apply:
                argv = ["useradd", *prefix, "--no-create-home"]
                if self.attrs.get("system"):
                    argv.append("--system")
                run_tool(ctx, [*argv, *self._options(wanted), "--", self.title])
            return [Change("ensure", "absent", "present")]
        have = {
            "uid": str(current.uid),
            "gid": str(current.gid),
            "home": current.home,
            "shell": current.shell,
            "groups": ",".join(sorted(g.name for g in table.values() if self.title in g.members)),
        }
        changes = [Change(k, have[k], v) for k, v in wanted.items() if have[k] != v]
        if changes and apply:
            run_tool(
                ctx,
                [
                    "usermod",
                    *prefix,
                    *self._options({c.property: c.after or "" for c in changes}),
                    "--",
                    self.title,
                ],
            )
        return changes

    def _wanted(self, table: Mapping[str, _accounts.GroupEntry]) -> dict[str, str]:
        wanted: dict[str, str] = {}
        if self.attrs.get("uid") is not None:
            wanted["uid"] = str(int(self.attrs["uid"]))
        gid = self.attrs.get("gid")
        if gid is not None:
            text = str(gid)
            entry = table.get(text)
            # A group this run creates is not in the table yet when planning: compare by name.
            wanted["gid"] = text if text.isdigit() else str(entry.gid) if entry else text
        if self.attrs.get("groups") is not None:
            wanted["groups"] = ",".join(sorted(_groups(self.attrs["groups"])))
        for key in ("home", "shell"):
            if self.attrs.get(key) is not None:
                wanted[key] = str(self.attrs[key])
        return wanted

    @staticmethod
    def _options(values: Mapping[str, str]) -> list[str]:
        flags = {
            "uid": "--uid",
            "gid": "--gid",
            "groups": "--groups",
            "home": "--home-dir",
            "shell": "--shell",
        }
        argv: list[str] = []
        for key, value in values.items():
            argv += [flags[key], value]
        return argv


def _groups(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in (value if isinstance(value, list) else [value])]
