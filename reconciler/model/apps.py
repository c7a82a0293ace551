"""Application deployments: ``apps/<app>.yaml``, a version and components.

Each component names the nodes that run it (by role or by a glob on the node name), the
components it requires, how many of its nodes may deploy at once, its resources (written as in a
profile; templates see ``app.name`` and ``app.version``) and a health check. Loading validates an
app as a whole: unknown keys, unknown or cyclic requirements, bad health checks, all at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import Location, ModelError, Problem
from reconciler.model.exports import shape_problems as exports_shape
from reconciler.model.match import is_regex, name_matches, pattern_problem
from reconciler.model.repo import (
    NAME,
    did_you_mean,
    fact_holds,
    parameter_problems,
    read_yaml,
    same_kind,
    type_name,
    unknown_keys,
)
from reconciler.model.yamlload import LocList, LocMap
from reconciler.source import Snapshot

APP_KEYS = frozenset({"version", "components", "description", "params", "instances"})
INSTANCE_KEYS = frozenset({"version", "params", "nodes"})
APP_SECTION = "app:"  # data sections of apps: ``app:<app>`` and ``app:<app>-<instance>``


def is_app_section(key: object) -> bool:
    """``app:shop`` is an app's data section; ``app::x`` is a free key in the ``app``
    namespace, as Hiera writes them."""
    return isinstance(key, str) and key.startswith(APP_SECTION) and not key.startswith("app::")


COMPONENT_KEYS = frozenset(
    {
        "name",
        "nodes",
        "requires",
        "max_parallel",
        "resources",
        "health",
        "on_failure",
        "exports",
        "produces",
        "consumes",
    }
)
NODES_KEYS = ("role", "match", "facts", "trusted")
HEALTH_KEYS = frozenset({"command", "http", "timeout", "retries", "interval"})


@dataclass(frozen=True)
class Health:
    command: str | list[str] | None = None
    http: str | None = None
    timeout: float = 30.0
    retries: int = 3  # attempts after the first
    interval: float = 2.0  # seconds between attempts

    def describe(self) -> str:
        if self.http:
            return f"GET {self.http}"
        command = self.command
        return command if isinstance(command, str) else " ".join(command or [])


@dataclass
class Component:
    name: str
    where: Location
    role: str | None
    match: str | None
    requires: list[str]
    max_parallel: int
    resources: LocList
    health: Health | None
    on_failure: str  # "halt" or "rollback"
    requires_at: Location = field(default_factory=Location)
    facts: dict[str, Any] = field(default_factory=dict)  # dotted fact path -> value
    trusted: dict[str, Any] = field(default_factory=dict)  # the same, of facts.trusted
    exports: LocMap | None = None  # NAME -> {key: value}: published like a profile's exports
    produces: LocMap | None = None  # NAME -> {key: value}: for the app's consuming components
    consumes: dict[str, str] = field(default_factory=dict)  # NAME -> the component producing it
    consumes_at: Location = field(default_factory=Location)

    def runs_on(self, node: str, role: str, facts: Mapping[str, Any] | None = None) -> bool:
        """Whether a node runs this component: every condition of its ``nodes:`` holds."""
        if self.role is not None and self.role != role:
            return False
        if self.match is not None and not name_matches(node, self.match):
            return False
        facts = facts or {}
        trusted = facts.get("trusted") or {}
        return all(fact_holds(facts, k, v) for k, v in self.facts.items()) and all(
            fact_holds(trusted, k, v) for k, v in self.trusted.items()
        )


@dataclass
class App:
    name: str
    file: str
    version: str
    components: list[Component] = field(default_factory=list)
    digest: str = ""  # of the app's file: tells one definition of a version from another
    params: LocMap = field(default_factory=LocMap.empty)  # parameter -> default
    # An instance of the app's definition (apps/<definition>.yaml) is named
    # <definition>-<instance>; an app without instances is its definition's only one.
    definition: str = ""
    instance: str = ""
    instance_params: LocMap = field(default_factory=LocMap.empty)
    instances: list[App] = field(default_factory=list)  # of a definition with instances

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)


@dataclass
class Deployment:
    """One component of one app on this node, as compiled at the app's version."""

    app: App
    component: Component
    ids: list[str]  # the ids of its resources in the catalog
    health: Health | None = None  # the component's check, rendered for this node
    # Why it cannot be compiled at its version yet (a consumed value nobody published): the
    # rollout keeps it waiting.
    unavailable: str = ""
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)  # rendered
    produces: dict[str, dict[str, Any]] = field(default_factory=dict)  # rendered
    sensitive: dict[str, list[str]] = field(default_factory=dict)  # produced NAME -> keys
    consumed_secrets: list[str] = field(default_factory=list)  # sensitive consumed values

    @property
    def key(self) -> str:
        return f"{self.app.name}/{self.component.name}"

    @property
    def origin(self) -> str:
        return f"app:{self.key}"


