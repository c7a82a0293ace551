"""``diff_fleet``: what a change of the control repo would change on every node; and
``validate_fleet``: whether every node's catalog compiles, each with its own facts.

Each node's catalog is compiled at both revisions with that node's facts, read from git objects
(never checked out), the repo's modules at their pins. A catalog is compiled once per distinct
input (``inputs.Reads.key``: the revision, the role, the facts the revision may read, the node's
name when it may read it), in worker processes, one per core; the comparison runs here.
``validate_fleet`` compiles one revision the same way (a commit, or a working tree).

Values encrypted in data are not decrypted: a review runs without any node's keys. They are
compared as written, as digests, and a change to one is marked as such: a value encrypted again
differs though its plaintext may not. Facts a node withheld from what it published are compiled
as placeholders (``withheld``), and each node says which.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reconciler.apps.order import semver_key
from reconciler.errors import Location, ModelError, Problem, ReconcilerError
from reconciler.model import repo as repomod
from reconciler.model.catalog import Compiler
from reconciler.model.modules import ModularSnapshot, with_modules
from reconciler.resources.base import Secrets
from reconciler.review.inputs import Reads, reads_of
from reconciler.review.view import (
    CatalogView,
    DeploymentView,
    ResourceChange,
    by_component,
    compare,
    failed_view,
    scrubbed,
    view_of,
)
from reconciler.review.withheld import review_facts
from reconciler.source import DirectorySnapshot, GitSnapshot, Snapshot, open_snapshot

NodeStatus = Literal["unchanged", "changed", "failed"]
Direction = Literal["upgrade", "downgrade", "change", "new", "removed"]


@dataclass(frozen=True)
class Request:
    """What to compare: two refs of a repo, for nodes with their facts (node -> facts)."""

    repo: str
    before: str
    after: str
    facts: Mapping[str, Mapping[str, Any]]
    nodes: Sequence[str] = ()  # only these (default: every node with facts)
    role: str | None = None  # only nodes with this role at either revision
    state_dir: Path | None = None  # the mirrors of a remote repo and of modules
    timeout: float = 60.0
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass(frozen=True)
class Revision:
    ref: str
    commit: str


@dataclass
class NodeDiff:
    node: str
    role_before: str | None
    role_after: str | None
    resources: list[ResourceChange] = field(default_factory=list)
    # App components whose version changes here: (app/component, version before, after).
    apps: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    problems_before: tuple[Problem, ...] = ()
    problems_after: tuple[Problem, ...] = ()
    withheld: tuple[str, ...] = ()  # facts the node left out, compiled as placeholders

    @property
    def status(self) -> NodeStatus:
        if self.problems_after:
            return "failed"
        if (
            self.resources
            or self.apps
            or self.role_before != self.role_after
            or self.problems_before
        ):
            return "changed"
        return "unchanged"


@dataclass(frozen=True)
class Move:
    node: str
    before: str | None
    after: str | None
    direction: Direction


@dataclass
class ComponentRollout:
    """The nodes of one app component that would deploy another version, in rollout order:
    after the components it requires (``step``), ``max_parallel`` nodes at a time."""

    app: str
    component: str
    step: int
    requires: tuple[str, ...]
    max_parallel: int
    moves: list[Move] = field(default_factory=list)

    def waves(self) -> list[list[Move]]:
        size = max(1, self.max_parallel)
        return [self.moves[i : i + size] for i in range(0, len(self.moves), size)]


@dataclass
class FleetDiff:
    repo: str
    before: Revision
    after: Revision
    nodes: list[NodeDiff]
    rollouts: list[ComponentRollout]
    compiles: int  # distinct catalogs compiled
    encrypted: bool  # a compared value was still encrypted (no keys)

    def with_status(self, status: NodeStatus) -> list[NodeDiff]:
        return [n for n in self.nodes if n.status == status]

    def exit_code(self) -> int:
        """0 nothing changes, 2 something changes, 4 a catalog fails at the later revision."""
        if self.with_status("failed"):
            return 4
        return 2 if self.with_status("changed") else 0


# -- compiling, in worker processes --------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    """A revision as a worker opens it again: a commit of ``git_dir``, or a working tree."""

    git_dir: Path | None
    commit: str
    branch: str | None
    description: str
    work_tree: Path | None = None


def _source_of(snapshot: Snapshot) -> _Source:
    control = snapshot.control if isinstance(snapshot, ModularSnapshot) else snapshot
    if isinstance(control, GitSnapshot):
        return _Source(control.git_dir, control.revision or "", control.branch, control.description)
    if isinstance(control, DirectorySnapshot):
        return _Source(
            None, control.revision or "", control.branch, control.description, control.root
        )
    raise ReconcilerError(f"{snapshot.description}: not a commit nor a working tree")


@dataclass(frozen=True)
class _Task:
    revision: int  # 0: before, 1: after
    node: str
    role: str
    where: Location
    facts: Mapping[str, Any]
    problems: tuple[Problem, ...] = ()  # it cannot be classified: why
    sensitive: tuple[str, ...] = ()  # placeholders for withheld facts


# One compiler per revision in each worker (or the problems that stop it), set by _start.
_COMPILERS: list[Compiler | list[Problem]] = []
_OPENED: list[Snapshot] = []


class _Remembered:
    """A snapshot whose files are read from git once: every node's compile reads the same
    roles, profiles and data files of a revision, which never change."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.revision = snapshot.revision
        self.branch = snapshot.branch
        self.description = snapshot.description
        # a ModularSnapshot's modules: what the compiler reads to know them
        self.modules: dict[str, Snapshot] = getattr(snapshot, "modules", None) or {}
        self._read: dict[str, bytes] = {}
        self._exists: dict[str, bool] = {}
        self._files: dict[str, list[str]] = {}

    def read(self, path: str) -> bytes:
        if path not in self._read:
            self._read[path] = self.snapshot.read(path)
        return self._read[path]

    def exists(self, path: str) -> bool:
        if path not in self._exists:
            self._exists[path] = self.snapshot.exists(path)
        return self._exists[path]

    def files(self, directory: str = "") -> list[str]:
        if directory not in self._files:
            self._files[directory] = self.snapshot.files(directory)
        return list(self._files[directory])


