"""Reviewing a change of the control repo before it lands: every node's catalog compiled at two
revisions with that node's facts, and what differs (``reconciler diff``)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from reconciler.errors import Location, ModelError, ReconcilerError

FACTS_SUFFIX = ".yaml"


def load_facts_dir(directory: Path) -> dict[str, dict[str, Any]]:
    """``<node>.yaml`` files of facts (as ``reconciler facts`` prints them): node -> facts.

    The node's name is its file's; a ``node`` fact inside is replaced by it. The ``_reconciler``
    key ``reconciler facts --all --out`` adds (when the facts were taken, which the node
    withheld or dropped) is kept: a review compiles with a placeholder for each fact it names
    (``review.withheld``). A file that cannot be read or is not a mapping, or whose
    ``_reconciler`` key is malformed, is an error naming the file (and the line).

    The directory is often part of the change under review: a link in it (to a credentials
    file of the CI runner, say) is refused, never followed, and each file is read up to
    ``MAX_FACT_BYTES``, as a node reads its own fact files."""
    from reconciler.apps.facts import META_KEY
    from reconciler.facts import parse_facts
    from reconciler.review.withheld import left_out

    if directory.is_symlink():
        raise ReconcilerError(f"--facts-dir {directory}: a symbolic link; give the directory")
    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(FACTS_SUFFIX))
    except OSError as exc:
        raise ReconcilerError(f"--facts-dir {directory}: {exc.strerror}") from None
    facts: dict[str, dict[str, Any]] = {}
    for path in paths:
        node = path.name.removesuffix(FACTS_SUFFIX)
        if not node or node.startswith("."):
            raise ReconcilerError(f"{path}: {node!r} is not a node's name")
        try:
            data = _read_facts(path)
            found = parse_facts(data, str(path))
        except ModelError as exc:
            raise ReconcilerError(f"facts of node {node}: {exc.problems[0]}") from None
        if META_KEY in found:
            try:
                left_out(found[META_KEY])
            except ValueError as exc:
                raise ReconcilerError(
                    f"facts of node {node}: {path}:{_line_of(data, path, META_KEY)}: {exc}"
                ) from None
        found["node"] = node
        facts[node] = found
    if not facts:
        raise ReconcilerError(f"--facts-dir {directory}: no <node>{FACTS_SUFFIX} files")
    return facts


def _line_of(data: bytes, path: Path, key: str) -> int:
    """The line of a top-level key of a YAML file that has already loaded."""
    from reconciler.model.yamlload import LocMap, load

    found = load(data, str(path))
    return found.line_of(key) if isinstance(found, LocMap) else 1


def _read_facts(path: Path) -> bytes:
    """A regular file's bytes, never through a link, at most ``MAX_FACT_BYTES``."""
    from reconciler.facts import MAX_FACT_BYTES

    def refused(why: str) -> ModelError:
        return ModelError.one(why, Location(str(path)))

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refused("a symbolic link: facts are read from regular files only") from None
        raise refused(f"cannot read facts: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refused("not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_FACT_BYTES + 1)
    if len(data) > MAX_FACT_BYTES:
        raise refused(f"larger than {MAX_FACT_BYTES} bytes")
    return data
