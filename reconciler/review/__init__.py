"""Reviewing a change of the control repo before it lands: every node's catalog compiled at two
revisions with that node's facts, and what differs (``reconciler diff``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.errors import ModelError, ReconcilerError

FACTS_SUFFIX = ".yaml"


def load_facts_dir(directory: Path) -> dict[str, dict[str, Any]]:
    """``<node>.yaml`` files of facts (as ``reconciler facts`` prints them): node -> facts.

    The node's name is its file's; a ``node`` fact inside is replaced by it. The ``_reconciler``
    key ``reconciler facts --all --out`` adds (when the facts were taken, which the node
    withheld or dropped) is kept: a review compiles with a placeholder for each fact it names
    (``review.withheld``). A file that cannot be read or is not a mapping, or whose
    ``_reconciler`` key is malformed, is an error naming the file (and the line)."""
    from reconciler.apps.facts import META_KEY
    from reconciler.facts import load_facts_file
    from reconciler.review.withheld import left_out

    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(FACTS_SUFFIX))
    except OSError as exc:
        raise ReconcilerError(f"--facts-dir {directory}: {exc.strerror}") from None
    facts: dict[str, dict[str, Any]] = {}
    for path in paths:
        node = path.name.removesuffix(FACTS_SUFFIX)
        try:
            found = load_facts_file(path)
        except ModelError as exc:
            raise ReconcilerError(f"facts of node {node}: {exc.problems[0]}") from None
        if META_KEY in found:
            try:
                left_out(found[META_KEY])
            except ValueError as exc:
                raise ReconcilerError(
                    f"facts of node {node}: {path}:{_line_of(path, META_KEY)}: {exc}"
                ) from None
        found["node"] = node
        facts[node] = found
    if not facts:
        raise ReconcilerError(f"--facts-dir {directory}: no <node>{FACTS_SUFFIX} files")
    return facts


def _line_of(path: Path, key: str) -> int:
    """The line of a top-level key of a YAML file that has already loaded."""
    from reconciler.model.yamlload import LocMap, load

    found = load(path.read_bytes(), str(path))
    return found.line_of(key) if isinstance(found, LocMap) else 1
