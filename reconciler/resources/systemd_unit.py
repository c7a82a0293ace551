"""systemd_unit: a unit file or a drop-in under /etc/systemd/system/, verified before it is
written, with one ``daemon-reload`` for the units a run changed, and the unit's enablement.

The file is written by the file type's code (atomic, backed up, with a diff). The new content is
first checked with ``systemd-analyze verify`` in a temporary directory; only when it passes does it
replace the file. The units of a run converge together (a batched type), so that the units it
changes cost one ``daemon-reload``. The ``service`` of the same unit is refreshed (restarted)
after its unit changed, as if it subscribed to it.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from reconciler.errors import ReconcilerError, ResourceError
from reconciler.resources.base import Attr, Change, Context, Resource, ResourceId, register
from reconciler.resources.file import File

UNIT_DIR = "/etc/systemd/system"
# Where a drop-in's unit file is looked for, to verify the two together.
UNIT_DIRS = (UNIT_DIR, "/usr/lib/systemd/system", "/lib/systemd/system")
SUFFIXES = (
    "service",
    "socket",
    "timer",
    "target",
    "path",
    "mount",
    "automount",
    "swap",
    "slice",
    "device",
)
UNIT_NAME = re.compile(r"[A-Za-z0-9_:\\][A-Za-z0-9_.@:\\-]*\.(" + "|".join(SUFFIXES) + r")\Z")
DROPIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\Z")
TIMEOUT = 120.0  # seconds for systemctl
VERIFY_TIMEOUT = 60.0  # seconds for systemd-analyze verify
NOT_EXECUTABLE = re.compile(r"Command (/\S+) is not executable")
IGNORED = re.compile(r", ignoring\.?$|^Unit \S+ not found\.$")


@register
class SystemdUnit(Resource):
    type = "systemd_unit"
    batched = True
    content_from_repo = True
    secret_attributes = ("content",)
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "content": Attr("any", doc="the unit file's text (source: and template: become this)"),
        "unit": Attr("str", doc="the unit, when the title is not its name"),
        "dropin": Attr("str", doc="the name of a drop-in: <unit>.d/<dropin>.conf"),
        "enable": Attr("bool", doc="unmanaged when not given"),
    }

    def __init__(self, title: str, attrs: Mapping[str, Any], sensitive: bool = False) -> None:
        super().__init__(title, attrs, sensitive)
        ensure = self.attrs.get("ensure") or "present"
        self._file = File.managed(self.path, ensure, self.attrs.get("content"), sensitive)

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        unit = attrs.get("unit")
        if unit is None:
            if not UNIT_NAME.match(title):
                problems.append((None, f"{title!r} is not a unit name like 'app.service'"))
        elif not isinstance(unit, str) or not UNIT_NAME.match(unit):
            problems.append(("unit", f"{unit!r} is not a unit name like 'app.service'"))
        elif any(ord(c) < 32 or c == "\x7f" for c in title):
            problems.append((None, "the title must not contain control characters"))
        dropin = attrs.get("dropin")
        if dropin is not None:
            if not isinstance(dropin, str) or not DROPIN_NAME.match(dropin):
                problems.append(
                    ("dropin", f"{dropin!r} is not a drop-in name (letters, digits, _ . @ -)")
                )
            if attrs.get("enable") is not None:
                problems.append(("enable", "a drop-in is not enabled: enable its unit"))
        content = attrs.get("content")
        if content is not None and not isinstance(content, str | bytes):
            problems.append(("content", "must be text"))
        if content is None and attrs.get("ensure", "present") != "absent":
            problems.append((None, "give its content (content, source or template)"))
        return problems

    @property
    def unit(self) -> str:
        return str(self.attrs.get("unit") or self.title)

    @property
    def path(self) -> str:
        dropin = self.attrs.get("dropin")
        if dropin is None:
            return f"{UNIT_DIR}/{self.unit}"
        return f"{UNIT_DIR}/{self.unit}.d/{dropin}.conf"

    def managed_paths(self) -> list[str]:
        return [self.path]

    def autorequire(self) -> list[ResourceId]:
        return [f"directory:{UNIT_DIR}/{self.unit}.d"] if self.attrs.get("dropin") else []

    def autonotify(self) -> list[ResourceId]:
        # A service is written "app" or "app.service"; either is this unit's service.
        names = [f"service:{self.unit}"]
        if self.unit.endswith(".service"):
            names.append(f"service:{self.unit.removesuffix('.service')}")
        return names

    def desired_digest(self) -> str:
        return self._file.desired_digest()

    def pruned(self) -> Resource:
        return SystemdUnit(
            self.title, {**self.attrs, "ensure": "absent", "content": None, "enable": None}
        )

    def committed(self, ctx: Context, target: Path) -> None:
        self._file.committed(ctx, target)

    # -- the file ----------------------------------------------------------------------------

    def _file_part(self, ctx: Context, apply: bool) -> list[Change]:
        """The file's changes; with ``apply`` the new content is verified, then written."""
        changes = self._file.check_apply(ctx, False)
        if not changes or not apply:
            return changes
        content = self._file._data
        unverified = []
        if self.attrs.get("ensure") != "absent" and content is not None:
            if not self._verify(ctx, content):
                # Said in the report: a drop-in of a unit the root has no file of.
                unverified = [Change("verified", None, f"no: {self.unit} has no unit file")]
            if self.attrs.get("dropin") is not None:
                self._make_dropin_dir(ctx)
        return self._file.check_apply(ctx, True) + unverified

    def _make_dropin_dir(self, ctx: Context) -> None:
        """``<unit>.d/`` is made (0755) for the unit's first drop-in."""
        place = ctx.root.locate(f"{UNIT_DIR}/{self.unit}.d")
        if place.lstat() is None:
            try:
                place.mkdir(0o755)
            except OSError as exc:
                raise ResourceError(
                    f"{self.title}: cannot make {place.host}: {exc.strerror}"
                ) from None
            ctx.sync_dir(place.host.parent)

    def _verify(self, ctx: Context, content: bytes) -> bool:
        """``systemd-analyze verify`` on the new content, in a temporary directory under the
        unit's name (a drop-in beside its unit's file, when the root has one). Under ``--root``,
        a command it names as missing on the host is accepted when it is executable inside the
        root."""
        with tempfile.TemporaryDirectory(prefix="reconciler-unit-") as tmp_name:
            tmp = tmp_name + "/"
            unit_file = Path(tmp_name) / self.unit
            dropin = self.attrs.get("dropin")
            if dropin is None:
                unit_file.write_bytes(content)
            else:
                base = self._unit_file(ctx)
                if base is None:
                    return False
                unit_file.write_bytes(base)
                (Path(tmp_name) / f"{self.unit}.d").mkdir()
                (Path(tmp_name) / f"{self.unit}.d" / f"{dropin}.conf").write_bytes(content)
            result = ctx.runner.run(
                ["systemd-analyze", "verify", "--", str(unit_file)], timeout=VERIFY_TIMEOUT
            )
        if result.timed_out:
            raise ResourceError(f"{self.title}: systemd-analyze verify timed out; not written")
        if result.returncode == 0 or self._only_missing_in_host(ctx, result.output):
            return True
        tail = "" if self.sensitive else ":\n" + result.tail().replace(tmp, "")
        raise ResourceError(
            f"{self.title}: systemd-analyze verify exited {result.returncode}; not written{tail}"
        )

    def _only_missing_in_host(self, ctx: Context, output: str) -> bool:
        """Under --root: whether every complaint is a command missing on the host that the root
        has (the unit runs in the root, not here)."""
        if ctx.root.prefix == Path("/"):
            return False
        missing = []
        for line in output.splitlines():
            found = NOT_EXECUTABLE.search(line)
            if found:
                missing.append(found.group(1))
            elif line.strip() and not IGNORED.search(line.strip()):
                return False
        if not missing:
            return False
        for command in missing:
            try:
                st = ctx.root.locate(command).lstat()
            except (OSError, ReconcilerError):
                return False
            # A symlink there (an alternative) is taken as the command.
            if st is None or not st.st_mode & 0o111:
                return False
        return True

    def _unit_file(self, ctx: Context) -> bytes | None:
        for directory in UNIT_DIRS:
            try:
                data, _ = ctx.root.locate(f"{directory}/{self.unit}").read()
                return data
            except (OSError, ReconcilerError):
                continue
        return None

    # -- the state in systemd ----------------------------------------------------------------

    def _systemctl(self, ctx: Context, *args: str) -> int:
        argv = ["systemctl"]
        if ctx.root.prefix != Path("/"):
            argv.append(f"--root={ctx.root.prefix}")
        result = ctx.runner.run([*argv, *args], timeout=TIMEOUT)
        if result.timed_out:
            raise ResourceError(f"systemctl {args[0]} timed out")
        return result.returncode

    def _enable_part(self, ctx: Context, apply: bool) -> list[Change]:
        enable = self.attrs.get("enable")
        if enable is None or self.attrs.get("ensure") == "absent":
            return []
        enabled = self._systemctl(ctx, "is-enabled", "--quiet", "--", self.unit) == 0
        if enabled == enable:
            return []
        if apply:
            verb = "enable" if enable else "disable"
            if self._systemctl(ctx, verb, "--", self.unit) != 0:
                raise ResourceError(f"systemctl {verb} {self.unit} failed")
        return [Change("enable", str(enabled).lower(), str(enable).lower())]

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        changes = self._file_part(ctx, apply)
        if changes and apply:
            _daemon_reload(ctx)
        return changes + self._enable_part(ctx, apply)

    @classmethod
    def converge_batch(
        cls, ctx: Context, resources: Sequence[Resource], apply: bool
    ) -> dict[ResourceId, list[Change] | Exception]:
        """The files of all the units first, then one daemon-reload when any changed, then their
        enablement; each re-checked after."""
        # Units before drop-ins: a drop-in is verified with its unit's file as it now is.
        units = sorted(
            (r for r in resources if isinstance(r, SystemdUnit)),
            key=lambda unit: unit.attrs.get("dropin") is not None,
        )
        outcome: dict[ResourceId, list[Change] | Exception] = {}
        for unit in units:
            try:
                outcome[unit.id] = unit._file_part(ctx, apply)
            except Exception as exc:
                outcome[unit.id] = exc
        if apply and any(isinstance(c, list) and c for c in outcome.values()):
            try:
                _daemon_reload(ctx)
            except ResourceError as exc:
                for rid, changes in outcome.items():
                    if isinstance(changes, list) and changes:
                        outcome[rid] = exc
        for unit in units:
            done = outcome[unit.id]
            if isinstance(done, Exception):
                continue
            try:
                done += unit._enable_part(ctx, apply)
                if apply and done:
                    left = unit.check_apply(ctx, False)
                    if left:
                        what = ", ".join(c.property for c in left)
                        raise ResourceError(f"{unit.id} did not converge: {what} still differ")
            except Exception as exc:
                outcome[unit.id] = exc
        return outcome


def _daemon_reload(ctx: Context) -> None:
    """Make systemd read the unit files again (not under --root: the root's systemd is not
    running). Taken as this run's daemon-reload, so a service does not reload once more."""
    if ctx.root.prefix != Path("/"):
        return
    ctx.run.once("daemon-reload")
    result = ctx.runner.run(["systemctl", "daemon-reload"], timeout=TIMEOUT)
    if result.timed_out or result.returncode != 0:
        raise ResourceError("systemctl daemon-reload failed")