def app_names(snapshot: Snapshot) -> list[str]:
    return sorted(
        path.removeprefix("apps/").removesuffix(".yaml")
        for path in snapshot.files("apps")
        if path.endswith(".yaml") and path.count("/") == 1
    )


def load_apps(snapshot: Snapshot) -> list[App]:
    """Every app of the repo; a ModelError with every problem of every app file."""
    apps: list[App] = []
    problems: list[Problem] = []
    for name in app_names(snapshot):
        try:
            app = load_app(snapshot, name)
        except ModelError as exc:
            problems += exc.problems
            continue
        apps += app.instances or [app]
    names: dict[str, App] = {}
    for app in apps:
        other = names.setdefault(app.name, app)
        if other is not app:
            problems.append(
                Problem(
                    f"two apps are named {app.name!r} ({_describe(other)} and "
                    f"{_describe(app)}): rename one",
                    Location(app.file),
                    "validate",
                )
            )
    if problems:
        raise ModelError(problems, "validate")
    return apps


def _describe(app: App) -> str:
    return f"instance {app.instance!r} of {app.file}" if app.instance else app.file


def load_app(snapshot: Snapshot, name: str) -> App:
    app, problems = read_app(snapshot, name)
    if problems:
        raise ModelError(problems, "validate")
    return app


def read_app(snapshot: Snapshot, name: str) -> tuple[App, list[Problem]]:
    """An app with the components that could be read, and what is wrong with its file (in line
    order); a ModelError only when it cannot be read at all."""
    path = f"apps/{name}.yaml"
    if not NAME.match(name):
        raise ModelError.one(
            f"{name!r} is not an app name ([a-z0-9][a-z0-9_-]*)", Location(path), "validate"
        )
    raw = read_yaml(snapshot, path)
    if not isinstance(raw, LocMap):
        raise ModelError.one(f"an app must be a mapping, not {type_name(raw)}", Location(path))
    problems = unknown_keys(raw, APP_KEYS, path, "an app")

    def at(mapping: LocMap, key: str, prefix: str = "") -> Location:
        return Location(path, mapping.line_of(key), prefix + key)

    version = raw.get("version")
    if isinstance(version, int | float) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str) or not version.strip():
        problems.append(Problem('needs a version, a string like "1.4.2"', at(raw, "version")))
        version = ""
    app = App(name, path, version, digest=hashlib.sha256(snapshot.read(path)).hexdigest())
    app.definition = name
    params = raw.get("params")
    if params is not None and not isinstance(params, LocMap):
        problems.append(Problem("must be a mapping of parameters", at(raw, "params")))
    elif params is not None:
        app.params = params
    components = raw.get("components")
    if not isinstance(components, LocList) or not components:
        problems.append(Problem("needs a list of components", at(raw, "components")))
        components = LocList.empty()
    for index, item in enumerate(components):
        where = Location(path, components.line_of(index), f"components[{index}]")
        if not isinstance(item, LocMap):
            problems.append(Problem("a component must be a mapping", where))
            continue
        component, found = _component(item, where, path)
        problems += found
        if component is None:
            continue
        if app.component(component.name):
            problems.append(Problem(f"duplicate component {component.name!r}", where))
            continue
        app.components.append(component)
    problems += _check_capabilities(app)
    problems += _check_requires(app)
    if "instances" in raw:
        problems += _instances(app, raw["instances"], at(raw, "instances"))
    ordered = sorted(problems, key=lambda p: p.where.line or 0)
    return app, [Problem(p.message, p.where, "validate") for p in ordered]


