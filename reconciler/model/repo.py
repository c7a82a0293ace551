"""The control repo's files: settings, node classification, roles, profiles and data.

Everything here reads a ``Snapshot`` and returns plain values with the location each came from.
Problems are collected, not raised one by one, so that an author sees all of them at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.errors import Location, ModelError, Problem
from reconciler.model.exports import shape_problems as exports_shape
from reconciler.model.match import name_matches, pattern_problem
from reconciler.model.yamlload import LocList, LocMap, load
from reconciler.source import Snapshot

if TYPE_CHECKING:
    from reconciler.model.data import LookupOption

NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")
DEFAULT_HIERARCHY = (
    "nodes/{node}.yaml",
    "roles/{role}.yaml",
    "os/{facts.os.family}.yaml",
    "common.yaml",
)
_MISSING = object()


def read_yaml(snapshot: Snapshot, path: str) -> Any:
    try:
        data = snapshot.read(path)
    except FileNotFoundError:
        raise ModelError.one("file not found", Location(path), "parse") from None
    return load(data, path)


def expect_map(value: Any, where: Location, what: str) -> LocMap:
    if value is None:
        return LocMap.empty(where.line or 0)
    if not isinstance(value, LocMap):
        raise ModelError.one(f"{what} must be a mapping, not {type_name(value)}", where, "validate")
    return value


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        LocList: "a list",
        LocMap: "a mapping",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def closest(name: object, known: Iterable[object]) -> str | None:
    """The known name most like ``name`` when one is close enough to be a likely typo."""
    choices = sorted({str(k) for k in known} - {str(name)})
    found = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    return found[0] if found else None


def did_you_mean(name: object, known: Iterable[object]) -> str:
    """`` (did you mean 'x'?)`` after a message about an unknown name, or nothing."""
    close = closest(name, known)
    return f" (did you mean {close!r}?)" if close is not None else ""


def unknown_keys(
    mapping: LocMap, allowed: Mapping[str, Any] | frozenset[str] | set[str], file: str, what: str
) -> list[Problem]:
    return [
        Problem(
            f"unknown key {key!r} in {what}{did_you_mean(key, allowed)}",
            Location(file, mapping.line_of(key), str(key)),
        )
        for key in mapping
        if key not in allowed
    ]


def lookup_fact(facts: Mapping[str, Any], dotted: str) -> Any:
    """The fact at a dotted path (``os.family``), or _MISSING."""
    value: Any = facts
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


# -- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    hierarchy: tuple[str, ...] = DEFAULT_HIERARCHY
    prune: bool = False
    allow_mass_prune: bool = False
    lookup_options: tuple[LookupOption, ...] = ()


def load_settings(snapshot: Snapshot) -> Settings:
    path = "reconciler.yaml"
    if not snapshot.exists(path):
        return Settings()
    raw = expect_map(read_yaml(snapshot, path), Location(path), "reconciler.yaml")
    from reconciler.model.data import parse_lookup_options

    known = {"hierarchy", "prune", "allow_mass_prune", "lookup_options", "recipients"}
    problems = unknown_keys(raw, known, path, path)  # recipients: read by secrets.py
    options, found = parse_lookup_options(
        raw.get("lookup_options", LocMap.empty()), path, raw.line_of("lookup_options")
    )
    problems += found
    hierarchy = raw.get("hierarchy", list(DEFAULT_HIERARCHY))
    if not isinstance(hierarchy, list) or not all(isinstance(h, str) for h in hierarchy):
        problems.append(
            Problem(
                "must be a list of paths", Location(path, raw.line_of("hierarchy"), "hierarchy")
            )
        )
        hierarchy = list(DEFAULT_HIERARCHY)
    for key in ("prune", "allow_mass_prune"):
        if not isinstance(raw.get(key, False), bool):
            problems.append(Problem("must be true or false", Location(path, raw.line_of(key), key)))
    if problems:
        raise ModelError(problems, "validate")
    return Settings(
        tuple(hierarchy),
        bool(raw.get("prune", False)),
        bool(raw.get("allow_mass_prune", False)),
        tuple(options),
    )


# -- classification -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Classification:
    role: str
    where: Location  # the nodes.yaml entry (or default) that gave the role


def load_nodes(snapshot: Snapshot) -> LocMap:
    raw, problems = read_nodes(snapshot)
    if problems:
        raise ModelError(problems, "validate")
    return raw


def read_nodes(snapshot: Snapshot) -> tuple[LocMap, list[Problem]]:
    """nodes.yaml and what is wrong with it; a ModelError only when it cannot be read."""
    path = "nodes.yaml"
    raw = expect_map(read_yaml(snapshot, path), Location(path), "nodes.yaml")
    problems = unknown_keys(raw, {"nodes", "default"}, path, path)
    entries = raw.get("nodes", [])
    if not isinstance(entries, list):
        problems.append(Problem("must be a list", Location(path, raw.line_of("nodes"), "nodes")))
        entries = []
    for index, entry in enumerate(entries):
        line = entries.line_of(index) if isinstance(entries, LocList) else raw.line
        if not isinstance(entry, LocMap):
            problems.append(Problem("each entry must be a mapping", Location(path, line)))
            continue
        problems += unknown_keys(
            entry, {"match", "facts", "trusted", "role"}, path, "a nodes entry"
        )
        role = entry.get("role")
        if not isinstance(role, str) or not NAME.match(role):
            problems.append(
                Problem(
                    f"role must be a name like 'web', got {role!r}", Location(path, line, "role")
                )
            )
        if "match" in entry and not isinstance(entry["match"], str):
            problems.append(Problem("must be a string", Location(path, line, "match")))
        elif "match" in entry and (why := pattern_problem(entry["match"])):
            problems.append(Problem(why, Location(path, entry.line_of("match"), "match")))
        for key in ("facts", "trusted"):
            if key in entry and not isinstance(entry[key], LocMap):
                problems.append(Problem("must be a mapping", Location(path, line, key)))
        if not {"match", "facts", "trusted"} & set(entry):
            problems.append(
                Problem("an entry needs 'match', 'facts' or 'trusted'", Location(path, line))
            )
    default = raw.get("default")
    if default is not None and (not isinstance(default, str) or not NAME.match(default)):
        problems.append(
            Problem("must be a role name", Location(path, raw.line_of("default"), "default"))
        )
    return raw, problems


def missing_roles(snapshot: Snapshot, raw: LocMap) -> list[Problem]:
    """The roles nodes.yaml gives that have no file, each where it is given (as a compile of a
    node it classifies would report it)."""
    given: list[tuple[Any, Location]] = []
    entries = raw.get("nodes")
    if isinstance(entries, LocList):
        given += [
            (entry.get("role"), Location("nodes.yaml", entries.line_of(index)))
            for index, entry in enumerate(entries)
            if isinstance(entry, LocMap)
        ]
    if "default" in raw:
        given.append((raw.get("default"), Location("nodes.yaml", raw.line_of("default"))))
    problems: list[Problem] = []
    for role, where in given:
        if isinstance(role, str) and NAME.match(role):
            try:
                _read_named(snapshot, "role", role, where)
            except ModelError as exc:
                problems += exc.problems
    return problems


def classify(
    snapshot: Snapshot, node: str, facts: Mapping[str, Any], nodes: LocMap | None = None
) -> Classification:
    """The role of a node: the first nodes.yaml entry whose every condition holds.

    ``nodes``: nodes.yaml as ``load_nodes`` read it, for classifying many nodes at once."""
    raw = load_nodes(snapshot) if nodes is None else nodes
    entries: LocList = raw.get("nodes") or LocList.empty()
    for index, entry in enumerate(entries):
        if "match" in entry and not name_matches(node, entry["match"]):
            continue
        conditions = entry.get("facts") or {}
        trusted = entry.get("trusted") or {}
        if all(fact_holds(facts, k, v) for k, v in conditions.items()) and all(
            fact_holds(facts.get("trusted") or {}, k, v) for k, v in trusted.items()
        ):
            return Classification(entry["role"], Location("nodes.yaml", entries.line_of(index)))
    if raw.get("default"):
        return Classification(raw["default"], Location("nodes.yaml", raw.line_of("default")))
    raise ModelError.one(
        f"node {node!r} matches no entry and there is no default role", Location("nodes.yaml")
    )


def fact_holds(facts: Mapping[str, Any], dotted: Any, expected: Any) -> bool:
    actual = lookup_fact(facts, str(dotted))
    if actual is _MISSING:
        return False
    return bool(actual == expected or str(actual) == str(expected))


# -- roles and profiles -------------------------------------------------------------------------


def named_path(kind: str, name: str) -> str | None:
    """The file of a role, profile or defined type; ``MODULE/NAME`` is a module's profile or
    type (``modules/MODULE/<kind>s/NAME.yaml``). None for a name that is neither."""
    module, _, own = name.rpartition("/")
    if not NAME.match(own) or (module and (kind == "role" or not NAME.match(module))):
        return None
    return f"modules/{module}/{kind}s/{own}.yaml" if module else f"{kind}s/{own}.yaml"


def qualified(name: str, module: str | None) -> str:
    """A name written in a module's file, ``MODULE/NAME`` when it names one of its own."""
    return f"{module}/{name}" if module and "/" not in name else name


