"""Which resources of a graph may run now, given what has finished and how.

The scheduler knows only ids, edges and outcomes: no resources, no files, no threads. The
executor (``engine.run``) asks it what is ready, runs those however it runs things (inline,
in a pool, in batches), and tells it each outcome. From the outcomes it decides:

- a resource is ready when everything it comes after has finished;
- one whose prerequisite failed or was skipped is skipped, naming the first such prerequisite
  (a skip spreads to dependents of dependents);
- a refresh (notify/subscribe) reaches its target only when the source changed (or would
  change, in noop); the target still runs once, after all its prerequisites, and is skipped
  like any other when one of them failed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

ResourceId = str
Status = Literal["in_sync", "changed", "would_change", "failed", "skipped"]
STATUSES: tuple[Status, ...] = ("in_sync", "changed", "would_change", "failed", "skipped")
CHANGED: frozenset[str] = frozenset({"changed", "would_change"})
BLOCKING: frozenset[str] = frozenset({"failed", "skipped"})


@dataclass(frozen=True)
class Ready:
    """A resource whose prerequisites have all finished: run it, or skip it (``blocked_by``).

    ``refresh``: a resource it subscribes to (or that notifies it) changed.
    """

    id: ResourceId
    refresh: bool
    blocked_by: ResourceId | None


class Scheduler:
    """The state of one walk over a graph: what waits on what, and what has finished."""

    def __init__(
        self,
        order: Sequence[ResourceId],
        after: Mapping[ResourceId, Iterable[ResourceId]],
        refreshes: Mapping[ResourceId, Iterable[ResourceId]] | None = None,
    ) -> None:
        """``order``: every id, in the order ties are broken (the catalog's graph order).
        ``after[x]``: what x comes after. ``refreshes[x]``: what x refreshes when it changes
        (each of them also comes after x)."""
        self.order = list(order)
        self.after = {rid: tuple(after.get(rid, ())) for rid in self.order}
        self.refreshes = {rid: tuple((refreshes or {}).get(rid, ())) for rid in self.order}
        self._waiting = {rid: len(self.after[rid]) for rid in self.order}
        self._dependents: dict[ResourceId, list[ResourceId]] = {rid: [] for rid in self.order}
        for rid in self.order:
            for dep in self.after[rid]:
                self._dependents[dep].append(rid)
        self._blocked_by: dict[ResourceId, ResourceId] = {}
        self._refresh: set[ResourceId] = set()
        self._ready: deque[ResourceId] = deque(r for r in self.order if self._waiting[r] == 0)
        self.finished: dict[ResourceId, Status] = {}

    def __bool__(self) -> bool:
        """Whether something is ready now."""
        return bool(self._ready)

    @property
    def complete(self) -> bool:
        return len(self.finished) == len(self.order)

    def take(self) -> Ready:
        """The next ready resource (FIFO: graph order among those ready at once)."""
        rid = self._ready.popleft()
        return Ready(rid, rid in self._refresh, self._blocked_by.get(rid))

    def take_all(self) -> list[Ready]:
        taken = []
        while self._ready:
            taken.append(self.take())
        return taken

    def finish(self, rid: ResourceId, status: Status) -> None:
        """Record how ``rid`` ended; its dependents whose prerequisites have all finished
        become ready."""
        if rid in self.finished:
            raise ValueError(f"{rid} finished twice")
        self.finished[rid] = status
        if status in CHANGED:
            self._refresh.update(self.refreshes[rid])
        for dependent in self._dependents[rid]:
            if status in BLOCKING and dependent not in self._blocked_by:
                self._blocked_by[dependent] = rid
            self._waiting[dependent] -= 1
            if self._waiting[dependent] == 0:
                self._ready.append(dependent)
