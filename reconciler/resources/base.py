"""The one interface every resource type implements, and the registry of types.

A resource converges through a single code path: ``check_apply(ctx, apply=False)`` returns the
changes that would be made (noop and plan), ``check_apply(ctx, apply=True)`` makes them and
returns what it did. Because both are the same code, noop and enforce cannot disagree. The engine
re-checks after applying; a resource still drifted then did not converge and is failed.

Values a resource receives are final: templates are rendered and file sources read by the
compiler, so a resource never reads the control repo.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from reconciler.fs import MAX_FILE_SIZE

if TYPE_CHECKING:
    from reconciler.fs import BackupStore, Place, Root, Staged
    from reconciler.resources.runner import Runner

ResourceId = str  # "<type>:<title>", e.g. "file:/etc/motd"

COMMON_ATTRIBUTES = frozenset(
    {"require", "before", "notify", "subscribe", "when", "noop", "sensitive"}
)


def digest(value: str | bytes) -> str:
    """The form in which a sensitive or large value is shown: its sha256."""
    data = value.encode() if isinstance(value, str) else value
    return "sha256:" + hashlib.sha256(data).hexdigest()


# Differing lines (one side's times the other's) past which a diff is not searched for line by
# line: difflib's time grows with their product and more (it took minutes for two texts of 40000
# and 27000 lines, one the other with every third line left out).
MAX_DIFF_WORK = 2000 * 2000


def unified_diff(
    before: Sequence[str], after: Sequence[str], fromfile: str, tofile: str, n: int = 3
) -> list[str]:
    """difflib's unified diff of two lists of lines, in bounded time: the lines both start and
    end with are set aside first, and when what is left between them is larger than
    MAX_DIFF_WORK, it is shown as one hunk that removes the old lines and adds the new ones."""
    head = 0
    while head < len(before) and head < len(after) and before[head] == after[head]:
        head += 1
    tail = 0
    while (
        tail < len(before) - head
        and tail < len(after) - head
        and before[-1 - tail] == after[-1 - tail]
    ):
        tail += 1
    old_end, new_end = len(before) - tail, len(after) - tail
    if (old_end - head) * (new_end - head) <= MAX_DIFF_WORK:
        return list(difflib.unified_diff(before, after, fromfile, tofile, n=n))
    start = max(0, head - n)
    old_stop, new_stop = min(len(before), old_end + n), min(len(after), new_end + n)
    return [
        f"--- {fromfile}\n",
        f"+++ {tofile}\n",
        f"@@ -{_range(start, old_stop)} +{_range(start, new_stop)} @@\n",
        *(" " + line for line in before[start:head]),
        *("-" + line for line in before[head:old_end]),
        *("+" + line for line in after[head:new_end]),
        *(" " + line for line in before[old_end:old_stop]),
    ]


def _range(start: int, stop: int) -> str:
    """A hunk's range as unified diffs write it (difflib's rule)."""
    length = stop - start
    if length == 1:
        return f"{start + 1}"
    return f"{start + 1 if length else start},{length}"


# Shorter values are not searched for in text: they would match inside ordinary words.
MIN_SECRET = 6
# Values longer than this (whole file contents) are shown only as digests, never searched for.
MAX_SECRET = 64 * 1024


def leaves(value: Any) -> Iterator[str]:
    """The scalar values inside a value, as text: what a secret can be made of."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        try:
            yield value.decode()
        except UnicodeDecodeError:
            return
    elif isinstance(value, int | float):
        yield str(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from leaves(item)


class Secrets:
    """Values that must never be shown, and the one way to take them out of a text.

    ``scrub`` replaces every occurrence of a value by its digest. Values shorter than
    MIN_SECRET characters are not searched for; digests already in the text are left whole.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = frozenset(v for v in values if MIN_SECRET <= len(v) <= MAX_SECRET)
        self._pattern: re.Pattern[str] | None = None
        if self.values:
            longest_first = sorted(self.values, key=len, reverse=True)
            self._pattern = re.compile(
                "(sha256:[0-9a-f]{64})|" + "|".join(re.escape(v) for v in longest_first)
            )

    def __bool__(self) -> bool:
        return bool(self.values)

    def found_in(self, text: str) -> bool:
        return self._pattern is not None and any(
            m.group(1) is None for m in self._pattern.finditer(text)
        )

    def scrub(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(lambda m: m.group(1) or digest(m.group()), text)


_ASSIGNMENT = re.compile(r"^[\w.-]+\s*[=:]\s*(.+?)\s*$")


def secret_parts(text: str) -> list[str]:
    """What output may quote of a sensitive text: the whole of it, each of its lines, and the
    value of each ``key = value`` or ``key: value`` line."""
    parts = [text, text.strip()]
    for line in text.splitlines():
        parts.append(line.strip())
        assigned = _ASSIGNMENT.match(line.strip())
        if assigned:
            parts.append(assigned.group(1).strip("\"'"))
    return parts


@dataclass(frozen=True)
class Change:
    """One property that differs (or differed) between desired and actual state.

    ``before`` and ``after`` are display strings, already redacted for sensitive resources.
    ``diff`` is a unified diff of text content, never set for sensitive resources.
    """

    property: str
    before: str | None
    after: str | None
    diff: str | None = None


@dataclass(frozen=True)
class Attr:
    """The schema of one attribute: its kind, whether it is required, its default, its choices.

    Kinds: ``str``, ``bool``, ``int``, ``mode`` (an octal string like "0644"), ``strlist`` (a
    string or a list of strings), ``argv`` (a string for /bin/sh -c or a list of strings),
    ``intlist``, ``mapping`` (of strings to strings), ``any``.
    """

    kind: str = "str"
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    doc: str = ""


@dataclass
class Fingerprint:
    """What the last run saw of a file: its stat signature and content digest.

    When a file's (size, mtime_ns, ctime_ns, inode) still match, its content has not been
    written since: ctime moves on every write and cannot be set back by a user. That lets a
    no-change run skip reading every file while still noticing every content change.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    sha256: str

    def to_list(self) -> list[Any]:
        return [self.size, self.mtime_ns, self.ctime_ns, self.inode, self.sha256]

    @classmethod
    def from_list(cls, raw: Sequence[Any]) -> Fingerprint:
        size, mtime_ns, ctime_ns, inode, sha = raw
        return cls(int(size), int(mtime_ns), int(ctime_ns), int(inode), str(sha))


class RunState:
    """What one run has done so far, shared by the resources it converges, from any thread.

    The engine owns it: it records each resource that changed as it finishes, and which
    directories to fsync at the end. Resources ask what changed (a snapshot) and take a
    once-per-run action at most once (a systemd daemon-reload).
    """

    def __init__(self, defer_fsync: bool = False) -> None:
        self._lock = threading.Lock()
        self._changed: set[ResourceId] = set()
        self._done: set[str] = set()
        # Directories whose entries changed, fsynced once at the end of the run; None: fsync
        # each at once (outside a run of the engine).
        self._dirty: set[Path] | None = set() if defer_fsync else None

    def mark_changed(self, rid: ResourceId) -> None:
        with self._lock:
            self._changed.add(rid)

    def changed(self) -> frozenset[ResourceId]:
        """The ids of the resources that changed so far in this run."""
        with self._lock:
            return frozenset(self._changed)

    def once(self, action: str) -> bool:
        """True the first time ``action`` is asked for in this run, False after."""
        with self._lock:
            if action in self._done:
                return False
            self._done.add(action)
            return True

    def sync_later(self, directory: Path) -> bool:
        """Note a directory to fsync at the end of the run; False: not deferred, do it now."""
        with self._lock:
            if self._dirty is None:
                return False
            self._dirty.add(directory)
            return True

    def take_dirty(self) -> list[Path]:
        """The directories noted so far, deepest first; the run fsyncs at once from now on."""
        with self._lock:
            dirty, self._dirty = self._dirty or set(), None
        return sorted(dirty, key=lambda p: len(p.parts), reverse=True)


@dataclass
class Context:
    """Everything a resource needs from the host, passed in so tests point it anywhere."""

    root: Root
    state_dir: Path
    backups: BackupStore
    runner: Runner
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)
    # Every path (as written) that some resource of the catalog manages: for directory purge.
    catalog_paths: frozenset[str] = frozenset()
    # Every resource of the catalog: for a type that keeps only what the catalog declares
    # (ssh_authorized_key's exclusive).
    catalog_resources: tuple[Resource, ...] = ()
    log: Callable[..., None] = lambda *a, **k: None
    # The run under way (the engine gives each run its own).
    run: RunState = field(default_factory=RunState)
    # Only on a context made by ``staged`` for one apply: writes are staged here (a temporary
    # beside its target) and renamed into place after one syncfs for the batch.
    staging: list[Staged] | None = None
    # The largest managed file read to compare or back it up (reconcile.max_file_size).
    max_file_size: int = MAX_FILE_SIZE

    def staged(self, into: list[Staged]) -> Context:
        """A context for one apply whose file writes are staged into ``into``, not made."""
        view = copy.copy(self)
        view.staging = into
        return view

    def write_file(
        self, place: Place, data: bytes, mode: int | None, uid: int | None, gid: int | None
    ) -> None:
        """Replace a file's content atomically (now, or staged for the engine's batch)."""
        from reconciler import fs as _fs

        if self.staging is None:
            _fs.write_at(place, data, mode, uid, gid, sync=self.sync_dir)
        else:
            self.staging.append(_fs.stage_at(place, data, mode, uid, gid))

    def backup(self, host_path: Path | Place, written: str, data: bytes | None = None) -> str:
        """Keep a file's content in the backup store before it is replaced or removed.

        ``data``: the content as just read, when the caller has it."""
        return self.backups.save(
            host_path, written, sync=self.sync_dir, staged=self.staging is not None, data=data
        )

    def sync_dir(self, directory: Path) -> None:
        """Make a rename or removal in ``directory`` durable (now, or at the end of the run)."""
        if not self.run.sync_later(directory):
            from reconciler.fs import fsync_dir

            fsync_dir(directory)