def _read_named(snapshot: Snapshot, kind: str, name: str, where: Location) -> tuple[str, LocMap]:
    """The file of a role or profile named at ``where``, read as a mapping."""
    path = named_path(kind, name)
    if path is None:
        raise ModelError.one(f"{name!r} is not a valid {kind} name", where)
    module = name.rpartition("/")[0]
    if module and module not in module_names(snapshot):
        raise ModelError.one(
            f"{kind} {name!r}: there is no module {module!r} in modules.yaml", where
        )
    if not snapshot.exists(path):
        raise ModelError.one(
            f"{kind} {name!r} not found (no {path}){did_you_mean(name, names_of(snapshot, kind))}",
            where,
        )
    return path, expect_map(read_yaml(snapshot, path), Location(path), f"a {kind}")


def names_of(snapshot: Snapshot, kind: str) -> list[str]:
    """The names of every role or profile (``kind``) of the repo, in file name order."""
    folder = f"{kind}s"
    own = [
        path.removeprefix(f"{folder}/").removesuffix(".yaml")
        for path in snapshot.files(folder)
        if path.endswith(".yaml")
    ]
    if kind == "role":
        return sorted(own)
    return sorted(own + module_files(snapshot, folder))


def module_names(snapshot: Snapshot) -> list[str]:
    """The modules of the run's snapshot (a ``ModularSnapshot``'s); none for a plain one, so
    that a ``modules/`` directory of the control repo itself is never taken for modules."""
    modules = getattr(snapshot, "modules", None)
    return sorted(modules) if isinstance(modules, dict) else []