def _open(source: _Source, state_dir: Path, timeout: float) -> Snapshot:
    snapshot: GitSnapshot | DirectorySnapshot
    if source.work_tree is not None:
        snapshot = DirectorySnapshot(source.work_tree)
        snapshot.description = source.description
        return with_modules(snapshot, state_dir, timeout)
    assert source.git_dir is not None
    snapshot = GitSnapshot(
        source.git_dir, source.commit, source.branch, source.description, timeout
    )
    try:
        return with_modules(snapshot, state_dir, timeout)
    except BaseException:
        snapshot.close()
        raise


def _start(sources: Sequence[_Source], state_dir: Path, timeout: float) -> None:
    """A worker's compilers: its own snapshots (git's readers are not shared across a fork)."""
    _stop()
    for source in sources:
        try:
            snapshot = _open(source, state_dir, timeout)
        except ModelError as exc:
            _COMPILERS.append(exc.problems)
            continue
        _OPENED.append(snapshot)
        try:
            _COMPILERS.append(Compiler(_Remembered(snapshot)))
        except ModelError as exc:
            _COMPILERS.append(exc.problems)


def _stop() -> None:
    for snapshot in _OPENED:
        if isinstance(snapshot, GitSnapshot | ModularSnapshot):
            snapshot.close()
    _OPENED.clear()
    _COMPILERS.clear()


def _compile(task: _Task) -> CatalogView:
    if task.problems:
        return failed_view(None, list(task.problems))
    compiler = _COMPILERS[task.revision]
    if isinstance(compiler, list):
        return failed_view(task.role, compiler)
    try:
        return view_of(
            compiler.compile_role(task.node, task.role, task.where, task.facts, task.sensitive)
        )
    except ModelError as exc:
        return failed_view(task.role, exc.problems)
    except Exception as exc:  # a bug must not hide the other nodes' results
        return failed_view(task.role, [Problem(f"Unexpected: {type(exc).__name__}: {exc}")])


