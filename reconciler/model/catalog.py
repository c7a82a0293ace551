"""Compile a node's catalog: its resources, resolved and checked, with their relationships.

``Compiler.compile`` turns one snapshot and the node's facts into a ``Catalog`` or raises a
``ModelError`` listing every problem found. A revision with any problem yields no catalog, so
nothing of it can be applied.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import reconciler.resources  # noqa: F401  (registers the resource types)
from reconciler.errors import Location, ModelError, Problem
from reconciler.model import data as datamod
from reconciler.model import exports as exportsmod
from reconciler.model import repo as repomod
from reconciler.model.apps import (
    APP_SECTION,
    App,
    Deployment,
    app_data_problems,
    app_names,
    load_apps,
    read_app,
    unmatched_components,
    without_app_sections,
)
from reconciler.model.expand import MAX_RESOURCES, for_each_items, with_defaults
from reconciler.model.modules import MOUNT, localized, module_of
from reconciler.model.repo import DataValue, Profile, Settings, closest, did_you_mean
from reconciler.model.secrets import Keyring, Reader, decrypter, load_recipients, reveal_params
from reconciler.model.substitute import MISS, Substitutions
from reconciler.model.templates import Renderer
from reconciler.model.types import (
    INSTANCE_KEYS,
    MAX_NESTING,
    DefinedType,
    in_instance,
    read_type,
    type_names,
)
from reconciler.model.yamlload import LocList, LocMap
from reconciler.resources.base import (
    COMMON_ATTRIBUTES,
    REGISTRY,
    Attr,
    Resource,
    ResourceId,
    Secrets,
    digest,
    leaves,
)
from reconciler.source import Snapshot, clean_relpath

RELATIONS = ("require", "before", "notify", "subscribe")
# Types whose title only names the resource (what it manages is in its attributes): in two
# instances, one title is two resources.
NAMED_ONLY = frozenset({"exec", "line"})
MAX_INCLUDE_DEPTH = 64


@dataclass
class Entry:
    """One resource of the catalog and what the compiler knows about it."""

    resource: Resource
    where: Location
    origin: str  # "profile:<name>" or "app:<app>/<component>"
    noop: bool = False
    relations: dict[str, list[ResourceId]] = field(default_factory=dict)


@dataclass
class Catalog:
    node: str
    role: str
    revision: str | None
    branch: str | None
    settings: Settings
    entries: dict[ResourceId, Entry]
    # id -> ids that must be applied before it
    after: dict[ResourceId, set[ResourceId]]
    # id -> ids to refresh when it changes
    refreshes: dict[ResourceId, set[ResourceId]]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The app components this node runs, whose resources are in ``entries`` at the app's version.
    deployments: list[Deployment] = field(default_factory=list)
    # The values of sensitive parameters: shown only as digests, wherever they turn up.
    secrets: Secrets = field(default_factory=Secrets)
    # Each defined type instance ("vhost:shop", within another "a[x]/vhost:shop") and the ids
    # of its resources.
    groups: dict[str, list[ResourceId]] = field(default_factory=dict)
    # The relationships of each instance: (its resources, relation -> targets, the scope the
    # targets are seen from, where the instance is used). link() adds them to its resources.
    instance_relations: list[
        tuple[list[ResourceId], dict[str, list[ResourceId]], str, Location]
    ] = field(default_factory=list)
    # The scope of each instance ("a[x]/b[y]") -> the scope it is used in ("a[x]").
    scopes: dict[str, str] = field(default_factory=dict)
    # What this node exports (NAME -> rendered mapping), published after a successful run.
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The names ``collect()`` read, and records of other nodes left out as malformed.
    collected: frozenset[str] = frozenset()
    collect_warnings: list[str] = field(default_factory=list)
    # Values consumed from other nodes that are sensitive there: shown only as digests here.
    consumed_secrets: list[str] = field(default_factory=list)
    # The values of sensitive parameters and what was decrypted, without whole sensitive
    # resources: a fact that is a part of one (a password built around it) is sensitive too.
    param_secrets: Secrets = field(default_factory=Secrets)
    # What the store held when collect() read it (node -> record), for the daemon to compare.
    collected_records: Mapping[str, bytes] | None = None

    def order(self) -> list[ResourceId]:
        """A topological order of the ids, stable for equal inputs."""
        return topological_order(self.entries, self.after)


@dataclass(frozen=True)
class Taint:
    """What makes the resources of one profile sensitive: naming one of its sensitive
    parameters (``params.<name>`` in a value or in a template file it renders), or holding the
    value of any sensitive parameter of the node."""

    names: frozenset[str] = frozenset()  # the profile's sensitive parameters
    params: frozenset[str] = frozenset()  # all of the profile's parameters
    secrets: Secrets = field(default_factory=Secrets)
    everything: bool = False  # inside a sensitive defined type instance: every resource


_PARSER: Any = None


def params_named(source: str) -> frozenset[str] | None:
    """The parameters a template names as ``params.x`` or ``params['x']``; None when it uses
    ``params`` in any other way (or cannot be parsed), which may reach every parameter."""
    global _PARSER
    import jinja2
    from jinja2 import nodes

    if _PARSER is None:
        _PARSER = jinja2.Environment()  # parses only: nothing is rendered with it
    try:
        tree = _PARSER.parse(source)
    except jinja2.TemplateSyntaxError:
        return None
    named: set[str] = set()
    accounted = 0
    for get in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if not (isinstance(get.node, nodes.Name) and get.node.name == "params"):
            continue
        if isinstance(get, nodes.Getattr):
            named.add(get.attr)
        elif isinstance(get.arg, nodes.Const) and isinstance(get.arg.value, str):
            named.add(get.arg.value)
        else:
            continue
        accounted += 1
    uses = sum(1 for name in tree.find_all(nodes.Name) if name.name == "params")
    return frozenset(named) if uses == accounted else None


def sensitive_values(profile: Profile, params: Mapping[str, Any]) -> list[str]:
    return [leaf for name in sorted(profile.sensitive) for leaf in leaves(params.get(name))]


def spread_sensitivity(entries: Mapping[ResourceId, Entry]) -> None:
    """Make every file and line of a file that holds something sensitive sensitive too: a
    line's diff, or a file's, would show the rest of the file around its change."""

    def path_of(resource: Resource) -> str | None:
        if resource.type == "line":
            return str(resource.attrs.get("path"))
        if resource.type == "file":
            return resource.managed_paths()[0]
        return None

    held = {path_of(e.resource) for e in entries.values() if e.resource.sensitive}
    for entry in entries.values():
        if path_of(entry.resource) in held - {None}:
            entry.resource.sensitive = True


def topological_order(
    ids: Iterable[ResourceId], after: Mapping[ResourceId, set[ResourceId]]
) -> list[ResourceId]:
    """Order ids so each comes after its prerequisites; a cycle is a ModelError naming it."""
    position = {rid: i for i, rid in enumerate(ids)}
    waiting = {rid: len(after.get(rid, ())) for rid in position}
    dependents: dict[ResourceId, list[ResourceId]] = {}
    for rid, deps in after.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(rid)
    ready = [(position[rid], rid) for rid, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[ResourceId] = []
    while ready:
        _, rid = heapq.heappop(ready)
        order.append(rid)
        for dependent in dependents.get(rid, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, (position[dependent], dependent))
    if len(order) < len(position):
        cycle = find_cycle({rid for rid, n in waiting.items() if n > 0}, after)
        raise ModelError.one(
            "dependency cycle: " + " -> ".join([*cycle, cycle[0]]), Location(), "compile"
        )
    return order


def find_cycle(members: set[ResourceId], after: Mapping[ResourceId, set[ResourceId]]) -> list[str]:
    start = min(members)
    path: list[ResourceId] = []
    seen: dict[ResourceId, int] = {}
    current = start
    while current not in seen:
        seen[current] = len(path)
        path.append(current)
        current = min(dep for dep in after[current] if dep in members)
    return path[seen[current] :]


# -- compiling ----------------------------------------------------------------------------------


@dataclass
class Build:
    """What one catalog's compile keeps across its profiles and apps: the defined type
    instances (their ids, resources and where each is used), and how many resources and
    instances were declared (bounded by MAX_RESOURCES)."""

    groups: dict[str, list[ResourceId]] = field(default_factory=dict)
    used_at: dict[str, Location] = field(default_factory=dict)
    declared: int = 0
    relations: list[tuple[list[ResourceId], dict[str, list[ResourceId]], str, Location]] = field(
        default_factory=list
    )
    scopes: dict[str, str] = field(default_factory=dict)
    scope_used_at: dict[str, Location] = field(default_factory=dict)


class Compiler:
    """Compiles catalogs from one snapshot; caches what does not depend on the node."""

    def __init__(
        self,
        snapshot: Snapshot,
        settings: Settings | None = None,
        keyring: Keyring | None = None,
        collect: exportsmod.Read | None = None,
    ) -> None:
        self.snapshot = snapshot
        # What other nodes exported, read when a template first calls collect() (none: []).
        self.read_exports = collect
        self._collector = exportsmod.Collector()
        # The node's keys for encrypted values; without them values stay encrypted (validate).
        self.keyring = Keyring(None) if keyring is None else keyring
        self.settings = repomod.load_settings(snapshot) if settings is None else settings
        self.renderer = Renderer(self._read_template)
        self.substitutions = Substitutions()
        self._profiles: dict[str, tuple[Profile, list[Problem]]] = {}
        self._apps: list[App] | None = None
        self._profile_names: frozenset[str] | None = None
        self._params_named: dict[str, frozenset[str] | None] = {}
        # How many times lookup() has returned a value encrypted in data, in every compile so
        # far: a declaration rendered while it grows uses one, and is sensitive.
        self.secret_reads = 0
        self._revealed_secrets: tuple[int, Secrets] = (0, Secrets())
        self._types: dict[str, tuple[DefinedType, list[Problem]]] | None = None
        self._type_map: dict[str, DefinedType] | None = None

    def read_types(self) -> dict[str, tuple[DefinedType, list[Problem]]]:
        """Every defined type of the repo, and what is wrong with each file."""
        if self._types is None:
            self._types = {
                name: read_type(self.snapshot, name) for name in type_names(self.snapshot)
            }
        return self._types

    def types(self) -> dict[str, DefinedType]:
        """Every defined type of the repo by name (a broken one marked ``broken``)."""
        if self._type_map is None:
            self._type_map = {name: found[0] for name, found in self.read_types().items()}
        return self._type_map

    def _read_template(self, name: str) -> str:
        # "@MODULE/NAME": a template of a module (what its profiles and types name NAME)
        module, _, own = name[1:].partition("/") if name.startswith("@") else ("", "", name)
        path = "templates/" + clean_relpath(own, Location(key="template"))
        if module:
            path = f"{MOUNT}/{module}/{path}"
        try:
            return self.snapshot.read(path).decode("utf-8")
        except FileNotFoundError:
            import jinja2

            raise jinja2.TemplateNotFound(name) from None

    def profile(self, name: str, where: Location) -> Profile:
        profile, problems = self.read_profile(name, where)
        if problems:
            raise ModelError(problems, "validate")
        return profile

    def read_profile(self, name: str, where: Location) -> tuple[Profile, list[Problem]]:
        """A profile and what is wrong with its file; a ModelError when it cannot be read."""
        if name not in self._profiles:
            self._profiles[name] = repomod.read_profile(self.snapshot, name, where)
        return self._profiles[name]

    def included(self, named: list[tuple[str, Location]]) -> tuple[list[Profile], list[Problem]]:
        """The profiles a role names and those they include, each once, a profile after those
        it includes; profiles that include each other are an error naming them in order."""
        profiles: list[Profile] = []
        problems: list[Problem] = []
        done: set[str] = set()

        def visit(name: str, where: Location, chain: tuple[str, ...]) -> None:
            if name in chain:
                cycle = " -> ".join([*chain[chain.index(name) :], name])
                problems.append(Problem(f"profiles include each other: {cycle}", where))
                return
            if name in done:
                return
            if len(chain) >= MAX_INCLUDE_DEPTH:
                problems.append(
                    Problem(f"includes nest more than {MAX_INCLUDE_DEPTH} profiles deep", where)
                )
                return
            done.add(name)
            try:
                profile, found = self.read_profile(name, where)
            except ModelError as exc:
                problems.extend(exc.problems)
                return
            if found:
                # Not compiled, but what is wrong whatever the values is still reported.
                problems.extend(found)
                problems.extend(declaration_problems(profile.resources, profile.file, self.types()))
                return
            for other, at in profile.includes:
                visit(other, at, (*chain, name))
            profiles.append(profile)

        for name, where in named:
            visit(name, where, ())
        return profiles, problems

    def check_assertions(
        self, assertions: LocList, file: str, context: Mapping[str, Any]
    ) -> list[Problem]:
        """A problem with its message for each ``assert:`` of a role or profile that fails."""
        problems: list[Problem] = []
        for index, item in enumerate(assertions):
            if not isinstance(item, LocMap) or "that" not in item or "message" not in item:
                continue  # reported when the file is read
            where = Location(file, assertions.line_of(index), "assert")
            try:
                that = item["that"]
                holds = (
                    that
                    if isinstance(that, bool)
                    else self.renderer.evaluate(
                        str(that), context, Location(file, item.line_of("that"), "that")
                    )
                )
                if not holds:
                    at = Location(file, item.line_of("message"), "message")
                    problems.append(
                        Problem(
                            f"assertion failed: {self.render(item['message'], context, at)}", where
                        )
                    )
            except ModelError as exc:
                problems += exc.problems
        return problems

    def defaults_problems(self, profile: Profile) -> list[Problem]:
        """What is wrong with a profile's ``defaults:``: a type that does not exist, an
        attribute (or parameter) that type lacks."""
        problems: list[Problem] = []
        types = self.types()
        for kind, attrs in profile.defaults.items():
            at = Location(profile.file, attrs.line, f"defaults.{kind}")
            if kind not in REGISTRY and kind not in types:
                close = did_you_mean(kind, [*REGISTRY, *types])
                problems.append(Problem(f"no type named {kind!r}{close}", at))
                continue
            for key in ("for_each", kind):
                if key in attrs:
                    problems.append(
                        Problem(
                            f"{key!r} cannot have a default",
                            Location(profile.file, attrs.line_of(key), f"defaults.{kind}.{key}"),
                        )
                    )
            probe = LocMap.empty(attrs.line)
            probe[kind] = "defaults"
            probe.first = kind
            probe.update((k, v) for k, v in attrs.items() if k not in ("for_each", kind))
            probe.lines = dict(attrs.lines)
            try:
                declared_type(probe, at, types)
            except ModelError as exc:
                problems += exc.problems
        return problems

    def compile(self, node: str, facts: Mapping[str, Any]) -> Catalog:
        classification = repomod.classify(self.snapshot, node, facts)
        return self.compile_role(node, classification.role, classification.where, facts)

    def compile_role(
        self,
        node: str,
        role: str,
        where: Location,
        facts: Mapping[str, Any],
        sensitive: Sequence[str] = (),
    ) -> Catalog:
        """The node's catalog with ``role``. ``sensitive``: values known to be sensitive
        besides the catalog's own (a review's placeholders for facts a node withheld): a
        resource holding one is sensitive, and each is shown only as its digest."""
        named, problems = repomod.read_role(self.snapshot, role, where)
        profiles, found = self.included(named)
        problems += found
        try:
            data = repomod.load_data(self.snapshot, self.settings, node, role, facts)
        except ModelError as exc:  # a data file that does not parse hides no other problem
            problems += exc.problems
            data = repomod.Data()
        known = {p.name: p for p in profiles}
        for _, file, content in data.levels:
            problems += repomod.check_data_file(
                file, without_app_sections(content), known, self.profile_names()
            )
            problems += self.app_data_problems(file, content)
        entries: dict[ResourceId, Entry] = {}
        catalog = Catalog(
            node, role, self.snapshot.revision, self.snapshot.branch, self.settings, entries, {}, {}
        )
        lookups = self.lookups(data, facts, Reader(node, role, self.snapshot))
        collector = self._collector = exportsmod.Collector(self.read_exports)
        base_context = {
            "facts": facts,
            "node": node,
            "role": role,
            "lookup": datamod.function(lookups),
            "collect": collector.collect,
        }
        try:
            problems += self.check_assertions(
                repomod.role_assertions(self.snapshot, role, where),
                f"roles/{role}.yaml",
                base_context,
            )
        except ModelError as exc:
            problems += exc.problems
        resolved: list[Profile] = []
        for profile in profiles:
            looked_up: set[str] = set()
            try:
                catalog.params[profile.name], profile = reveal_params(
                    self.keyring,
                    profile,
                    self.resolve_params(profile, lookups, base_context, looked_up),
                    lookups,
                    Reader(node, role, self.snapshot),
                )
            except ModelError as exc:
                problems += exc.problems
                continue
            if looked_up:  # a default that looks up a value encrypted in data
                profile = dataclasses.replace(profile, sensitive=profile.sensitive | looked_up)
            resolved.append(profile)
            context = {**base_context, "params": catalog.params[profile.name]}
            problems += self.check_assertions(profile.assertions, profile.file, context)
            problems += self.defaults_problems(profile)
        secrets = Secrets(
            [
                *(leaf for p in resolved for leaf in sensitive_values(p, catalog.params[p.name])),
                *self.keyring.revealed,  # a token's plaintext inside a longer value too
                *sensitive,
            ]
        )
        build = Build()
        for profile in resolved:
            context = {**base_context, "params": catalog.params[profile.name]}
            taint = Taint(profile.sensitive, frozenset(profile.params), secrets)
            problems += self.add_resources(
                entries,
                profile.resources,
                profile.file,
                f"profile:{profile.name}",
                context,
                taint,
                build,
                profile.defaults,
            )
        problems += self.add_deployments(catalog, base_context, Taint(secrets=secrets), build, data)
        for profile in resolved:
            context = {**base_context, "params": catalog.params[profile.name]}
            problems += self.add_exports(catalog, profile, context, secrets)
        catalog.collected = frozenset(collector.names)
        catalog.collect_warnings = collector.warnings
        catalog.groups = build.groups
        catalog.instance_relations = build.relations
        catalog.scopes = build.scopes
        problems += identity_conflicts(entries, build.scope_used_at)
        spread_sensitivity(entries)
        catalog.param_secrets = Secrets([*secrets.values, *self.keyring.revealed])
        catalog.secrets = Secrets(
            [
                *secrets.values,
                *self.keyring.revealed,  # decrypted while the resources were compiled too
                *catalog.consumed_secrets,
                *(v for e in entries.values() for v in e.resource.secret_values()),
            ]
        )
        try:
            if problems:
                raise ModelError(tidy(problems))
            link(catalog)
        except ModelError as exc:
            raise ModelError(scrub_problems(exc.problems, catalog.secrets)) from None
        return catalog

    def add_exports(
        self,
        catalog: Catalog,
        profile: Profile,
        context: Mapping[str, Any],
        secrets: Secrets,
    ) -> list[Problem]:
        """Render a profile's ``exports:`` into the catalog: data only, bounded, no secrets."""
        if profile.exports is None:
            return []
        problems: list[Problem] = []
        for name, declared in profile.exports.items():
            where = Location(profile.file, profile.exports.line_of(name), f"exports.{name}")
            if name in catalog.exports:
                problems.append(Problem(f"{name!r} is exported by another profile too", where))
                continue
            try:
                value = self.render(declared, context, where)
            except ModelError as exc:
                problems += exc.problems
                continue
            why = exportsmod.value_problem(value)
            if why:
                problems.append(Problem(f"cannot be exported: {why}", where))
                continue
            if any(secrets.found_in(leaf) for leaf in exportsmod.strings(value)):
                problems.append(
                    Problem("a sensitive value cannot be exported: every node can read it", where)
                )
                continue
            catalog.exports[str(name)] = value
        size = len(json.dumps(catalog.exports))
        if size > exportsmod.MAX_EXPORTS:
            at = Location(profile.file, profile.exports.line, "exports")
            problems.append(
                Problem(
                    f"the node's exports are {size} bytes, more than {exportsmod.MAX_EXPORTS}", at
                )
            )
        return problems

    def apps(self) -> list[App]:
        if self._apps is None:
            self._apps = load_apps(self.snapshot)
        return self._apps

    def check_apps(self, node: str, facts: Mapping[str, Any]) -> list[Problem]:
        """Compile every component of every app, whichever nodes run it (for validate)."""
        try:
            apps = self.apps()
        except ModelError as exc:
            return exc.problems
        problems: list[Problem] = []
        try:
            data = repomod.load_data(self.snapshot, self.settings, node, "", facts)
        except ModelError:
            data = repomod.Data()  # each data file is checked on its own
        lookup = datamod.function(self.lookups(data, facts))
        self._collector = exportsmod.Collector(self.read_exports)
        context = {
            "facts": facts,
            "node": node,
            "role": "",
            "lookup": lookup,
            "collect": self._collector.collect,
        }
        for app in apps:
            for component in app.components:
                problems += self._compile_component(Deployment(app, component, []), context)[1]
        return problems

    def app_data_problems(self, file: str, content: LocMap) -> list[Problem]:
        try:
            return app_data_problems(file, content, self.apps())
        except ModelError:
            return []  # what is wrong with the apps is reported with them

    def add_deployments(
        self,
        catalog: Catalog,
        base_context: Mapping[str, Any],
        taint: Taint,
        build: Build,
        data: repomod.Data,
    ) -> list[Problem]:
        """The resources of every app component this node runs, at the app's version."""
        try:
            apps = self.apps()
        except ModelError as exc:
            return exc.problems
        problems: list[Problem] = []
        for app in apps:
            for component in app.components:
                if not component.runs_on(catalog.node, catalog.role, base_context["facts"]):
                    continue
                deployment = Deployment(app, component, [])
                entries, found = self._compile_component(
                    deployment, base_context, taint, build, data
                )
                problems += found
                for rid, entry in entries.items():
                    other = catalog.entries.get(rid)
                    if other is not None:
                        problems.append(
                            Problem(
                                f"duplicate resource {rid} (also declared at {other.where})",
                                entry.where,
                            )
                        )
                        continue
                    catalog.entries[rid] = entry
                    deployment.ids.append(rid)
                catalog.deployments.append(deployment)
                catalog.consumed_secrets += deployment.consumed_secrets
                for name in deployment.exports:
                    if name in catalog.exports or any(
                        name in d.exports for d in catalog.deployments if d is not deployment
                    ):
                        problems.append(
                            Problem(
                                f"{name!r} is exported by a profile or another component too",
                                Location(app.file, component.where.line, f"exports.{name}"),
                            )
                        )
        return problems

    def _compile_component(
        self,
        deployment: Deployment,
        base_context: Mapping[str, Any],
        taint: Taint = Taint(),
        build: Build | None = None,
        data: repomod.Data | None = None,
    ) -> tuple[dict[ResourceId, Entry], list[Problem]]:
        """A component's resources, and its health check rendered into ``deployment``.

        Templates see the node's names plus ``app`` (``name``, ``version``, ``definition``,
        ``instance``) and ``params``, the app's parameters."""
        app, component = deployment.app, deployment.component
        meta: dict[str, Any] = {
            "name": app.name,
            "version": app.version,
            "definition": app.definition or app.name,
            "instance": app.instance,
        }
        try:
            params, secret = self.app_params(
                app, data or repomod.Data(), {**base_context, "app": meta}
            )
        except ModelError as exc:
            return {}, exc.problems
        consumed, consumed_secrets = self._consumed(deployment)
        if deployment.unavailable:
            return {}, []  # the rollout keeps it waiting, and what it last deployed enforced
        meta["consumes"] = consumed
        if consumed_secrets:
            taint = dataclasses.replace(
                taint, secrets=Secrets([*taint.secrets.values, *consumed_secrets])
            )
        context = {**base_context, "params": params, "app": meta}
        if secret:  # its parameters encrypted in data are sensitive, as a profile's are
            taint = dataclasses.replace(taint, names=secret, params=frozenset(app.params))
        entries: dict[ResourceId, Entry] = {}
        problems = self.add_resources(
            entries, component.resources, app.file, deployment.origin, context, taint, build
        )
        problems += self._shared(deployment, context, taint)
        if component.health is not None:
            at = Location(component.where.file, component.where.line, "health")
            try:
                deployment.health = dataclasses.replace(
                    component.health,
                    command=self.render(component.health.command, context, at),
                    http=self.render(component.health.http, context, at),
                )
            except ModelError as exc:
                problems += exc.problems
        return entries, problems

    def _consumed(self, deployment: Deployment) -> tuple[dict[str, Any], list[str]]:
        """``app.consumes``: each consumed name's values, as the first node running its
        producing component published them, and the values among them that are sensitive.
        Without a store to read (validate) each value is a placeholder."""
        app, component = deployment.app, deployment.component
        consumed: dict[str, Any] = {}
        secrets: list[str] = []
        for name, producer in component.consumes.items():
            if self.read_exports is None:
                consumed[name] = exportsmod.Placeholder(name)
                continue
            try:
                record = self._collector.produced(app.name, producer, name)
            except ValueError as exc:
                deployment.unavailable = str(exc)
                return {}, []
            if record is None:
                deployment.unavailable = f"waiting for {producer} to publish {name}"
                return {}, []
            values = dict(record.produces[app.name][name])
            consumed[name] = {**values, "node": record.node}
            for key in record.sensitive.get(app.name, {}).get(name, []):
                secrets += [v for v in exportsmod.strings(values.get(key)) if v]
        deployment.consumed_secrets = secrets
        return consumed, secrets

    def _shared(
        self, deployment: Deployment, context: Mapping[str, Any], taint: Taint
    ) -> list[Problem]:
        """A component's ``exports`` and ``produces``, rendered into the deployment."""
        component = deployment.component
        problems: list[Problem] = []
        for key, declared in (("exports", component.exports), ("produces", component.produces)):
            if declared is None:
                continue
            for name, raw in declared.items():
                where = Location(component.where.file, declared.line_of(name), f"{key}.{name}")
                try:
                    value = self.render(raw, context, where)
                except ModelError as exc:
                    problems += exc.problems
                    continue
                why = exportsmod.value_problem(value)
                if why:
                    problems.append(Problem(f"cannot be published: {why}", where))
                    continue
                secret = [
                    k
                    for k, v in value.items()
                    if any(taint.secrets.found_in(leaf) for leaf in exportsmod.strings(v))
                ]
                if key == "exports":
                    if secret:
                        problems.append(
                            Problem(
                                "a sensitive value cannot be exported: every node can read it",
                                where,
                            )
                        )
                        continue
                    deployment.exports[str(name)] = value
                else:
                    deployment.produces[str(name)] = value
                    if secret:
                        deployment.sensitive[str(name)] = sorted(secret)
        return problems

    def app_params(
        self, app: App, data: repomod.Data, context: Mapping[str, Any]
    ) -> tuple[dict[str, Any], frozenset[str]]:
        """An app's parameters, the most specific first: data for the instance
        (``app:<app>-<instance>``), the instance's ``params`` in the app file, data for the
        app (``app:<app>``), the default; and the names of those encrypted in data (decrypted
        as they are read). Values from data are never rendered."""
        params: dict[str, Any] = {}
        secret: set[str] = set()
        problems: list[Problem] = []
        reader = Reader(str(context.get("node", "")), str(context.get("role", "")), self.snapshot)
        lookups = self.lookups(data, context.get("facts", {}), reader)
        for key in app.params:
            try:
                found = lookups.find(f"{APP_SECTION}{app.name}.{key}") if app.instance else None
                if found is None and key not in app.instance_params:
                    found = lookups.find(f"{APP_SECTION}{app.definition}.{key}")
            except ModelError as exc:
                problems += exc.problems
                continue
            if found is not None:
                params[key] = found.value
                if found.secret:
                    secret.add(key)
                continue
            written = app.instance_params if key in app.instance_params else app.params
            at = Location(app.file, written.line_of(key), f"params.{key}")
            try:
                params[key] = self.render(written[key], context, at)
            except ModelError as exc:
                problems += exc.problems
        if problems:
            raise ModelError(problems)
        return params, frozenset(secret)

    def profile_names(self) -> frozenset[str]:
        """The name of every profile of the repo, whether or not it loads."""
        if self._profile_names is None:
            self._profile_names = frozenset(repomod.names_of(self.snapshot, "profile"))
        return self._profile_names

    def lookups(
        self, data: repomod.Data, facts: Mapping[str, Any], reader: Reader | None = None
    ) -> datamod.Lookups:
        """The node's data read by key, for one compile; with a reader (the node), encrypted
        values are decrypted with the keyring as they are read."""
        made = datamod.Lookups(
            data.levels,
            facts,
            self.settings.lookup_options,
            self.profile_names(),
            decrypter(self.keyring, reader) if reader is not None else None,
            self._read_secret,
        )
        return made

    def _read_secret(self) -> None:
        self.secret_reads += 1

    def resolve_params(
        self,
        profile: Profile,
        lookups: datamod.Lookups,
        context: Mapping[str, Any],
        looked_up: set[str] | None = None,
    ) -> dict[str, Any]:
        """A profile's parameters: data first (as written, never rendered, merged as the
        key's lookup options say), else the default. ``looked_up`` gets the names of those
        whose default looked up a value encrypted in data."""
        params: dict[str, Any] = {}
        problems: list[Problem] = []
        for key, default in profile.params.items():
            where = Location(profile.file, profile.params.line_of(key), f"params.{key}")
            try:
                found = lookups.find(f"{profile.name}.{key}")
                if found is not None:
                    if found.typed and not repomod.same_kind(default, found.value):
                        raise ModelError.one(
                            f"expected {repomod.type_name(default)} like the default at "
                            f"{profile.file}:{profile.params.line_of(key)}, got "
                            f"{repomod.type_name(found.value)} from its %{{...}}",
                            found.pieces[0].where,
                        )
                    params[key] = found.value
                    continue
                reads = self.secret_reads
                params[key] = self.render(default, context, where)
                if self.secret_reads > reads and looked_up is not None:
                    looked_up.add(key)
            except ModelError as exc:
                problems += exc.problems
        if problems:
            raise ModelError(problems)
        return params

    def explain_data(self, node: str, facts: Mapping[str, Any], key: str) -> datamod.Found:
        """A data key's value for a node and the levels it was merged from."""
        classification = repomod.classify(self.snapshot, node, facts)
        data = repomod.load_data(self.snapshot, self.settings, node, classification.role, facts)
        lookups = self.lookups(data, facts, Reader(node, classification.role, self.snapshot))
        try:
            lookups.check_key(key)
        except ValueError as exc:
            raise ModelError.one(str(exc).removeprefix("lookup: "), Location(key=key)) from None
        found = lookups.find(key)
        if found is None:
            raise ModelError.one(lookups.not_found(key), Location(key=key))
        return found

    def explain(
        self, node: str, facts: Mapping[str, Any], key: str
    ) -> tuple[Any, DataValue | None, Location, repomod.Data]:
        """Where ``profile.param`` gets its value for a node: (value, data hit, default, data).
        The data hit is the first level's, of those a merged value was merged from."""
        profile_name, _, param = key.partition(".")
        if not param:
            raise ModelError.one(f"{key!r}: write the key as <profile>.<parameter>")
        classification = repomod.classify(self.snapshot, node, facts)
        profile = self.profile(profile_name, Location(key=key))
        if param not in profile.params:
            raise ModelError.one(
                f"profile {profile_name!r} has no parameter {param!r}"
                f"{did_you_mean(param, profile.params)}",
                Location(profile.file),
            )
        data = repomod.load_data(self.snapshot, self.settings, node, classification.role, facts)
        lookups = self.lookups(data, facts, Reader(node, classification.role, self.snapshot))
        found = lookups.find(key)
        default_at = Location(profile.file, profile.params.line_of(param), key)
        if found is not None:
            return found.value, found.pieces[0], default_at, data
        context = {
            "facts": facts,
            "node": node,
            "role": classification.role,
            "lookup": datamod.function(lookups),
            "collect": exportsmod.Collector(self.read_exports).collect,
        }
        value = self.render(profile.params[param], context, default_at)
        return value, None, default_at, data

    def render(self, value: Any, context: Mapping[str, Any], where: Location) -> Any:
        """Render every string containing ``{{`` inside a value written in the repo."""
        if isinstance(value, str):
            if "{{" not in value:
                return value
            found = self.substitutions.render(value, context)
            if found is not MISS:
                return found
            return self.renderer.render_string(value, context, where)
        if isinstance(value, list):
            return [self.render(v, context, where) for v in value]
        if isinstance(value, dict):
            return {k: self.render(v, context, where) for k, v in value.items()}
        return value

    def add_resources(
        self,
        entries: dict[ResourceId, Entry],
        declarations: LocList,
        file: str,
        origin: str,
        context: Mapping[str, Any],
        taint: Taint = Taint(),
        build: Build | None = None,
        defaults: Mapping[str, LocMap] | None = None,
        using: tuple[str, ...] = (),
        scope: str = "",
    ) -> list[Problem]:
        """Compile declarations into ``entries``: each once, or once per item of its
        ``for_each``; a use of a defined type adds the resources of the instance.

        ``defaults`` are the profile's, by type; ``using`` the defined types being expanded
        (to name a type that uses itself)."""
        build = Build() if build is None else build
        types = self.types()
        problems: list[Problem] = []
        for index, declaration in enumerate(declarations):
            where = Location(file, declarations.line_of(index))
            declaration = localized(declaration, file, types)
            try:
                kind = declared_type(declaration, where, types)
                if defaults:
                    declaration = with_defaults(declaration, defaults.get(kind))
                contexts: Iterable[Mapping[str, Any]] = (
                    for_each_items(
                        declaration,
                        file,
                        context,
                        self.renderer.evaluate,
                        self.substitutions.lookup,
                    )
                    if "for_each" in declaration
                    else (context,)
                )
                first_item: dict[ResourceId, int] = {}
                item_taint = taint
                for item, (item_context, looked_up) in enumerate(self._reading(contexts)):
                    if looked_up:  # for_each looked up an encrypted value: every item is
                        item_taint = dataclasses.replace(taint, everything=True)
                    build.declared += 1
                    if build.declared > MAX_RESOURCES:
                        problems.append(
                            Problem(f"more than {MAX_RESOURCES} resources in one catalog", where)
                        )
                        return problems
                    if kind in types:
                        problems += self.instance(
                            entries, declaration, types[kind], where, origin, item_context,
                            item_taint, build, using, scope,
                        )  # fmt: skip
                        continue
                    try:
                        entry = self.resource(
                            declaration, where, origin, item_context, item_taint, kind=kind
                        )
                        if entry is not None and scope:
                            entry.resource.scope = scope
                    except ModelError as exc:
                        problems += exc.problems
                        continue
                    if entry is None:
                        continue
                    rid = entry.resource.id
                    other = entries.get(rid)
                    if other is not None:
                        problems.append(
                            _duplicate(rid, where, other, first_item.get(rid), item, declaration)
                        )
                        continue
                    first_item[rid] = item
                    entries[rid] = entry
            except ModelError as exc:
                problems += exc.problems
        return problems

    def _reading(
        self, contexts: Iterable[Mapping[str, Any]]
    ) -> Iterator[tuple[Mapping[str, Any], bool]]:
        """Each context, and whether making it (evaluating ``for_each``) looked up a value
        encrypted in data."""
        items = iter(contexts)
        while True:
            reads = self.secret_reads
            try:
                context = next(items)
            except StopIteration:
                return
            yield context, self.secret_reads > reads

    def instance(
        self,
        entries: dict[ResourceId, Entry],
        declaration: LocMap,
        defined: DefinedType,
        where: Location,
        origin: str,
        context: Mapping[str, Any],
        taint: Taint,
        build: Build,
        using: tuple[str, ...],
        scope: str = "",
    ) -> list[Problem]:
        """Add the resources of one use of a defined type to ``entries``.

        Each gets the instance's relationships and ``noop``; ``<type>:<title>`` names them all
        as a relationship target. Problems inside the type name the use as well."""
        kind = defined.name

        def at(key: str) -> Location:
            return Location(where.file, declaration.line_of(key), key)

        if not self._holds(declaration, context, at):
            return []
        title = self._title(declaration, kind, context, at, taint)
        label, ref = f"{kind}[{title}]", f"{kind}:{title}"
        if scope:
            ref = f"{scope}/{ref}"
        if kind in using or len(using) >= MAX_NESTING:
            chain = " -> ".join([*using, kind])
            why = "use each other" if kind in using else f"nest more than {MAX_NESTING} deep"
            return [Problem(f"defined types {why}: {chain}", where)]
        if ref in build.used_at:
            return [Problem(f"duplicate {ref} (also declared at {build.used_at[ref]})", where)]
        build.used_at[ref] = where
        if defined.broken:
            found = self.read_types()[kind][1]
            return [Problem(f"{label}: the defined type {kind} has problems", where), *found]
        problems: list[Problem] = []
        given: dict[str, Any] = {}
        reads = self.secret_reads
        for key, raw in declaration.items():
            if key == kind or key in INSTANCE_KEYS:
                continue
            param = defined.params.get(key)
            if param is None:
                continue  # a default of the profile for a parameter the type lacks: reported
            try:
                value = self.render(raw, context, at(key))
            except ModelError as exc:
                problems += exc.problems
                continue
            message = param.check(value)
            if message:
                problems.append(
                    Problem(
                        f"{label}: parameter {key!r} {message} (declared at {param.where})",
                        at(key),
                    )
                )
            given[key] = value
        names = {k: context[k] for k in ("facts", "node", "role", "app") if k in context}
        names["title"] = title
        for name, param in defined.params.items():
            if name in given:
                continue
            if param.required:
                problems.append(
                    Problem(f"{label} needs the parameter {name!r} ({param.where})", where)
                )
                continue
            try:
                given[name] = self.render(
                    param.default, {**names, "params": dict(given)}, param.where
                )
            except ModelError as exc:
                problems += [in_instance(p, label, where) for p in exc.problems]
        relations: dict[str, list[ResourceId]] = {}
        for relation in RELATIONS:
            if relation in declaration:
                try:
                    value = self.render(declaration[relation], context, at(relation))
                    relations[relation] = _ids(value, at(relation), self.types())
                except ModelError as exc:
                    problems += exc.problems
        noop = declaration.get("noop", False)
        if not isinstance(noop, bool):
            problems.append(Problem("must be true or false", at("noop")))
        if problems:
            return problems
        declared = declaration.get("sensitive", False)
        if not isinstance(declared, bool):
            return [Problem("must be true or false", at("sensitive"))]
        sensitive = (
            declared
            or taint.everything
            or self.secret_reads > reads  # a lookup() of a value encrypted in data
            or any(
                self._names_sensitive(value, taint)
                for key, value in declaration.items()
                if key not in (kind, "when")
            )
        )
        inner: dict[ResourceId, Entry] = {}
        inner_scope = f"{scope}/{label}" if scope else label
        build.scopes[inner_scope] = scope
        build.scope_used_at[inner_scope] = where
        found = self.add_resources(
            inner,
            defined.resources,
            defined.file,
            f"{origin}/{label}",
            {**names, "params": given},
            Taint(secrets=taint.secrets, everything=sensitive),
            build,
            None,
            (*using, kind),
            inner_scope,
        )
        problems += [in_instance(p, label, where) for p in found]
        if relations:
            build.relations.append((list(inner), relations, scope, where))
        for rid, entry in inner.items():
            entry.noop = entry.noop or noop
            other = entries.get(rid)
            if other is not None:
                problems.append(
                    Problem(
                        f"duplicate resource {rid} (declared in {label} at {entry.where}; "
                        f"also declared at {other.where})",
                        where,
                    )
                )
                continue
            entries[rid] = entry
        build.groups[ref] = list(inner)
        return problems

    def _holds(self, declaration: LocMap, context: Mapping[str, Any], at: Any) -> bool:
        """Whether a declaration's ``when:`` holds (or it has none)."""
        if "when" not in declaration:
            return True
        condition = declaration["when"]
        if isinstance(condition, bool):
            return condition
        if isinstance(condition, str):
            return bool(self.renderer.evaluate(condition, context, at("when")))
        raise ModelError.one("must be an expression or a boolean", at("when"))

    def _title(
        self, declaration: LocMap, kind: str, context: Mapping[str, Any], at: Any, taint: Taint
    ) -> str:
        reads = self.secret_reads
        title = self.render(declaration[kind], context, at(kind))
        if not isinstance(title, str | int) or isinstance(title, bool) or str(title) == "":
            raise ModelError.one("the title must be a non-empty string", at(kind))
        title = str(title)
        if (
            self._names_sensitive(declaration[kind], taint)
            or taint.secrets.found_in(title)
            or self.secret_reads > reads
            or self._revealed().found_in(title)
        ):
            raise ModelError.one(
                "the title holds the value of a sensitive parameter; a title is the resource's "
                "identity, shown in every report and kept in the state directory: "
                "put the value in an attribute",
                at(kind),
            )
        return title

    def resource(
        self,
        declaration: Any,
        where: Location,
        origin: str,
        context: Mapping[str, Any],
        taint: Taint = Taint(),
        kind: str | None = None,
    ) -> Entry | None:
        """One declaration of a built-in type to a catalog entry; None when its ``when:`` is
        false. ``kind``: its type, when the declaration was already checked."""
        if kind is None:
            kind = declared_type(declaration, where)
        cls = REGISTRY[kind]
        problems: list[Problem] = []

        def at(key: str) -> Location:
            return Location(where.file, declaration.line_of(key), key)

        if not self._holds(declaration, context, at):
            return None
        title = self._title(declaration, kind, context, at, taint)
        reads = self.secret_reads
        attrs: dict[str, Any] = {}
        for key, raw in declaration.items():
            if key in (kind, "when", "for_each"):
                continue
            try:
                attrs[key] = self.render(raw, context, at(key))
            except ModelError as exc:
                problems += exc.problems
        if problems:
            raise ModelError(problems)
        template = attrs.get("template")
        module = module_of(where.file)
        if module is not None and isinstance(template, str):
            template = f"@{module}/{template}"  # the module's own, as _file_content reads it
        if cls.content_from_repo:
            self._file_content(attrs, context, at)
        for key, into in cls.file_attributes.items():
            self._file_attribute(attrs, key, into, at)
        relations: dict[str, list[ResourceId]] = {}
        for relation in RELATIONS:
            if relation in attrs:
                relations[relation] = _ids(attrs.pop(relation), at(relation), self.types())
        noop = attrs.pop("noop", False)
        declared = attrs.pop("sensitive", False)
        for key, value in (("noop", noop), ("sensitive", declared)):
            if not isinstance(value, bool):
                problems.append(Problem("must be true or false", at(key)))
        sensitive = (
            declared is True
            or taint.everything
            or self.secret_reads > reads  # a lookup() of a value encrypted in data
            or self._tainted(declaration, kind, template, attrs, taint)
        )
        if sensitive and kind == "line" and not attrs.get("text"):
            problems.append(
                Problem("a sensitive line needs its line in 'text' (the title is shown)", where)
            )
        problems += [
            Problem(message, at(key) if key is not None and key in declaration else where)
            for key, message in cls.complete(attrs, context.get("facts", {}))
        ]
        for key, spec in cls.attributes.items():
            if key in attrs:
                message = check_value(spec, attrs[key], sensitive)
                if message:
                    problems.append(Problem(message, at(key)))
            elif spec.required:
                problems.append(Problem(f"{kind} needs the attribute {key!r}", where))
            else:
                attrs[key] = spec.default
        if not problems:
            problems += [
                Problem(
                    _unquote(message, attrs) if sensitive else message, at(key) if key else where
                )
                for key, message in cls.validate(title, attrs)
            ]
        if problems:
            raise ModelError(problems)
        resource = cls(title, attrs, sensitive=sensitive)
        return Entry(resource, where, origin, bool(noop), relations)

    def _names_sensitive(self, value: Any, taint: Taint) -> bool:
        """Whether a value written in the repo names a sensitive parameter of its profile."""
        if not taint.names:
            return False
        if isinstance(value, str):
            if "{{" not in value and "{%" not in value:
                return False
            named = self._named(value)
            return named is None or bool(named & taint.names) or not named <= taint.params
        if isinstance(value, Mapping):
            return any(self._names_sensitive(v, taint) for v in value.values())
        if isinstance(value, list):
            return any(self._names_sensitive(v, taint) for v in value)
        return False

    def _named(self, source: str) -> frozenset[str] | None:
        if source not in self._params_named:
            self._params_named[source] = params_named(source)
        return self._params_named[source]

    def _template_names_sensitive(self, name: str, taint: Taint, seen: set[str]) -> bool:
        """Whether a template file, or one it includes or imports, names a sensitive parameter."""
        import jinja2
        from jinja2 import meta

        if name in seen:
            return False
        seen.add(name)
        try:
            source = self._read_template(name)
            if self._names_sensitive(source, taint):
                return True
            referenced = list(meta.find_referenced_templates(jinja2.Environment().parse(source)))
        except (jinja2.TemplateError, ModelError, UnicodeDecodeError):
            return True
        return any(
            other is None or self._template_names_sensitive(other, taint, seen)
            for other in referenced
        )

    def _tainted(
        self,
        declaration: LocMap,
        kind: str,
        template: Any,
        attrs: Mapping[str, Any],
        taint: Taint,
    ) -> bool:
        """A resource that uses a sensitive parameter is sensitive itself."""
        if any(
            self._names_sensitive(value, taint)
            for key, value in declaration.items()
            if key not in (kind, "when")
        ):
            return True
        if (
            taint.names
            and isinstance(template, str)
            and self._template_names_sensitive(template, taint, set())
        ):
            return True
        known = [secrets for secrets in (taint.secrets, self._revealed()) if secrets]
        return any(secrets.found_in(v) for secrets in known for v in leaves(attrs))

    def _revealed(self) -> Secrets:
        """Every value the keyring has decrypted so far (some while resources were rendered)."""
        if self._revealed_secrets[0] != len(self.keyring.revealed):
            self._revealed_secrets = (
                len(self.keyring.revealed),
                Secrets(self.keyring.revealed),
            )
        return self._revealed_secrets[1]

    def _file_content(self, attrs: dict[str, Any], context: Mapping[str, Any], at: Any) -> None:
        given = [key for key in ("content", "source", "template") if attrs.get(key) is not None]
        if len(given) > 1:
            raise ModelError.one(f"give only one of {', '.join(given)}", at(given[1]))
        if "source" in attrs:
            source = attrs.pop("source")
            if not isinstance(source, str):
                raise ModelError.one("must be a path under files/", at("source"))
            path = "files/" + clean_relpath(source, at("source"))
            module = module_of(at("source").file)
            if module is not None:
                path = f"{MOUNT}/{module}/{path}"
            try:
                attrs["content"] = self.snapshot.read(path)
            except FileNotFoundError:
                raise ModelError.one(f"{path} not found", at("source")) from None
        elif "template" in attrs:
            name = attrs.pop("template")
            if not isinstance(name, str):
                raise ModelError.one("must be a path under templates/", at("template"))
            clean_relpath(name, at("template"))
            module = module_of(at("template").file)
            if module is not None:
                name = f"@{module}/{name}"
            attrs["content"] = self.renderer.render_file(name, context, at("template"))

    def _file_attribute(self, attrs: dict[str, Any], key: str, into: str, at: Any) -> None:
        """A path under files/ in ``key``, read into ``into`` (one of the two may be given)."""
        if key not in attrs:
            return
        if attrs.get(into) is not None:
            raise ModelError.one(f"give only one of {into}, {key}", at(key))
        source = attrs.pop(key)
        if not isinstance(source, str):
            raise ModelError.one("must be a path under files/", at(key))
        path = "files/" + clean_relpath(source, at(key))
        try:
            attrs[into] = self.snapshot.read(path)
        except FileNotFoundError:
            raise ModelError.one(f"{path} not found", at(key)) from None