def module_files(snapshot: Snapshot, folder: str) -> list[str]:
    """``MODULE/NAME`` for each ``<folder>/NAME.yaml`` of each module."""
    return [
        f"{module}/{path.rsplit('/', 1)[1].removesuffix('.yaml')}"
        for module in module_names(snapshot)
        for path in snapshot.files(f"modules/{module}/{folder}")
        if path.endswith(".yaml") and path.count("/") == 3
    ]


def load_role(snapshot: Snapshot, role: str, where: Location) -> list[tuple[str, Location]]:
    """The profiles a role includes, each with the line that names it."""
    profiles, problems = read_role(snapshot, role, where)
    if problems:
        raise ModelError(problems, "validate")
    return profiles


def read_role(
    snapshot: Snapshot, role: str, where: Location
) -> tuple[list[tuple[str, Location]], list[Problem]]:
    """The profiles a role includes (each with the line that names it) and what is wrong with
    the role's file, which does not keep its profiles from being read. A role without
    ``profiles`` has none. A ModelError only when the role cannot be read at all."""
    path, raw = _read_named(snapshot, "role", role, where)
    problems = unknown_keys(raw, {"profiles", "description", "assert"}, path, "a role")
    problems += assertion_problems(raw, path)
    profiles = raw.get("profiles")
    if profiles is None:
        profiles = LocList.empty()
    elif not isinstance(profiles, LocList) or not all(isinstance(p, str) for p in profiles):
        problems.append(
            Problem(
                "must be a list of profile names",
                Location(path, raw.line_of("profiles"), "profiles"),
            )
        )
        profiles = LocList.empty()
    named = [(name, Location(path, profiles.line_of(i))) for i, name in enumerate(profiles)]
    return named, [Problem(p.message, p.where, "validate") for p in problems]


