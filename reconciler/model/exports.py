"""Exported data: named values a node publishes for the others, and ``collect()``.

A profile's ``exports: {NAME: {key: value}}`` is rendered with the node's facts and parameters
when its catalog is compiled; after a successful run the node publishes them (the reconcile
layer writes them to the coordination store). ``collect('NAME', role=..., component=..., app=...,
where={key: value})`` in templates and values returns what the other nodes published under NAME,
each mapping with ``node`` added, sorted by node.

What other nodes published is data: JSON scalars, lists and mappings, bounded in size and depth,
checked when read, never rendered. A record that is not well formed is left out with a warning.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import Location, Problem
from reconciler.model.yamlload import LocMap

NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
MAX_EXPORTS = 60 * 1024  # bytes of one node's exports written out as JSON
MAX_DEPTH = 16  # lists and mappings nested in an exported value
COLLECT_ARGUMENTS = ("role", "component", "app", "where")

Read = Callable[[], Mapping[str, bytes]]  # node -> the record it published


@dataclass(frozen=True)
class Published:
    """What one node published: its role, its app components and its exports."""

    node: str
    role: str
    components: tuple[str, ...]  # "app/component"
    exports: Mapping[str, Mapping[str, Any]]
    # app -> NAME -> {key: value}: what its app components produce for their consumers
    produces: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    sensitive: Mapping[str, Mapping[str, list[str]]] = field(default_factory=dict)


def shape_problems(raw: Any, path: str, line: int | None, key: str = "exports") -> list[Problem]:
    """``exports:`` (or ``produces:``) must map names to mappings (before anything is
    rendered)."""
    at = Location(path, line, key)
    if not isinstance(raw, LocMap):
        return [Problem("must be a mapping {NAME: {key: value, ...}}", at)]
    problems: list[Problem] = []
    for name, value in raw.items():
        where = Location(path, raw.line_of(name), f"{key}.{name}")
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(Problem(f"the name {name!r} must match [a-z0-9][a-z0-9_-]*", where))
        elif not isinstance(value, LocMap):
            problems.append(Problem("must be a mapping of keys to values", where))
    return problems


def value_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` cannot be exported: only strings, numbers, booleans, null, lists and
    mappings with string keys, nested at most MAX_DEPTH deep."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH}"
    if value is None or isinstance(value, str | bool | int | float):
        return None
    if isinstance(value, list | tuple):
        for item in value:
            found = value_problem(item, depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"the key {key!r} is not a string"
            found = value_problem(item, depth + 1)
            if found:
                return found
        return None
    return f"a {type(value).__name__} is not data (strings, numbers, lists, mappings)"


def strings(value: Any) -> list[str]:
    """Every string inside an exported value, keys too."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [s for item in value for s in strings(item)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *strings(v))]
    return []


def encode(
    node: str,
    role: str,
    components: list[str],
    exports: Mapping[str, Mapping[str, Any]],
    produces: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    sensitive: Mapping[str, Mapping[str, list[str]]] | None = None,
) -> bytes:
    record = {
        "node": node,
        "role": role,
        "components": sorted(components),
        "exports": exports,
        "produces": produces or {},
        "sensitive": sensitive or {},
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def decode(node: str, raw: bytes) -> Published:
    """One node's record, checked; ValueError says what is wrong."""
    if len(raw) > MAX_EXPORTS + 4096:
        raise ValueError(f"larger than {MAX_EXPORTS} bytes")
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    role, components, exports = data.get("role"), data.get("components"), data.get("exports")
    if data.get("node") != node:
        raise ValueError(f"published under {node!r} but names {data.get('node')!r}")
    if not isinstance(role, str):
        raise ValueError("role is not a string")
    if not isinstance(components, list) or not all(isinstance(c, str) for c in components):
        raise ValueError("components is not a list of strings")
    exports = _check_named(exports, "export")
    produces, sensitive = data.get("produces", {}), data.get("sensitive", {})
    if not isinstance(produces, dict) or not isinstance(sensitive, dict):
        raise ValueError("produces and sensitive are not mappings")
    for app, named in produces.items():
        _check_named(named, f"{app!r} produces")
    for app, named in sensitive.items():
        if not isinstance(named, dict) or not all(
            isinstance(keys, list) and all(isinstance(k, str) for k in keys)
            for keys in named.values()
        ):
            raise ValueError(f"sensitive keys of {app!r} are not lists of names")
    return Published(node, role, tuple(components), exports, produces, sensitive)


def _check_named(found: Any, what: str) -> dict[str, Any]:
    if not isinstance(found, dict):
        raise ValueError(f"{what}: not a mapping")
    for name, value in found.items():
        if not NAME.match(name) or not isinstance(value, dict):
            raise ValueError(f"{what} {name!r}: not a named mapping")
        problem = value_problem(value)
        if problem:
            raise ValueError(f"{what} {name!r}: {problem}")
    return found


@dataclass
class Collector:
    """``collect()`` for one compile: reads the store once, on the first call, and keeps the
    names it was asked for (the daemon runs again when what they give changes)."""

    read: Read | None = None
    names: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    _published: list[Published] | None = None

    def published(self) -> list[Published]:
        if self._published is None:
            found: list[Published] = []
            records = self.read() if self.read is not None else {}
            for node in sorted(records):
                try:
                    found.append(decode(node, records[node]))
                except (ValueError, RecursionError) as exc:
                    self.warnings.append(f"exports of {node!r} left out: {exc}")
            self._published = found
        return self._published

    def produced(self, app: str, component: str, name: str) -> Published | None:
        """The first node (by name) running ``app/component`` that published ``name``."""
        self.names.add(f"{app}/{name}")
        for record in self.published():
            if f"{app}/{component}" in record.components and name in record.produces.get(app, {}):
                return record
        return None

    def collect(
        self,
        name: Any,
        role: Any = None,
        component: Any = None,
        app: Any = None,
        where: Any = None,
    ) -> list[dict[str, Any]]:
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(f"collect: the name must match [a-z0-9][a-z0-9_-]*, not {name!r}")
        for arg, given in (("role", role), ("component", component), ("app", app)):
            if given is not None and not isinstance(given, str):
                raise ValueError(f"collect: {arg}= must be a string, not {given!r}")
        if where is not None and (
            not isinstance(where, Mapping) or not all(isinstance(k, str) for k in where)
        ):
            raise ValueError(f"collect: where= must be a mapping of keys to values, not {where!r}")
        self.names.add(name)
        found: list[dict[str, Any]] = []
        for record in self.published():
            value = record.exports.get(name)
            if value is None:
                continue
            if role is not None and record.role != role:
                continue
            if app is not None and not any(c.split("/")[0] == app for c in record.components):
                continue
            if component is not None and not any(
                c == component or c.split("/")[-1] == component for c in record.components
            ):
                continue
            if where is not None and not all(
                _path(value, key) == wanted for key, wanted in where.items()
            ):
                continue
            found.append({**json.loads(json.dumps(value)), "node": record.node})
        return found


_ABSENT = object()


def _path(value: Mapping[str, Any], dotted: str) -> Any:
    """``a.b`` inside an exported mapping."""
    current: Any = value
    for part in dotted.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return _ABSENT
        current = current[part]
    return current


class Placeholder(dict[str, str]):
    """A consumed value where nothing is published (validate): any key reads as a marker."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __missing__(self, key: str) -> str:
        return f"<{self.name}.{key}>"