def declared_type(
    declaration: Any, where: Location, types: Mapping[str, DefinedType] | None = None
) -> str:
    """The type of one resource declaration, once what needs no values is checked: that it is a
    mapping that names a type (built-in or defined in ``types``), with no attribute (or
    parameter) that type lacks. A ModelError otherwise.

    Compiling checks this before ``when:``, and validate checks it for every declaration of the
    repo, so a misspelling is reported whichever nodes the resource is for."""
    if not isinstance(declaration, LocMap):
        raise ModelError.one("a resource must be a mapping like '- file: /etc/motd'", where)
    kind = resource_type(declaration, where, types)
    if types is not None and kind in types:
        return _instance_keys(declaration, types[kind], where)
    known = attribute_names(kind)
    problems = []
    for key in declaration:
        if key in (kind, "when", "for_each") or key in COMMON_ATTRIBUTES or key in known:
            continue
        close = closest(key, [*known, *COMMON_ATTRIBUTES])
        hint = (
            f"did you mean {close!r}?"
            if close is not None
            else f"its attributes: {', '.join(known)}; and those of every type: "
            f"{', '.join(sorted(COMMON_ATTRIBUTES))}"
        )
        problems.append(
            Problem(
                f"unknown attribute {key!r} for {kind} ({hint})",
                Location(where.file, declaration.line_of(key), str(key)),
            )
        )
    if problems:
        raise ModelError(problems)
    return kind


