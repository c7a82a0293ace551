"""What a revision's compile may read of a node: which facts, and whether its name.

Two nodes of one role whose facts agree on everything the revision may read get the same
catalog, so a review compiles it once. What the revision may read is found in its text: every
``facts.NAME`` in its profiles, roles, types, apps, templates and data (and its modules'), the
fact conditions of its apps' components, and the facts resource types read themselves (a
package's provider, by ``os``); which of its components' ``match:`` patterns the node's name
matches. Any other use of ``facts`` (``facts['x']``, ``facts.get``, the
whole mapping) makes every fact count. The node's name counts when any of those files names
``node``, or when a data level named after it exists for that node.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ModelError
from reconciler.model import repo as repomod
from reconciler.model.apps import load_apps
from reconciler.model.match import name_matches
from reconciler.resources.base import REGISTRY, Resource
from reconciler.source import Snapshot

# The facts a resource type's ``complete`` reads. A type that completes its attributes from
# facts and is not listed here makes every fact count.
COMPLETE_READS: Mapping[str, frozenset[str]] = {"package": frozenset({"os"})}

_BASE_COMPLETE = getattr(Resource.complete, "__func__", None)
_FACTS = re.compile(r"\bfacts\b(?:\s*\.\s*([A-Za-z_][A-Za-z0-9_]*))?(\s*:)?")
_NODE = re.compile(r"\bnode\b")
_METHODS = frozenset({"get", "items", "keys", "values", "copy", "update", "setdefault", "pop"})
# The directories whose files are read as templates or data, in the repo and in its modules
# (files/ is copied as written; nodes.yaml only gives the role, which is part of the key).
_READ = ("profiles/", "roles/", "types/", "templates/", "apps/", "data/")
# Bytes of those files scanned at most: past it, every fact counts (a catalog per node, never a
# wrong one) rather than reading gigabytes a change may hold in a small repository.
MAX_SCANNED = 256 * 1024 * 1024


@dataclass(frozen=True)
class Reads:
    """What one revision's compile may read of a node."""

    facts: frozenset[str] | None  # top-level fact names; None: every fact
    node: bool  # the node's name, wherever it is used
    node_levels: tuple[str, ...] = ()  # hierarchy levels naming {node}
    matches: tuple[str, ...] = ()  # app components' `match:` patterns of node names

    def key(
        self, revision: str, role: str, node: str, facts: Mapping[str, Any], snapshot: Snapshot
    ) -> str:
        """A digest of everything the compile may read: nodes with one key share a catalog."""
        read: Any = (
            facts if self.facts is None else {name: facts.get(name) for name in sorted(self.facts)}
        )
        named = self.node or any(
            (rel := repomod.interpolate_level(level, node, role, facts)) is not None
            and snapshot.exists(f"data/{rel}")
            for level in self.node_levels
        )
        matched = [name_matches(node, pattern) for pattern in self.matches]
        text = json.dumps(
            [revision, role, read, node if named else None, matched],
            sort_keys=True,
            default=repr,
        )
        return hashlib.sha256(text.encode()).hexdigest()


def reads_of(snapshot: Snapshot) -> Reads:
    """What ``snapshot``'s compiles may read of a node (read from its files, never guessed)."""
    every = Reads(None, True)
    names: set[str] = set()
    matches: set[str] = set()
    node = False
    scanned = 0
    for kind, cls in REGISTRY.items():
        if getattr(cls.complete, "__func__", None) is not _BASE_COMPLETE:
            if kind not in COMPLETE_READS:
                return every
            names |= COMPLETE_READS[kind]
    for path in snapshot.files():
        inner = (
            path.split("/", 2)[2] if path.startswith("modules/") and path.count("/") > 1 else path
        )
        if not inner.startswith(_READ) and path != "reconciler.yaml":
            continue
        try:
            text = snapshot.read(path).decode("utf-8")
        except UnicodeDecodeError:
            continue
        except (ModelError, FileNotFoundError, OSError):
            return every
        scanned += len(text)
        if scanned > MAX_SCANNED:
            return every
        is_app = inner.startswith("apps/")
        for found in _FACTS.finditer(text):
            name, key = found.group(1), found.group(2)
            if name is not None and name not in _METHODS:
                names.add(name)
            elif key is not None and is_app:
                continue  # a component's `facts:` condition: read from the parsed app below
            else:
                return every
        if path != "reconciler.yaml" and _NODE.search(text):
            node = True
    try:
        settings = repomod.load_settings(snapshot)
        apps = load_apps(snapshot)
    except ModelError:
        return every
    for app in apps:
        for each in [app, *app.instances]:
            for component in each.components:
                names |= {str(path).split(".", 1)[0] for path in component.facts}
                if component.trusted:
                    names.add("trusted")
                if component.match is not None:
                    matches.add(component.match)
    levels = tuple(level for level in settings.hierarchy if "{node}" in level.replace(" ", ""))
    return Reads(frozenset(names), node, levels, tuple(sorted(matches)))
