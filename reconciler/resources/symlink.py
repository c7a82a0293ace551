"""symlink: a symbolic link and its target."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import ClassVar

from reconciler import fs as _fs
from reconciler.errors import ResourceError
from reconciler.resources._path import PathResource, displace, kind_of
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
            # A regular file (`sed -i` leaves one in place of the link it edited) is backed up
            # and replaced; anything else but a directory is moved aside. Only a directory,
            # whose whole tree would go, needs force.
            kind = kind_of(st)
            if stat.S_ISDIR(st.st_mode) and not self.attrs.get("force"):
                raise ResourceError(f"{self.title} is {kind}; set force: true to replace it")
            change = Change("ensure", kind.removeprefix("a ").removeprefix("regular "), "symlink")
        else:
            change = Change("ensure", "absent", "present")
        if apply:
            if st is not None and stat.S_ISREG(st.st_mode):
                self._back_up(ctx, place, st)
            elif st is not None and not stat.S_ISLNK(st.st_mode):
                try:
                    displace(ctx, place, self.title)
                except OSError as exc:
                    raise ResourceError(
                        f"{self.title}: cannot move {kind_of(st)} aside: {exc.strerror or exc}"
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

    def _back_up(self, ctx: Context, place: _fs.Place, st: os.stat_result) -> None:
        """Keep the regular file in the link's way in the backup store, or replace nothing."""
        if st.st_size > ctx.max_file_size:
            raise ResourceError(
                f"{self.title}: the file in the way is {st.st_size} bytes, more than the limit "
                f"of {ctx.max_file_size} bytes (reconcile.max_file_size); not backed up, "
                "not replaced"
            )
        try:
            ctx.backup(place, self.title)
        except OSError as exc:
            raise ResourceError(
                f"{self.title}: backup failed, not replaced: {exc.strerror or exc}"
            ) from None
