"""Resources from data: ``for_each`` and per-profile ``defaults``.

``for_each:`` on a resource (or a use of a defined type) is a Jinja2 expression, or a list or
mapping written as it is, giving the items; the resource is declared once per item with ``item``
(and ``key`` for a mapping) in scope for the rest of it. The number of items, and of resources
in one catalog, are bounded, so that a large value in data cannot exhaust the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from reconciler.errors import Location, ModelError
from reconciler.model.repo import type_name
from reconciler.model.substitute import MISS
from reconciler.model.yamlload import LocMap

MAX_ITEMS = 100_000  # items of one for_each
MAX_RESOURCES = 500_000  # resources and instances declared while compiling one catalog


def for_each_items(
    declaration: LocMap,
    file: str,
    context: Mapping[str, Any],
    evaluate: Callable[[str, Mapping[str, Any], Location], Any],
    lookup: Callable[[str, Mapping[str, Any]], Any] | None = None,
) -> Iterator[Mapping[str, Any]]:
    """The contexts a declaration with ``for_each`` is compiled in, one per item.

    ``lookup`` gives the value of an expression that only names one (``params.files``), or
    MISS; ``evaluate`` the value of any other."""
    at = Location(file, declaration.line_of("for_each"), "for_each")
    raw = declaration["for_each"]
    if isinstance(raw, str):
        expression = raw.strip()
        if expression.startswith("{{") and expression.endswith("}}"):
            expression = expression[2:-2]
        value = MISS if lookup is None else lookup(expression, context)
        if value is MISS:
            value = evaluate(expression, context, at)
    else:
        value = raw
    if isinstance(value, Mapping):
        pairs: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list | tuple | range):
        pairs = [(None, item) for item in value]
    else:
        raise ModelError.one(f"for_each must give a list or a mapping, not {type_name(value)}", at)
    if len(pairs) > MAX_ITEMS:
        raise ModelError.one(
            f"for_each gives {len(pairs)} items; at most {MAX_ITEMS} are allowed", at
        )
    for key, item in pairs:
        yield {**context, "item": item} if key is None else {**context, "item": item, "key": key}


def with_defaults(declaration: LocMap, defaults: LocMap | None) -> LocMap:
    """A declaration with its profile's defaults for its type beneath what it sets itself."""
    if not defaults:
        return declaration
    merged = LocMap.empty(declaration.line)
    merged.update(declaration)
    merged.lines = dict(declaration.lines)
    merged.first = declaration.first
    for key, value in defaults.items():
        if key not in merged and key != "for_each":  # for_each has no default (an error)
            merged[key] = value
            merged.lines[key] = defaults.line_of(key)
    return merged
