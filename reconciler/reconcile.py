"""One run, from a control repo to a report: ``reconcile``, the function the CLI and the daemon
both call.

state directory checked -> fetch (a snapshot of the repo; with ``source.verify``, its commit's
signature is checked before any file is read) -> a rewind refused -> facts -> compile (the
node's catalog) -> check/apply over the graph -> prune -> inventory, report and the applied
commit. Anything wrong before the apply phase applies nothing of that revision; whatever goes
wrong ends as a typed ``Outcome``, never an exception.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from reconciler import __version__
from reconciler.apps import fleet
from reconciler.apps.exports import Exchange, exchange
from reconciler.apps.facts import publish_facts
from reconciler.apps.rollout import Rollout
from reconciler.apps.store import CoordinationConfig, Store, StoreError, open_store
from reconciler.engine import state
from reconciler.engine.report import ResourceResult, RunReport
from reconciler.engine.run import DEFAULT_WORKERS, converge, execute
from reconciler.engine.suspension import Suspension
from reconciler.engine.suspension import current as current_suspension
from reconciler.errors import (
    LockHeld,
    ModelError,
    Problem,
    Reason,
    ReconcilerError,
    SignatureError,
    SourceError,
    StateDirUnsafe,
)
from reconciler.facts import VOLATILE, ReadFacts, stable_view, was_read
from reconciler.fs import (
    MAX_FILE_SIZE,
    BackupStore,
    Root,
    remove_stray_temporaries,
)
from reconciler.model import yamlload
from reconciler.model.catalog import Catalog, Compiler, Entry, link
from reconciler.model.modules import modules_for_run
from reconciler.model.secrets import Keyring, SecretsConfig
from reconciler.resources.base import REGISTRY, Context, Resource
from reconciler.resources.runner import Runner
from reconciler.source import GitSnapshot, Snapshot, open_snapshot
from reconciler.source.git import FetchTimeout, Mirror, redact, run_git, shown_url
from reconciler.source.verify import Verify


@dataclass
class RunOptions:
    repo: str
    ref: str | None = None
    node: str | None = None
    root: Path = Path("/")
    state_dir: Path = Path("/var/lib/reconciler")
    facts_file: Path | None = None
    facts_dirs: list[Path] = field(default_factory=list)
    noop: bool = False
    timeout: float = 60.0
    workers: int = DEFAULT_WORKERS
    stop: threading.Event | None = None
    verify: Verify | None = None  # source.verify: apply only commits signed by these keys
    # App deployments: the store to coordinate through (the daemon keeps one open), else one
    # opened for the run from ``coordination`` (default: local, under the state directory).
    store: Store | None = None
    coordination: CoordinationConfig | None = None
    max_file_size: int = MAX_FILE_SIZE  # reconcile.max_file_size
    # source.allow_rewind: apply a branch moved to a commit not descending from the applied one
    allow_rewind: bool = False
    secrets: SecretsConfig = field(default_factory=SecretsConfig)  # the node's decryption keys
    # Enforce even while enforcement is suspended (`reconciler suspend`): a run is noop then.
    ignore_suspension: bool = False


Warn = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


def gather_facts(options: RunOptions, warn: Warn = _ignore) -> tuple[str, dict[str, Any]]:
    from reconciler import facts as factsmod

    found = factsmod.gather(
        node=options.node, facts_dirs=options.facts_dirs, facts_file=options.facts_file
    )
    for warning in found.warnings:
        warn(warning)
    return str(found.facts["node"]), found.facts


def make_context(options: RunOptions, fingerprints: Mapping[str, Any]) -> Context:
    root = Root(options.root)
    return Context(
        root=root,
        state_dir=options.state_dir,
        backups=BackupStore(options.state_dir),
        runner=Runner(base_env={"RECONCILER_ROOT": str(root.prefix)}),
        fingerprints=dict(fingerprints),
        max_file_size=options.max_file_size,
    )


def open_run_snapshot(options: RunOptions, checked: bool = False) -> Snapshot:
    """The revision ``options`` name; with ``verify``, only a commit signed by a trusted key.

    The state directory (the mirror git fetches into) is checked first, unless ``checked``.
    """
    if not checked:
        state.prepare_state_dir(options.state_dir, create=False)
    if options.verify is not None:
        from reconciler.source.verify import open_verified_snapshot

        return open_verified_snapshot(
            options.repo, options.ref, options.state_dir, options.timeout, options.verify
        )
    return open_snapshot(options.repo, options.ref, options.state_dir, options.timeout)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class OutcomeKind(Enum):
    """How a run ended; the CLI picks its exit code from it, the daemon its metrics and retry."""

    IN_SYNC = "in_sync"  # ran; nothing to change
    CHANGED = "changed"  # ran; changed (or, in noop, would change) something
    FAILED = "failed"  # ran; a resource, a prune or an app failed
    REJECTED = "rejected"  # the revision is refused: the model, its signature, a rewind
    FETCH_FAILED = "fetch_failed"  # the revision could not be read
    SKIPPED = "skipped"  # another run holds the lock
    ERROR = "error"  # could not run: an unsafe state directory, an unexpected exception


@dataclass
class Outcome:
    """One run's end: its kind, why (a reason code, and a message for people), its report."""

    kind: OutcomeKind
    reason: Reason = ""  # "" for a run that ran; else RevisionRegression, FetchFailed, ...
    message: str = ""
    report: RunReport | None = None
    catalog: Catalog | None = None
    revision: str | None = None
    branch: str | None = None
    # For a rejection: parse, validate, compile, signature, rewind. For a fetch failure:
    # "fetch" (the remote), or "read" (fetched, but the commit could not be read whole).
    stage: str | None = None
    problems: list[Problem] = field(default_factory=list)
    fetched: bool = False  # the fetch step succeeded (a pinned commit: it was there)
    fetch_seconds: float = 0.0
    suspended: Suspension | None = None  # the suspension that made an enforcing run noop

    @property
    def ran(self) -> bool:
        return self.kind in (OutcomeKind.IN_SYNC, OutcomeKind.CHANGED, OutcomeKind.FAILED)


