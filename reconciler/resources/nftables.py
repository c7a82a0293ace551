"""nftables: a ruleset file, checked with ``nft -c`` before it is written, and loaded.

The file is written by the file type's code (atomic, backed up, with a diff). Without ``--root``
the tables the file declares are also loaded into the kernel, each replaced as a whole in one
``nft -f`` transaction. What was loaded is remembered in the state directory: the content's digest,
the tables and the digest of their stateless listing (``nft -s list table``), so that a table
changed by hand, or gone, is drift that the next run loads again. Under ``--root`` only the file is
managed: nothing is loaded into the host's kernel.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from reconciler import fs as _fs
from reconciler.errors import ResourceError
from reconciler.resources._path import check_path_title, parent_dir_id
from reconciler.resources.base import Attr, Change, Context, Resource, ResourceId, register
from reconciler.resources.file import File

DEFAULT_DIR = "/etc/nftables.d"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
# A table the ruleset declares: "table inet filter {", "add table ip nat", "table filter".
TABLE = re.compile(
    r"^\s*(?:add\s+|create\s+)?table\s+(?:(" + "|".join(FAMILIES) + r")\s+)?([A-Za-z_][\w.-]*)",
    re.MULTILINE,
)
TIMEOUT = 60.0  # seconds for nft


def declared_tables(text: str) -> list[tuple[str, str]]:
    """(family, name) of every table the ruleset declares, in order, once each."""
    tables: list[tuple[str, str]] = []
    for found in TABLE.finditer(text):
        table = (found.group(1) or "ip", found.group(2))
        if table not in tables:
            tables.append(table)
    return tables


@register
class Nftables(Resource):
    type = "nftables"
    content_from_repo = True
    secret_attributes = ("content",)
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "absent")),
        "content": Attr("any", doc="the ruleset (source: and template: become this)"),
        "path": Attr("str", doc="the file; /etc/nftables.d/<title>.nft when not given"),
    }

    def __init__(self, title: str, attrs: Mapping[str, Any], sensitive: bool = False) -> None:
        super().__init__(title, attrs, sensitive)
        content = self.attrs.get("content")
        self._text = None if content is None else _text(content)
        ensure = self.attrs.get("ensure") or "present"
        self._file = File.managed(self.path, ensure, self._text, sensitive)

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        if not NAME.match(title):
            problems.append((None, f"{title!r} is not a ruleset name (letters, digits, _ . -)"))
        path = attrs.get("path")
        if path is not None:
            if not isinstance(path, str):
                problems.append(("path", "must be an absolute path"))
            else:
                problems += [("path", message) for _, message in check_path_title(path)]
                if any(ord(c) < 32 or c == "\x7f" for c in path):
                    problems.append(("path", "must not contain control characters"))
        content = attrs.get("content")
        if content is not None and not isinstance(content, str | bytes):
            problems.append(("content", "must be text"))
        elif content is not None:
            try:
                text = _text(content)
            except UnicodeDecodeError:
                return [*problems, ("content", "must be UTF-8 text")]
            if not declared_tables(text):
                problems.append(("content", "declares no table (table inet filter { ... })"))
        elif attrs.get("ensure", "present") != "absent":
            problems.append((None, "give its ruleset (content, source or template)"))
        return problems

    @property
    def path(self) -> str:
        return str(self.attrs.get("path") or f"{DEFAULT_DIR}/{self.title}.nft")

    def managed_paths(self) -> list[str]:
        return [self.path]

    def autorequire(self) -> list[ResourceId]:
        return parent_dir_id(self.path)

    def desired_digest(self) -> str:
        return self._file.desired_digest()

    def pruned(self) -> Resource:
        return Nftables(self.title, {**self.attrs, "ensure": "absent", "content": None})

    def committed(self, ctx: Context, target: Path) -> None:
        self._file.committed(ctx, target)

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        under_root = ctx.root.prefix != Path("/")
        changes = self._file.check_apply(ctx, False)
        loaded = None if under_root else self._live_change(ctx)
        if under_root and changes:
            # Said where the user looks: in the plan and the report.
            loaded = Change("loaded", None, "not under --root: only the file is managed")
        if not apply or (not changes and loaded is None):
            return changes + ([loaded] if loaded else [])
        absent = self.attrs.get("ensure") == "absent"
        if not absent:
            self._nft(ctx, "-c", what="nft -c (check)", verb="not written")
            if changes and self.path.startswith(DEFAULT_DIR + "/"):
                self._make_default_dir(ctx)
        if changes:
            changes = self._file.check_apply(ctx, True)
        if loaded is not None and not under_root:
            if absent:
                self._delete_tables(ctx)
            else:
                self._nft(ctx, what="nft -f", verb="not loaded")
                self._remember(ctx)
        return changes + ([loaded] if loaded else [])

    # -- the live ruleset --------------------------------------------------------------------

    def _script(self) -> bytes:
        """The ruleset as loaded: each table it declares is first made (if missing) and deleted,
        so that the file replaces it as a whole, in one transaction."""
        assert self._text is not None
        head = "".join(
            f"table {family} {name}\ndelete table {family} {name}\n"
            for family, name in declared_tables(self._text)
        )
        return (head + self._text).encode()

    def _nft(self, ctx: Context, *flags: str, what: str, verb: str) -> None:
        result = ctx.runner.run(
            ["nft", *flags, "-f", "/dev/stdin"], timeout=TIMEOUT, input=self._script()
        )
        if result.timed_out:
            raise ResourceError(f"nftables {self.title}: {what} timed out; {verb}")
        if result.returncode != 0:
            tail = "" if self.sensitive else ":\n" + result.tail()
            raise ResourceError(
                f"nftables {self.title}: {what} exited {result.returncode}; {verb}{tail}"
            )

    def _listing(self, ctx: Context, tables: list[tuple[str, str]]) -> str:
        """The digest of the tables as the kernel has them now (stateless: no counters); a
        missing table lists as missing."""
        parts = []
        for family, name in tables:
            result = ctx.runner.run(["nft", "-s", "list", "table", family, name], timeout=TIMEOUT)
            if result.timed_out:
                raise ResourceError(f"nftables {self.title}: nft list timed out")
            parts.append(result.output if result.returncode == 0 else f"missing {family} {name}")
        return "sha256:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()

    @property
    def _state(self) -> str:
        return f"nftables/{self.title}.json"

    def _recorded(self, ctx: Context) -> dict[str, Any]:
        try:
            data = json.loads((ctx.state_dir / self._state).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _live_change(self, ctx: Context) -> Change | None:
        """What differs in the kernel: the ruleset loaded last is not this one, or its tables
        were changed since."""
        recorded = self._recorded(ctx)
        tables = _tables(recorded)
        if self.attrs.get("ensure") == "absent":
            if not tables:
                return None
            now = self._listing(ctx, tables)
            gone = (
                "sha256:"
                + hashlib.sha256(
                    "\n".join(f"missing {f} {n}" for f, n in tables).encode()
                ).hexdigest()
            )
            return None if now == gone else Change("loaded", recorded.get("content"), "absent")
        assert self._text is not None
        wanted = "sha256:" + hashlib.sha256(self._text.encode()).hexdigest()
        if recorded.get("content") != wanted:
            return Change("loaded", recorded.get("content") or "unknown", wanted)
        if self._listing(ctx, declared_tables(self._text)) != recorded.get("listing"):
            return Change("loaded", "changed since loaded", wanted)
        return None

    def _remember(self, ctx: Context) -> None:
        assert self._text is not None
        tables = declared_tables(self._text)
        record = {
            "content": "sha256:" + hashlib.sha256(self._text.encode()).hexdigest(),
            "tables": [list(t) for t in tables],
            "listing": self._listing(ctx, tables),
        }
        path = ctx.state_dir / self._state
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _fs.atomic_write(path, json.dumps(record).encode(), 0o600, -1, -1)

    def _delete_tables(self, ctx: Context) -> None:
        tables = _tables(self._recorded(ctx))
        script = "".join(f"table {f} {n}\ndelete table {f} {n}\n" for f, n in tables)
        result = ctx.runner.run(["nft", "-f", "/dev/stdin"], timeout=TIMEOUT, input=script.encode())
        if result.returncode != 0:
            raise ResourceError(f"nftables {self.title}: deleting its tables failed")
        (ctx.state_dir / self._state).unlink(missing_ok=True)

    def _make_default_dir(self, ctx: Context) -> None:
        place = ctx.root.locate(DEFAULT_DIR)
        if place.lstat() is None:
            try:
                place.mkdir(0o755)
            except OSError as exc:
                raise ResourceError(f"cannot make {DEFAULT_DIR}: {exc.strerror}") from None
            ctx.sync_dir(place.host.parent)


def _text(content: str | bytes) -> str:
    return content.decode() if isinstance(content, bytes) else str(content)


def _tables(recorded: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(str(t[0]), str(t[1])) for t in recorded.get("tables", []) if len(t) == 2]
