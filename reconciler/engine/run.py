"""Apply a catalog: walk the resource graph, converge each resource, contain every failure.

Resources run in graph order. Cheap filesystem resources run inline; the others (commands,
packages) go to a small thread pool, so that independent slow resources overlap. A resource
whose prerequisite failed or was skipped is skipped. A refresh (notify/subscribe) reaches its
target only when the source changed and the target itself was not skipped or failed.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler.engine.report import ResourceResult
from reconciler.errors import ReconcilerError
from reconciler.model.catalog import Catalog, Entry
from reconciler.resources._fs import Staged, fsync_dir, syncfs
from reconciler.resources.base import Change, Context, Resource, ResourceId

DEFAULT_WORKERS = 8
# Staged files committed together at the most. A syncfs while more files are being created
# slows every create (measured: 10000 files, 0.82 s with one commit, 1.21 s with one per 2048),
# so a commit waits until nothing else can progress, up to this bound.
STAGE_BATCH = 16384


@dataclass
class _Node:
    entry: Entry
    waiting: int
    blocked_by: ResourceId | None = None
    refresh: bool = False


def _contain(result: ResourceResult, exc: Exception) -> None:
    result.status = "failed"
    if isinstance(exc, ReconcilerError):
        result.error = str(exc)
    else:  # contained: one resource's bug must not end the run
        result.error = f"unexpected error: {type(exc).__name__}: {exc}"


def _recheck(resource: Resource, ctx: Context) -> None:
    """A resource must converge in one call: still differing after it applied is a failure."""
    left = resource.check_apply(ctx, apply=False)
    if left:
        raise ReconcilerError(
            "DidNotConverge: still differs after applying: " + ", ".join(c.property for c in left)
        )


def converge(
    resource: Resource,
    ctx: Context,
    noop: bool,
    refresh: bool,
    result: ResourceResult,
    checked: list[Change] | None = None,
    recheck: bool = True,
) -> None:
    """Check and, unless noop, apply one resource; then deliver a pending refresh.

    ``checked``: the changes a check just found, so that it need not run again. ``recheck``
    False leaves the re-check to the caller (staged writes are re-checked after the commit).
    """
    started = time.perf_counter()
    try:
        changes = resource.check_apply(ctx, apply=False) if checked is None else checked
        if changes and not noop:
            made = resource.check_apply(ctx, apply=True)
            changes = made or changes
            if resource.recheck and recheck:
                _recheck(resource, ctx)
        if refresh:
            if not changes:
                result.corrective = False  # a refresh answers a change elsewhere, not drift
            changes = changes + resource.refresh(ctx, apply=not noop)
        result.changes = changes
        if changes:
            result.status = "would_change" if noop else "changed"
    except Exception as exc:
        _contain(result, exc)
    result.duration_seconds = time.perf_counter() - started


def _quick_check(resource: Resource, ctx: Context, result: ResourceResult) -> list[Change] | None:
    """The cheap inline check of a filesystem resource: its changes, or None on an error.

    Only a resource with changes to make goes to the pool, where its writes and fsyncs
    overlap with others'; in a run with little drift almost everything ends here. An error
    is left for converge() to report, with the same containment.
    """
    started = time.perf_counter()
    try:
        changes = resource.check_apply(ctx, apply=False)
    except Exception:
        return None
    result.duration_seconds = time.perf_counter() - started
    return changes


def _discard(staged: list[Staged]) -> None:
    for item in staged:
        item.discard()


def _after_unstaged(resource: Resource, ctx: Context, result: ResourceResult) -> None:
    """Re-check an inline resource whose change was made at once (a chmod, a new directory)."""
    if resource.recheck:
        try:
            _recheck(resource, ctx)
        except Exception as exc:
            _contain(result, exc)


def execute(
    catalog: Catalog,
    ctx: Context,
    noop: bool,
    corrective: set[ResourceId] | None = None,
    workers: int = DEFAULT_WORKERS,
    stop: threading.Event | None = None,
) -> list[ResourceResult]:
    """Run every resource of the catalog once; return results in graph order.

    ``corrective`` names the resources whose desired state is unchanged since the last good
    run: a change to one of them repairs drift rather than applying a new revision. Once
    ``stop`` is set, resources under way finish and the others are skipped.
    """
    order = catalog.order()
    rank = {rid: i for i, rid in enumerate(order)}
    nodes = {rid: _Node(catalog.entries[rid], len(catalog.after.get(rid, ()))) for rid in order}
    dependents: dict[ResourceId, list[ResourceId]] = {}
    for rid, deps in catalog.after.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(rid)
    results: dict[ResourceId, ResourceResult] = {}
    ready: deque[ResourceId] = deque(rid for rid in order if nodes[rid].waiting == 0)
    # Inline resources stage their writes; a batch is committed (one syncfs, then renames and
    # re-checks) when nothing else can progress without it, or when it grows large.
    awaiting: list[tuple[ResourceId, list[Staged]]] = []
    staged_files = 0

    def commit() -> None:
        nonlocal staged_files
        if not awaiting:
            return
        batch, awaiting[:] = list(awaiting), []
        staged_files = 0
        try:
            for directory in {ctx.root.prefix, ctx.state_dir}:
                if directory.exists():
                    syncfs(directory)
        except OSError as exc:
            for rid, staged in batch:
                _discard(staged)
                _contain(results[rid], exc)
                finish(rid)
            return
        for rid, staged in batch:
            result = results[rid]
            resource = nodes[rid].entry.resource
            try:
                for item in staged:
                    item.commit()  # a rename inside the directory the temporary was written in
                    ctx.sync_dir(item.target.parent)
                    resource.committed(ctx, item.target)
                if resource.recheck:
                    _recheck(resource, ctx)
            except Exception as exc:
                _discard(staged)
                _contain(result, exc)
            finish(rid)

    # Ready resources of batched types (packages) wait here, by type and noop, until nothing
    # else can progress: then each group is converged at once, in the pool.
    batches: dict[tuple[type[Resource], bool], list[ResourceId]] = {}

    def converge_group(kind: type[Resource], noop_here: bool, rids: list[ResourceId]) -> None:
        started = time.perf_counter()
        try:
            outcome = kind.converge_batch(
                ctx, [nodes[rid].entry.resource for rid in rids], apply=not noop_here
            )
        except Exception as exc:  # contained like any resource's bug
            outcome = {rid: exc for rid in rids}
        elapsed = time.perf_counter() - started
        for rid in rids:
            result = results[rid]
            result.duration_seconds = elapsed
            changes = outcome.get(rid, ReconcilerError("no outcome from the batch"))
            if isinstance(changes, Exception):
                _contain(result, changes)
            else:
                result.changes = changes
                if changes:
                    result.status = "would_change" if noop_here else "changed"
            completed.put(rid)

    def flush_batches() -> int:
        groups = list(batches.items())
        batches.clear()
        for (kind, noop_here), rids in groups:
            pool.submit(converge_group, kind, noop_here, rids)
        return sum(len(rids) for _, rids in groups)

    # Completed ids come back through a queue: waiting on thousands of futures at once
    # (concurrent.futures.wait) costs time in proportion to their number, on every call.
    completed: queue.SimpleQueue[ResourceId] = queue.SimpleQueue()
    running = 0

    def start(rid: ResourceId) -> ResourceResult:
        node = nodes[rid]
        result = ResourceResult(
            rid,
            origin=node.entry.origin,
            corrective=corrective is not None and rid in corrective,
        )
        results[rid] = result
        if node.blocked_by is not None:
            result.status = "skipped"
            result.error = f"DependencyFailed: {node.blocked_by} did not converge"
        elif stop is not None and stop.is_set():
            result.status = "skipped"
            result.error = "Interrupted: the agent is stopping"
        return result

    def finish(rid: ResourceId) -> None:
        result = results[rid]
        if result.status == "failed" and (noop or nodes[rid].entry.noop):
            _pending_on(rid, result)
        if result.status in ("changed", "would_change"):
            ctx.changed.add(rid)
            for target in catalog.refreshes.get(rid, ()):
                nodes[target].refresh = True
        for dependent in dependents.get(rid, ()):
            node = nodes[dependent]
            if result.status in ("failed", "skipped") and node.blocked_by is None:
                node.blocked_by = rid
            node.waiting -= 1
            if node.waiting == 0:
                ready.append(dependent)

    def _pending_on(rid: ResourceId, result: ResourceResult) -> None:
        """In noop, a check that fails because a prerequisite is not there yet (a line in a
        file a file resource would create) is a change known after apply, not a failure."""
        pending = sorted(
            dep
            for dep in catalog.after.get(rid, ())
            if results.get(dep) is not None and results[dep].status == "would_change"
        )
        if pending:
            result.status, result.error = "would_change", None
            result.changes = [
                Change("state", None, f"known after apply: {', '.join(pending)} would change")
            ]

    if ctx.dirty_dirs is None:
        ctx.dirty_dirs = set()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="resource") as pool:
        while ready or running or awaiting or batches:
            while ready:
                rid = ready.popleft()
                result = start(rid)
                node = nodes[rid]
                if result.status == "skipped":
                    finish(rid)
                    continue
                resource = node.entry.resource
                noop_here = noop or node.entry.noop
                if workers <= 1:
                    converge(resource, ctx, noop_here, node.refresh, result)
                    finish(rid)
                    continue
                if type(resource).batched and not node.refresh:
                    batches.setdefault((type(resource), noop_here), []).append(rid)
                    continue
                changes = None
                if resource.inline and not node.refresh:
                    changes = _quick_check(resource, ctx, result)
                    if changes is not None and (not changes or noop_here):
                        result.changes = changes
                        result.status = "would_change" if changes else "in_sync"
                        finish(rid)
                        continue
                    if changes is not None:
                        ctx.staging = []
                        try:
                            converge(resource, ctx, False, False, result, changes, recheck=False)
                        finally:
                            staged, ctx.staging = ctx.staging, None
                        if result.status == "failed":
                            _discard(staged)
                            finish(rid)
                        elif staged:
                            awaiting.append((rid, staged))
                            staged_files += len(staged)
                            if staged_files >= STAGE_BATCH:
                                commit()
                        else:
                            _after_unstaged(resource, ctx, result)
                            finish(rid)
                        continue
                future = pool.submit(
                    converge, resource, ctx, noop_here, node.refresh, result, changes
                )
                future.add_done_callback(lambda _, rid=rid: completed.put(rid))  # type: ignore[misc]
                running += 1
            if not ready and awaiting:
                commit()
                continue
            if not ready and not running and batches:
                running += flush_batches()
                continue
            if running:
                finish(completed.get())
                running -= 1
                while running and not completed.empty():
                    finish(completed.get())
                    running -= 1
    for directory in sorted(ctx.dirty_dirs, key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            fsync_dir(directory)
    ctx.dirty_dirs = None
    if not noop:
        try:
            ctx.backups.prune()  # the backup store's retention
        except OSError as exc:
            ctx.log("backup prune failed", error=str(exc))
    return sorted(results.values(), key=lambda r: rank[r.id])
