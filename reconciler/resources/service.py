"""service: a systemd unit running or stopped, enabled or not, restarted on refresh.

Everything goes through ``systemctl`` with argv lists. Under ``--root`` only enablement can be
managed (``systemctl --root``): a service cannot be started inside a directory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from reconciler.errors import ResourceError
from reconciler.resources.base import Attr, Change, Context, Resource, register

UNIT = re.compile(r"[A-Za-z0-9_.@:\\-]+\Z")
UNIT_DIRS = ("/etc/systemd/system/", "/lib/systemd/system/", "/usr/lib/systemd/system/")
TIMEOUT = 120.0


@register
class Service(Resource):
    type = "service"
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", choices=("running", "stopped"), doc="unmanaged when not given"),
        "enable": Attr("bool", doc="unmanaged when not given"),
        "provider": Attr("str", default="systemd", choices=("systemd",)),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        if title.startswith("-") or not UNIT.match(title):
            return [(None, f"{title!r} is not a unit name")]
        return []

    @property
    def unit(self) -> str:
        return self.title if "." in self.title else f"{self.title}.service"

    def autorequire(self) -> list[str]:
        name = self.title.removesuffix(".service")
        return [f"package:{name}", *(f"file:{d}{self.unit}" for d in UNIT_DIRS)]

    def _systemctl(self, ctx: Context, *args: str, offline: bool = False) -> int:
        root = ctx.root.prefix
        argv = ["systemctl"]
        if root != Path("/"):
            if not offline:
                raise ResourceError(
                    f"{self.unit}: cannot start, stop or query a service under --root {root}"
                )
            argv.append(f"--root={root}")
        result = ctx.runner.run([*argv, *args, "--", self.unit], timeout=TIMEOUT)
        if result.timed_out:
            raise ResourceError(f"systemctl {args[0]} {self.unit} timed out")
        return result.returncode

    def _run(self, ctx: Context, *args: str, offline: bool = False) -> None:
        if self._systemctl(ctx, *args, offline=offline) != 0:
            raise ResourceError(f"systemctl {' '.join(args)} {self.unit} failed")

    def _reload_units(self, ctx: Context) -> None:
        """``daemon-reload`` once per run when a unit file was changed in it."""
        if ctx.root.prefix != Path("/"):
            return
        unit_files = tuple(f"file:{d}" for d in UNIT_DIRS)
        # A snapshot: other resources finish (and are added) while this one runs.
        changed_units = any(rid.startswith(unit_files) for rid in ctx.run.changed())
        if changed_units and ctx.run.once("daemon-reload"):
            result = ctx.runner.run(["systemctl", "daemon-reload"], timeout=TIMEOUT)
            if result.returncode != 0:
                raise ResourceError("systemctl daemon-reload failed")

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        changes: list[Change] = []
        enable = self.attrs.get("enable")
        if enable is not None:
            enabled = self._systemctl(ctx, "is-enabled", "--quiet", offline=True) == 0
            if enabled != enable:
                changes.append(Change("enable", str(enabled).lower(), str(enable).lower()))
        ensure = self.attrs.get("ensure")
        if ensure is not None:
            running = self._systemctl(ctx, "is-active", "--quiet") == 0
            if running != (ensure == "running"):
                changes.append(Change("ensure", "running" if running else "stopped", ensure))
        if changes and apply:
            self._reload_units(ctx)
            for change in changes:
                if change.property == "enable":
                    self._run(ctx, "enable" if enable else "disable", offline=True)
                else:
                    self._run(ctx, "start" if ensure == "running" else "stop")
        return changes

    def refresh(self, ctx: Context, apply: bool) -> list[Change]:
        # A stopped service stays stopped; one whose state is unmanaged restarts if running.
        if self.attrs.get("ensure") == "stopped" or ctx.root.prefix != Path("/"):
            return []
        if self.attrs.get("ensure") is None and self._systemctl(ctx, "is-active", "--quiet") != 0:
            return []
        if apply:
            self._reload_units(ctx)
            self._run(ctx, "restart")
        return [Change("restarted", None, self.unit)]
