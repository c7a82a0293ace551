"""A compiled catalog as a review shows it, and what differs between two of them.

A ``CatalogView`` holds only display text: each resource's attributes as strings, with the
values of a sensitive resource as digests and every sensitive value of the node replaced by its
digest wherever else it turns up. It is plain data, so that it crosses from the process that
compiled it to the one that compares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from reconciler.engine.report import printable
from reconciler.errors import Problem
from reconciler.model.catalog import RELATIONS, Catalog
from reconciler.model.secrets import encrypted
from reconciler.resources.base import Resource, Secrets, digest, unified_diff

# Longer values are shown as their digest and size, never compared line by line.
MAX_SHOWN = 256 * 1024
# Lines of one unified diff kept; the rest is counted.
MAX_DIFF_LINES = 400

# Attributes of a sensitive resource shown as written: they name other resources.
_CLEAR = frozenset(RELATIONS)


@dataclass(frozen=True)
class DeploymentView:
    """An app component this node runs, at the app's version."""

    app: str
    component: str
    version: str
    requires: tuple[str, ...]
    max_parallel: int


@dataclass(frozen=True)
class ResourceView:
    id: str
    attrs: dict[str, str]  # attribute -> display text
    encrypted: frozenset[str]  # attributes holding a value still encrypted as written
    where: str  # file:line of its declaration


@dataclass(frozen=True)
class CatalogView:
    """One node's catalog at one revision, or why it does not compile there."""

    role: str | None
    resources: dict[str, ResourceView] = field(default_factory=dict)
    deployments: tuple[DeploymentView, ...] = ()
    problems: tuple[Problem, ...] = ()  # a catalog that does not compile: why
    secrets: frozenset[str] = frozenset()  # to take out of any text compared with this one

    @property
    def failed(self) -> bool:
        return bool(self.problems)


def failed_view(role: str | None, problems: list[Problem]) -> CatalogView:
    return CatalogView(role, problems=tuple(problems))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return f"{digest(value)} ({len(value)} bytes)"
    return json.dumps(value, sort_keys=True, default=str)


def _shown(resource: Resource, key: str, value: Any, secrets: Secrets) -> str:
    text = _text(value)
    if resource.sensitive and key not in _CLEAR:
        return digest(text)
    if len(text) > MAX_SHOWN:
        return f"{digest(text)} ({len(text)} bytes)"
    return secrets.scrub(text)


def view_of(catalog: Catalog) -> CatalogView:
    """The catalog's resources and deployments as display text."""
    secrets = catalog.secrets
    resources: dict[str, ResourceView] = {}
    for rid, entry in catalog.entries.items():
        resource = entry.resource
        values: dict[str, Any] = {
            k: v for k, v in resource.attrs.items() if k not in RELATIONS and v is not None
        }
        for relation, targets in entry.relations.items():
            if targets:
                values[relation] = sorted(set(targets))
        if entry.noop:
            values["noop"] = True
        attrs = {key: _shown(resource, key, values[key], secrets) for key in sorted(values)}
        sealed = frozenset(k for k, v in values.items() if encrypted(v))
        resources[secrets.scrub(rid)] = ResourceView(
            secrets.scrub(rid), attrs, sealed, str(entry.where)
        )
    deployments = tuple(
        DeploymentView(
            d.app.name,
            d.component.name,
            d.app.version,
            tuple(d.component.requires),
            d.component.max_parallel,
        )
        for d in catalog.deployments
    )
    return CatalogView(catalog.role, resources, deployments, (), secrets.values)


ChangeKind = Literal["added", "removed", "changed"]


@dataclass(frozen=True)
class AttributeChange:
    attribute: str
    before: str | None
    after: str | None
    diff: str | None = None  # a unified diff of text over several lines
    # Compared as written, still encrypted (the review has no keys): a value encrypted again
    # differs though its plaintext may not.
    encrypted: bool = False


@dataclass(frozen=True)
class ResourceChange:
    id: str
    kind: ChangeKind
    changes: tuple[AttributeChange, ...] = ()
    where: str = ""  # where it is declared (at --to; at --from for a removed one)


def unified(before: str, after: str, name: str, labels: tuple[str, str]) -> str:
    """A unified diff of two texts, at most MAX_DIFF_LINES lines of it."""
    lines = list(
        unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            # a title is one line of the diff's header, whatever it holds
            printable(f"{name} ({labels[0]})"),
            printable(f"{name} ({labels[1]})"),
        )
    )
    lines = [
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    ]
    if len(lines) > MAX_DIFF_LINES:
        left = len(lines) - MAX_DIFF_LINES
        lines = [*lines[:MAX_DIFF_LINES], f"... {left} more line(s) of the diff not shown\n"]
    return "".join(lines)


def _change(
    name: str, key: str, before: str | None, after: str | None, sealed: bool,
    labels: tuple[str, str],
) -> AttributeChange:  # fmt: skip
    diff = None
    if "\n" in (before or "") + (after or ""):
        diff = unified(before or "", after or "", f"{name} {key}", labels)
    return AttributeChange(key, before, after, diff, sealed)


def compare(
    before: CatalogView, after: CatalogView, labels: tuple[str, str] = ("from", "to")
) -> list[ResourceChange]:
    """The resources added, removed and changed from ``before`` to ``after``, by id."""
    changes: list[ResourceChange] = []
    for rid in sorted(set(before.resources) | set(after.resources)):
        old, new = before.resources.get(rid), after.resources.get(rid)
        if old is None and new is not None:
            attrs = tuple(
                _change(rid, k, None, v, k in new.encrypted, labels) for k, v in new.attrs.items()
            )
            changes.append(ResourceChange(rid, "added", attrs, new.where))
        elif new is None and old is not None:
            changes.append(ResourceChange(rid, "removed", (), old.where))
        elif old is not None and new is not None and old.attrs != new.attrs:
            attrs = tuple(
                _change(
                    rid,
                    key,
                    old.attrs.get(key),
                    new.attrs.get(key),
                    key in old.encrypted or key in new.encrypted,
                    labels,
                )
                for key in sorted(set(old.attrs) | set(new.attrs))
                if old.attrs.get(key) != new.attrs.get(key)
            )
            changes.append(ResourceChange(rid, "changed", attrs, new.where))
    return changes


def scrubbed(changes: list[ResourceChange], secrets: Secrets) -> list[ResourceChange]:
    """``changes`` with the values of ``secrets`` replaced by their digests everywhere."""
    if not secrets:
        return changes

    def clean(text: str | None) -> str | None:
        return None if text is None else secrets.scrub(text)

    return [
        ResourceChange(
            secrets.scrub(c.id),
            c.kind,
            tuple(
                AttributeChange(
                    a.attribute, clean(a.before), clean(a.after), clean(a.diff), a.encrypted
                )
                for a in c.changes
            ),
            c.where,
        )
        for c in changes
    ]


def by_component(deployments: Sequence[DeploymentView]) -> Mapping[str, DeploymentView]:
    """Deployments by ``app/component``."""
    return {f"{d.app}/{d.component}": d for d in deployments}
