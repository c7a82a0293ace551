"""Facts a node left out of what it published, stood in for by placeholders in a review.

A node publishes its facts less those holding a sensitive value of its catalog (withheld) and,
past the record's size, the largest (dropped); its facts document (``reconciler facts --all``)
names both under ``META_KEY``. A review compiles the node's catalog with a placeholder in each
such fact's place, ``<withheld fact site.db_password>``: the same text for every node and at
both revisions (so nodes still share a catalog, and it makes no change of its own), sensitive
in the compile as the value was on the node (a resource holding it is shown as digests).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.apps.facts import MAX_NAMED, MAX_PATH, META_KEY
from reconciler.errors import ReconcilerError

# A listed path that names no fact: a key that was itself sensitive, a count of the rest, or
# a path cut short.
_UNNAMED = ("<sensitive name>",)


def placeholder(path: str) -> str:
    """What a review compiles with in place of the fact at ``path`` (``site.db_password``)."""
    return f"<withheld fact {path}>"


@dataclass(frozen=True)
class ReviewFacts:
    """A node's facts as a review compiles with them."""

    facts: dict[str, Any]  # without META_KEY, a placeholder in each left-out fact's place
    withheld: tuple[str, ...] = ()  # the paths of the facts the node left out
    placeholders: tuple[str, ...] = ()  # the placeholders put in: sensitive


def left_out(meta: Any) -> list[str]:
    """The fact paths a ``META_KEY`` value names as withheld or dropped, in that order;
    ValueError naming the key when it is not as ``reconciler facts --all`` writes it."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"key {META_KEY!r}: not a mapping")
    paths: list[str] = []
    for name in ("withheld", "dropped"):
        items = meta.get(name, [])
        if (
            not isinstance(items, list)
            or len(items) > MAX_NAMED + 1
            or not all(isinstance(i, str) and 0 < len(i) <= MAX_PATH for i in items)
        ):
            raise ValueError(f"key '{META_KEY}.{name}': not a list of fact paths")
        paths += [item for item in items if item not in paths]
    return paths


def _fill(facts: dict[str, Any], path: str) -> bool:
    """Put the placeholder for ``path`` in ``facts``; False when the path names no fact, or
    one the facts already hold (given by hand: it is used as given)."""
    parts = path.split(".")
    if (
        path.startswith("(and ")
        or path.endswith("...")
        or any(p in _UNNAMED or not p for p in parts)
        or parts[0] == META_KEY
    ):
        return False
    where = facts
    for part in parts[:-1]:
        inner = where.setdefault(part, {})
        if not isinstance(inner, dict):
            return False
        where = inner
    if parts[-1] in where:
        return False
    where[parts[-1]] = placeholder(path)
    return True


def review_facts(node: str, document: Mapping[str, Any]) -> ReviewFacts:
    """``document`` (a node's facts, with or without ``META_KEY``) as a review compiles with
    it. ReconcilerError names the node when ``META_KEY`` is malformed."""
    facts = {k: v for k, v in document.items() if k != META_KEY}
    if META_KEY not in document:
        return ReviewFacts(facts)
    try:
        paths = left_out(document[META_KEY])
    except ValueError as exc:
        raise ReconcilerError(f"facts of node {node}: {exc}") from None
    if not paths:
        return ReviewFacts(facts)
    facts = _copied(facts)
    listed: list[str] = []
    filled: list[str] = []
    for path in paths:
        if _fill(facts, path):
            filled.append(placeholder(path))
            listed.append(path)
        elif not _holds(facts, path):
            listed.append(path)  # it names no fact, or a fact that cannot be filled in
    return ReviewFacts(facts, tuple(listed), tuple(filled))


def _copied(value: Any) -> Any:
    """The mappings of ``value`` copied (filling in never changes the caller's facts)."""
    if isinstance(value, Mapping):
        return {k: _copied(v) for k, v in value.items()}
    return value


def _holds(facts: Mapping[str, Any], path: str) -> bool:
    where: Any = facts
    for part in path.split("."):
        if not isinstance(where, Mapping) or part not in where:
            return False
        where = where[part]
    return True


def withheld_line(paths: tuple[str, ...], most: int = 10) -> str:
    """``compiled with withheld facts: a.b, c``, naming at most ``most`` of them."""
    shown = ", ".join(paths[:most])
    if len(paths) > most:
        shown += f" and {len(paths) - most} more"
    return f"compiled with withheld facts: {shown}"
