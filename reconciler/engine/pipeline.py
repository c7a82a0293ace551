"""One run, from a control repo to a report: the function the CLI and the daemon both call.

fetch (a snapshot of the repo; with ``source.verify``, its commit's signature is checked before
any file is read) -> facts -> compile (the node's catalog) -> check/apply over the graph -> prune
-> inventory and report. Anything wrong before the apply phase raises, and nothing of that
revision has been applied.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.apps.rollout import Rollout
from reconciler.apps.store import Store, StoreError, open_store
from reconciler.config import CoordinationConfig, Verify
from reconciler.engine import state
from reconciler.engine.report import ResourceResult, RunReport
from reconciler.engine.run import DEFAULT_WORKERS, converge, execute
from reconciler.errors import ReconcilerError
from reconciler.model import yamlload
from reconciler.model.catalog import Catalog, Compiler, Entry, link
from reconciler.resources._fs import (
    MAX_FILE_SIZE,
    BackupStore,
    Root,
    remove_stray_temporaries,
)
from reconciler.resources._run import Runner
from reconciler.resources.base import REGISTRY, Context, Resource
from reconciler.source import Snapshot, open_snapshot


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


def open_run_snapshot(options: RunOptions) -> Snapshot:
    """The revision ``options`` name; with ``verify``, only a commit signed by a trusted key."""
    if options.verify is not None:
        from reconciler.source.verify import open_verified_snapshot

        return open_verified_snapshot(
            options.repo, options.ref, options.state_dir, options.timeout, options.verify
        )
    return open_snapshot(options.repo, options.ref, options.state_dir, options.timeout)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run(
    options: RunOptions,
    plan: bool = False,
    warn: Warn = _ignore,
    snapshot: Snapshot | None = None,
) -> tuple[RunReport, Catalog]:
    """Compile and converge the node once. ``plan`` checks only and writes no state."""
    phases: dict[str, float] = {}
    started_wall = now_iso()
    t0 = time.perf_counter()
    if snapshot is None:
        snapshot = open_run_snapshot(options)
    phases["fetch"] = time.perf_counter() - t0

    t = time.perf_counter()
    yamlload.use_cache(yamlload.ParseCache(options.state_dir / "cache" / "yaml", readonly=plan))
    node, facts = gather_facts(options, warn)
    catalog = Compiler(snapshot).compile(node, facts)
    phases["compile"] = time.perf_counter() - t

    noop = options.noop or plan
    report = RunReport(
        node=node,
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
                previous = state.Inventory.load(options.state_dir, warn)
                ctx = _converge(catalog, options, previous, report, noop=noop, phases=phases)
                if rollout is not None:
                    _finish_rollout(rollout, catalog, options, report, ctx)
                if not noop:
                    left = _prune(catalog, previous, ctx, report)
                    _save_inventory(catalog, left, ctx, options.state_dir)
        if rollout is not None:
            report.apps = rollout.report()
    report.phases = phases
    report.duration_seconds = time.perf_counter() - t0
    if not plan:
        state.save_report(options.state_dir, report.to_dict())
    return report, catalog


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


def _save_inventory(
    catalog: Catalog, left: dict[str, state.InventoryItem], ctx: Context, state_dir: Path
) -> None:
    resources = {
        rid: state.InventoryItem(e.resource.type, e.resource.title, e.resource.desired_digest())
        for rid, e in catalog.entries.items()
    }
    fingerprints = {p: f for p, f in ctx.fingerprints.items() if p in ctx.catalog_paths}
    state.Inventory(catalog.revision, {**left, **resources}, fingerprints).save(state_dir)