def _instance_keys(declaration: LocMap, defined: DefinedType, where: Location) -> str:
    """The type of a use of a defined type, once its keys are checked against its parameters."""
    if defined.broken:
        return defined.name
    known = [*defined.params, *sorted(INSTANCE_KEYS)]
    problems = [
        Problem(
            f"unknown parameter {key!r} for {defined.name} ({defined.file})"
            f"{did_you_mean(key, known)}",
            Location(where.file, declaration.line_of(key), str(key)),
        )
        for key in declaration
        if key != defined.name and key not in INSTANCE_KEYS and key not in defined.params
    ]
    if problems:
        raise ModelError(problems)
    return defined.name


def declaration_problems(
    declarations: LocList, file: str, types: Mapping[str, DefinedType] | None = None
) -> list[Problem]:
    """What is wrong with a list of resource declarations whatever the node and its values."""
    problems: list[Problem] = []
    for index, declaration in enumerate(declarations):
        try:
            declaration = localized(declaration, file, types or {})
            declared_type(declaration, Location(file, declarations.line_of(index)), types)
        except ModelError as exc:
            problems += exc.problems
    return problems


def resource_type(
    declaration: LocMap, where: Location, defined: Mapping[str, DefinedType] | None = None
) -> str:
    """The type a resource mapping names: its first key (a built-in type or one of the
    ``defined`` types). A mapping whose first key is not a type but which has exactly one
    built-in type key elsewhere is read the old way, by that key."""
    first = declaration.first
    if first in REGISTRY or (defined is not None and first in defined):
        return str(first)
    types = [str(key) for key in declaration if key in REGISTRY]
    if len(types) == 1:
        return types[0]
    if types:
        raise ModelError.one(
            f"the keys {', '.join(types)} all name resource types and the first key "
            f"{'(a merge)' if first is None else repr(first)} names none, so the type is "
            f"ambiguous: write the type as the first key, like '- file: /etc/motd' followed by "
            f"'group: adm'",
            where,
        )
    unknown = [k for k in declaration if k not in COMMON_ATTRIBUTES]
    kinds = [*REGISTRY, *(defined or ())]
    close = next((c for k in unknown if (c := closest(k, kinds)) is not None), None)
    hint = f"did you mean {close!r}?" if close else f"types: {', '.join(sorted(kinds))}"
    raise ModelError.one(
        f"no resource type among the keys {sorted(map(str, declaration))} ({hint})"
        if unknown
        else "a resource needs a type key like 'file: /etc/motd'",
        where,
    )