class Resource(ABC):
    """A resource type. Subclasses set ``type`` and ``attributes`` and implement check_apply."""

    type: ClassVar[str]
    attributes: ClassVar[Mapping[str, Attr]] = {}
    # Cheap resources (file-like) run inline in the engine's loop; the others go to its pool.
    inline: ClassVar[bool] = False
    # Whether the engine re-checks after applying. An exec has no state to re-check.
    recheck: ClassVar[bool] = True
    # Types whose ready resources the engine converges together, through converge_batch (all
    # the packages of a run in one apt transaction). Such a converge_batch re-checks itself.
    batched: ClassVar[bool] = False
    # Types whose ``source:`` (a file of the repo) or ``template:`` (rendered) becomes their
    # ``content`` when the repo is compiled, as for a file.
    content_from_repo: ClassVar[bool] = False

    # Attributes the compiler reads from the control repo's files/ into another attribute
    # (an apt_repository's key_source into its key): a resource never reads the repo.
    file_attributes: ClassVar[Mapping[str, str]] = {}
    # Types every resource of which in the catalog is applied after every resource of this
    # type, unless one of them is among this resource's own requirements.
    precedes: ClassVar[tuple[str, ...]] = ()

    # What a sensitive resource of this type holds that output must never show (a file's
    # content, a command's environment): searched for in every output of the run.
    secret_attributes: ClassVar[tuple[str, ...]] = ()

    # The defined type instance that declared it ("vhost[shop]"; nested "a[x]/b[y]"), or "".
    scope: str = ""

    def __init__(self, title: str, attrs: Mapping[str, Any], sensitive: bool = False) -> None:
        self.title = title
        self.attrs = dict(attrs)
        self.sensitive = sensitive

    @property
    def id(self) -> ResourceId:
        """``<type>:<title>``, after its instance's scope and a slash when it has one."""
        return f"{self.scope}/{self.type}:{self.title}" if self.scope else self.identity

    @property
    def identity(self) -> str:
        """``<type>:<title>`` whatever the scope: what the resource manages."""
        return f"{self.type}:{self.title}"

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        """Type-specific checks beyond the schema: (key or None, message) for each problem."""
        return []

    @classmethod
    def complete(
        cls, attrs: dict[str, Any], facts: Mapping[str, Any]
    ) -> list[tuple[str | None, str]]:
        """Fill in, before the schema's defaults, attributes whose default depends on the node's
        facts (a package's provider by ``os.family``); problems as ``validate`` gives them."""
        return []

    @abstractmethod
    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        """Return the changes needed; with ``apply`` also make them. Raise ResourceError."""

    @classmethod
    def converge_batch(
        cls, ctx: Context, resources: Sequence[Resource], apply: bool
    ) -> dict[ResourceId, list[Change] | Exception]:
        """Check (and with ``apply`` converge) several resources of this type at once: each
        one's changes, or the exception that failed it. Default: one after another."""
        outcome: dict[ResourceId, list[Change] | Exception] = {}
        for resource in resources:
            try:
                outcome[resource.id] = resource.check_apply(ctx, apply)
            except Exception as exc:
                outcome[resource.id] = exc
        return outcome

    def refresh(self, ctx: Context, apply: bool) -> list[Change]:
        """React to a notify/subscribe refresh (restart, run). Default: nothing to do."""
        return []

    def autorequire(self) -> list[ResourceId]:
        """Ids this resource depends on when they are in the catalog (a file's parent dir)."""
        return []

    def autonotify(self) -> list[ResourceId]:
        """Ids applied after this one and refreshed when it changes, when they are in the
        catalog (the service of a changed unit file): an implicit ``notify``."""
        return []

    def committed(self, ctx: Context, target: Path) -> None:  # noqa: B027 - optional hook
        """A staged write of this resource was just renamed into place at ``target``."""

    def serial_key(self) -> str | None:
        """Resources with the same key change one shared thing (the lines of one file): the
        engine applies them one after another, in declaration order, never in parallel."""
        return None

    def managed_paths(self) -> list[str]:
        """Paths (as written, before the root) this resource owns; for the watcher."""
        return []

    def desired_digest(self) -> str:
        """A digest of the desired state, to tell corrective changes from new revisions."""
        return digest(repr(sorted((k, repr(v)) for k, v in self.attrs.items())))

    def pruned(self) -> Resource | None:
        """The resource that removes this one when it leaves the catalog, or None."""
        return None

    def secret_values(self) -> list[str]:
        """The values of a sensitive resource to take out of any text the run shows."""
        if not self.sensitive:
            return []
        return [
            part
            for key in self.secret_attributes
            for leaf in leaves(self.attrs.get(key))
            for part in secret_parts(leaf)
        ]

    def show(self, value: Any) -> str:
        """A value as reports and logs may show it: a digest when the resource is sensitive."""
        text = value if isinstance(value, str) else repr(value)
        return digest(text) if self.sensitive else text


REGISTRY: dict[str, type[Resource]] = {}


def register(cls: type[Resource]) -> type[Resource]:
    """Class decorator: make a resource type known by its ``type`` name."""
    REGISTRY[cls.type] = cls
    return cls
