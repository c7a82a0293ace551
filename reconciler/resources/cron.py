"""cron: a scheduled job, in its own file of /etc/cron.d or in a user's crontab.

A job in ``/etc/cron.d/<name>`` is a whole file (mode 0644, owned by root) with a header
comment; a job in a user's crontab (``/var/spool/cron/crontabs/<user>``, Debian's spool) is a
block of that file, marked by a ``# reconciler: <name>`` comment, the rest of the file left
as it is. Every field is checked when the repo is compiled, so cron never reads a line it would
reject.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from reconciler import fs as _fs
from reconciler.errors import ResourceError
from reconciler.resources._textfile import content_change, read_text, remove, replace
from reconciler.resources.base import Attr, Change, Context, Resource, register

CRON_D = "/etc/cron.d"
SPOOL = "/var/spool/cron/crontabs"

Target = Literal["cron.d", "crontab"]
TARGETS: tuple[Target, ...] = ("cron.d", "crontab")

SPECIALS = ("reboot", "yearly", "annually", "monthly", "weekly", "daily", "midnight", "hourly")

MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

# field: (lowest, highest, the names cron takes for it)
FIELDS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "minute": (0, 59, ()),
    "hour": (0, 23, ()),
    "monthday": (1, 31, ()),
    "month": (1, 12, MONTHS),
    "weekday": (0, 7, DAYS),
}

# run-parts' rule for the names of files cron reads from /etc/cron.d.
JOB_NAME = re.compile(r"[A-Za-z0-9_-]+")
USER_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
ITEM = re.compile(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?")
ASSIGNMENT = re.compile(r"\s*[A-Za-z_][A-Za-z0-9_]*\s*=")


def field_problem(name: str, value: Any) -> str | None:
    """Why a schedule field is not one cron takes, or None."""
    low, high, names = FIELDS[name]
    items = value if isinstance(value, list) else [value]
    if not items:
        return "must not be an empty list"
    texts: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, str | int):
            return f"{item!r} is not a number or a string"
        texts.extend(str(item).split(","))
    for text in texts:
        if text.lower() in names and len(texts) == 1:
            continue
        matched = ITEM.fullmatch(text)
        if matched is None:
            choices = f", or one of {'/'.join(names)} alone" if names else ""
            return (
                f"{text!r} is not a cron field: use *, a number, a range a-b, a step */n or "
                f"a-b/n, or a list of them{choices}"
            )
        first, last, step = matched.group(2), matched.group(3), matched.group(4)
        for number in (first, last):
            if number is not None and not low <= int(number) <= high:
                return f"{number} is out of range {low}-{high}"
        if first is not None and last is not None and int(first) > int(last):
            return f"the range {first}-{last} runs backwards"
        if step is not None and not 1 <= int(step) <= high:
            return f"the step /{step} must be between 1 and {high}"
    return None


def schedule_text(value: Any) -> str:
    """A schedule field as cron reads it: ``*`` when unset, a list joined with commas."""
    if value is None:
        return "*"
    items = value if isinstance(value, list) else [value]
    return ",".join(str(item) for item in items)


def environment_lines(value: Any) -> list[str]:
    """``NAME=value`` lines from a list of such strings (Puppet's form) or a mapping."""
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [f"{key}={item}" for key, item in value.items()]
    items = value if isinstance(value, list) else [value]
    return [str(item) for item in items]


@register
class Cron(Resource):
    type = "cron"
    inline = True
    secret_attributes = ("command", "environment")
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "command": Attr("str", doc="the command line, run by cron with /bin/sh"),
        "user": Attr("str", default="root", doc="the user the job runs as"),
        "minute": Attr("any"),
        "hour": Attr("any"),
        "monthday": Attr("any"),
        "month": Attr("any"),
        "weekday": Attr("any"),
        "special": Attr("str", doc="reboot, yearly, annually, monthly, weekly, daily, hourly"),
        "environment": Attr("any", doc="NAME=value strings (or a mapping) set for the job"),
        "target": Attr("str", default="cron.d", choices=TARGETS),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        if not JOB_NAME.fullmatch(title):
            problems.append(
                (None, f"the job name {title!r} may hold only letters, digits, '_' and '-'")
            )
        user = str(attrs.get("user") or "")
        if not USER_NAME.fullmatch(user):
            problems.append(("user", f"{user!r} is not a user name"))
        command = attrs.get("command")
        if attrs.get("ensure") != "absent" and (command is None or not str(command).strip()):
            problems.append(("command", "a job needs a command"))
        if command is not None and CONTROL.search(str(command)):
            problems.append(("command", "must be a single line without control characters"))
        special = attrs.get("special")
        if special is not None:
            if str(special).removeprefix("@") not in SPECIALS:
                problems.append(("special", f"must be one of {', '.join(SPECIALS)}"))
            given = [name for name in FIELDS if attrs.get(name) is not None]
            if given:
                problems.append(("special", f"cannot be combined with {', '.join(given)}"))
        for name in FIELDS:
            if attrs.get(name) is not None:
                problem = field_problem(name, attrs[name])
                if problem:
                    problems.append((name, problem))
        environment = attrs.get("environment")
        if environment is not None:
            if isinstance(environment, Mapping | list | str):
                for line in environment_lines(environment):
                    name, sign, value = line.partition("=")
                    if not sign or not ENV_NAME.fullmatch(name):
                        problems.append(("environment", f"{line!r} is not NAME=value"))
                    elif CONTROL.search(value):
                        problems.append(
                            ("environment", f"the value of {name} must be a single line")
                        )
            else:
                problems.append(("environment", "must be a list of NAME=value or a mapping"))
        return problems

    @property
    def target(self) -> Target:
        return "crontab" if self.attrs.get("target") == "crontab" else "cron.d"

    @property
    def path(self) -> str:
        """The file this job is written to."""
        if self.target == "crontab":
            return f"{SPOOL}/{self.attrs.get('user') or 'root'}"
        return f"{CRON_D}/{self.title}"

    def autorequire(self) -> list[str]:
        user = str(self.attrs.get("user") or "root")
        return ["package:cron", f"directory:{CRON_D}", f"user:{user}"]

    def serial_key(self) -> str | None:
        # The jobs of one crontab edit one file: one after another.
        return f"file:{self.path}" if self.target == "crontab" else None

    def managed_paths(self) -> list[str]:
        return [self.path] if self.target == "cron.d" else []

    def job_line(self) -> str:
        special = self.attrs.get("special")
        if special is not None:
            when = "@" + str(special).removeprefix("@")
        else:
            when = " ".join(schedule_text(self.attrs.get(name)) for name in FIELDS)
        who = f" {self.attrs.get('user') or 'root'}" if self.target == "cron.d" else ""
        return f"{when}{who} {str(self.attrs['command']).strip()}"

    def _block(self) -> list[str]:
        return [*environment_lines(self.attrs.get("environment")), self.job_line()]

    def desired(self, old: str | None) -> str | None:
        """The file's content as it should be (None: no file)."""
        absent = self.attrs.get("ensure") == "absent"
        if self.target == "cron.d":
            if absent:
                return None
            header = (
                f"# Managed by reconciler: the cron job {self.title}. Changes made here are "
                "overwritten.\n"
            )
            return header + "\n".join(self._block()) + "\n"
        return self._edit(old, None if absent else self._block())

    def _edit(self, old: str | None, block: list[str] | None) -> str | None:
        """A crontab with this job's block replaced (appended; removed when ``block`` is None),
        every other line as it was."""
        if old is None and block is None:
            return None
        marker = f"# reconciler: {self.title}"
        lines = (old or "").splitlines()
        out: list[str] = []
        placed = False
        i = 0
        while i < len(lines):
            if lines[i] != marker:
                out.append(lines[i])
                i += 1
                continue
            # The block: the marker, assignments and comments, then the job line.
            i += 1
            while i < len(lines) and (lines[i].startswith("#") or ASSIGNMENT.match(lines[i])):
                i += 1
            i += 1
            if block is not None and not placed:
                out += [marker, *block]
                placed = True
        if block is not None and not placed:
            out += [marker, *block]
        return "\n".join(out) + "\n" if out else ""

    def _owner(self, ctx: Context) -> tuple[int, int, int]:
        """The mode, uid and gid the file must have."""
        if self.target == "cron.d":
            return 0o644, 0, 0
        user = str(self.attrs.get("user") or "root")
        return 0o600, _fs.resolve_uid(ctx.root, user), _fs.resolve_gid(ctx.root, "crontab")

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        path = self.path
        place = ctx.root.locate(path)
        if place.dir is None and self.attrs.get("ensure") != "absent":
            where = SPOOL if self.target == "crontab" else CRON_D
            raise ResourceError(f"{where} does not exist: is cron installed?")
        old, _ = read_text(ctx, place, path)
        new = self.desired(old)
        if new is None:
            if old is None:
                return []
            if apply:
                remove(ctx, place, path)
            return [Change("ensure", "present", "absent")]
        changes: list[Change] = []
        mode, uid, gid = self._owner(ctx)
        st = place.lstat() if old is not None else None
        if st is None:
            changes += [
                Change("ensure", "absent", "present"),
                content_change(self, path, None, new),
            ]
        else:
            if new != old:
                changes.append(content_change(self, path, old, new))
            if st.st_mode & 0o7777 != mode:
                changes.append(Change("mode", f"{st.st_mode & 0o7777:04o}", f"{mode:04o}"))
            if st.st_uid != uid:
                changes.append(
                    Change(
                        "owner",
                        _fs.name_of_uid(ctx.root, st.st_uid),
                        _fs.name_of_uid(ctx.root, uid),
                    )
                )
            if st.st_gid != gid:
                changes.append(
                    Change(
                        "group",
                        _fs.name_of_gid(ctx.root, st.st_gid),
                        _fs.name_of_gid(ctx.root, gid),
                    )
                )
        if not changes or not apply:
            return changes
        if st is not None and new == old:
            try:
                place.set_attrs(mode, uid, gid)
            except OSError as exc:
                raise ResourceError(f"{path}: cannot set mode and owner: {exc.strerror}") from None
        else:
            replace(ctx, place, path, st is not None, new, mode, uid, gid)
        return changes