def _instances(app: App, raw: Any, where: Location) -> list[Problem]:
    """Fill ``app.instances`` from ``instances: {name: {version, params, nodes}}``."""
    path = app.file
    if not isinstance(raw, LocMap) or not raw:
        return [Problem("must be a mapping of instance names to their settings", where)]
    problems: list[Problem] = []
    for name, settings in raw.items():
        at = Location(path, raw.line_of(name), f"instances.{name}")
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(Problem(f"{name!r} is not an instance name ([a-z0-9][a-z0-9_-]*)", at))
            continue
        if settings is None:
            settings = LocMap.empty(raw.line_of(name))
        if not isinstance(settings, LocMap):
            problems.append(Problem("must be a mapping with version, params or nodes", at))
            continue
        problems += unknown_keys(settings, INSTANCE_KEYS, path, "an app instance")
        version = settings.get("version", app.version)
        if isinstance(version, int | float) and not isinstance(version, bool):
            version = str(version)
        if not isinstance(version, str) or not version.strip():
            problems.append(Problem('must be a string like "1.4.2"', at))
            version = app.version
        given = settings.get("params") or LocMap.empty(settings.line)
        if not isinstance(given, LocMap):
            problems.append(Problem("must be a mapping of parameters", at))
            given = LocMap.empty(settings.line)
        for key, value in given.items():
            key_at = Location(path, given.line_of(key), f"instances.{name}.params.{key}")
            if key not in app.params:
                problems.append(
                    Problem(
                        f"app {app.name!r} has no parameter {key!r}{did_you_mean(key, app.params)}",
                        key_at,
                    )
                )
            elif not same_kind(app.params[key], value):
                problems.append(
                    Problem(
                        f"expected {type_name(app.params[key])} like the default, "
                        f"got {type_name(value)}",
                        key_at,
                    )
                )
        nodes = settings.get("nodes") or LocMap.empty(settings.line)
        extra: dict[str, dict[str, Any]] = {"facts": {}, "trusted": {}}
        if not isinstance(nodes, LocMap) or not set(nodes) <= set(extra):
            problems.append(
                Problem("nodes of an instance: {facts: {PATH: VALUE}, trusted: {...}}", at)
            )
        else:
            for key, value in nodes.items():
                if not isinstance(value, LocMap):
                    problems.append(Problem("must be a mapping of fact paths to values", at))
                else:
                    extra[key] = dict(value)
        instance = dataclasses.replace(
            app,
            name=f"{app.name}-{name}",
            version=version,
            instance=name,
            instance_params=given,
            instances=[],
            components=[
                dataclasses.replace(
                    c,
                    facts={**c.facts, **extra["facts"]},
                    trusted={**c.trusted, **extra["trusted"]},
                )
                for c in app.components
            ],
        )
        app.instances.append(instance)
    return problems


def app_data_problems(path: str, content: LocMap, apps: list[App]) -> list[Problem]:
    """The ``app:`` sections of a data file: each names an app (or an instance) and sets its
    parameters, of the default's type."""
    known = {a.definition: a for a in apps} | {a.name: a for a in apps}
    problems: list[Problem] = []
    for section, values in content.items():
        if not is_app_section(section):
            continue
        name = section.removeprefix(APP_SECTION)
        where = Location(path, content.line_of(section), section)
        app = known.get(name)
        if app is None:
            problems.append(Problem(f"no app named {name!r}{did_you_mean(name, known)}", where))
            continue
        if not isinstance(values, LocMap):
            problems.append(Problem("must be a mapping of parameters", where))
            continue
        problems += parameter_problems(
            f"app {app.definition!r}", app.file, app.params, values, path, section, False
        )
    return problems


def without_app_sections(content: LocMap) -> LocMap:
    """A data file's content without its ``app:`` sections (the profiles' part)."""
    if not any(is_app_section(k) for k in content):
        return content
    kept = LocMap.empty(content.line)
    for key, value in content.items():
        if not is_app_section(key):
            kept[key] = value
            kept.lines[key] = content.line_of(key)
    return kept