def old_order(declaration: Any, defined: Iterable[str] = ()) -> str | None:
    """The type of a resource mapping that names it the old way (not by its first key). A use
    of a defined type (``defined``) names its type first, whatever its parameters are called."""
    if not isinstance(declaration, LocMap) or declaration.first in REGISTRY:
        return None
    if declaration.first in defined:
        return None
    types = [str(key) for key in declaration if key in REGISTRY]
    return types[0] if len(types) == 1 else None


def attribute_names(kind: str) -> list[str]:
    """The attributes a resource of this type may be given, besides those of every type."""
    names = set(REGISTRY[kind].attributes)
    if REGISTRY[kind].content_from_repo:
        names |= {"source", "template"}  # they become its content
    names |= set(REGISTRY[kind].file_attributes)  # they become another attribute
    return sorted(names)


def _ids(value: Any, where: Location, types: Mapping[str, Any] | None = None) -> list[ResourceId]:
    items = value if isinstance(value, list) else [value]
    ids: list[ResourceId] = []
    for item in items:
        kind = (
            item.split(":", 1)[0].rsplit("/", 1)[-1]  # after an instance's scope
            if isinstance(item, str) and ":" in item
            else None
        )
        if kind is None or (kind not in REGISTRY and (types is None or kind not in types)):
            raise ModelError.one(
                f"{item!r} is not a resource id like 'package:nginx' or 'file:/etc/motd'", where
            )
        ids.append(item)
    return ids


