"""The coordination store application deployments use.

Every node publishes the state of the components it deploys, reads the states of the others,
and takes one of a component's ``max_parallel`` deployment slots before it deploys. Two
backends share one contract:

``LocalStore``
    Files under ``coordination.path``: every daemon that shares the directory (one machine, or
    a shared filesystem with working locks) sees the others. Writes are atomic (temporary file,
    fsync, rename) and slot changes happen under ``fcntl.flock`` on one lock file.

``EtcdStore``
    A real etcd v3 cluster through its JSON gateway. Slots are keys taken by a transaction and
    bound to a lease, so a node that dies holding one frees it when the lease runs out.

A slot is a lease: it expires ``ttl`` seconds after the last ``acquire_slot`` of its holder,
which renews it, unless ``release_slot`` frees it first. ``wait`` blocks until anything in the
store changes; it counts from the last read (``states``, ``holders``, ``acquire_slot``), so a
change made between a read and the ``wait`` that follows it is not missed. A wake-up may be
spurious (this node's own writes count too): callers read again and decide. Records of the
``QUIET_KINDS`` (run summaries, facts) are not changes for ``wait``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

from reconciler.errors import Reason, ReconcilerError
from reconciler.fs import atomic_write

if TYPE_CHECKING:  # imported where used: a run with the local store does not load it
    import http.client


@dataclass(frozen=True)
class CoordinationConfig:
    backend: Literal["local", "etcd"] = "local"
    path: Path = Path("/var/lib/reconciler/coordination")
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    lease: float = 300.0  # a deployment slot is freed this long after its holder last renewed it
    # A node's exported values drop out this long after its last successful run published them.
    exports_ttl: float = 3600.0
    # A node's facts drop out this long after it last published them; a node republishes
    # unchanged facts once half of it has passed (keep it above twice the run interval).
    facts_ttl: float = 6 * 3600.0
    # Publish the node's facts after each run, when ``configured`` (a node that coordinates
    # with nobody writes its facts nowhere).
    publish_facts: bool = True
    # etcd with authentication: the node's etcd user and a file holding its password.
    username: str | None = None
    password_file: Path | None = None
    # The configuration names a store (a coordination section): every run publishes its
    # summary there for the fleet view. Apps and exports use the default store regardless.
    configured: bool = False
    # A new revision seen by one daemon is written to the store, and every daemon watching it
    # fetches at once, at most once per push_min_interval seconds.
    push: bool = False
    push_min_interval: float = 10.0


STATES = ("deploying", "healthy", "failed", "waiting", "rolledback")
POLL_INTERVAL = 0.1  # seconds between two looks of LocalStore.wait
ETCD_TIMEOUT = 5.0  # seconds for each HTTP call to etcd
# Bytes of a watch request etcd's JSON gateway reads before it answers (its decoder's first
# read); create_requests past them may be dropped.
WATCH_BODY = 512
ROOT = "/reconciler/"
# What a node publishes about itself, one record of each kind, on a lease: its exported values,
# its last run's summary, its facts. Bounded in bytes, written and read.
RecordKind = Literal["exports", "summary", "facts"]
RECORD_KINDS: tuple[RecordKind, ...] = ("exports", "summary", "facts")
MAX_RECORD: dict[RecordKind, int] = {"exports": 64 * 1024, "summary": 4 * 1024, "facts": 256 * 1024}
# Records nobody waits for: publishing or withdrawing one (or its lease running out) is no change
# for ``wait``. Every node publishes its run summary after every run, and its facts when they
# change; were that news, nodes whose components wait would wake each other, run, publish, and
# wake each other again.
QUIET_KINDS: frozenset[RecordKind] = frozenset({"summary", "facts"})
# A pushed revision is a commit id; anything else under its key is no revision (and ignored).
REVISION = re.compile(r"[0-9a-f]{7,64}")
MAX_REVISION_RECORD = 256  # bytes of a pushed revision's file or key, read


# What woke a ``wait``: a change of an app's keys (states, slots, kept failures, versions), of an
# exports record, of the pushed revision, or of anything else in the store.
Cause = Literal["apps", "exports", "revision", "other"]


@dataclass(frozen=True)
class Watched:
    """The part of the store a ``wait`` wakes for.

    ``everything``: the whole store, but the ``QUIET_KINDS``. Otherwise the states, slots, kept
    failures and versions of each of ``apps``; every node's exports record when ``exports``;
    the pushed revision of ``revision`` (a ``source_key``). A store may wake for more (a wake
    may be spurious), never for less.
    """

    apps: frozenset[str] = frozenset()
    exports: bool = False
    revision: str | None = None
    everything: bool = False


EVERYTHING = Watched(everything=True)


def source_key(url: str, branch: str | None) -> str:
    """The name under which the daemons that follow one branch of one repository (as written
    in their configuration) share the revisions they see."""
    return hashlib.sha256(f"{url}\n{branch or ''}".encode()).hexdigest()[:24]


def _pushed(raw: bytes) -> str:
    """The revision a pushed value names; "" when it names none."""
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        return ""
    return text if REVISION.fullmatch(text) else ""


# Requests to etcd, by operation: every EtcdStore counts its own and the process's total.
ETCD_OPS = {
    "kv/range": "range",
    "kv/put": "put",
    "kv/txn": "txn",
    "kv/deleterange": "delete_range",
    "lease/grant": "lease_grant",
    "lease/keepalive": "lease_keepalive",
    "lease/revoke": "lease_revoke",
    "auth/authenticate": "authenticate",
    "watch": "watch",
}


class RequestCount:
    """Requests by operation (the values of ``ETCD_OPS``, or "other"); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys([*ETCD_OPS.values(), "other"], 0)

    def add(self, path: str) -> None:
        op = ETCD_OPS.get(path, "other")
        with self._lock:
            self._counts[op] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())


REQUESTS = RequestCount()  # every EtcdStore of this process, for the daemon's /metrics


@dataclass(frozen=True)
class ComponentState:
    """What one node last said about one component of one app."""

    node: str
    version: str
    state: str  # "deploying" | "healthy" | "failed" | "waiting" | "rolledback"
    revision: str  # control-repo revision
    updated: float  # unix time
    message: str = ""
    deployed: str = ""  # the version the node last deployed and runs meanwhile, if any


class StoreError(ReconcilerError):
    """The coordination store could not be reached or used."""

    reason: ClassVar[Reason] = "StoreError"