def _component(raw: LocMap, where: Location, path: str) -> tuple[Component | None, list[Problem]]:
    problems = unknown_keys(raw, COMPONENT_KEYS, path, "a component")

    def at(key: str, mapping: LocMap = raw) -> Location:
        return Location(path, mapping.line_of(key), key)

    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        problems.append(Problem("needs a name like 'api' ([a-z0-9][a-z0-9_-]*)", at("name")))
        return None, problems
    role = match = None
    conditions: dict[str, dict[str, Any]] = {"facts": {}, "trusted": {}}
    nodes = raw.get("nodes")
    if not isinstance(nodes, LocMap) or not nodes or not set(nodes) <= set(NODES_KEYS):
        problems.append(
            Problem(
                "needs nodes: {role: NAME}, {match: GLOB or /REGEX/}, {facts: {PATH: VALUE}} "
                "or {trusted: {PATH: VALUE}} (several conditions must all hold)",
                at("nodes"),
            )
        )
    else:
        for key, value in nodes.items():
            if key in conditions:
                if not isinstance(value, LocMap) or not value:
                    problems.append(
                        Problem("must be a mapping of fact paths to values", at(key, nodes))
                    )
                else:
                    conditions[key] = dict(value)
            elif not isinstance(value, str) or not value:
                problems.append(Problem("must be a string", at(key, nodes)))
            elif key == "role":
                role = value
            elif why := pattern_problem(value):
                problems.append(Problem(why, at(key, nodes)))
            else:
                match = value
    requires = raw.get("requires", [])
    if isinstance(requires, str):
        requires = [requires]
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        problems.append(Problem("must be a list of component names", at("requires")))
        requires = []
    max_parallel = raw.get("max_parallel", 1)
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
        problems.append(Problem("must be a whole number of at least 1", at("max_parallel")))
        max_parallel = 1
    resources = raw.get("resources", LocList.empty())
    if not isinstance(resources, LocList):
        problems.append(Problem("must be a list of resources", at("resources")))
        resources = LocList.empty()
    on_failure = raw.get("on_failure", "halt")
    if on_failure not in ("halt", "rollback"):
        problems.append(Problem(f"must be halt or rollback, not {on_failure!r}", at("on_failure")))
        on_failure = "halt"
    health = None
    if raw.get("health") is not None:
        health, found = _health(raw["health"], at("health"), path)
        problems += found
    shared: dict[str, LocMap | None] = {"exports": None, "produces": None}
    for key in shared:
        if key in raw:
            found = exports_shape(raw[key], path, raw.line_of(key), key)
            problems += found
            shared[key] = None if found else raw[key]
    consumes = raw.get("consumes", [])
    if not isinstance(consumes, list) or not all(
        isinstance(c, str) and NAME.match(c) for c in consumes
    ):
        problems.append(Problem("must be a list of produced names", at("consumes")))
        consumes = []
    component = Component(
        name,
        where,
        role,
        match,
        list(requires),
        max_parallel,
        resources,
        health,
        on_failure,
        at("requires") if "requires" in raw else where,
        conditions["facts"],
        conditions["trusted"],
        shared["exports"],
        shared["produces"],
        {name: "" for name in consumes},
        at("consumes") if "consumes" in raw else where,
    )
    return component, problems


def _check_capabilities(app: App) -> list[Problem]:
    """Each consumed name is produced by one other component of the app; a consumer requires
    its producers (it deploys once they are healthy at the version)."""
    problems: list[Problem] = []
    producers: dict[str, str] = {}
    for component in app.components:
        for name in component.produces or {}:
            if name in producers:
                where = Location(
                    component.where.file,
                    component.produces.line_of(name) if component.produces else None,
                    f"produces.{name}",
                )
                problems.append(
                    Problem(f"{name!r} is produced by component {producers[name]!r} too", where)
                )
            else:
                producers[name] = component.name
    for component in app.components:
        for name in component.consumes:
            producer = producers.get(name)
            if producer is None:
                problems.append(
                    Problem(
                        f"no component of app {app.name!r} produces {name!r}"
                        f"{did_you_mean(name, producers)}",
                        component.consumes_at,
                    )
                )
            elif producer == component.name:
                problems.append(
                    Problem(
                        f"component {component.name!r} consumes what it produces",
                        component.consumes_at,
                    )
                )
            else:
                component.consumes[name] = producer
                if producer not in component.requires:
                    component.requires.append(producer)
    return problems