@dataclass(frozen=True)
class Pinned:
    """The commit a daemon run is for: the branch head it saw at the remote (``fetch`` always,
    or only when missing from the mirror), or its last good one (``never``: a drift check
    reads it from the mirror or fails). ``verify`` false: it was verified when first applied."""

    commit: str
    branch: str
    fetch: Literal["always", "missing", "never"] = "always"
    verify: bool = True


def refuse_rewind(git_dir: Path, good: str, head: str, timeout: float) -> str | None:
    """Why ``head`` may not follow the applied ``good``: it does not descend from it."""
    if good == head:
        return None
    try:
        if not all(re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", c) for c in (good, head)):
            raise SourceError("not a commit id")
        run_git(["merge-base", "--is-ancestor", good, head], git_dir, timeout)
    except FetchTimeout:
        raise
    except SourceError:
        return (
            f"RevisionRegression: {head[:12]} does not descend from the applied "
            f"{good[:12]} (set source.allow_rewind: true to accept it)"
        )
    return None


def reconcile(
    options: RunOptions,
    plan: bool = False,
    warn: Warn = _ignore,
    snapshot: Snapshot | None = None,
    pinned: Pinned | None = None,
    cache: CompileCache | None = None,
) -> Outcome:
    """One run, every step in this order, for ``apply``, ``plan`` and every daemon run (see
    ``_reconcile``); then, with a coordination store configured (``options.coordination``
    read from a configuration's coordination section), the run's summary is published there
    for the fleet view, unless planning or skipped."""
    outcome = _reconcile(options, plan, warn, snapshot, pinned, cache)
    config = options.coordination
    skipped = outcome.kind is OutcomeKind.SKIPPED
    if config is not None and config.configured and not (plan or skipped):
        publish_summary(options, config, outcome, warn)
    return outcome


_RESULTS: dict[OutcomeKind, fleet.Result] = {
    OutcomeKind.IN_SYNC: "in_sync",
    OutcomeKind.CHANGED: "changed",
    OutcomeKind.FAILED: "failed",
    OutcomeKind.REJECTED: "rejected",
    OutcomeKind.FETCH_FAILED: "fetch_failed",
    OutcomeKind.SKIPPED: "error",  # never published
    OutcomeKind.ERROR: "error",
}


def run_summary(options: RunOptions, ttl: float, outcome: Outcome) -> fleet.RunSummary:
    """What the fleet view shows of a run that ended as ``outcome``."""
    report = outcome.report
    results = report.resources if report is not None else []
    message = outcome.message
    if report is not None and not message:
        failed = [r.id for r in results if r.status == "failed"]
        apps = [f"{a['app']}/{a['component']}: {a['message']}" for a in report.apps
                if a["state"] == "failed"]  # fmt: skip
        message = "; ".join([*report.errors, *(f"failed: {i}" for i in failed), *apps])
        message = str(report.scrub(message))
    try:
        suspended = current_suspension(options.state_dir) is not None
    except Exception:  # an unsafe state directory: the run said why
        suspended = False
    return fleet.RunSummary(
        node=report.node if report is not None else options.node or _hostname(),
        role=report.role if report is not None else None,
        revision=outcome.revision,
        branch=outcome.branch,
        ended=time.time(),
        result=_RESULTS[outcome.kind],
        drifted=sum(
            1
            for r in results
            if r.status == "would_change" or (r.status == "changed" and r.corrective)
        ),
        changed=sum(1 for r in results if r.status == "changed"),
        failed=sum(1 for r in results if r.status == "failed"),
        noop=report.noop if report is not None else options.noop,
        suspended=suspended,
        version=__version__,
        ttl=ttl,
        message=redact(message),
    )


def publish_summary(
    options: RunOptions, config: CoordinationConfig, outcome: Outcome, warn: Warn
) -> None:
    """Publish the run's summary; a store that fails is a warning, never a failed run."""
    store, opened = options.store, False
    try:
        summary = run_summary(options, config.exports_ttl, outcome)
        if store is None:
            store, opened = open_store(config), True
        fleet.publish(store, summary)
    except (StoreError, OSError, ValueError) as exc:
        warn(f"run summary not published: {exc}")
    except Exception as exc:  # a bug: the run is done all the same
        warn(f"run summary not published: Unexpected: {type(exc).__name__}: {exc}")
    finally:
        if opened and store is not None:
            store.close()


def _reconcile(
    options: RunOptions,
    plan: bool,
    warn: Warn,
    snapshot: Snapshot | None,
    pinned: Pinned | None,
    cache: CompileCache | None,
) -> Outcome:
    """One run, every step in this order.

    Check the state directory (before anything in it is used: the mirror, the parse cache);
    fetch; verify the signature; refuse a rewind from the last applied commit; compile;
    converge; record (the report, and the applied commit). ``pinned`` (the daemon's) names the
    commit to fetch and read from the mirror of ``options.repo``; a ``snapshot`` already open
    skips fetching. ``cache`` (the daemon's): the catalog compiled last, re-checked instead of
    compiled again while nothing it was compiled from changed. While enforcement is suspended,
    an enforcing run is a noop run (unless ``options.ignore_suspension``), and the outcome
    names the suspension. Whatever goes wrong is an ``Outcome``, never an exception: an unexpected
    one is an error with its type and message, reported (unless planning) as far as the state
    directory allows.
    """
    started = now_iso()
    revision = snapshot.revision if snapshot is not None else None
    branch = snapshot.branch if snapshot is not None else None
    if pinned is not None:
        revision, branch = pinned.commit, pinned.branch
    opened: Snapshot | None = None
    fetch = _Fetch()
    suspended: Suspension | None = None
    try:
        state.prepare_state_dir(options.state_dir, create=not plan)
        if not (plan or options.noop or options.ignore_suspension):
            suspended = current_suspension(options.state_dir)
            if suspended is not None:
                options = dataclasses.replace(options, noop=True)
        if snapshot is None:
            t = time.perf_counter()
            if pinned is None:
                snapshot = opened = open_run_snapshot(options, checked=True)
                fetch.done = True
            else:
                snapshot = opened = _open_pinned(options, pinned, fetch)
            fetch.seconds = time.perf_counter() - t
            revision, branch = snapshot.revision, snapshot.branch
        why = _rewind(options, snapshot, warn)
        if why is not None:
            return _failed(
                options, plan, started, revision, branch, OutcomeKind.REJECTED,
                "RevisionRegression", why, warn, stage="rewind",
            )  # fmt: skip
        report, catalog = run(options, plan, warn, snapshot, cache)
        if not plan and isinstance(snapshot, GitSnapshot) and snapshot.revision is not None:
            applied = state.Applied(snapshot.revision, snapshot.branch, shown_url(options.repo))
            state.save_applied(options.state_dir, applied)
    except StateDirUnsafe as exc:  # nothing can be written there, not even a report
        return Outcome(OutcomeKind.ERROR, exc.reason, str(exc), revision=revision, branch=branch)
    except LockHeld as exc:
        skipped = Outcome(OutcomeKind.SKIPPED, exc.reason, str(exc), revision=revision)
        skipped.branch = branch
        return fetch.mark(skipped)
    except SignatureError as exc:
        return fetch.mark(_failed(
            options, plan, started, exc.commit, branch, OutcomeKind.REJECTED, exc.reason,
            str(exc), warn, stage="signature",
        ))  # fmt: skip
    except SourceError as exc:
        return fetch.mark(_failed(
            options, plan, started, revision, branch, OutcomeKind.FETCH_FAILED, exc.reason,
            str(exc), warn, stage="read" if fetch.done else "fetch",
        ))  # fmt: skip
    except ModelError as exc:
        outcome = fetch.mark(_failed(
            options, plan, started, revision, branch, OutcomeKind.REJECTED, exc.reason,
            str(exc), warn, stage=exc.stage,
        ))  # fmt: skip
        outcome.problems = exc.problems
        return outcome
    except ReconcilerError as exc:
        return fetch.mark(_failed(
            options, plan, started, revision, branch, OutcomeKind.ERROR, exc.reason,
            str(exc), warn,
        ))  # fmt: skip
    except Exception as exc:  # a bug, MemoryError, EMFILE: a failed run, never a crash
        message = f"Unexpected: {type(exc).__name__}: {exc}"
        return fetch.mark(_failed(
            options, plan, started, revision, branch, OutcomeKind.ERROR, "Unexpected",
            message, warn,
        ))  # fmt: skip
    finally:
        if opened is not None and isinstance(opened, GitSnapshot):
            opened.close()
    kind = (
        OutcomeKind.FAILED
        if report.failed
        else OutcomeKind.CHANGED
        if report.changed
        else OutcomeKind.IN_SYNC
    )
    outcome = Outcome(kind, "", "", report, catalog, revision, branch, suspended=suspended)
    return fetch.mark(outcome)


@dataclass
class _Fetch:
    done: bool = False
    seconds: float = 0.0

    def mark(self, outcome: Outcome) -> Outcome:
        outcome.fetched, outcome.fetch_seconds = self.done, self.seconds
        return outcome


def _open_pinned(options: RunOptions, pinned: Pinned, fetch: _Fetch) -> GitSnapshot:
    """The pinned commit from the mirror of ``options.repo``: fetched as ``pinned.fetch`` says,
    then verified (with ``options.verify``) before any of its files is read."""
    mirror = Mirror(options.repo, options.state_dir / "source", options.timeout)
    commit, branch = pinned.commit, pinned.branch
    if pinned.fetch == "always":
        commit, found = mirror.fetch(branch)
        branch = found or branch
    else:
        mirror.ensure()
        if not mirror.has_commit(commit):
            if pinned.fetch == "never":
                raise SourceError(f"{commit[:12]} is not in the mirror {mirror.git_dir}")
            commit, found = mirror.fetch(branch)
            branch = found or branch
    fetch.done = True
    if pinned.verify and options.verify is not None:
        from reconciler.source.verify import verify_commit

        verify_commit(mirror.git_dir, commit, options.verify, options.timeout)
    shown = f"{shown_url(options.repo)}@{branch}" if pinned.fetch != "never" else "last good"
    return GitSnapshot(mirror.git_dir, commit, branch, shown, options.timeout)


def _rewind(options: RunOptions, snapshot: Snapshot, warn: Warn) -> str | None:
    """Refuse a commit of the branch last applied from this source that does not descend
    from the applied one (a working tree, another source or branch: nothing to compare)."""
    if options.allow_rewind or not isinstance(snapshot, GitSnapshot):
        return None
    applied = state.load_applied(options.state_dir, warn)
    if (
        applied is None
        or snapshot.revision is None
        or snapshot.branch is None
        or applied.source not in (None, shown_url(options.repo))  # None: an older daemon's
        or applied.branch != snapshot.branch
    ):
        return None
    return refuse_rewind(snapshot.git_dir, applied.revision, snapshot.revision, options.timeout)


def _hostname() -> str:
    """The node's name for the report of a run that ended before its facts were gathered."""
    import socket

    name = socket.gethostname()
    return name if "." in name else socket.getfqdn(name)


def _failed(
    options: RunOptions,
    plan: bool,
    started: str,
    revision: str | None,
    branch: str | None,
    kind: OutcomeKind,
    reason: Reason,
    message: str,
    warn: Warn,
    stage: str | None = None,
) -> Outcome:
    """A run that did not converge, reported: its report holds only the reason (a plan's is
    not written); one that cannot be written is said in a warning."""
    message = redact(message)
    shown = message if message.startswith(reason) else f"{reason}: {message}"
    report = RunReport(
        node=options.node or _hostname(),
        revision=revision,
        branch=branch,
        noop=options.noop or plan,
        started=started,
        run_id=secrets.token_hex(6),
        errors=[shown],
    )
    if not plan:
        try:
            state.save_report(options.state_dir, report.to_dict())
        except Exception as exc:
            warn(f"the report of this run could not be written: {type(exc).__name__}: {exc}")
    return Outcome(kind, reason, shown, report, None, revision, branch, stage)


_paused = 0  # runs under way with the cyclic garbage collector paused
_paused_lock = threading.Lock()
_resume = False  # whether the collector was on when the first of them paused it


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a run builds and uses its catalog.

    A catalog is hundreds of thousands of objects that live the whole run, and every full
    collection while it grows scans them all again: a quarter of a run with nothing to change,
    for nothing, since they are all still in use. Memory is still freed as it is released
    (reference counting); only cycles wait for the end of the run. Runs may overlap (the
    daemon's and a plan): the collector resumes when the last of them ends, and only if it
    was on before the first.
    """
    global _paused, _resume
    with _paused_lock:
        if _paused == 0:
            _resume = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _resume:
                gc.enable()


def run(
    options: RunOptions,
    plan: bool = False,
    warn: Warn = _ignore,
    snapshot: Snapshot | None = None,
    cache: CompileCache | None = None,
) -> tuple[RunReport, Catalog]:
    """Compile and converge the node once. ``plan`` checks only and writes no state. With a
    ``cache``, the catalog it holds is converged instead when it was compiled from the same
    inputs (``compile_key``)."""
    with collector_paused():
        return _run_once(options, plan, warn, snapshot, cache)


def _run_once(
    options: RunOptions,
    plan: bool,
    warn: Warn,
    snapshot: Snapshot | None,
    cache: CompileCache | None,
) -> tuple[RunReport, Catalog]:
    phases: dict[str, float] = {}
    started_wall = now_iso()
    t0 = time.perf_counter()
    if snapshot is None:
        state.prepare_state_dir(options.state_dir, create=not plan)
        snapshot = open_run_snapshot(options, checked=True)
    phases["fetch"] = time.perf_counter() - t0

    t = time.perf_counter()
    yamlload.use_cache(yamlload.ParseCache(options.state_dir / "cache" / "yaml", readonly=plan))
    taken = now_iso()
    node, facts = gather_facts(options, warn)
    config = options.coordination or CoordinationConfig(path=options.state_dir / "coordination")
    # modules.yaml's modules, fetched and verified before any file of theirs is read
    scratch = plan and not options.state_dir.exists()
    key = compile_key(options, snapshot, facts) if cache is not None and not plan else None
    with exchange(options.store, config) as exports:
        catalog = cache.reuse(key, exports) if cache is not None and key is not None else None
        compiled = catalog is None
        if catalog is None:
            if cache is not None:
                cache.clear()
            read = ReadFacts(facts) if key is not None else None
            with modules_for_run(
                snapshot, options.state_dir, options.timeout, options.verify, scratch
            ) as modular:
                compiler = Compiler(modular, keyring=Keyring(options.secrets), collect=exports.read)
                catalog = compiler.compile(node, facts if read is None else read)
            if cache is not None and key is not None and read is not None:
                cache.keep(key, catalog, read, exports.records)
        phases["compile"] = time.perf_counter() - t
        for why in catalog.collect_warnings:
            warn(why)
        kept = cache.inventory if cache is not None else None
        report = _run_compiled(catalog, options, plan, warn, phases, started_wall, kept)
        report.compiled = compiled
        if not plan and options.coordination is not None:
            # The facts it compiled with, for reviewing changes elsewhere (noop and failed runs
            # too: the facts hold all the same). Before the exports: their lease starts last.
            publish_facts(options.store, config, catalog, facts, taken, options.state_dir, warn)
        if not (plan or report.noop or report.failed):
            # Components that serve here: healthy, or waiting while what they deployed runs.
            healthy = {
                f"{a['app']}/{a['component']}"
                for a in report.apps
                if a["state"] == "healthy" or (a["state"] == "waiting" and a["previous_version"])
            }
            exports.publish(catalog, healthy, options.state_dir, warn)
        catalog.collected_records = exports.records

    report.phases = phases
    report.duration_seconds = time.perf_counter() - t0
    if not plan:
        try:
            state.save_report(options.state_dir, report.to_dict())
        except OSError as exc:
            # What was applied stays applied (and recorded); the run failed to record it.
            why = f"ReportNotWritten: {options.state_dir / 'reports'}: {type(exc).__name__}: {exc}"
            report.errors.append(why)
            warn(why)
    return report, catalog


# -- the daemon's compiled catalog ------------------------------------------------------------


def _key_file(path: Path | None) -> object:
    """What a key file of ``secrets:`` is now: its type, owner, mode and content digest (each
    can change what a decryption gives, or whether the key is refused), or why it cannot be
    read."""
    if path is None:
        return None
    try:
        st = os.lstat(path)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read(1024 * 1024 + 1)).hexdigest()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"
    return [st.st_mode, st.st_uid, st.st_size, digest]


def compile_key(options: RunOptions, snapshot: Snapshot, facts: Mapping[str, Any]) -> str | None:
    """A digest of everything a compile of ``snapshot`` for this node reads, but what it reads
    from the coordination store (``CompileCache.reuse`` reads that again); None when the
    snapshot cannot be named by a commit (a working tree's files change under the same name).

    - the revision: the commit and branch (``modules.yaml`` and its pinned module commits are
      in the commit's tree), and the source it came from;
    - the facts: built-in, facts directories (files and what executables printed) and
      ``--facts``, as gathered for this run, but ``facts.VOLATILE`` (``ReadFacts`` tells
      whether the compile read those: then it is not reused);
    - the node's decryption keys (``secrets:``): each file's type, owner, mode and content;
    - the settings a compile reads (node, root, state directory, facts directories, signature
      rules for modules, the coordination store, timeouts);
    - this program's version.

    Nothing else reaches a compile: templates are sandboxed (no clock, environment or file
    outside the revision), and the hostname and addresses are facts.
    """
    if snapshot.revision is None:
        return None
    keys = options.secrets
    parts = {
        "version": __version__,
        "source": options.repo,
        "revision": snapshot.revision,
        "branch": snapshot.branch,
        "settings": [
            options.node,
            str(options.root),
            str(options.state_dir),
            options.ref,
            [str(d) for d in options.facts_dirs],
            str(options.facts_file),
            options.timeout,
            repr(options.verify),
            repr(options.coordination),
            repr(keys),
        ],
        "facts": stable_view(facts),
        "keys": [
            _key_file(p) for p in (keys.eyaml_private_key, keys.eyaml_public_key, keys.age_identity)
        ],
    }
    text = json.dumps(parts, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _Compiled:
    key: str
    catalog: Catalog
    facts: ReadFacts  # the facts the compile saw, noting which it read
    records: Mapping[str, bytes] | None  # the store's exports, when the compile collected


class CompileCache:
    """The last catalog compiled, kept in memory by the daemon (never across a restart) and
    converged again while nothing it was compiled from changed (``compile_key``; and, when the
    compile called ``collect()``, every node's exports in the store, read again each run).

    A catalog is not kept when its compile read a volatile fact (uptime, available memory) or
    when it deploys app components (their rollout changes the catalog as it runs, from the
    store's state): those compile every run.
    """

    def __init__(self) -> None:
        self._kept: _Compiled | None = None
        # The inventory as the last run read or wrote it: not read again, nor written again
        # unchanged, while no other process replaced the file.
        self.inventory = state.KeptInventory()

    def clear(self) -> None:
        self._kept = None

    def reuse(self, key: str, exports: Exchange) -> Catalog | None:
        """The kept catalog, when it was compiled from the same inputs as this run has."""
        kept = self._kept
        if kept is None or kept.key != key or was_read(kept.facts, VOLATILE):
            return None
        if kept.records is not None:
            try:
                records = exports.read()
            except ValueError:
                return None  # the compile says why the store cannot be read
            if dict(records) != dict(kept.records):
                return None
        return kept.catalog

    def keep(
        self, key: str, catalog: Catalog, facts: ReadFacts, records: Mapping[str, bytes] | None
    ) -> None:
        if catalog.deployments:
            self._kept = None
        else:
            self._kept = _Compiled(key, catalog, facts, None if records is None else dict(records))


def _run_compiled(
    catalog: Catalog,
    options: RunOptions,
    plan: bool,
    warn: Warn,
    phases: dict[str, float],
    started_wall: str,
    kept: state.KeptInventory | None = None,
) -> RunReport:
    """Converge a compiled catalog (check only for ``plan`` or noop), with its app rollout.
    ``kept``: the inventory as the daemon last read or wrote it."""
    noop = options.noop or plan
    report = RunReport(
        node=catalog.node,
        revision=catalog.revision,
        branch=catalog.branch,
        noop=noop,
        started=started_wall,
        role=catalog.role,
        run_id=secrets.token_hex(6),
        secrets=catalog.secrets,
    )
    with _rollout(catalog, options, noop, warn) as rollout:
        if plan:
            if rollout is not None:
                rollout.decide(catalog)
            previous = state.Inventory.load(options.state_dir)
            _converge(catalog, options, previous, report, noop=True, phases=phases)
        else:
            with state.run_lock(options.state_dir):
                if rollout is not None:
                    rollout.decide(catalog)
                if kept is not None:
                    previous = kept.load(options.state_dir, warn)
                else:
                    previous = state.Inventory.load(options.state_dir, warn)
                ctx = _converge(catalog, options, previous, report, noop=noop, phases=phases)
                if rollout is not None:
                    _finish_rollout(rollout, catalog, options, report, ctx)
                if not noop:
                    left = _prune(catalog, previous, ctx, report)
                    inventory = _inventory(catalog, left, ctx)
                    if kept is not None:
                        kept.save(inventory, options.state_dir)
                    # A run that found the inventory as it read it (the same resources, every
                    # file as last seen) leaves the file as it is.
                    elif inventory != previous:
                        del previous  # not held while the new one is written: 100000 files
                        inventory.save(options.state_dir)
        if rollout is not None:
            report.apps = rollout.report()
    return report


@contextlib.contextmanager
def _rollout(
    catalog: Catalog, options: RunOptions, noop: bool, warn: Warn
) -> Iterator[Rollout | None]:
    """The run's rollout of app components, with a store to coordinate through."""
    if not catalog.deployments:
        yield None
        return
    store, error, opened = options.store, None, False
    config = options.coordination or CoordinationConfig(path=options.state_dir / "coordination")
    if store is None:
        try:
            store, opened = open_store(config), True
        except StoreError as exc:
            error = str(exc)
            warn(f"coordination store: {exc}")
    rollout = Rollout(
        store,
        options.state_dir,
        catalog.node,
        catalog.revision,
        noop,
        lease=config.lease,
        warn=warn,
        store_error=error,
    )
    try:
        yield rollout
    finally:
        rollout.close()
        if opened and store is not None:
            store.close()


def _finish_rollout(
    rollout: Rollout, catalog: Catalog, options: RunOptions, report: RunReport, ctx: Context
) -> None:
    def run_previous(entries: dict[str, Entry]) -> list[ResourceResult]:
        for entry in entries.values():
            for relation, targets in list(entry.relations.items()):
                entry.relations[relation] = [t for t in targets if t in entries]
        previous = Catalog(
            catalog.node,
            catalog.role,
            catalog.revision,
            catalog.branch,
            catalog.settings,
            entries,
            {},
            {},
        )
        link(previous)
        return execute(previous, ctx, noop=False, workers=options.workers, stop=options.stop)

    results = {r.id: r for r in report.resources}
    report.resources += rollout.finish(catalog.entries, results, run_previous, ctx, options.stop)


def _converge(
    catalog: Catalog,
    options: RunOptions,
    previous: state.Inventory,
    report: RunReport,
    noop: bool,
    phases: dict[str, float],
) -> Context:
    t = time.perf_counter()
    ctx = make_context(options, previous.fingerprints)
    ctx.catalog_paths = frozenset(
        path for entry in catalog.entries.values() for path in entry.resource.managed_paths()
    )
    ctx.catalog_resources = tuple(entry.resource for entry in catalog.entries.values())
    corrective = {
        rid
        for rid, entry in catalog.entries.items()
        if (item := previous.resources.get(rid)) is not None
        and item.digest == entry.resource.desired_digest()
    }
    if not noop:
        # A run killed between writing a temporary and renaming it left one behind.
        for path in {os.path.dirname(p) or "/" for p in ctx.catalog_paths}:
            with contextlib.suppress(ReconcilerError):  # the resource itself will say why
                remove_stray_temporaries(ctx.root.path(path))
    report.resources = execute(catalog, ctx, noop, corrective, options.workers, options.stop)
    phases["apply" if not noop else "check"] = time.perf_counter() - t
    return ctx


def _prunable(item: state.InventoryItem) -> Resource | None:
    cls = REGISTRY.get(item.type)
    if cls is None:
        return None
    defaults = {key: spec.default for key, spec in cls.attributes.items()}
    try:
        return cls(item.title, defaults).pruned()
    except Exception:
        return None


def _prune(
    catalog: Catalog, previous: state.Inventory, ctx: Context, report: RunReport
) -> dict[str, state.InventoryItem]:
    """Remove what left the catalog, when the repo asks for it and it is not a mass removal.

    Returns what is still to prune (refused, or failed), so that a later run can finish it.
    """
    # A resource that moved into or out of a defined type instance changed its id, not what
    # it manages: nothing of it is removed.
    managed = {e.resource.identity for e in catalog.entries.values()}
    gone = {
        rid: item
        for rid, item in previous.resources.items()
        if rid not in catalog.entries and f"{item.type}:{item.title}" not in managed
    }
    if not gone or not catalog.settings.prune:
        return {}
    total = len(previous.resources)
    if not catalog.settings.allow_mass_prune and (not catalog.entries or len(gone) * 2 > total):
        reason = "EmptyCatalog" if not catalog.entries else "MassPrune"
        report.errors.append(
            f"{reason}: refusing to prune {len(gone)} of {total} managed resources "
            "(set allow_mass_prune: true in reconciler.yaml to allow it)"
        )
        return gone
    left: dict[str, state.InventoryItem] = {}
    for rid, item in sorted(gone.items()):
        remover = _prunable(item)
        if remover is None:
            continue  # nothing to remove for this type (an exec): forget it
        result = ResourceResult(rid, origin="prune")
        converge(remover, ctx, noop=False, refresh=False, result=result)
        report.resources.append(result)
        if result.status == "failed":
            left[rid] = item
    return left


def _inventory(
    catalog: Catalog, left: dict[str, state.InventoryItem], ctx: Context
) -> state.Inventory:
    """What the catalog manages (and what is still to prune), and what this run saw of its
    files."""
    resources = {
        rid: state.InventoryItem(e.resource.type, e.resource.title, e.resource.desired_digest())
        for rid, e in catalog.entries.items()
    }
    fingerprints = {p: f for p, f in ctx.fingerprints.items() if p in ctx.catalog_paths}
    return state.Inventory(catalog.revision, {**left, **resources}, fingerprints)