def role_assertions(snapshot: Snapshot, role: str, where: Location) -> LocList:
    """The ``assert:`` list of a role."""
    return assertions(_read_named(snapshot, "role", role, where)[1])


@dataclass
class Profile:
    name: str
    file: str
    params: LocMap
    resources: LocList
    sensitive: frozenset[str] = frozenset()
    includes: list[tuple[str, Location]] = field(default_factory=list)
    defaults: dict[str, LocMap] = field(default_factory=dict)  # type -> attribute -> value
    assertions: LocList = field(default_factory=LocList.empty)
    exports: LocMap | None = None  # NAME -> {key: value}, rendered when compiled


def assertions(raw: LocMap) -> LocList:
    """The ``assert:`` list of a role or profile (empty when it is missing or malformed)."""
    found = raw.get("assert")
    return found if isinstance(found, LocList) else LocList.empty(raw.line)


def assertion_problems(raw: LocMap, path: str) -> list[Problem]:
    """``assert: [{that: EXPR, message: TEXT}, ...]``, checked whatever the values."""
    if "assert" not in raw:
        return []
    found = raw["assert"]
    at = Location(path, raw.line_of("assert"), "assert")
    if not isinstance(found, LocList):
        return [Problem("must be a list of {that: EXPRESSION, message: TEXT}", at)]
    problems: list[Problem] = []
    for index, item in enumerate(found):
        where = Location(path, found.line_of(index), f"assert[{index}]")
        if not isinstance(item, LocMap):
            problems.append(Problem("must be a mapping {that: EXPRESSION, message: TEXT}", where))
            continue
        problems += unknown_keys(item, {"that", "message"}, path, "an assertion")
        if not isinstance(item.get("that"), str | bool):
            problems.append(Problem("'that' must be an expression", where))
        if not isinstance(item.get("message"), str) or not item["message"]:
            problems.append(Problem("'message' must be a text", where))
    return problems


def load_profile(snapshot: Snapshot, name: str, where: Location) -> Profile:
    profile, problems = read_profile(snapshot, name, where)
    if problems:
        raise ModelError(problems, "validate")
    return profile


def read_profile(snapshot: Snapshot, name: str, where: Location) -> tuple[Profile, list[Problem]]:
    """A profile and what is wrong with its file; a ModelError only when it cannot be read."""
    path, raw = _read_named(snapshot, "profile", name, where)
    problems = unknown_keys(
        raw,
        {
            "params",
            "resources",
            "description",
            "sensitive_params",
            "include",
            "defaults",
            "assert",
            "exports",
        },
        path,
        "a profile",
    )
    problems += assertion_problems(raw, path)
    includes = raw.get("include", LocList.empty(raw.line))
    if isinstance(includes, str):
        includes = LocList([includes])
        includes.line, includes.lines = raw.line_of("include"), [raw.line_of("include")]
    if not isinstance(includes, LocList) or not all(isinstance(i, str) for i in includes):
        problems.append(
            Problem(
                "must be a list of profile names",
                Location(path, raw.line_of("include"), "include"),
            )
        )
        includes = LocList.empty(raw.line)
    defaults: dict[str, LocMap] = {}
    given = raw.get("defaults")
    if given is not None and not isinstance(given, LocMap):
        problems.append(
            Problem(
                "must be a mapping of types to attributes, like {file: {owner: root}}",
                Location(path, raw.line_of("defaults"), "defaults"),
            )
        )
    elif given is not None:
        for kind, attrs in given.items():
            if not isinstance(attrs, LocMap):
                problems.append(
                    Problem(
                        "must be a mapping of attributes",
                        Location(path, given.line_of(kind), f"defaults.{kind}"),
                    )
                )
                continue
            defaults[str(kind)] = attrs
    params = raw.get("params")
    try:
        params = expect_map(params, Location(path, raw.line_of("params"), "params"), "params")
    except ModelError as exc:
        problems += exc.problems
        params = expect_map(None, Location(path), "params")  # a broken profile is not compiled
    resources = raw.get("resources")
    if resources is None:
        resources = LocList.empty()
    elif not isinstance(resources, LocList):
        problems.append(
            Problem("must be a list", Location(path, raw.line_of("resources"), "resources"))
        )
        resources = LocList.empty()
    sensitive = raw.get("sensitive_params", [])
    if not isinstance(sensitive, list) or not all(isinstance(s, str) for s in sensitive):
        problems.append(
            Problem(
                "must be a list of parameter names",
                Location(path, raw.line_of("sensitive_params"), "sensitive_params"),
            )
        )
        sensitive = []
    for param in sensitive:
        if param not in params:
            problems.append(
                Problem(
                    f"{param!r} is not a parameter of this profile",
                    Location(path, raw.line_of("sensitive_params"), "sensitive_params"),
                )
            )
    module = name.rpartition("/")[0] or None
    exports = raw.get("exports")
    if exports is not None:
        found = exports_shape(exports, path, raw.line_of("exports"))
        problems += found
        exports = None if found else exports
    profile = Profile(
        name,
        path,
        params,
        resources,
        frozenset(sensitive),
        [
            (qualified(n, module), Location(path, includes.line_of(i), "include"))
            for i, n in enumerate(includes)
        ],
        defaults,
        assertions(raw),
        exports,
    )
    return profile, [Problem(p.message, p.where, "validate") for p in problems]


