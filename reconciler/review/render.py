"""A fleet diff for people (text), for machines (JSON, schema below) and for a pull request
(markdown: collapsible per-node details, bounded in size).

JSON schema ``reconciler.diff/v1``::

    {"schema": "reconciler.diff/v1", "repo": str,
     "from": {"ref": str, "commit": str}, "to": {"ref": str, "commit": str},
     "summary": {"nodes", "changed", "failed", "unchanged", "resources_added",
                 "resources_removed", "resources_changed", "catalogs_compiled": int},
     "nodes": [{"node": str, "status": "changed" | "failed",
                "role": {"from": str | null, "to": str | null},
                "resources": [{"id": str, "change": "added" | "removed" | "changed",
                               "where": "file:line",
                               "attributes": [{"name": str, "from": str | null,
                                               "to": str | null, "diff": str (optional),
                                               "encrypted": bool}]}],
                "apps": [{"component": "app/component", "from": str | null, "to": str | null}],
                "errors": {"from": [problem], "to": [problem]},
                "withheld_facts": [str]}],
     "rollouts": [{"app", "component": str, "step": int, "requires": [str],
                   "max_parallel": int,
                   "nodes": [{"node", "from", "to", "direction"}]}],
     "encrypted_compared_as_written": bool, "exit_code": 0 | 2 | 4}

    problem: {"message": str, "file": str | null, "line": int | null, "key": str | null}

Nodes whose catalog is the same at both revisions are only counted (``summary.unchanged``).
``withheld_facts``: the facts the node left out of what it published, compiled as placeholders.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from reconciler.errors import Problem
from reconciler.review.fleet import ComponentRollout, FleetDiff, NodeDiff
from reconciler.review.view import AttributeChange, ResourceChange
from reconciler.review.withheld import withheld_line

SCHEMA = "reconciler.diff/v1"
# A pull-request comment holds at most 65536 characters (GitHub); past this, node details are
# left out and counted.
MARKDOWN_LIMIT = 60_000

_ENCRYPTED_NOTE = (
    "values encrypted in data are compared as written (no decryption keys): a value encrypted "
    "again shows as changed though its plaintext may be the same"
)


def _counts(diff: FleetDiff) -> dict[str, int]:
    changes = [c for n in diff.nodes for c in n.resources]
    return {
        "nodes": len(diff.nodes),
        "changed": len(diff.with_status("changed")),
        "failed": len(diff.with_status("failed")),
        "unchanged": len(diff.with_status("unchanged")),
        "resources_added": sum(c.kind == "added" for c in changes),
        "resources_removed": sum(c.kind == "removed" for c in changes),
        "resources_changed": sum(c.kind == "changed" for c in changes),
        "catalogs_compiled": diff.compiles,
    }


# -- JSON -------------------------------------------------------------------------------------


def _problem(problem: Problem) -> dict[str, Any]:
    where = problem.where
    return {"message": problem.message, "file": where.file, "line": where.line, "key": where.key}


def _attribute(change: AttributeChange) -> dict[str, Any]:
    item: dict[str, Any] = {"name": change.attribute, "from": change.before, "to": change.after}
    if change.diff is not None:
        item["diff"] = change.diff
    item["encrypted"] = change.encrypted
    return item


def _node(node: NodeDiff) -> dict[str, Any]:
    return {
        "node": node.node,
        "status": node.status,
        "role": {"from": node.role_before, "to": node.role_after},
        "resources": [
            {
                "id": c.id,
                "change": c.kind,
                "where": c.where,
                "attributes": [_attribute(a) for a in c.changes],
            }
            for c in node.resources
        ],
        "apps": [{"component": k, "from": b, "to": a} for k, b, a in node.apps],
        "errors": {
            "from": [_problem(p) for p in node.problems_before],
            "to": [_problem(p) for p in node.problems_after],
        },
        "withheld_facts": list(node.withheld),
    }


def _rollout(rollout: ComponentRollout) -> dict[str, Any]:
    return {
        "app": rollout.app,
        "component": rollout.component,
        "step": rollout.step,
        "requires": list(rollout.requires),
        "max_parallel": rollout.max_parallel,
        "nodes": [
            {"node": m.node, "from": m.before, "to": m.after, "direction": m.direction}
            for m in rollout.moves
        ],
    }


def to_json(diff: FleetDiff) -> str:
    document = {
        "schema": SCHEMA,
        "repo": diff.repo,
        "from": {"ref": diff.before.ref, "commit": diff.before.commit},
        "to": {"ref": diff.after.ref, "commit": diff.after.commit},
        "summary": _counts(diff),
        "nodes": [_node(n) for n in diff.nodes if n.status != "unchanged"],
        "rollouts": [_rollout(r) for r in diff.rollouts],
        "encrypted_compared_as_written": diff.encrypted,
        "exit_code": diff.exit_code(),
    }
    return json.dumps(document, indent=2) + "\n"


# -- text -------------------------------------------------------------------------------------

_MARK = {"added": "+", "removed": "-", "changed": "~"}


def _indent(text: str, by: str) -> list[str]:
    return [by + line for line in text.rstrip("\n").split("\n")]


def _attribute_lines(change: AttributeChange, flat: bool = False) -> list[str]:
    note = "  (encrypted: compared as written)" if change.encrypted else ""
    if change.diff is not None:
        # flat: the diff's lines at the start of the line, where a markdown ```diff block
        # colours them
        return [f"    {change.attribute}:{note}", *_indent(change.diff, "" if flat else "      ")]
    if change.before is None:
        return [f"    {change.attribute}: {change.after}{note}"]
    if change.after is None:
        return [f"    {change.attribute}: {change.before} -> (none){note}"]
    return [f"    {change.attribute}: {change.before} -> {change.after}{note}"]


def _resource_lines(change: ResourceChange, flat: bool = False) -> list[str]:
    where = f"   ({change.where})" if change.where else ""
    lines = [f"{_MARK[change.kind]} {change.id}{where}"]
    for attribute in change.changes:
        lines += _attribute_lines(attribute, flat)
    return lines


def _problem_lines(problems: tuple[Problem, ...]) -> list[str]:
    return [f"    {p}" for p in problems]


def node_body(node: NodeDiff, diff: FleetDiff, flat: bool = False) -> list[str]:
    """What changes on one node, one line per resource and attribute (its name left out, so
    that nodes with the same changes share one body)."""
    lines: list[str] = []
    if node.withheld:
        lines.append(withheld_line(node.withheld))
    if node.problems_after:
        lines.append(f"! does not compile at {diff.after.ref}:")
        lines += _problem_lines(node.problems_after)
        return lines
    if node.role_before != node.role_after:
        lines.append(f"role: {node.role_before or '(none)'} -> {node.role_after}")
    if node.problems_before:
        lines.append(f"did not compile at {diff.before.ref} (compiles now):")
        lines += _problem_lines(node.problems_before)
    for change in node.resources:
        lines += _resource_lines(change, flat)
    for key, before, after in node.apps:
        lines.append(f"app {key}: {before or '(not run)'} -> {after or '(not run)'}")
    return lines


def _groups(diff: FleetDiff, flat: bool = False) -> list[tuple[list[NodeDiff], list[str]]]:
    """Nodes that change, those with the same changes together, failures first."""
    grouped: dict[str, tuple[list[NodeDiff], list[str]]] = {}
    ordered = diff.with_status("failed") + diff.with_status("changed")
    for node in ordered:
        body = node_body(node, diff, flat)
        key = "\n".join([node.role_after or "", *body])
        grouped.setdefault(key, ([], body))[0].append(node)
    return list(grouped.values())


def _names(nodes: list[NodeDiff], most: int = 20) -> str:
    names = [n.node for n in nodes]
    shown = ", ".join(names[:most])
    if len(names) > most:
        shown += f" and {len(names) - most} more"
    return shown + (f" ({len(names)} nodes)" if len(names) > 1 else "")


def _header(nodes: list[NodeDiff]) -> str:
    first = nodes[0]
    role = first.role_after or first.role_before or "?"
    return f"node {_names(nodes)}: role {role}"


def _rollout_lines(diff: FleetDiff) -> list[str]:
    if not diff.rollouts:
        return []
    lines = ["app rollouts, in order (each step once the steps it requires are healthy):"]
    for r in diff.rollouts:
        after = f", after {', '.join(r.requires)}" if r.requires else ""
        lines.append(
            f"  step {r.step}: {r.app}/{r.component}{after}, {r.max_parallel} node(s) at a time"
        )
        for number, wave in enumerate(r.waves(), start=1):
            moves = ", ".join(
                f"{m.node} {m.before or '(not run)'} -> {m.after or '(not run)'}"
                + ("" if m.direction in ("upgrade", "change") else f" ({m.direction})")
                for m in wave
            )
            lines.append(f"    {number}. {moves}")
    return lines


def summary_line(diff: FleetDiff) -> str:
    c = _counts(diff)
    text = (
        f"{c['changed']} of {c['nodes']} node(s) change, {c['failed']} fail(s) to compile at "
        f"{diff.after.ref}, {c['unchanged']} unchanged; resources: {c['resources_added']} "
        f"added, {c['resources_removed']} removed, {c['resources_changed']} changed "
        f"({c['catalogs_compiled']} catalogs compiled)"
    )
    return text


def _title(diff: FleetDiff) -> str:
    return (
        f"{diff.before.ref} ({diff.before.commit[:12]}) -> "
        f"{diff.after.ref} ({diff.after.commit[:12]})"
    )


def to_text(diff: FleetDiff) -> str:
    lines = [f"reconciler diff {_title(diff)}", ""]
    for nodes, body in _groups(diff):
        lines.append(_header(nodes))
        lines += _indent("\n".join(body), "  ")
        lines.append("")
    unchanged = len(diff.with_status("unchanged"))
    if unchanged:
        lines += [f"{unchanged} node(s) with the same catalog at both revisions (not listed)", ""]
    rollout = _rollout_lines(diff)
    if rollout:
        lines += [*rollout, ""]
    failed = diff.with_status("failed")
    if failed:
        lines.append(f"fail to compile at {diff.after.ref}:")
        by_problem: dict[str, list[NodeDiff]] = {}
        for node in failed:  # nodes failing on the same first problem, together
            first = str(node.problems_after[0]) if node.problems_after else ""
            by_problem.setdefault(first, []).append(node)
        for first, nodes in by_problem.items():
            lines.append(f"  {_names(nodes)}: {first}")
    if diff.encrypted:
        lines.append(f"note: {_ENCRYPTED_NOTE}")
    lines.append("summary: " + summary_line(diff))
    return "\n".join(lines) + "\n"


# -- markdown ---------------------------------------------------------------------------------


def _code(text: str) -> str:
    """Inline code that survives any backticks in ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _block(text: str, language: str = "") -> str:
    longest = max((len(m) for m in re.findall(r"`{3,}", text)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def _details(nodes: list[NodeDiff], body: list[str]) -> str:
    first = nodes[0]
    kinds = [c.kind for c in first.resources]
    if first.status == "failed":
        what = "**fails to compile**"
    else:
        what = (
            f"{kinds.count('added')} added, {kinds.count('removed')} removed, "
            f"{kinds.count('changed')} changed"
        )
        if first.apps:
            what += f", {len(first.apps)} app component(s)"
    role = first.role_after or first.role_before or "?"
    names = html.escape(_names(nodes))
    summary = f"<code>{names}</code> (role {html.escape(role)}): {what}"
    return (
        f"<details><summary>{summary}</summary>\n\n{_block(chr(10).join(body), 'diff')}\n\n"
        "</details>\n"
    )


def to_markdown(diff: FleetDiff, limit: int = MARKDOWN_LIMIT) -> str:
    c = _counts(diff)
    head = [
        f"### reconciler diff {_code(diff.before.ref)} → {_code(diff.after.ref)}",
        "",
        f"**{c['changed']}** of {c['nodes']} node(s) change, **{c['failed']}** fail(s) to "
        f"compile, {c['unchanged']} unchanged · resources: {c['resources_added']} added, "
        f"{c['resources_removed']} removed, {c['resources_changed']} changed · commits "
        f"{_code(diff.before.commit[:12])} → {_code(diff.after.commit[:12])}",
        "",
    ]
    failed = diff.with_status("failed")
    if failed:
        head.append(f"**Fails to compile at {_code(diff.after.ref)}:**")
        for node in failed[:20]:
            first = node.problems_after[0] if node.problems_after else ""
            head.append(f"- {_code(node.node)}: {_code(str(first))}")
        if len(failed) > 20:
            head.append(f"- and {len(failed) - 20} more")
        head.append("")
    rollout = _rollout_lines(diff)
    if rollout:
        head += ["**App rollouts**", "", _block("\n".join(rollout[1:])), ""]
    if diff.encrypted:
        head += [f"_Note: {_ENCRYPTED_NOTE}._", ""]
    text = "\n".join(head) + "\n"
    groups = _groups(diff, flat=True)
    left_out = 0
    for index, (nodes, body) in enumerate(groups):
        detail = _details(nodes, body)
        if len(text) + len(detail) > limit - 400:
            left_out = sum(len(n) for n, _ in groups[index:])
            break
        text += detail
    if left_out:
        text += (
            f"\n_{left_out} more node(s) not shown: this comment is cut at {limit} characters. "
            "Run `reconciler diff` (text or JSON) for every node._\n"
        )
    return text