def check_value(spec: Attr, value: Any, sensitive: bool = False) -> str | None:
    """A message when ``value`` does not fit the attribute's schema (for a sensitive resource,
    with the value as its digest)."""
    if value is None:
        return None if not spec.required else "must not be empty"
    kind = spec.kind
    ok: bool
    if kind == "str":
        ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        expected = "a string"
    elif kind == "bool":
        ok, expected = isinstance(value, bool), "true or false"
    elif kind == "int":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    elif kind == "mode":
        ok, expected = isinstance(value, str), 'a quoted octal string like "0644"'
    elif kind in ("strlist", "argv"):
        ok = isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str | int) for v in value)
        )
        expected = "a string or a list of strings"
    elif kind == "intlist":
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, list) and all(isinstance(v, int) for v in value)
        )
        expected = "a number or a list of numbers"
    elif kind == "mapping":
        ok, expected = isinstance(value, dict), "a mapping"
    else:
        ok, expected = True, ""
    if not ok:
        return f"must be {expected}, not {repomod.type_name(value)}"
    if spec.choices and str(value) not in spec.choices:
        shown = (
            digest(value if isinstance(value, str) else repr(value)) if sensitive else repr(value)
        )
        return f"must be one of {', '.join(spec.choices)}, not {shown}"
    return None


