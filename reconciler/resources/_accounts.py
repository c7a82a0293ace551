"""Reading the account databases (passwd, group) of the root a run manages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from reconciler.resources.base import Context

# shadow's own rule for names, a little stricter: no leading '-', no spaces or separators.
NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\$?\Z")
TIMEOUT = 60.0


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _lines(ctx: Context, table: str) -> list[list[str]]:
    path: Path = ctx.root.path(f"/etc/{table}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def users(ctx: Context) -> dict[str, PasswdEntry]:
    found = {}
    for f in _lines(ctx, "passwd"):
        if len(f) >= 7 and f[2].isdigit() and f[3].isdigit():
            found[f[0]] = PasswdEntry(f[0], int(f[2]), int(f[3]), f[5], f[6])
    return found


def groups(ctx: Context) -> dict[str, GroupEntry]:
    found = {}
    for f in _lines(ctx, "group"):
        if len(f) >= 4 and f[2].isdigit():
            found[f[0]] = GroupEntry(f[0], int(f[2]), tuple(m for m in f[3].split(",") if m))
    return found


def prefix_args(ctx: Context) -> list[str]:
    """``--prefix`` for shadow's tools when the run manages a root other than /."""
    return [] if ctx.root.prefix == Path("/") else ["--prefix", str(ctx.root.prefix)]


def check_name(title: str) -> list[tuple[str | None, str]]:
    if not NAME.match(title):
        return [(None, f"{title!r} is not a valid user or group name")]
    return []