class Store(Protocol):
    def publish(self, app: str, component: str, state: ComponentState) -> None:
        """Record ``state`` as what ``state.node`` says about the component."""

    def states(self, app: str, component: str) -> dict[str, ComponentState]:
        """Every node's last published state of the component: node -> state."""

    def components(self, app: str) -> list[str]:
        """The app's components some node published a state of, sorted."""

    def acquire_slot(
        self, app: str, component: str, version: str, node: str, max_parallel: int, ttl: float
    ) -> bool:
        """Take (or renew) one of ``max_parallel`` slots; False when all are held by others."""

    def release_slot(self, app: str, component: str, version: str, node: str) -> None:
        """Free the node's slot, if it holds one."""

    def holders(self, app: str, component: str, version: str) -> list[str]:
        """The nodes that hold a live slot, in slot order."""

    def publish_record(self, kind: RecordKind, node: str, record: bytes, ttl: float) -> None:
        """Replace ``node``'s record of ``kind`` (a JSON document) with ``record``, for ``ttl``
        seconds."""

    def withdraw_record(self, kind: RecordKind, node: str) -> None:
        """Remove ``node``'s record of ``kind``, if any."""

    def records(self, kind: RecordKind) -> dict[str, bytes]:
        """Every node's live record of ``kind``: node -> the JSON document it published."""

    def wait(self, timeout: float, watched: Watched = EVERYTHING) -> bool:
        """Block until what ``watched`` names changes (True) or ``timeout`` seconds (False).
        Afterwards ``woke_for`` says what changed, when the store knows."""

    @property
    def woke_for(self) -> frozenset[Cause] | None:
        """What the last ``wait`` saw change (empty after a timeout); None when the store cannot
        tell (read everything that matters)."""

    def position(self) -> object:
        """Where the next ``wait`` would count from (the last read; the store as it is now
        before any read), for ``rewind``; None when the store cannot say."""

    def rewind(self, position: object) -> None:
        """Make the next ``wait`` count from no later than ``position`` (one taken before a
        decision): reads made since, which move the count on, then skip no change."""

    def close(self) -> None:
        """Let go of connections; a ``wait`` blocked in another thread returns False."""

    def note_version(self, app: str, component: str, version: str) -> None:
        """Give ``version`` its place in the component's order of versions, once."""

    def versions(self, app: str, component: str) -> dict[str, int]:
        """The component's noted versions and their places (a later version, a larger one)."""

    def record_failure(self, app: str, component: str, state: ComponentState) -> None:
        """Keep ``state.node``'s failure at ``state.version`` apart from its later states."""

    def failures(self, app: str, component: str) -> list[ComponentState]:
        """Every failure kept for the component."""

    def clear_failure(self, app: str, component: str, version: str, node: str) -> None:
        """Drop one node's failure at one version (it turned healthy there)."""

    def forget_version(self, app: str, component: str, version: str) -> None:
        """Drop a version's place and every failure at it (every node has moved past it)."""

    def push_revision(self, source: str, revision: str) -> bool:
        """Say that ``source`` (``source_key``) moved to ``revision``; False when it said so."""

    def pushed_revision(self, source: str) -> str | None:
        """The revision last pushed for ``source``; "" when the value there is no revision."""

    def watch_revision(self, source: str, timeout: float) -> str | None:
        """Block until another process pushes a revision for ``source``: what it pushed ("" when
        it is no revision), or None at ``timeout`` or after ``interrupt``."""

    def interrupt(self) -> None:
        """End a ``watch_revision`` under way in another thread (or the next one) with None,
        or a ``wait`` of etcd with False (so that the caller waits again for something
        else)."""


def open_store(config: CoordinationConfig) -> Store:
    """The store the configuration names."""
    if config.backend == "local":
        return LocalStore(config.path)
    if config.backend == "etcd":
        password = None
        if config.password_file is not None:
            try:
                password = config.password_file.read_text().strip()
            except OSError as exc:
                raise StoreError(f"coordination.password_file: {exc}") from None
        return EtcdStore(config.endpoints, username=config.username, password=password)
    raise StoreError(f"unknown coordination backend {config.backend!r}")