def link(catalog: Catalog) -> None:
    """Resolve relationships into ordering and refresh edges; check targets and cycles.

    Each entry's relationships are rewritten to the ids they reached (an instance, written
    ``vhost:shop``, becomes its resources), so that a catalog read back links the same way."""
    entries = catalog.entries
    after: dict[ResourceId, set[ResourceId]] = {rid: set() for rid in entries}
    refreshes: dict[ResourceId, set[ResourceId]] = {}
    problems: list[Problem] = []
    index = _Targets(entries, catalog.groups, catalog.scopes)
    for rid, entry in entries.items():
        resolved: dict[str, list[ResourceId]] = {}
        for relation, named in entry.relations.items():
            resolved[relation] = []
            for target in named:
                found, why = index.resolve(target, entry.resource.scope)
                if why is not None:
                    problems.append(
                        Problem(
                            f"{rid}: {relation} {target}, {why}",
                            Location(entry.where.file, entry.where.line, relation),
                        )
                    )
                resolved[relation] += found
        entry.relations = resolved
    for members, relations, scope, where in catalog.instance_relations:
        for relation, named in relations.items():
            for target in named:
                found, why = index.resolve(target, scope)
                if why is not None:
                    problems.append(Problem(f"{relation} {target}, {why}", where))
                for member in members:
                    entries[member].relations.setdefault(relation, []).extend(found)
    for rid, entry in entries.items():
        for relation, targets in entry.relations.items():
            for target in targets:
                if relation in ("require", "subscribe"):
                    after[rid].add(target)
                else:
                    after[target].add(rid)
                if relation == "notify":
                    refreshes.setdefault(rid, set()).add(target)
                elif relation == "subscribe":
                    refreshes.setdefault(target, set()).add(rid)
        for implied in entry.resource.autorequire():
            for target in index.resolve(implied, entry.resource.scope, explain=False)[0]:
                if target != rid and rid not in after[target]:
                    after[rid].add(target)
        for implied in entry.resource.autonotify():
            for target in index.resolve(implied, entry.resource.scope, explain=False)[0]:
                if target != rid and target not in after[rid]:
                    after[target].add(rid)
                    refreshes.setdefault(rid, set()).add(target)

    # A type that precedes others (apt sources before packages): unless the follower is one
    # of the leader's own requirements, which would make a cycle.
    for rid, entry in entries.items():
        followers = entry.resource.precedes
        if not followers:
            continue
        for other, later in entries.items():
            if later.resource.type in followers and other not in after[rid]:
                after[other].add(rid)
    last_of: dict[str, ResourceId] = {}
    for rid, entry in entries.items():
        key = entry.resource.serial_key()
        if key is None:
            continue
        previous = last_of.get(key)
        if previous is not None and rid not in after[previous]:
            after[rid].add(previous)
        last_of[key] = rid
    if problems:
        raise ModelError(problems, "compile")
    catalog.after = after
    catalog.refreshes = refreshes
    catalog.order()  # raises on a cycle