# -- data -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataValue:
    value: Any
    level: str  # the hierarchy entry as written
    where: Location


@dataclass
class Data:
    """The data levels that apply to one node, first level first."""

    levels: list[tuple[str, str, LocMap]] = field(default_factory=list)  # (level, file, content)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (level, why)


def interpolate_level(level: str, node: str, role: str, facts: Mapping[str, Any]) -> str | None:
    """A hierarchy level's file for this node, or None when a fact it names is missing."""
    missing = False

    def sub(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1).strip()
        if name == "node":
            return node
        if name == "role":
            return role
        if name.startswith("facts."):
            value = lookup_fact(facts, name[6:])
            if value is _MISSING or value is None or isinstance(value, Mapping | list):
                missing = True
                return ""
            return str(value)
        missing = True
        return ""

    path = re.sub(r"\{([^{}]+)\}", sub, level)
    return None if missing else path


def _data_file(snapshot: Snapshot, path: str, problems: list[Problem]) -> LocMap | None:
    """A data file's mapping; None when it is absent or wrong (its problems added)."""
    if not snapshot.exists(path):
        return None
    try:
        return expect_map(read_yaml(snapshot, path), Location(path), "a data file")
    except ModelError as exc:
        problems += exc.problems
        return None


def load_data(
    snapshot: Snapshot, settings: Settings, node: str, role: str, facts: Mapping[str, Any]
) -> Data:
    data = Data()
    problems: list[Problem] = []
    for level in settings.hierarchy:
        rel = interpolate_level(level, node, role, facts)
        if rel is None:
            data.skipped.append((level, "names a fact this node does not have"))
            continue
        if "/" in rel and any(part in ("", ".", "..") for part in rel.split("/")):
            data.skipped.append((level, f"{rel!r} is not a plain relative path"))
            continue
        path = f"data/{rel}"
        content = _data_file(snapshot, path, problems)
        if content is not None:
            data.levels.append((level, path, content))
    for module in module_names(snapshot):
        # a module's data: the lowest level, for its own profiles only
        path = f"modules/{module}/data/common.yaml"
        content = _data_file(snapshot, path, problems)
        if content is None:
            continue
        own = LocMap.empty(content.line)
        for key, value in content.items():
            where = Location(path, content.line_of(key), str(key))
            if not isinstance(key, str) or not NAME.match(key):
                problems.append(Problem("a module's data names its own profiles only", where))
            elif not snapshot.exists(f"modules/{module}/profiles/{key}.yaml"):
                problems.append(
                    Problem(
                        f"module {module!r} has no profile {key!r} (no profiles/{key}.yaml)", where
                    )
                )
            else:
                own[f"{module}/{key}"] = value
                own.lines[f"{module}/{key}"] = content.line_of(key)
        data.levels.append((f"module {module}", path, own))
    if problems:
        raise ModelError(problems, "parse")
    return data