def _part(name: str, what: str) -> str:
    """One name as one path segment or key segment: no '/', no leading '.', never empty."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string, not {name!r}")
    quoted = urllib.parse.quote(name, safe="")
    return "%2E" + quoted[1:] if quoted.startswith(".") else quoted


def _check_state(state: ComponentState) -> None:
    if state.state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state.state!r}")


def _check_record(kind: RecordKind, record: bytes, ttl: float) -> None:
    _check_kind(kind)
    if len(record) > MAX_RECORD[kind]:
        raise ValueError(f"a {kind} record is at most {MAX_RECORD[kind]} bytes")
    if not ttl > 0:
        raise ValueError(f"ttl must be more than zero, not {ttl!r}")


def _check_kind(kind: RecordKind) -> None:
    if kind not in RECORD_KINDS:
        raise ValueError(f"a record's kind is one of {', '.join(RECORD_KINDS)}, not {kind!r}")


def _check_slot(max_parallel: int, ttl: float) -> None:
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
        raise ValueError(f"max_parallel must be a whole number of at least 1, not {max_parallel!r}")
    if not ttl > 0:
        raise ValueError(f"ttl must be more than zero, not {ttl!r}")


def _encode_state(state: ComponentState) -> bytes:
    return json.dumps(asdict(state), sort_keys=True).encode()


def _decode_state(raw: bytes, where: str) -> ComponentState:
    try:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        strings = {k: data[k] for k in ("node", "version", "state", "revision")}
        if not all(isinstance(v, str) for v in strings.values()):
            raise ValueError("node, version, state and revision must be strings")
        updated = data["updated"]
        if isinstance(updated, bool) or not isinstance(updated, int | float):
            raise ValueError("updated must be a number")
        message = data.get("message", "")
        if not isinstance(message, str):
            raise ValueError("message must be a string")
        deployed = data.get("deployed", "")
        if not isinstance(deployed, str):
            raise ValueError("deployed must be a string")
    except (ValueError, KeyError) as exc:
        raise StoreError(f"{where}: not a component state: {exc}") from None
    return ComponentState(**strings, updated=float(updated), message=message, deployed=deployed)


# --------------------------------------------------------------------------- local files


class LocalStore:
    """The store as files under one directory.

    Layout::

        <path>/.lock                                   flock'ed around every slot change
        <path>/.generation                             a counter, bumped by every change
        <path>/apps/<app>/<component>/<node>.json      one state per node
        <path>/slots/<app>/<component>/<version>/<n>.json   {"holder": node, "expires": t}
        <path>/<kind>/<node>.json                      a node's record: exports, summary, facts
                                                       {"record": JSON text, "expires": t}
        <path>/failures/<app>/<component>/<version>/<node>.json   a kept failure (a state)
        <path>/versions/<app>/<component>/<version>.json    {"version": v, "place": n}
        <path>/revisions/<source>                      a pushed revision (a commit id)

    Names are percent-encoded into single path segments. A state file is replaced atomically,
    so readers need no lock; slot files change only under the lock, so the count of holders
    and the take of a free slot are one step for every process that shares the directory.
    An expired slot stays on disk until the next ``acquire_slot`` reclaims it; it counts for
    nobody meanwhile.
    """

    def __init__(self, path: Path, poll_interval: float = POLL_INTERVAL) -> None:
        self.path = Path(path)
        self.poll_interval = poll_interval
        self._seen: bytes | None = None  # the generation at the last read
        self._floor: bytes | None = None  # where the next wait counts from, set by rewind
        # This process's own changes, generation before -> after: not news to its own wait.
        self._own: dict[bytes, bytes] = {}
        self._closed = threading.Event()
        self._interrupted = threading.Event()
        # Per source: the pushed revision's file as last read or written here.
        self._revisions: dict[str, bytes] = {}
        # The directory is made by the first write: reading (a plan) leaves no trace.

    # -- the contract

    def publish(self, app: str, component: str, state: ComponentState) -> None:
        _check_state(state)
        directory = self.path / "apps" / _part(app, "app") / _part(component, "component")
        with self._os_errors("publish"):
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(directory / f"{_part(state.node, 'node')}.json", _encode_state(state))
            with self._locked():
                self._bump()

    def states(self, app: str, component: str) -> dict[str, ComponentState]:
        directory = self.path / "apps" / _part(app, "app") / _part(component, "component")
        found: dict[str, ComponentState] = {}
        with self._os_errors("read states"):
            self._seen = self._generation()
            for entry in self._entries(directory):
                with contextlib.suppress(FileNotFoundError):
                    state = _decode_state(entry.read_bytes(), str(entry))
                    found[state.node] = state
        return found

    def components(self, app: str) -> list[str]:
        directory = self.path / "apps" / _part(app, "app")
        with self._os_errors("read components"):
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                return []
        return sorted(
            urllib.parse.unquote(n) for n in names if n[0] != "." and (directory / n).is_dir()
        )

    def acquire_slot(
        self, app: str, component: str, version: str, node: str, max_parallel: int, ttl: float
    ) -> bool:
        _check_slot(max_parallel, ttl)
        _part(node, "node")
        directory = self._slot_dir(app, component, version)
        with self._os_errors("acquire a slot"), self._locked():
            self._seen = self._generation()
            now = time.time()
            live, expired = self._slots(directory, now)
            for path in expired:
                path.unlink()
            taken = next((n for n, holder in live.items() if holder == node), None)
            if taken is None and len(live) >= max_parallel:
                if expired:
                    self._tidy(directory)
                    self._bump()
                return False
            if taken is None:
                taken = min(n for n in range(max_parallel) if n not in live)
                changed = True
            else:
                changed = bool(expired)  # a renewal alone changes nothing others wait for
            directory.mkdir(parents=True, exist_ok=True)
            body = json.dumps({"holder": node, "expires": now + ttl}).encode()
            atomic_write(directory / f"{taken}.json", body)
            if changed:
                self._bump()
            return True

    def release_slot(self, app: str, component: str, version: str, node: str) -> None:
        directory = self._slot_dir(app, component, version)
        with self._os_errors("release a slot"), self._locked():
            live, expired = self._slots(directory, time.time())
            mine = [directory / f"{n}.json" for n, holder in live.items() if holder == node]
            for path in mine + expired:
                path.unlink()
            if mine or expired:
                self._tidy(directory)
                self._bump()

    def holders(self, app: str, component: str, version: str) -> list[str]:
        directory = self._slot_dir(app, component, version)
        with self._os_errors("read slots"):
            self._seen = self._generation()
            live, _ = self._slots(directory, time.time())
        return [live[n] for n in sorted(live)]

    def publish_record(self, kind: RecordKind, node: str, record: bytes, ttl: float) -> None:
        _check_record(kind, record, ttl)
        directory = self.path / kind
        path = directory / f"{_part(node, 'node')}.json"
        now = time.time()
        body = json.dumps({"expires": now + ttl, "record": record.decode()}).encode()
        with self._os_errors(f"publish {kind}"):
            # The same record, still live: only its expiry moves, which is no change for wait.
            renewed = self._read_record(path, kind, now) == record
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(path, body)
            if kind not in QUIET_KINDS and not renewed:
                with self._locked():
                    self._bump()

    def withdraw_record(self, kind: RecordKind, node: str) -> None:
        _check_kind(kind)
        path = self.path / kind / f"{_part(node, 'node')}.json"
        with self._os_errors(f"withdraw {kind}"):
            if path.exists():
                path.unlink()
                if kind not in QUIET_KINDS:
                    with self._locked():
                        self._bump()

    def records(self, kind: RecordKind) -> dict[str, bytes]:
        _check_kind(kind)
        found: dict[str, bytes] = {}
        now = time.time()
        with self._os_errors(f"read {kind}"):
            self._seen = self._generation()
            for entry in self._entries(self.path / kind):
                record = self._read_record(entry, kind, now)
                if record is not None:
                    found[urllib.parse.unquote(entry.name[: -len(".json")])] = record
        return found

    @staticmethod
    def _read_record(path: Path, kind: RecordKind, now: float) -> bytes | None:
        """The live record in one file; None when there is none (absent, expired, not one)."""
        try:
            if path.stat().st_size > 2 * MAX_RECORD[kind]:
                return None  # bounded: not written by a reconciler
            data = json.loads(path.read_bytes())
            expires, record = data["expires"], data["record"]
            if not isinstance(expires, int | float) or not isinstance(record, str):
                return None
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # not a record file
        return record.encode() if expires > now else None

    @property
    def woke_for(self) -> frozenset[Cause] | None:
        return None  # one generation counts every change: what changed is not known

    def position(self) -> object:
        if self._seen is not None:
            return self._seen
        try:
            return self._generation()  # before any read: a change from now on is news
        except OSError:
            return None

    def rewind(self, position: object) -> None:
        if isinstance(position, bytes):
            self._floor = position

    def wait(self, timeout: float, watched: Watched = EVERYTHING) -> bool:
        # Every change wakes every wait here (the files have one generation counter); a wait
        # for part of the store takes the rest as spurious wake-ups.
        deadline = time.monotonic() + timeout
        with self._os_errors("wait"):
            floor, self._floor = self._floor, None
            base = floor if floor is not None else self._seen
            if base is None:
                base = self._generation()
            expiry = self._next_expiry(time.time())
            while not self._closed.is_set():
                current = self._generation()
                while base != current and base in self._own:
                    base = self._own[base]  # a change of our own: seen
                if current != base:
                    self._seen = current
                    return True
                if expiry is not None and time.time() >= expiry:
                    return True  # a slot ran out: for etcd that is a deleted key
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._closed.wait(min(self.poll_interval, remaining))
        return False

    def close(self) -> None:
        self._closed.set()

    # -- pushed revisions

    def push_revision(self, source: str, revision: str) -> bool:
        if not REVISION.fullmatch(revision):
            raise ValueError(f"a pushed revision is a commit id, not {revision!r}")
        path = self.path / "revisions" / _part(source, "source")
        body = f"{revision}\n".encode()
        with self._os_errors("push a revision"), self._locked():
            if self._read_revision(path) == body:
                self._revisions[source] = body
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            self._revisions[source] = body  # before it shows: not news to this process
            atomic_write(path, body)
            self._bump()
        return True

    def pushed_revision(self, source: str) -> str | None:
        path = self.path / "revisions" / _part(source, "source")
        with self._os_errors("read a pushed revision"):
            raw = self._read_revision(path)
        self._revisions[source] = raw
        return _pushed(raw) if raw else None

    def watch_revision(self, source: str, timeout: float) -> str | None:
        path = self.path / "revisions" / _part(source, "source")
        deadline = time.monotonic() + timeout
        with self._os_errors("watch a pushed revision"):
            if source not in self._revisions:
                self._revisions[source] = self._read_revision(path)
            while not self._closed.is_set():
                if self._interrupted.is_set():
                    self._interrupted.clear()
                    return None
                raw = self._read_revision(path)
                if raw and raw != self._revisions[source]:
                    self._revisions[source] = raw
                    return _pushed(raw)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._closed.wait(min(self.poll_interval, remaining))
        return None

    def interrupt(self) -> None:
        self._interrupted.set()

    @staticmethod
    def _read_revision(path: Path) -> bytes:
        try:
            with path.open("rb") as f:
                return f.read(MAX_REVISION_RECORD)
        except FileNotFoundError:
            return b""

    # -- files

    @contextlib.contextmanager
    def _os_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StoreError(f"coordination store {self.path}: cannot {what}: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _generation(self) -> bytes:
        try:
            return (self.path / ".generation").read_bytes()
        except FileNotFoundError:
            return b""

    def _bump(self) -> None:
        """Count one change; the caller holds the lock.

        The change is remembered as this process's own (before it shows, so that a ``wait``
        in another thread never takes it for someone else's).
        """
        before = self._generation()
        try:
            count = int(before or b"0")
        except ValueError:
            count = 0
        after = f"{count + 1}\n".encode()
        if len(self._own) >= 1024:
            self._own.clear()
        self._own[before] = after
        try:
            atomic_write(self.path / ".generation", after)
        except BaseException:
            self._own.pop(before, None)
            raise

    @staticmethod
    def _entries(directory: Path) -> list[Path]:
        """The JSON files of a directory (not the temporaries of atomic writes)."""
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return [directory / n for n in sorted(names) if n.endswith(".json") and n[0] != "."]

    def _slot_dir(self, app: str, component: str, version: str) -> Path:
        return (
            self.path
            / "slots"
            / _part(app, "app")
            / _part(component, "component")
            / _part(version, "version")
        )

    def _slots(self, directory: Path, now: float) -> tuple[dict[int, str], list[Path]]:
        """Live slots (index -> holder) and the files of expired ones."""
        live: dict[int, str] = {}
        expired: list[Path] = []
        for path in self._entries(directory):
            try:
                index = int(path.name[: -len(".json")])
                holder, expires = self._read_slot(path)
            except FileNotFoundError:
                continue  # released between the listing and the read (a reader without lock)
            except ValueError:
                continue  # not a slot file
            if expires <= now:
                expired.append(path)
            else:
                live[index] = holder
        return live, expired

    @staticmethod
    def _read_slot(path: Path) -> tuple[str, float]:
        try:
            data = json.loads(path.read_bytes())
            holder, expires = data["holder"], data["expires"]
            if not isinstance(holder, str) or not isinstance(expires, int | float):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise StoreError(f"{path}: not a slot (holder and expiry)") from None
        return holder, float(expires)

    def _tidy(self, directory: Path) -> None:
        """Remove a version's slot directory once it is empty; the caller holds the lock."""
        with contextlib.suppress(OSError):
            directory.rmdir()

    def _next_expiry(self, now: float) -> float | None:
        """The earliest moment a live slot runs out, if any slot is live."""
        soonest: float | None = None
        for dirpath, _dirs, _files in os.walk(self.path / "slots"):
            for path in self._entries(Path(dirpath)):
                try:
                    _holder, expires = self._read_slot(path)
                except (FileNotFoundError, StoreError):
                    continue
                if expires > now and (soonest is None or expires < soonest):
                    soonest = expires
        return soonest

    # -- the order of versions and kept failures

    def note_version(self, app: str, component: str, version: str) -> None:
        directory = self._versions_dir(app, component)
        path = directory / f"{_part(version, 'version')}.json"
        with self._os_errors("note a version"), self._locked():
            if path.exists():
                return
            places = self._places(directory)
            directory.mkdir(parents=True, exist_ok=True)
            place = max(places.values(), default=0) + 1
            atomic_write(path, json.dumps({"version": version, "place": place}).encode())
            self._bump()

    def versions(self, app: str, component: str) -> dict[str, int]:
        with self._os_errors("read versions"):
            return self._places(self._versions_dir(app, component))

    def record_failure(self, app: str, component: str, state: ComponentState) -> None:
        _check_state(state)
        directory = self._failures_dir(app, component) / _part(state.version, "version")
        with self._os_errors("record a failure"), self._locked():
            directory.mkdir(parents=True, exist_ok=True)
            atomic_write(directory / f"{_part(state.node, 'node')}.json", _encode_state(state))
            self._bump()

    def failures(self, app: str, component: str) -> list[ComponentState]:
        found: list[ComponentState] = []
        base = self._failures_dir(app, component)
        with self._os_errors("read failures"):
            try:
                versions = sorted(os.listdir(base))
            except FileNotFoundError:
                return []
            for name in versions:
                for entry in self._entries(base / name):
                    with contextlib.suppress(FileNotFoundError):
                        found.append(_decode_state(entry.read_bytes(), str(entry)))
        return found

    def clear_failure(self, app: str, component: str, version: str, node: str) -> None:
        directory = self._failures_dir(app, component) / _part(version, "version")
        path = directory / f"{_part(node, 'node')}.json"
        with self._os_errors("clear a failure"), self._locked():
            if path.exists():
                path.unlink()
                self._tidy(directory)
                self._bump()

    def forget_version(self, app: str, component: str, version: str) -> None:
        failed = self._failures_dir(app, component) / _part(version, "version")
        path = self._versions_dir(app, component) / f"{_part(version, 'version')}.json"
        with self._os_errors("forget a version"), self._locked():
            gone = self._entries(failed) + ([path] if path.exists() else [])
            for entry in gone:
                entry.unlink()
            self._tidy(failed)
            if gone:
                self._bump()

    def _versions_dir(self, app: str, component: str) -> Path:
        return self.path / "versions" / _part(app, "app") / _part(component, "component")

    def _failures_dir(self, app: str, component: str) -> Path:
        return self.path / "failures" / _part(app, "app") / _part(component, "component")

    def _places(self, directory: Path) -> dict[str, int]:
        places: dict[str, int] = {}
        for path in self._entries(directory):
            try:
                data = json.loads(path.read_bytes())
                version, place = data["version"], data["place"]
                if not isinstance(version, str) or type(place) is not int:
                    raise TypeError
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                raise StoreError(f"{path}: not a version's place (version and place)") from None
            places[version] = place
        return places