def _compiled(
    schedule: Sequence[str],
    tasks: Mapping[str, _Task],
    sources: Sequence[_Source],
    state_dir: Path,
    timeout: float,
    workers: int,
) -> Iterator[tuple[str, CatalogView]]:
    """Each key's view, in ``schedule``'s order, as the workers finish them."""
    workers = min(workers, len(schedule))
    if workers <= 1:
        _start(sources, state_dir, timeout)
        try:
            for key in schedule:
                yield key, _compile(tasks[key])
        finally:
            _stop()
        return
    chunk = max(1, min(16, len(schedule) // (workers * 4)))
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start,
        initargs=(tuple(sources), state_dir, timeout),
    ) as pool:
        views = pool.map(_compile, [tasks[k] for k in schedule], chunksize=chunk)
        yield from zip(schedule, views, strict=True)


# -- the comparison -------------------------------------------------------------------------------


@contextlib.contextmanager
def _state_dir(given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    temp = Path(tempfile.mkdtemp(prefix="reconciler-diff-"))
    try:
        yield temp
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _revision(repo: str, ref: str, state_dir: Path, timeout: float) -> GitSnapshot:
    snapshot = open_snapshot(repo, ref, state_dir, timeout)
    if not isinstance(snapshot, GitSnapshot) or snapshot.revision is None:
        raise ReconcilerError(f"{repo}@{ref}: not a commit of a git repository")
    return snapshot


def diff_fleet(request: Request) -> FleetDiff:
    """Compile every requested node's catalog at both revisions and compare them."""
    unknown = sorted(set(request.nodes) - set(request.facts))
    if unknown:
        raise ReconcilerError(f"no facts for node(s) {', '.join(unknown)}")
    names = sorted(set(request.nodes or request.facts))
    with _state_dir(request.state_dir) as state_dir:
        opened = [
            _revision(request.repo, ref, state_dir, request.timeout)
            for ref in (request.before, request.after)
        ]
        try:
            sources = [_source_of(s) for s in opened]
            tasks, plan, withheld = _plan(
                request.facts, names, request.role, opened, state_dir, request.timeout
            )
        finally:
            for snapshot in opened:
                snapshot.close()
        # Keys in the order the nodes need them: a node is compared as soon as both of its
        # catalogs are there, and a catalog no later node needs is let go.
        pending = [node for node in names if node in plan]
        schedule = list(dict.fromkeys(key for node in pending for key in plan[node]))
        uses = Counter(key for node in pending for key in plan[node])
        views: dict[str, CatalogView] = {}
        deployed: dict[str, tuple[DeploymentView, ...]] = {}
        labels = (request.before, request.after)
        compared: dict[tuple[str, str], list[ResourceChange]] = {}
        nodes: list[NodeDiff] = []
        done = 0
        for key, view in _compiled(
            schedule, tasks, sources, state_dir, request.timeout, request.workers
        ):
            views[key], deployed[key] = view, view.deployments
            while done < len(pending) and all(k in views for k in plan[pending[done]]):
                node = pending[done]
                done += 1
                key_before, key_after = plan[node]
                nodes.append(
                    _node_diff(node, views[key_before], views[key_after], labels, compared,
                               (key_before, key_after), withheld[node])
                )  # fmt: skip
                for used in plan[node]:
                    uses[used] -= 1
                    if not uses[used]:
                        del views[used]
    return FleetDiff(
        request.repo,
        Revision(request.before, sources[0].commit),
        Revision(request.after, sources[1].commit),
        nodes,
        _rollouts(nodes, deployed, plan),
        len(tasks),
        any(a.encrypted for n in nodes for c in n.resources for a in c.changes),
    )


def _node_diff(
    node: str,
    before: CatalogView,
    after: CatalogView,
    labels: tuple[str, str],
    compared: dict[tuple[str, str], list[ResourceChange]],
    pair: tuple[str, str],
    withheld: tuple[str, ...] = (),
) -> NodeDiff:
    """One node's changes; nodes with the same pair of catalogs share one comparison."""
    diff = NodeDiff(node, before.role, after.role, withheld=withheld)
    diff.problems_before, diff.problems_after = before.problems, after.problems
    if not before.failed and not after.failed:
        if pair not in compared:
            changes = compare(before, after, labels)
            if before.secrets != after.secrets:
                changes = scrubbed(changes, Secrets(before.secrets | after.secrets))
            compared[pair] = changes
        diff.resources = compared[pair]
    if not after.failed:
        diff.apps = _app_changes(before.deployments, after.deployments)
    return diff


def _plan(
    all_facts: Mapping[str, Mapping[str, Any]],
    names: list[str],
    only_role: str | None,
    opened: Sequence[Snapshot],
    state_dir: Path,
    timeout: float,
) -> tuple[dict[str, _Task], dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """The distinct compiles (key -> task), each node's keys, one per revision (of
    ``opened``), and the facts each node withheld (compiled as placeholders). A node that
    cannot be classified at a revision gets a task that fails with why; one without
    ``only_role`` at any revision is left out."""
    tasks: dict[str, _Task] = {}
    plan: dict[str, tuple[str, ...]] = {}
    given = {node: review_facts(node, all_facts[node]) for node in names}
    snapshots: list[Snapshot] = []
    reads: list[Reads] = []
    modulars: list[Snapshot] = []
    for snapshot in opened:
        try:
            modular = with_modules(snapshot, state_dir, timeout)
        except ModelError:
            modular = snapshot  # the workers report it for every node
        modulars.append(modular)
        snapshots.append(_Remembered(modular))
        reads.append(reads_of(snapshots[-1]))
    try:
        for node in names:
            facts, sensitive = given[node].facts, given[node].placeholders
            keys: list[str] = []
            roles: list[str | None] = []
            for index, current in enumerate(snapshots):
                try:
                    found = repomod.classify(current, node, facts)
                    role, where = found.role, found.where
                except ModelError as exc:
                    key = f"unclassified:{index}:{node}"
                    tasks[key] = _Task(
                        index, node, "", Location("nodes.yaml"), facts, tuple(exc.problems)
                    )
                    keys.append(key)
                    roles.append(None)
                    continue
                # the nodes.yaml entry too: an error about the role names it
                key = reads[index].key(f"{index}:{where}", role, node, facts, current)
                tasks.setdefault(key, _Task(index, node, role, where, facts, (), sensitive))
                keys.append(key)
                roles.append(role)
            if only_role is not None and only_role not in roles:
                continue
            plan[node] = tuple(keys)
    finally:
        for modular, snapshot in zip(modulars, opened, strict=True):
            if isinstance(modular, ModularSnapshot) and modular is not snapshot:  # opened here
                for module in modular.modules.values():
                    module.close()
    used = {key for pair in plan.values() for key in pair}
    withheld = {node: given[node].withheld for node in plan}
    return {k: t for k, t in tasks.items() if k in used}, plan, withheld


def _app_changes(
    before: Sequence[DeploymentView], after: Sequence[DeploymentView]
) -> list[tuple[str, str | None, str | None]]:
    old, new = by_component(before), by_component(after)
    changes = []
    for key in sorted(set(old) | set(new)):
        was = old[key].version if key in old else None
        now = new[key].version if key in new else None
        if was != now:
            changes.append((key, was, now))
    return changes


def direction(before: str | None, after: str | None) -> Direction:
    """Whether a node moves to a later version, an earlier one (as semantic versions), or
    starts or stops running the component."""
    if before is None:
        return "new"
    if after is None:
        return "removed"
    old, new = semver_key(before), semver_key(after)
    if old is None or new is None or old == new:
        return "change"
    return "upgrade" if new > old else "downgrade"


def _rollouts(
    nodes: list[NodeDiff],
    deployed: Mapping[str, Sequence[DeploymentView]],
    plan: Mapping[str, tuple[str, ...]],
) -> list[ComponentRollout]:
    """Each component that changes version somewhere, its nodes, in the order of its app."""
    definitions: dict[str, tuple[tuple[str, ...], int]] = {}
    for key_before, _ in plan.values():
        for name, found in by_component(deployed[key_before]).items():
            definitions[name] = (found.requires, found.max_parallel)
    for _, key_after in plan.values():  # the later revision's definition wins
        for name, found in by_component(deployed[key_after]).items():
            definitions[name] = (found.requires, found.max_parallel)
    rollouts: dict[str, ComponentRollout] = {}
    for diff in nodes:
        for name, before, after in diff.apps:
            if name not in rollouts:
                app, component = name.split("/", 1)
                requires, parallel = definitions.get(name, ((), 1))
                rollouts[name] = ComponentRollout(app, component, 0, requires, parallel)
            rollouts[name].moves.append(Move(diff.node, before, after, direction(before, after)))

    def step(name: str, seen: tuple[str, ...] = ()) -> int:
        app = name.split("/", 1)[0]
        requires = definitions.get(name, ((), 1))[0]
        below = [
            step(f"{app}/{r}", (*seen, name))
            for r in requires
            if f"{app}/{r}" in definitions and f"{app}/{r}" not in seen
        ]
        return 1 + max(below, default=0)

    for name, rollout in rollouts.items():
        rollout.step = step(name)
        rollout.moves.sort(key=lambda m: m.node)
    return sorted(rollouts.values(), key=lambda r: (r.app, r.step, r.component))


# -- every node at one revision: validate ------------------------------------------------------


@dataclass(frozen=True)
class NodeCheck:
    """One node's catalog compiled with its own facts: its role and size, or why it fails."""

    node: str
    role: str | None  # None: nodes.yaml gives it no role
    resources: int
    problems: tuple[Problem, ...] = ()
    withheld: tuple[str, ...] = ()  # facts the node left out, compiled as placeholders

    @property
    def failed(self) -> bool:
        return bool(self.problems)


@dataclass
class FleetCheck:
    nodes: list[NodeCheck]
    compiles: int  # distinct catalogs compiled

    def failed(self) -> list[NodeCheck]:
        return [n for n in self.nodes if n.failed]


def validate_fleet(
    snapshot: Snapshot,
    facts: Mapping[str, Mapping[str, Any]],
    state_dir: Path,
    *,
    nodes: Sequence[str] = (),
    role: str | None = None,
    timeout: float = 60.0,
    workers: int | None = None,
) -> FleetCheck:
    """Compile the catalog of every node of ``facts`` (or of ``nodes``; with ``role``, only
    the nodes nodes.yaml gives it) at ``snapshot``, each with its own facts, classified by the
    revision's nodes.yaml: once per distinct input, in worker processes, as ``diff_fleet``.

    ``snapshot`` is a commit or a working tree, with its modules or not; the workers open it
    again (and its modules, from the mirrors in ``state_dir``)."""
    unknown = sorted(set(nodes) - set(facts))
    if unknown:
        raise ReconcilerError(f"no facts for node(s) {', '.join(unknown)}")
    names = sorted(set(nodes or facts))
    source = _source_of(snapshot)
    tasks, plan, withheld = _plan(facts, names, role, [snapshot], state_dir, timeout)
    found: dict[str, tuple[str | None, int, tuple[Problem, ...]]] = {}
    for key, view in _compiled(
        list(tasks), tasks, [source], state_dir, timeout, workers or os.cpu_count() or 1
    ):
        found[key] = (view.role, len(view.resources), view.problems)
    checks = [
        NodeCheck(node, *found[plan[node][0]], withheld=withheld[node])
        for node in names
        if node in plan
    ]
    return FleetCheck(checks, len(tasks))
