"""Defined types: ``types/<name>.yaml``, a group of resources with typed parameters.

A profile uses a defined type like a built-in one, ``- vhost: shop`` followed by its
parameters; each use is an *instance* whose resources are compiled with ``title`` and
``params`` (the instance's) in scope. Reading a type checks what needs no values: its keys, its
parameters' types and defaults, and that its name is not a built-in type's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import Location, ModelError, Problem
from reconciler.model.repo import (
    expect_map,
    module_files,
    named_path,
    read_yaml,
    same_kind,
    type_name,
    unknown_keys,
)
from reconciler.model.yamlload import LocList, LocMap
from reconciler.resources.base import COMMON_ATTRIBUTES, REGISTRY
from reconciler.source import Snapshot

TYPE_KEYS = frozenset({"params", "resources", "description"})
SPEC_KEYS = frozenset({"type", "default"})
# The keys of a use of a type that are not its parameters.
INSTANCE_KEYS = frozenset(
    {"require", "before", "notify", "subscribe", "when", "noop", "sensitive", "for_each"}
)
PARAM_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "list": (list,),
    "mapping": (dict,),
    "any": (object,),
}
MAX_NESTING = 16  # defined types used inside defined types, at most this deep


@dataclass(frozen=True)
class Param:
    name: str
    kind: str | None  # one of KINDS; None: like the default (as data replaces a profile's)
    default: Any
    required: bool
    where: Location

    def check(self, value: Any) -> str | None:
        """A message when ``value`` does not fit the parameter's type."""
        if value is None and not self.required:
            return None
        if self.kind is None:
            if same_kind(self.default, value):
                return None
            return f"must be {type_name(self.default)} like its default, not {type_name(value)}"
        if self.kind == "any":
            return None
        ok = isinstance(value, KINDS[self.kind])
        if self.kind in ("integer", "number") and isinstance(value, bool):
            ok = False
        return None if ok else f"must be {_article(self.kind)}, not {type_name(value)}"


def _article(kind: str) -> str:
    return {"integer": "an integer", "list": "a list", "mapping": "a mapping"}.get(
        kind, f"a {kind}"
    )


@dataclass
class DefinedType:
    name: str
    file: str
    params: dict[str, Param] = field(default_factory=dict)
    resources: LocList = field(default_factory=LocList.empty)
    broken: bool = False  # its file has problems: uses of it are not compiled

    def where(self) -> Location:
        return Location(self.file)


def type_names(snapshot: Snapshot) -> list[str]:
    """The repo's defined types, and each module's as ``MODULE/TYPE``."""
    own = [
        path.removeprefix("types/").removesuffix(".yaml")
        for path in snapshot.files("types")
        if path.endswith(".yaml") and path.count("/") == 1
    ]
    return sorted(own + module_files(snapshot, "types"))


def read_type(snapshot: Snapshot, name: str) -> tuple[DefinedType, list[Problem]]:
    """A defined type and what is wrong with its file (a broken type is marked ``broken``)."""
    path = named_path("type", name) or f"types/{name}.yaml"
    defined = DefinedType(name, path)
    problems: list[Problem] = []
    if named_path("type", name) is None:
        problems.append(
            Problem(f"{name!r} is not a type name ([a-z0-9][a-z0-9_-]*)", Location(path))
        )
    elif name in REGISTRY:
        problems.append(
            Problem(
                f"a defined type may not be named like the built-in type {name!r}", Location(path)
            )
        )
    elif name in COMMON_ATTRIBUTES or name == "for_each":
        problems.append(
            Problem(f"a defined type may not be named like the attribute {name!r}", Location(path))
        )
    try:
        raw = expect_map(read_yaml(snapshot, path), Location(path), "a defined type")
    except ModelError as exc:
        defined.broken = True
        return defined, [Problem(p.message, p.where, "validate") for p in problems + exc.problems]
    problems += unknown_keys(raw, TYPE_KEYS, path, "a defined type")
    params = raw.get("params")
    if params is None:
        params = LocMap.empty(raw.line)
    if not isinstance(params, LocMap):
        problems.append(
            Problem("must be a mapping", Location(path, raw.line_of("params"), "params"))
        )
        params = LocMap.empty(raw.line)
    for key, spec in params.items():
        where = Location(path, params.line_of(key), f"params.{key}")
        if not isinstance(key, str) or not PARAM_NAME.match(key):
            problems.append(Problem(f"{key!r} is not a parameter name ([a-z_][a-z0-9_]*)", where))
            continue
        if key in INSTANCE_KEYS or key == "title":
            problems.append(Problem(f"{key!r} is reserved and cannot be a parameter", where))
            continue
        if isinstance(spec, LocMap) and "type" in spec and set(spec) <= SPEC_KEYS:
            kind = spec["type"]
            if kind not in KINDS:
                problems.append(
                    Problem(f"type must be one of {', '.join(KINDS)}, not {kind!r}", where)
                )
                continue
            param = Param(key, str(kind), spec.get("default"), "default" not in spec, where)
            if "default" in spec and (message := param.check(spec["default"])):
                problems.append(Problem(f"the default {message}", where))
        else:
            param = Param(key, None, spec, False, where)
        defined.params[key] = param
    resources = raw.get("resources")
    if resources is None:
        resources = LocList.empty(raw.line)
    if not isinstance(resources, LocList):
        problems.append(
            Problem("must be a list", Location(path, raw.line_of("resources"), "resources"))
        )
        resources = LocList.empty(raw.line)
    defined.resources = resources
    defined.broken = bool(problems)
    return defined, [Problem(p.message, p.where, "validate") for p in problems]


def in_instance(problem: Problem, label: str, use: Location) -> Problem:
    """A problem found inside an instance, naming the use as well as the definition."""
    return Problem(f"{problem.message} (in {label}, used at {use})", problem.where, problem.stage)