# --------------------------------------------------------------------------- etcd


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _prefix_end(prefix: str) -> str:
    """The range_end that makes a range cover every key starting with prefix."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class _Refused(StoreError):
    """etcd answered, and the answer is an error (a 4xx with a gRPC status)."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


_GRPC_NOT_FOUND = 5
_GRPC_UNAUTHENTICATED = 16


class EtcdStore:
    """The store in an etcd v3 cluster, through its JSON gateway (``/v3/...``).

    Keys::

        /reconciler/apps/<app>/<component>/<node>             a state (JSON)
        /reconciler/slots/<app>/<component>/<version>/<n>     a slot: the holder, on a lease
        /reconciler/<kind>/<node>/record      a node's record (exports, summary, facts), on a lease
        /reconciler/failures/<app>/<component>/<version>/<node>   a kept failure (a state)
        /reconciler/versions/<app>/<component>/<version>      seen; its create_revision: its place
        /reconciler/revisions/<source>                        a pushed revision (a commit id)

    Names are percent-encoded into single key segments. Each call tries the endpoints in
    order, starting with the last one that answered; it raises StoreError when none does.
    Every HTTP call has ``timeout`` seconds; ``wait`` holds a watch open for its own timeout.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        timeout: float = ETCD_TIMEOUT,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.username, self._password = username, password or ""
        self._token: str | None = None  # etcd's auth token for username, when it has one
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not endpoints:
            raise StoreError("no etcd endpoints")
        self.endpoints: list[urllib.parse.SplitResult] = []
        for endpoint in endpoints:
            url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            if url.scheme not in ("http", "https") or not url.hostname:
                raise StoreError(f"etcd endpoint {endpoint!r} is not an http(s) URL")
            self.endpoints.append(url)
        self.timeout = timeout
        self._good = 0  # the endpoint that answered last
        self._seen: int | None = None  # the store revision at the last read
        # Revisions this process's own changes made: not news to its own watch. A watch
        # message is judged once the change that made it has been answered (the lock).
        self._own: set[int] = set()
        self._writing = threading.Lock()
        self._closed = threading.Event()
        self._watching: http.client.HTTPConnection | None = None
        self.requests = RequestCount()  # this client's requests, by operation
        self._interrupted = threading.Event()
        self._watching_revision = False
        # Per source: the store revision at the last read of its pushed revision, or of the
        # last event of its key a watch reported.
        self._revision_seen: dict[str, int] = {}
        self._woke_for: frozenset[Cause] | None = frozenset()
        self._floor: int | None = None  # where the next wait counts from, set by rewind
        # The ranges a wait under way watches, when its watch covers more (the whole store).
        self._within: list[tuple[str, str | None]] | None = None

    # -- the contract

    def publish(self, app: str, component: str, state: ComponentState) -> None:
        _check_state(state)
        key = self._state_prefix(app, component) + _part(state.node, "node")
        value = _b64(_encode_state(state).decode())
        self._change("kv/put", {"key": _b64(key), "value": value})

    def states(self, app: str, component: str) -> dict[str, ComponentState]:
        kvs = self._range(self._state_prefix(app, component))
        found: dict[str, ComponentState] = {}
        for kv in kvs:
            key = _unb64(kv["key"])
            state = _decode_state(base64.b64decode(kv.get("value", "")), f"etcd key {key}")
            found[state.node] = state
        return found

    def components(self, app: str) -> list[str]:
        prefix = f"{ROOT}apps/{_part(app, 'app')}/"
        body = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)), "keys_only": True}
        names = set()
        for kv in self._call("kv/range", body).get("kvs", []):
            component, _, node = _unb64(kv["key"])[len(prefix) :].partition("/")
            if component and node:
                names.add(urllib.parse.unquote(component))
        return sorted(names)

    def acquire_slot(
        self, app: str, component: str, version: str, node: str, max_parallel: int, ttl: float
    ) -> bool:
        _check_slot(max_parallel, ttl)
        _part(node, "node")
        prefix = self._slot_prefix(app, component, version)
        lease: str | None = None
        try:
            for _attempt in range(20):
                kvs = self._range(prefix)
                read_at = self._seen or 0
                others: dict[int, str] = {}
                used: set[int] = set()
                for kv in kvs:
                    index = self._index(prefix, kv)
                    if index is None:
                        continue
                    used.add(index)
                    if _unb64(kv.get("value", "")) != node:
                        others[index] = _unb64(kv.get("value", ""))
                    elif kv.get("lease") and self._keepalive(kv["lease"]):
                        return True  # held already: renewed
                if len(others) >= max_parallel:
                    return False
                free = [n for n in range(max_parallel) if n not in used]
                if not free:  # this node's own slot, its lease just lost, is still being deleted
                    time.sleep(0.05)
                    continue
                if lease is None:
                    granted = self._call("lease/grant", {"TTL": max(1, math.ceil(ttl))})
                    lease = str(granted["ID"])
                key = f"{prefix}{free[0]}"
                answer = self._change(
                    "kv/txn",
                    {
                        "compare": [
                            {
                                "key": _b64(key),
                                "target": "CREATE",
                                "result": "EQUAL",
                                "create_revision": 0,
                            },
                            {  # nothing under the prefix changed since it was counted
                                "key": _b64(prefix),
                                "range_end": _b64(_prefix_end(prefix)),
                                "target": "MOD",
                                "result": "LESS",
                                "mod_revision": read_at + 1,
                            },
                        ],
                        "success": [
                            {"request_put": {"key": _b64(key), "value": _b64(node), "lease": lease}}
                        ],
                    },
                )
                if answer.get("succeeded"):
                    lease = None  # the slot holds it now
                    return True
            return False  # every attempt lost a race: the caller tries again later
        finally:
            if lease is not None:
                with contextlib.suppress(StoreError):
                    self._revoke(lease)

    def release_slot(self, app: str, component: str, version: str, node: str) -> None:
        prefix = self._slot_prefix(app, component, version)
        for kv in self._range(prefix):
            if _unb64(kv.get("value", "")) != node:
                continue
            if kv.get("lease"):
                self._revoke(kv["lease"], deletes=True)  # deletes the key with it
            else:
                self._change(
                    "kv/txn",
                    {
                        "compare": [
                            {
                                "key": kv["key"],
                                "target": "VALUE",
                                "result": "EQUAL",
                                "value": kv.get("value", ""),
                            }
                        ],
                        "success": [{"request_delete_range": {"key": kv["key"]}}],
                    },
                )

    def holders(self, app: str, component: str, version: str) -> list[str]:
        prefix = self._slot_prefix(app, component, version)
        slots: dict[int, str] = {}
        for kv in self._range(prefix):
            index = self._index(prefix, kv)
            if index is not None:
                slots[index] = _unb64(kv.get("value", ""))
        return [slots[n] for n in sorted(slots)]

    def publish_record(self, kind: RecordKind, node: str, record: bytes, ttl: float) -> None:
        _check_record(kind, record, ttl)
        key = self._record_key(kind, node)
        there = self._range(key, whole=True)
        seconds = max(1, math.ceil(ttl))
        for kv in there:
            # The same record on a lease of the same length: renew the lease, write nothing, so
            # that no watcher wakes. A lease etcd no longer knows, or granted for another ttl,
            # takes the write below.
            if (
                kv.get("lease")
                and base64.b64decode(kv.get("value", "")) == record
                and self._keepalive(str(kv["lease"])) == seconds
            ):
                return
        old = [kv.get("lease") for kv in there if kv.get("lease")]
        granted = self._call("lease/grant", {"TTL": seconds})
        lease = str(granted["ID"])
        try:
            self._change(
                "kv/put", {"key": _b64(key), "value": _b64(record.decode()), "lease": lease}
            )
        except BaseException:
            with contextlib.suppress(StoreError):
                self._revoke(lease)
            raise
        for previous in old:
            if str(previous) != lease:
                self._revoke(str(previous))  # no key is attached to it any more

    def withdraw_record(self, kind: RecordKind, node: str) -> None:
        key = self._record_key(kind, node)
        for kv in self._range(key, whole=True):
            self._change("kv/deleterange", {"key": kv["key"]})

    def records(self, kind: RecordKind) -> dict[str, bytes]:
        _check_kind(kind)
        prefix = f"{ROOT}{kind}/"
        found: dict[str, bytes] = {}
        for kv in self._range(prefix):
            raw = base64.b64decode(kv.get("value", ""))
            node, _, name = _unb64(kv["key"])[len(prefix) :].partition("/")
            if name == "record" and len(raw) <= MAX_RECORD[kind]:
                found[urllib.parse.unquote(node)] = raw
        return found

    @property
    def woke_for(self) -> frozenset[Cause] | None:
        return self._woke_for

    def position(self) -> object:
        if self._seen is not None:
            return self._seen
        # Before any read (a daemon's first run): the store's revision now, so that a change
        # made between the run's reads and the watch that follows is news to that watch.
        try:
            answer = self._call("kv/range", {"key": _b64(ROOT), "keys_only": True, "limit": 1})
        except StoreError:
            return None
        return int(answer["header"]["revision"])

    def rewind(self, position: object) -> None:
        if isinstance(position, int) and (self._floor is None or position < self._floor):
            self._floor = position

    def wait(self, timeout: float, watched: Watched = EVERYTHING) -> bool:
        import http.client

        deadline = time.monotonic() + timeout
        self._woke_for = frozenset()
        ranges = self._watched_ranges(watched)
        if not ranges:
            self._closed.wait(max(0.0, timeout))  # nothing to watch
            return False
        # One stream for all: etcd's watch takes a create_request per range on one connection.
        # Through the JSON gateway only the first WATCH_BODY bytes of the request are sure to
        # be read (the rest is dropped once the first answer is sent): ranges that do not fit
        # are watched as the whole store, and events outside them are not news.
        floor, self._floor = self._floor, None
        since = self._seen if floor is None or self._seen is None else min(floor, self._seen)
        body = self._watch_body(ranges, since)
        self._within = None
        if len(body) > WATCH_BODY:
            self._within = ranges
            body = self._watch_body([(ROOT, _prefix_end(ROOT))], since)
        if self.username is not None and self._token is None:
            self._authenticate()
        errors: list[str] = []
        for index in self._order():
            if self._closed.is_set():
                return False
            url = self.endpoints[index]
            try:
                return self._watch(index, body, deadline, self._changed, True) is not None
            except (OSError, http.client.HTTPException, ValueError, _StreamEnded) as exc:
                if self._closed.is_set() or self._take_interrupt():
                    return False
                if isinstance(exc, TimeoutError) and time.monotonic() >= deadline:
                    return False  # the wait ran out while the watch was being set up
                errors.append(f"{url.geturl()}: {_reason(exc)}")
                if time.monotonic() >= deadline:
                    break
        raise StoreError(f"etcd cannot be watched: {'; '.join(errors)}")

    def _watch_body(self, ranges: list[tuple[str, str | None]], since: int | None) -> bytes:
        """A watch request's body: one create_request per range, from after ``since`` on."""
        requests = []
        for key, end in ranges:
            request: dict[str, Any] = {"key": _b64(key)}
            if end is not None:
                request["range_end"] = _b64(end)
            if since is not None:
                request["start_revision"] = since + 1
            requests.append(json.dumps({"create_request": request}, separators=(",", ":")))
        return "\n".join(requests).encode()

    def _watched_ranges(self, watched: Watched) -> list[tuple[str, str | None]]:
        """The key ranges (key, range_end; None: that one key) a wait for ``watched`` holds."""
        if watched.everything:
            return [(ROOT, _prefix_end(ROOT))]
        prefixes = [
            f"{ROOT}{area}/{_part(app, 'app')}/"
            for app in sorted(watched.apps)
            for area in APP_AREAS
        ]
        if watched.exports:
            prefixes.append(f"{ROOT}exports/")
        ranges: list[tuple[str, str | None]] = [(p, _prefix_end(p)) for p in prefixes]
        if watched.revision is not None:
            ranges.append((self._revision_key(watched.revision), None))
        return ranges

    def _within_ranges(self, key: bytes) -> bool:
        """Whether a key a watch reported is one the wait under way was asked for."""
        if self._within is None:
            return True  # etcd sends only those
        text = key.decode(errors="replace")
        return any(
            text == start if end is None else start <= text < end for start, end in self._within
        )

    def close(self) -> None:
        self._closed.set()
        self._end_watch()

    # -- pushed revisions

    def push_revision(self, source: str, revision: str) -> bool:
        if not REVISION.fullmatch(revision):
            raise ValueError(f"a pushed revision is a commit id, not {revision!r}")
        key, value = _b64(self._revision_key(source)), _b64(revision)
        with self._writing:
            # Put only when the key says something else: a put of the same value would wake
            # every daemon watching it for nothing.
            answer = self._call(
                "kv/txn",
                {
                    "compare": [{"key": key, "target": "VALUE", "result": "EQUAL", "value": value}],
                    "failure": [{"request_put": {"key": key, "value": value}}],
                },
            )
            if answer.get("succeeded"):
                return False
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if len(self._own) >= 1024:
                    self._own.clear()
                self._own.add(int(answer["header"]["revision"]))
        return True

    def pushed_revision(self, source: str) -> str | None:
        answer = self._call("kv/range", {"key": _b64(self._revision_key(source))})
        self._revision_seen[source] = int(answer["header"]["revision"])
        kvs = answer.get("kvs") or []
        if not kvs:
            return None
        return _pushed(base64.b64decode(kvs[0].get("value", "")))

    def watch_revision(self, source: str, timeout: float) -> str | None:
        import http.client

        deadline = time.monotonic() + timeout
        request: dict[str, Any] = {"key": _b64(self._revision_key(source))}  # that one key
        if source in self._revision_seen:
            request["start_revision"] = self._revision_seen[source] + 1
        body = json.dumps({"create_request": request}).encode()
        if self.username is not None and self._token is None:
            self._authenticate()
        errors: list[str] = []
        self._watching_revision = True
        try:
            for index in self._order():
                if self._closed.is_set() or self._take_interrupt():
                    return None
                url = self.endpoints[index]
                try:
                    return self._watch(
                        index, body, deadline, lambda m: self._pushed_in(m, source), True
                    )
                except (OSError, http.client.HTTPException, ValueError, _StreamEnded) as exc:
                    if self._closed.is_set() or self._take_interrupt():
                        return None
                    if isinstance(exc, TimeoutError) and time.monotonic() >= deadline:
                        return None
                    errors.append(f"{url.geturl()}: {_reason(exc)}")
                    if time.monotonic() >= deadline:
                        break
        finally:
            self._watching_revision = False
        raise StoreError(f"etcd cannot be watched: {'; '.join(errors)}")

    def interrupt(self) -> None:
        self._interrupted.set()
        self._end_watch()  # a watch of the pushed revision, or a wait

    def _take_interrupt(self) -> bool:
        if self._interrupted.is_set():
            self._interrupted.clear()
            return True
        return False

    def _end_watch(self) -> None:
        conn = self._watching
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)

    def _pushed_in(self, message: Any, source: str) -> str | None:
        """The revision another process pushed, if one watch message reports one."""
        if not isinstance(message, dict):
            raise ValueError("not an etcd watch message")
        if "error" in message:
            error = message["error"]
            raise _StreamEnded(str(error.get("message") if isinstance(error, dict) else error))
        result = message.get("result") or {}
        _check_refused(result)
        if result.get("canceled") or result.get("compact_revision"):
            self._revision_seen.pop(source, None)  # history is gone: watch from now on
            return None
        pushed: str | None = None
        for event in result.get("events") or []:
            kv = event.get("kv") or {}
            revision = int(kv.get("mod_revision", 0))
            self._revision_seen[source] = max(revision, self._revision_seen.get(source, 0))
            if event.get("type") == "DELETE":
                continue
            with self._writing:  # a push of our own under way is answered first
                if revision in self._own:
                    continue
            pushed = _pushed(base64.b64decode(kv.get("value", "")))
        return pushed

    # -- keys

    @staticmethod
    def _state_prefix(app: str, component: str) -> str:
        return f"{ROOT}apps/{_part(app, 'app')}/{_part(component, 'component')}/"

    @staticmethod
    def _revision_key(source: str) -> str:
        return f"{ROOT}revisions/{_part(source, 'source')}"

    @staticmethod
    def _record_key(kind: RecordKind, node: str) -> str:
        # A key of its own below the node's prefix: etcd permissions on a prefix
        # (/reconciler/exports/web-1/) then cannot reach another node's (web-10).
        _check_kind(kind)
        return f"{ROOT}{kind}/{_part(node, 'node')}/record"

    @staticmethod
    def _slot_prefix(app: str, component: str, version: str) -> str:
        return (
            f"{ROOT}slots/{_part(app, 'app')}/{_part(component, 'component')}/"
            f"{_part(version, 'version')}/"
        )

    # -- the order of versions and kept failures

    def note_version(self, app: str, component: str, version: str) -> None:
        key = self._versions_prefix(app, component) + _part(version, "version")
        # Created once: its create_revision is the version's place.
        self._change(
            "kv/txn",
            {
                "compare": [
                    {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
                ],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(version)}}],
            },
        )

    def versions(self, app: str, component: str) -> dict[str, int]:
        return {
            _unb64(kv.get("value", "")): int(kv["create_revision"])
            for kv in self._range(self._versions_prefix(app, component))
        }

    def record_failure(self, app: str, component: str, state: ComponentState) -> None:
        _check_state(state)
        key = (
            self._failures_prefix(app, component)
            + f"{_part(state.version, 'version')}/{_part(state.node, 'node')}"
        )
        self._change("kv/put", {"key": _b64(key), "value": _b64(_encode_state(state).decode())})

    def failures(self, app: str, component: str) -> list[ComponentState]:
        return [
            _decode_state(base64.b64decode(kv.get("value", "")), f"etcd key {_unb64(kv['key'])}")
            for kv in self._range(self._failures_prefix(app, component))
        ]

    def clear_failure(self, app: str, component: str, version: str, node: str) -> None:
        key = (
            self._failures_prefix(app, component)
            + f"{_part(version, 'version')}/{_part(node, 'node')}"
        )
        self._change("kv/deleterange", {"key": _b64(key)})

    def forget_version(self, app: str, component: str, version: str) -> None:
        failed = self._failures_prefix(app, component) + _part(version, "version") + "/"
        key = self._versions_prefix(app, component) + _part(version, "version")
        self._change(
            "kv/txn",
            {
                "compare": [],
                "success": [
                    {"request_delete_range": {"key": _b64(key)}},
                    {
                        "request_delete_range": {
                            "key": _b64(failed),
                            "range_end": _b64(_prefix_end(failed)),
                        }
                    },
                ],
            },
        )

    @staticmethod
    def _versions_prefix(app: str, component: str) -> str:
        return f"{ROOT}versions/{_part(app, 'app')}/{_part(component, 'component')}/"

    @staticmethod
    def _failures_prefix(app: str, component: str) -> str:
        return f"{ROOT}failures/{_part(app, 'app')}/{_part(component, 'component')}/"

    @staticmethod
    def _index(prefix: str, kv: dict[str, Any]) -> int | None:
        suffix = _unb64(kv["key"])[len(prefix) :]
        return int(suffix) if suffix.isdigit() else None

    # -- etcd calls

    def _range(self, prefix: str, whole: bool = False) -> list[dict[str, Any]]:
        """The keys under ``prefix``; ``whole``: the one key ``prefix`` itself."""
        body = {"key": _b64(prefix)}
        if not whole:
            body["range_end"] = _b64(_prefix_end(prefix))
        answer = self._call("kv/range", body)
        self._seen = int(answer["header"]["revision"])
        kvs: list[dict[str, Any]] = answer.get("kvs", [])
        return kvs

    def _keepalive(self, lease: str) -> int:
        """Renew a lease: the seconds it now has left (its granted TTL); 0 when it is gone."""
        answer = self._call("lease/keepalive", {"ID": lease})
        result = answer.get("result", answer)
        return max(0, int(result.get("TTL", 0)))

    def _revoke(self, lease: str, deletes: bool = False) -> None:
        """Revoke a lease; ``deletes``: a key is attached, so the revoke is a change."""
        try:
            if deletes:
                self._change("lease/revoke", {"ID": lease})
            else:
                self._call("lease/revoke", {"ID": lease})
        except _Refused as exc:
            if exc.code != _GRPC_NOT_FOUND:
                raise

    def _order(self) -> list[int]:
        count = len(self.endpoints)
        return [(self._good + i) % count for i in range(count)]

    def _connect(self, url: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
        import http.client

        cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        return cls(url.hostname or "", url.port, timeout=timeout)

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to the first endpoint that answers, as ``username`` when there is one (a token
        etcd no longer knows is renewed once); StoreError when none does."""
        if self.username is None:
            return self._post(path, body)
        if self._token is None:
            self._authenticate()
        try:
            return self._post(path, body)
        except _Refused as exc:
            if exc.code != _GRPC_UNAUTHENTICATED:
                raise
        self._token = None
        self._authenticate()
        return self._post(path, body)

    def _authenticate(self) -> None:
        answer = self._post(
            "auth/authenticate", {"name": self.username, "password": self._password}, token=False
        )
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise StoreError(f"etcd gave no token to {self.username!r}")
        self._token = token

    def _headers(self, token: bool = True) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if token and self._token is not None:
            headers["Authorization"] = self._token
        return headers

    def _post(self, path: str, body: dict[str, Any], token: bool = True) -> dict[str, Any]:
        """One POST, to the first endpoint that answers."""
        import http.client

        data = json.dumps(body).encode()
        errors: list[str] = []
        for index in self._order():
            url = self.endpoints[index]
            conn = self._connect(url, self.timeout)
            self.requests.add(path)
            REQUESTS.add(path)
            try:
                conn.request(
                    "POST",
                    f"{url.path.rstrip('/')}/v3/{path}",
                    data,
                    self._headers(token),
                )
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{url.geturl()}: {_reason(exc)}")
                continue
            finally:
                conn.close()
            try:
                answer = json.loads(raw)
                if not isinstance(answer, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                errors.append(f"{url.geturl()}: HTTP {status}, not an etcd answer")
                continue
            if status >= 500 or (status == 404 and "code" not in answer):
                errors.append(f"{url.geturl()}: HTTP {status} {answer.get('message', '')}".rstrip())
                continue
            if status >= 400:
                message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
                code = answer.get("code")
                raise _Refused(f"etcd {path}: {message}", code if isinstance(code, int) else None)
            self._good = index
            return answer
        raise StoreError(f"etcd unreachable ({path}): {'; '.join(errors)}")

    def _change(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A call that changes the store; the revision it made is remembered as our own."""
        with self._writing:
            answer = self._call(path, body)
            if path != "kv/txn" or answer.get("succeeded"):  # a failed txn changes nothing
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    if len(self._own) >= 1024:
                        self._own.clear()
                    self._own.add(int(answer["header"]["revision"]))
        return answer

    def _watch(
        self,
        index: int,
        body: bytes,
        deadline: float,
        judge: Callable[[Any], _T | None],
        interruptible: bool = False,
    ) -> _T | None:
        """Hold one watch open until ``judge`` makes something of a message (what it made) or
        the deadline (None); ``interruptible``: or ``interrupt``."""
        url = self.endpoints[index]
        conn = self._connect(url, max(0.001, min(self.timeout, deadline - time.monotonic())))
        self._watching = conn
        self.requests.add("watch")
        REQUESTS.add("watch")
        try:
            conn.request(
                "POST",
                f"{url.path.rstrip('/')}/v3/watch",
                body,
                self._headers(),
            )
            resp = conn.getresponse()
            if resp.status != 200:
                raise _StreamEnded(f"HTTP {resp.status}")
            self._good = index
            decoder = json.JSONDecoder()
            buffer = ""
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed.is_set():
                    return None
                if interruptible and self._take_interrupt():
                    return None
                assert conn.sock is not None
                conn.sock.settimeout(remaining)
                try:
                    chunk = resp.read1(65536)
                except TimeoutError:
                    return None
                if not chunk:
                    raise _StreamEnded("the watch ended")
                buffer += chunk.decode()
                while True:
                    buffer = buffer.lstrip()
                    if not buffer:
                        break
                    try:
                        message, end = decoder.raw_decode(buffer)
                    except ValueError:
                        break  # the rest of this message is still on its way
                    buffer = buffer[end:]
                    made = judge(message)
                    if made is not None:
                        return made
        finally:
            self._watching = None
            conn.close()

    def _changed(self, message: Any) -> bool | None:
        """True when one watch message reports a change, else None (and remember up to
        where)."""
        if not isinstance(message, dict):
            raise ValueError("not an etcd watch message")
        if "error" in message:
            error = message["error"]
            raise _StreamEnded(str(error.get("message") if isinstance(error, dict) else error))
        result = message.get("result") or {}
        _check_refused(result)
        if result.get("canceled") or result.get("compact_revision"):
            self._seen = None  # history from the last read is gone: read again
            self._woke_for = None
            return True
        events = result.get("events") or []
        if not events:
            return None
        revisions = {int(e.get("kv", {}).get("mod_revision", 0)) for e in events}
        self._seen = max(revisions) or None
        news: dict[int, set[Cause]] = {}
        for event in events:
            key = base64.b64decode(event.get("kv", {}).get("key", ""))
            cause = _cause(key)
            if cause is None or not self._within_ranges(key):
                continue  # a record nobody waits for, or a key the wait does not watch
            revision = int(event.get("kv", {}).get("mod_revision", 0))
            news.setdefault(revision, set()).add(cause)
        with self._writing:  # a change of our own under way is answered first
            causes = {
                c for revision, found in news.items() if revision not in self._own for c in found
            }
        if not causes:
            return None
        self._woke_for = frozenset(causes)
        return True


def _check_refused(result: dict[str, Any]) -> None:
    """Raise StoreError when etcd cancelled a watch for a reason other than compaction.

    A user whose permissions do not cover a watched range (for ``wait``, the exports records
    and the pushed revision, or every key under ``/reconciler/``) has its watch cancelled as
    it is created: that is no change
    to read again, which would wake the caller at once, over and over, but a refusal."""
    if result.get("canceled") and not result.get("compact_revision"):
        reason = str(result.get("cancel_reason") or "")
        if reason:
            raise StoreError(f"etcd refused the watch: {reason}")


# The areas of the store that belong to one app: /reconciler/<area>/<app>/...
APP_AREAS = ("apps", "slots", "failures", "versions")


def _cause(key: bytes) -> Cause | None:
    """What a change of an etcd key is news of; None for a record of the ``QUIET_KINDS``."""
    area = key[len(ROOT) :].split(b"/", 1)[0].decode(errors="replace")
    if area in QUIET_KINDS:
        return None
    if area in APP_AREAS:
        return "apps"
    if area == "exports":
        return "exports"
    if area == "revisions":
        return "revision"
    return "other"


_T = TypeVar("_T")


class _StreamEnded(Exception):
    """A watch stopped before its deadline."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc) or type(exc).__name__
