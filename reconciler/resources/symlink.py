"""symlink: a symbolic link and its target."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from typing import ClassVar

from reconciler.errors import ResourceError
from reconciler.resources._path import PathResource
from reconciler.resources.base import Attr, Change, Context, Resource, register


@register
class Symlink(PathResource):
    type = "symlink"
    attributes: ClassVar[Mapping[str, Attr]] = {
        "target": Attr("str", doc="written into the link as it is"),
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "force": Attr("bool", default=False),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, object]) -> list[tuple[str | None, str]]:
        problems = super().validate(title, attrs)
        if attrs.get("ensure", "present") == "present" and not attrs.get("target"):
            problems.append(("target", "a symlink needs a target"))
        return problems

    def pruned(self) -> Resource:
        return Symlink(self.title, {"ensure": "absent"})

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        place, st = self.place(ctx)
        if self.attrs.get("ensure") == "absent":
            if st is None:
                return []
            if not stat.S_ISLNK(st.st_mode):
                raise ResourceError(f"{self.title} is not a symlink; not removed")
            if apply:
                place.unlink()
                ctx.root.forget()  # it may have been on the way to other paths
                ctx.sync_dir(place.host.parent)
            return [Change("ensure", "present", "absent")]
        target = str(self.attrs["target"])
        if st is not None and stat.S_ISLNK(st.st_mode):
            current = place.readlink()
            if current == target:
                return []
            change = Change("target", self.show(current), self.show(target))
        elif st is not None:
            if not self.attrs.get("force") or stat.S_ISDIR(st.st_mode):
                raise ResourceError(
                    f"{self.title} exists and is not a symlink"
                    + ("" if stat.S_ISDIR(st.st_mode) else "; set force: true to replace it")
                )
            change = Change("ensure", "file", "symlink")
        else:
            change = Change("ensure", "absent", "present")
        if apply:
            if st is not None and stat.S_ISREG(st.st_mode):
                try:
                    ctx.backup(place, self.title)
                except OSError as exc:
                    raise ResourceError(
                        f"{self.title}: backup failed, not replaced: {exc.strerror or exc}"
                    ) from None
            try:
                place.symlink(target)
            except FileNotFoundError:
                raise ResourceError(f"{self.title}: the parent directory does not exist") from None
            except OSError as exc:
                raise ResourceError(f"{self.title}: cannot write: {exc.strerror}") from None
            ctx.root.forget()  # it may be on the way to other paths
            ctx.sync_dir(place.host.parent)
        return [change]