def _health(raw: Any, where: Location, path: str) -> tuple[Health | None, list[Problem]]:
    if not isinstance(raw, LocMap):
        return None, [Problem("must be a mapping with command or http", where)]
    problems = unknown_keys(raw, HEALTH_KEYS, path, "a health check")

    def at(key: str) -> Location:
        return Location(path, raw.line_of(key), f"health.{key}")

    command = raw.get("command")
    http = raw.get("http")
    if (command is None) == (http is None):
        problems.append(Problem("give exactly one of command and http", where))
    if command is not None and not (
        isinstance(command, str)
        or (isinstance(command, list) and all(isinstance(c, str) for c in command))
    ):
        problems.append(Problem("must be a string or a list of strings", at("command")))
    if http is not None and (
        not isinstance(http, str) or not http.startswith(("http://", "https://"))
    ):
        problems.append(Problem("must be an http:// or https:// URL", at("http")))
    numbers: dict[str, float] = {}
    for key, default, least in (("timeout", 30.0, 0.001), ("retries", 3, 0), ("interval", 2.0, 0)):
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
            problems.append(Problem(f"must be a number of at least {least:g}", at(key)))
            value = default
        numbers[key] = float(value)
    if problems:
        return None, problems
    return (
        Health(
            command=list(command) if isinstance(command, list) else command,
            http=http,
            timeout=numbers["timeout"],
            retries=int(numbers["retries"]),
            interval=numbers["interval"],
        ),
        [],
    )


def _check_requires(app: App) -> list[Problem]:
    problems: list[Problem] = []
    names = {c.name for c in app.components}
    for component in app.components:
        for required in component.requires:
            if required not in names:
                problems.append(
                    Problem(
                        f"component {component.name!r} requires {required!r}, which is not a "
                        f"component of app {app.name!r}{did_you_mean(required, names)}",
                        component.requires_at,
                    )
                )
    # Cycles between components, named in order.
    graph = {c.name: [r for r in c.requires if r in names] for c in app.components}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for nxt in graph[name]:
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            first = app.component(cycle[0])
            assert first is not None
            problems.append(
                Problem(f"components require each other: {' -> '.join(cycle)}", first.requires_at)
            )
            break
    return problems


def unmatched_components(app: App, snapshot: Snapshot) -> list[str]:
    """Components no entry of nodes.yaml can give a node: warnings for ``validate``.

    A component by role is matched when an entry of nodes.yaml (or the default) gives that role;
    one by glob when it could overlap an entry's ``match`` (or an entry matches by facts only).
    """
    from reconciler.model.repo import load_nodes

    try:
        nodes = load_nodes(snapshot)
    except ModelError:
        return []
    entries = [e for e in nodes.get("nodes") or [] if isinstance(e, LocMap)]
    roles = {e.get("role") for e in entries} | {nodes.get("default")}
    patterns = [e["match"] for e in entries if isinstance(e.get("match"), str)]
    any_node = nodes.get("default") is not None or any("match" not in e for e in entries)
    warnings = []
    for component in app.components:
        at = Location(component.where.file, component.where.line)
        what = f"{at}: component {app.name}/{component.name}"
        if component.role is not None and component.role not in roles:
            warnings.append(f"{what} runs on role {component.role!r}, which nodes.yaml never gives")
        if (
            component.match is not None
            and not any_node
            and not any(_may_overlap(component.match, p) for p in patterns)
        ):
            warnings.append(f"{what} matches {component.match!r}, which no nodes.yaml entry can")
    return warnings


def _may_overlap(glob: str, pattern: str) -> bool:
    """Whether some name could match both globs (checked on their literal prefixes)."""
    if is_regex(glob) or is_regex(pattern):
        return True  # not worth guessing: no warning
    a, b = (g.split("*")[0].split("?")[0].split("[")[0] for g in (glob, pattern))
    return a.startswith(b) or b.startswith(a)