def check_data_file(
    path: str,
    content: LocMap,
    profiles: Mapping[str, Profile],
    elsewhere: Collection[str],
) -> list[Problem]:
    """Every key of a profile's section must be a declared parameter, of the default's type.

    Sections for profiles not in ``profiles`` are passed over when they are in ``elsewhere``
    (every profile of the repo: a compile checks only the node's own profiles, and validate
    reports a profile that does not load in its own file). Any other top-level key is a free
    key (see ``free_key_problem``), and ``lookup_options`` holds the file's lookup options.
    """
    from reconciler.model.data import RESERVED, parse_lookup_options

    problems: list[Problem] = []
    for name, section in content.items():
        line = content.line_of(name)
        if name == RESERVED:
            problems += parse_lookup_options(section, path, line)[1]
            continue
        profile = profiles.get(name)
        if profile is None and str(name) in elsewhere:
            continue
        if profile is None:
            message = free_key_problem(name, section, elsewhere)
            if message is None:
                continue
            problems.append(Problem(message, Location(path, line, str(name))))
            continue
        if not isinstance(section, LocMap):
            problems.append(
                Problem("must be a mapping of parameters", Location(path, line, str(name)))
            )
            continue
        problems += parameter_problems(
            f"profile {name!r}", profile.file, profile.params, section, path, str(name)
        )
    return problems


def parameter_problems(
    owner: str,
    file: str,
    params: LocMap,
    section: LocMap,
    path: str,
    prefix: str,
    interpolation: bool = True,
) -> list[Problem]:
    """Every key of a data ``section`` for a profile or an app must be one of its ``params``
    (declared in ``file``), with a value of the default's type; with ``interpolation``, a value
    that is one ``%{...}`` is judged once substituted."""
    problems: list[Problem] = []
    for key, value in section.items():
        where = Location(path, section.line_of(key), f"{prefix}.{key}")
        if key not in params:
            problems.append(
                Problem(
                    f"{owner} has no parameter {key!r} ({file}){did_you_mean(key, params)}",
                    where,
                )
            )
            continue
        default = params[key]
        if not same_kind(default, value) and not (interpolation and interpolated(value)):
            problems.append(
                Problem(
                    f"expected {type_name(default)} like the default at "
                    f"{file}:{params.line_of(key)}, got {type_name(value)}",
                    where,
                )
            )
    return problems


def free_key_problem(name: Any, value: Any, profiles: Collection[str]) -> str | None:
    """What is wrong with a top-level data key that names no profile, or None: a free key.

    A mapping under a name close to a profile's is taken for a misspelt section, unless the
    name has ``::``; a free key has no ``.`` (that separates a section from its key)."""
    if not isinstance(name, str) or not name:
        return f"a data key must be a non-empty string, not {name!r} (quote it: '{name}')"
    if "." in name:
        return f"a free data key must be a name without '.', not {name!r}"
    close = closest(name, profiles)
    if close is not None and isinstance(value, Mapping) and "::" not in name:
        return f"no profile named {name!r} (did you mean {close!r}?)"
    return None


def interpolated(value: Any) -> bool:
    """Whether a data value is exactly one ``%{...}``, which keeps the type of what it names
    (checked once it is substituted)."""
    return isinstance(value, str) and re.fullmatch(r"%\{[^{}]*\}", value) is not None


def same_kind(default: Any, value: Any) -> bool:
    """Whether a data value may replace a parameter's default."""
    if default is None or value is None:
        return True
    if isinstance(default, str) and "{{" in default:
        return True  # a computed default: any type may replace it
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, int | float) and isinstance(value, int | float):
        return isinstance(value, int) or isinstance(default, float)
    for kind in (str, list, dict):
        if isinstance(default, kind):
            return isinstance(value, kind)
    return type(default) is type(value)
