"""group: a group account, through groupadd, groupmod and groupdel (with --prefix under --root)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from reconciler.errors import ResourceError
from reconciler.resources import _accounts
from reconciler.resources.base import Attr, Change, Context, Resource, register


def run_tool(ctx: Context, argv: list[str]) -> None:
    result = ctx.runner.run(argv, timeout=_accounts.TIMEOUT)
    if result.timed_out or result.returncode != 0:
        raise ResourceError(f"{argv[0]} failed ({result.returncode}): {result.tail(5)}")


@register
class Group(Resource):
    type = "group"
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "gid": Attr("int"),
        "system": Attr("bool", default=False),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        return _accounts.check_name(title)

    def pruned(self) -> Resource:
        return Group(self.title, {"ensure": "absent"})

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        current = _accounts.groups(ctx).get(self.title)
        gid = self.attrs.get("gid")
        prefix = _accounts.prefix_args(ctx)
        if self.attrs.get("ensure") == "absent":
            if current is None:
                return []
            if apply:
                run_tool(ctx, ["groupdel", *prefix, "--", self.title])
            return [Change("ensure", "present", "absent")]
        if current is None:
            if apply:
                argv = ["groupadd", *prefix]
                if gid is not None:
                    argv += ["--gid", str(int(gid))]
                if self.attrs.get("system"):
                    argv.append("--system")
                run_tool(ctx, [*argv, "--", self.title])
            return [Change("ensure", "absent", "present")]
        if gid is not None and current.gid != int(gid):
            if apply:
                run_tool(ctx, ["groupmod", *prefix, "--gid", str(int(gid)), "--", self.title])
            return [Change("gid", str(current.gid), str(int(gid)))]
        return []