def _duplicate(
    rid: ResourceId,
    where: Location,
    other: Entry,
    first: int | None,
    item: int,
    declaration: LocMap,
) -> Problem:
    if first is not None:
        return Problem(
            f"for_each gives {rid} twice (items {first} and {item}): titles must be unique",
            Location(where.file, declaration.line_of("for_each"), "for_each"),
        )
    return Problem(f"duplicate resource {rid} (also declared at {other.where})", where)


class _Targets:
    """Finds what a relationship target names, seen from a scope: a resource or an instance
    of the same instance first (then of each enclosing one), then one of the catalog, then
    the one resource anywhere with that type and title."""

    def __init__(
        self,
        entries: Mapping[ResourceId, Entry],
        groups: Mapping[str, list[ResourceId]],
        parents: Mapping[str, str],
    ) -> None:
        self.entries = entries
        self.groups = groups
        self.parents = parents  # an instance's scope -> the scope around it
        self.identities: dict[str, list[ResourceId]] = {}
        for rid, entry in entries.items():
            if entry.resource.scope:
                self.identities.setdefault(entry.resource.identity, []).append(rid)

    def resolve(
        self, target: str, scope: str, explain: bool = True
    ) -> tuple[list[ResourceId], str | None]:
        """The ids a target reaches, or why it reaches none (unless ``explain`` is false: an
        implied target that is absent is no problem, and its did-you-mean costs a search of
        every title of its type)."""
        while True:
            candidate = f"{scope}/{target}" if scope else target
            if candidate in self.entries:
                return [candidate], None
            if candidate in self.groups:
                return list(self.groups[candidate]), None
            if not scope:
                break
            scope = self.parents.get(scope, "")
        found = self.identities.get(target, [])
        if len(found) == 1:
            return found, None
        if found:
            return [], f"which several instances declare: name one of {', '.join(found)}"
        if not explain:
            return [], None
        return [], (f"which is not in this node's catalog{_close_id(target, self.entries, target)}")


