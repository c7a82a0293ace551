"""The scheduler from tables of graphs: which resources run, in what order, which are skipped
(and because of what), which get a refresh. Pure: ids, edges and outcomes only."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from reconciler.engine.schedule import Scheduler, Status


@dataclass
class Walk:
    ran: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # id -> the prerequisite that failed
    refreshed: list[str] = field(default_factory=list)


def walk(order: str, edges: str, outcomes: dict[str, Status]) -> Walk:
    """Run a graph one resource at a time. ``order``: the ids, space-separated, in graph
    order. ``edges``: "a>b" (b after a) and "a~b" (a refreshes b, so b after a)."""
    after: dict[str, set[str]] = {}
    refreshes: dict[str, set[str]] = {}
    for edge in edges.split():
        source, target = edge.replace("~", ">").split(">")
        after.setdefault(target, set()).add(source)
        if "~" in edge:
            refreshes.setdefault(source, set()).add(target)
    schedule = Scheduler(order.split(), after, refreshes)
    seen = Walk()
    while schedule:
        ready = schedule.take()
        if ready.blocked_by is not None:
            seen.skipped[ready.id] = ready.blocked_by
            schedule.finish(ready.id, "skipped")
            continue
        seen.ran.append(ready.id)
        if ready.refresh:
            seen.refreshed.append(ready.id)
        schedule.finish(ready.id, outcomes.get(ready.id, "in_sync"))
    assert schedule.complete, "every resource was taken once"
    return seen


CASES = [
    # (what, order, edges, outcomes, ran, skipped, refreshed)
    ("independent: graph order", "c a b", "", {}, "c a b", {}, ""),
    ("a chain", "a b c", "a>b b>c", {}, "a b c", {}, ""),
    ("a diamond", "a b c d", "a>b a>c b>d c>d", {}, "a b c d", {}, ""),
    (
        "after its prerequisites, whatever the tie order",
        "d c b a",
        "a>b b>c c>d",
        {},
        "a b c d",
        {},
        "",
    ),
    (
        "a failure skips dependents, and theirs",
        "a b c d",
        "a>b b>c",
        {"a": "failed"},
        "a d",
        {"b": "a", "c": "b"},
        "",
    ),
    (
        "the first prerequisite to fail is named",
        "a b c",
        "a>c b>c",
        {"a": "failed", "b": "failed"},
        "a b",
        {"c": "a"},
        "",
    ),
    (
        "a skipped prerequisite skips too",
        "a b c d",
        "a>b b>d c>d",
        {"a": "failed"},
        "a c",
        {"b": "a", "d": "b"},
        "",
    ),
    ("a change refreshes", "a b", "a~b", {"a": "changed"}, "a b", {}, "b"),
    ("in noop, a would-be change refreshes", "a b", "a~b", {"a": "would_change"}, "a b", {}, "b"),
    ("no change, no refresh", "a b", "a~b", {}, "a b", {}, ""),
    ("a changed dependency is not a refresh", "a b", "a>b", {"a": "changed"}, "a b", {}, ""),
    ("a failed source: skipped", "a b", "a~b", {"a": "failed"}, "a", {"b": "a"}, ""),
    (
        "a refreshed target with a failed prerequisite is skipped",
        "a b c",
        "a~c b>c",
        {"a": "changed", "b": "failed"},
        "a b",
        {"c": "b"},
        "",
    ),
    (
        "two changed sources: one run, one refresh",
        "a b c",
        "a~c b~c",
        {"a": "changed", "b": "changed"},
        "a b c",
        {},
        "c",
    ),
    (
        "one of two sources changed",
        "a b c",
        "a~c b~c",
        {"b": "changed"},
        "a b c",
        {},
        "c",
    ),
    (
        "a refresh reaches only its own target",
        "a b c d",
        "a~b a>c b~d",
        {"a": "changed"},
        "a b c d",
        {},
        "b",
    ),
    (
        "a refreshed target that changes refreshes on",
        "a b c",
        "a~b b~c",
        {"a": "changed", "b": "changed"},
        "a b c",
        {},
        "b c",
    ),
]


@pytest.mark.parametrize(
    ("order", "edges", "outcomes", "ran", "skipped", "refreshed"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_walk(
    order: str,
    edges: str,
    outcomes: dict[str, Status],
    ran: str,
    skipped: dict[str, str],
    refreshed: str,
) -> None:
    seen = walk(order, edges, outcomes)
    assert seen.ran == ran.split()
    assert seen.skipped == skipped
    assert seen.refreshed == refreshed.split()


def test_ready_together_are_taken_together() -> None:
    """What an executor runs in parallel: everything whose prerequisites have finished."""
    schedule = Scheduler(["a", "b", "c", "d"], {"c": {"a"}, "d": {"a", "b"}})
    assert [r.id for r in schedule.take_all()] == ["a", "b"]
    assert not schedule
    schedule.finish("b", "changed")
    assert not schedule  # d still waits for a
    schedule.finish("a", "in_sync")
    assert [r.id for r in schedule.take_all()] == ["c", "d"]


def test_finishing_twice_is_a_bug() -> None:
    schedule = Scheduler(["a"], {})
    schedule.take()
    schedule.finish("a", "in_sync")
    with pytest.raises(ValueError, match="finished twice"):
        schedule.finish("a", "changed")
