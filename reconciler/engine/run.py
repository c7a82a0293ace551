"""Apply a catalog: run what the scheduler says is ready, converge each resource, contain
every failure.

``engine.schedule`` decides the order, the skips and the refreshes from ids and outcomes; this
module executes: inline (one after another), or with a thread pool, cheap filesystem resources
checked in the engine's thread with their writes staged and committed in batches, and batched
types (packages) converged together. Each run has its own ``RunState``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from reconciler.engine.report import ResourceResult
from reconciler.engine.schedule import CHANGED, STATUSES, Ready, Scheduler, Status
from reconciler.errors import ReconcilerError
from reconciler.fs import Staged, fsync_dir, syncfs
from reconciler.model.catalog import Catalog, Entry
from reconciler.resources.base import Change, Context, Resource, ResourceId, RunState

DEFAULT_WORKERS = 8
# Staged files committed together at the most. A syncfs while more files are being created
# slows every create (measured: 10000 files, 0.82 s with one commit, 1.21 s with one per 2048),
# so a commit waits until nothing else can progress, up to this bound.
STAGE_BATCH = 16384


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
    schedule = Scheduler(order, catalog.after, catalog.refreshes)
    # This run's own state (what changed, directories to fsync): shared by its resources,
    # never by another run on the same context.
    ctx = dataclasses.replace(ctx, run=RunState(defer_fsync=True), staging=None)
    executor = _Executor(catalog, ctx, noop, corrective, stop, schedule)
    if workers <= 1:
        executor.run_inline()
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resource") as pool:
            executor.run_pooled(pool)
    for directory in ctx.run.take_dirty():
        with contextlib.suppress(OSError):
            fsync_dir(directory)
    if not noop:
        try:
            ctx.backups.prune()  # the backup store's retention
        except OSError as exc:
            ctx.log("backup prune failed", error=str(exc))
    return sorted(executor.results.values(), key=lambda r: rank[r.id])


class _Executor:
    """Runs what the scheduler says is ready and reports back each outcome.

    Two ways: ``run_inline`` converges one resource after another in this thread;
    ``run_pooled`` checks cheap (inline) resources here and stages their writes, committing
    them in batches, sends the others to a thread pool, and converges batched types (packages)
    together once nothing else can progress.
    """

    def __init__(
        self,
        catalog: Catalog,
        ctx: Context,
        noop: bool,
        corrective: set[ResourceId] | None,
        stop: threading.Event | None,
        schedule: Scheduler,
    ) -> None:
        self.catalog = catalog
        self.ctx = ctx
        self.noop = noop
        self.corrective = corrective or set()
        self.stop = stop
        self.schedule = schedule
        self.results: dict[ResourceId, ResourceResult] = {}
        # Staged writes of inline resources: committed (one syncfs, then renames and
        # re-checks) when nothing else can progress without it, or when the batch is large.
        self.awaiting: list[tuple[ResourceId, list[Staged]]] = []
        self.staged_files = 0
        # Ready resources of batched types, by type and noop, waiting for a quiet moment.
        self.batches: dict[tuple[type[Resource], bool], list[ResourceId]] = {}
        # Completed ids come back through a queue: waiting on thousands of futures at once
        # (concurrent.futures.wait) costs time in proportion to their number, on every call.
        self.completed: queue.SimpleQueue[ResourceId] = queue.SimpleQueue()
        self.running = 0

    def entry(self, rid: ResourceId) -> Entry:
        return self.catalog.entries[rid]

    def start(self, ready: Ready) -> ResourceResult:
        """The result of a ready resource; already final (skipped) when it must not run."""
        result = ResourceResult(
            ready.id,
            origin=self.entry(ready.id).origin,
            corrective=ready.id in self.corrective,
        )
        self.results[ready.id] = result
        if ready.blocked_by is not None:
            result.status = "skipped"
            result.error = f"DependencyFailed: {ready.blocked_by} did not converge"
        elif self.stop is not None and self.stop.is_set():
            result.status = "skipped"
            result.error = "Interrupted: the agent is stopping"
        return result

    def finish(self, rid: ResourceId) -> None:
        result = self.results[rid]
        if result.status == "failed" and (self.noop or self.entry(rid).noop):
            self._pending_on(rid, result)
        if result.status in CHANGED:
            self.ctx.run.mark_changed(rid)
        self.schedule.finish(rid, status_of(result))

    def _pending_on(self, rid: ResourceId, result: ResourceResult) -> None:
        """In noop, a check that fails because a prerequisite is not there yet (a line in a
        file a file resource would create) is a change known after apply, not a failure."""
        pending = sorted(
            dep
            for dep in self.schedule.after[rid]
            if dep in self.results and self.results[dep].status == "would_change"
        )
        if pending:
            result.status, result.error = "would_change", None
            result.changes = [
                Change("state", None, f"known after apply: {', '.join(pending)} would change")
            ]

    def run_inline(self) -> None:
        while self.schedule:
            ready = self.schedule.take()
            result = self.start(ready)
            if result.status != "skipped":
                entry = self.entry(ready.id)
                converge(entry.resource, self.ctx, self.noop or entry.noop, ready.refresh, result)
            self.finish(ready.id)

    def run_pooled(self, pool: ThreadPoolExecutor) -> None:
        while self.schedule or self.running or self.awaiting or self.batches:
            while self.schedule:
                self.dispatch(self.schedule.take(), pool)
            if self.awaiting:
                self.commit()
                continue
            if not self.running and self.batches:
                self.flush_batches(pool)
                continue
            if self.running:
                self.finish(self.completed.get())
                self.running -= 1
                while self.running and not self.completed.empty():
                    self.finish(self.completed.get())
                    self.running -= 1

    def dispatch(self, ready: Ready, pool: ThreadPoolExecutor) -> None:
        result = self.start(ready)
        rid = ready.id
        if result.status == "skipped":
            self.finish(rid)
            return
        entry = self.entry(rid)
        resource = entry.resource
        noop_here = self.noop or entry.noop
        if type(resource).batched and not ready.refresh:
            self.batches.setdefault((type(resource), noop_here), []).append(rid)
            return
        changes = None
        if resource.inline and not ready.refresh:
            changes = _quick_check(resource, self.ctx, result)
            if changes is not None and (not changes or noop_here):
                result.changes = changes
                result.status = "would_change" if changes else "in_sync"
                self.finish(rid)
                return
            if changes is not None:
                self.apply_staged(rid, resource, result, changes)
                return
        future = pool.submit(
            converge, resource, self.ctx, noop_here, ready.refresh, result, changes
        )
        future.add_done_callback(lambda _: self.completed.put(rid))
        self.running += 1

    def apply_staged(
        self, rid: ResourceId, resource: Resource, result: ResourceResult, changes: list[Change]
    ) -> None:
        """Apply an inline resource here, its file writes staged for the next commit."""
        staged: list[Staged] = []
        converge(resource, self.ctx.staged(staged), False, False, result, changes, recheck=False)
        if result.status == "failed":
            _discard(staged)
            self.finish(rid)
        elif staged:
            self.awaiting.append((rid, staged))
            self.staged_files += len(staged)
            if self.staged_files >= STAGE_BATCH:
                self.commit()
        else:
            _after_unstaged(resource, self.ctx, result)
            self.finish(rid)

    def commit(self) -> None:
        """Make the staged writes durable at once (one syncfs), rename each into place,
        re-check its resource, and finish it."""
        ctx = self.ctx
        batch, self.awaiting = self.awaiting, []
        self.staged_files = 0
        try:
            for directory in {ctx.root.prefix, ctx.state_dir}:
                if directory.exists():
                    syncfs(directory)
        except OSError as exc:
            for rid, staged in batch:
                _discard(staged)
                _contain(self.results[rid], exc)
                self.finish(rid)
            return
        for rid, staged in batch:
            result = self.results[rid]
            resource = self.entry(rid).resource
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
            self.finish(rid)

    def flush_batches(self, pool: ThreadPoolExecutor) -> None:
        groups = list(self.batches.items())
        self.batches.clear()
        for (kind, noop_here), rids in groups:
            pool.submit(self.converge_group, kind, noop_here, rids)
            self.running += len(rids)

    def converge_group(self, kind: type[Resource], noop_here: bool, rids: list[ResourceId]) -> None:
        started = time.perf_counter()
        try:
            outcome = kind.converge_batch(
                self.ctx, [self.entry(rid).resource for rid in rids], apply=not noop_here
            )
        except Exception as exc:  # contained like any resource's bug
            outcome = {rid: exc for rid in rids}
        elapsed = time.perf_counter() - started
        for rid in rids:
            result = self.results[rid]
            result.duration_seconds = elapsed
            changes = outcome.get(rid, ReconcilerError("no outcome from the batch"))
            if isinstance(changes, Exception):
                _contain(result, changes)
            else:
                result.changes = changes
                if changes:
                    result.status = "would_change" if noop_here else "changed"
            self.completed.put(rid)


def status_of(result: ResourceResult) -> Status:
    status = result.status
    if status not in STATUSES:
        raise ValueError(f"{result.id}: unknown status {status!r}")
    return status