def identity_conflicts(
    entries: Mapping[ResourceId, Entry], used_at: Mapping[str, Location]
) -> list[Problem]:
    """Resources of different instances that manage one thing (a file, a package): an error.
    Execs and lines are told apart by their instances, since their titles only name them."""
    first: dict[str, Entry] = {}
    problems: list[Problem] = []
    for rid, entry in entries.items():
        resource = entry.resource
        if resource.type in NAMED_ONLY:
            continue
        other = first.setdefault(resource.identity, entry)
        if other is not entry:
            uses = [
                f"{e.resource.scope} used at {used_at[e.resource.scope]}"
                if e.resource.scope in used_at
                else f"declared at {e.where}"
                for e in (entry, other)
            ]
            problems.append(
                Problem(
                    f"{rid} and {other.resource.id} both manage {resource.identity} "
                    f"({'; '.join(uses)})",
                    entry.where,
                )
            )
    return problems


def _close_id(target: ResourceId, ids: Iterable[ResourceId], own: ResourceId) -> str:
    """A did-you-mean for a missing target: another resource of its type with a close title
    (titles alone, since ids of one type all share their start)."""
    kind, _, title = target.partition(":")
    titles = [i.partition(":")[2] for i in ids if i != own and i.partition(":")[0] == kind]
    close = closest(title, titles)
    return "" if close is None else f" (did you mean {f'{kind}:{close}'!r}?)"


def _unquote(message: str, attrs: Mapping[str, Any]) -> str:
    """A sensitive resource's validation message without its values: each quoted value (as
    the checks quote them, with repr), whatever its length, becomes its digest."""
    for leaf in sorted(set(leaves(attrs)), key=len, reverse=True):
        message = message.replace(repr(leaf), digest(leaf))
    return message


def scrub_problems(problems: list[Problem], secrets: Secrets) -> list[Problem]:
    """Problems whose messages show no sensitive value, only its digest."""
    if not secrets:
        return problems
    return [Problem(secrets.scrub(p.message), p.where, p.stage) for p in problems]


def tidy(problems: Iterable[Problem]) -> list[Problem]:
    """Problems each once (however often they were found), in file and line order."""
    unique: dict[str, Problem] = {}
    for problem in problems:
        unique.setdefault(str(problem), problem)
    return sorted(
        unique.values(),
        key=lambda p: (
            p.where.file is None,
            p.where.file or "",
            p.where.line or 0,
            p.where.key or "",
            p.message,
        ),
    )


def validate_repo(snapshot: Snapshot, facts: Mapping[str, Any], node: str) -> list[Problem]:
    """Every problem of a revision, each once, in file and line order.

    Each file is checked on its own first (settings, nodes.yaml, every role, profile, data file
    and app, used or not), so that a problem in one file hides none in another; then every
    role is compiled with these facts, which finds what only values show."""
    problems, compiler, roles = _check_files(snapshot)
    for role in roles:
        try:
            compiler.compile_role(node, role, Location(f"roles/{role}.yaml"), facts)
        except ModelError as exc:
            problems += exc.problems
    for name in app_names(snapshot):
        try:
            app, _ = read_app(snapshot, name)  # check_apps reports what is wrong with it
        except ModelError:
            continue
        for component in app.components:
            problems += declaration_problems(component.resources, app.file, compiler.types())
    problems += compiler.check_apps(node, facts)
    return tidy(problems)


def validate_files(snapshot: Snapshot) -> list[Problem]:
    """Every problem of a revision's files, each checked on its own, without compiling
    anything: what ``validate_repo`` finds before it compiles, for when each node is compiled
    with its own facts instead."""
    problems, compiler, _ = _check_files(snapshot)
    try:
        compiler.apps()
    except ModelError as exc:  # what check_apps reports without compiling
        problems += exc.problems
    for name in app_names(snapshot):
        try:
            app, _ = read_app(snapshot, name)
        except ModelError:
            continue
        for component in app.components:
            problems += declaration_problems(component.resources, app.file, compiler.types())
    return tidy(problems)


def _check_files(snapshot: Snapshot) -> tuple[list[Problem], Compiler, list[str]]:
    """The problems of each file on its own, the compiler that read them, and the roles."""
    problems: list[Problem] = []
    try:
        settings = repomod.load_settings(snapshot)
    except ModelError as exc:
        problems += exc.problems
        settings = Settings()
    try:
        load_recipients(snapshot)
    except ModelError as exc:
        problems += exc.problems
    compiler = Compiler(snapshot, settings)
    try:
        nodes, found = repomod.read_nodes(snapshot)
        problems += found + repomod.missing_roles(snapshot, nodes)
    except ModelError as exc:
        problems += exc.problems
    roles = repomod.names_of(snapshot, "role")
    for role in roles:
        try:
            named, found = repomod.read_role(snapshot, role, Location(f"roles/{role}.yaml"))
        except ModelError as exc:
            problems += exc.problems
            continue
        problems += found
        for name, where in named:
            try:
                compiler.read_profile(name, where)
            except ModelError as exc:
                problems += exc.problems
    for defined, found in compiler.read_types().values():
        problems += found + declaration_problems(defined.resources, defined.file, compiler.types())
    profiles: dict[str, Profile] = {}
    for name in repomod.names_of(snapshot, "profile"):
        try:
            profile, found = compiler.read_profile(name, Location(f"profiles/{name}.yaml"))
        except ModelError as exc:
            problems += exc.problems
            continue
        problems += found + declaration_problems(profile.resources, profile.file, compiler.types())
        problems += compiler.included([(name, Location(profile.file))])[1]
        problems += compiler.defaults_problems(profile)
        if not found:
            profiles[name] = profile
    for path in snapshot.files("data"):
        if not path.endswith((".yaml", ".yml")):
            continue
        try:
            content = repomod.expect_map(
                repomod.read_yaml(snapshot, path), Location(path), "a data file"
            )
        except ModelError as exc:
            problems += exc.problems
            continue
        problems += repomod.check_data_file(
            path, without_app_sections(content), profiles, compiler.profile_names()
        )
        problems += compiler.app_data_problems(path, content)
    return problems, compiler, list(roles)


def repo_warnings(snapshot: Snapshot) -> list[str]:
    """What is suspicious but not wrong: resources that name their type the old way (not
    first), app components that no node can run."""
    lists: list[tuple[str, LocList]] = []
    for path in snapshot.files("profiles"):
        if path.endswith(".yaml"):
            name = path.removeprefix("profiles/").removesuffix(".yaml")
            try:
                lists.append((path, repomod.load_profile(snapshot, name, Location(path)).resources))
            except ModelError:
                continue  # validate reports it
    try:
        apps = load_apps(snapshot)
    except ModelError:
        apps = []
    lists += [(app.file, component.resources) for app in apps for component in app.components]
    defined = set(repomod.names_of(snapshot, "type"))
    warnings = [
        f"{Location(file, declarations.line_of(index))}: write the type first, "
        f"'- {kind}: ...' (a key named like a type, such as group or user, is an attribute "
        f"only after the type)"
        for file, declarations in lists
        for index, declaration in enumerate(declarations)
        if (kind := old_order(declaration, defined)) is not None
    ]
    return warnings + [w for app in apps for w in unmatched_components(app, snapshot)]
