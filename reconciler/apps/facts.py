"""A node's facts through the coordination store: published after a run, read back for review.

After every run that compiled its catalog (``apply`` and the daemon, with a ``coordination``
section configured; never ``plan``), a node publishes the facts it compiled with as one record
of kind ``facts``, on a lease of ``coordination.facts_ttl``. Facts that hold a sensitive value of
the node's catalog (or are a part of a sensitive parameter's value) are withheld; past
``MAX_RECORD["facts"]`` the largest facts are dropped. Both are named in the record. The record
is written only when the facts changed (but for ``VOLATILE`` ones) or half of its lease has
passed; what was last written is kept in ``state_dir/facts-published.json``.

``fleet_facts`` reads every node's record back, checked as data from another node.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.apps.store import MAX_RECORD, CoordinationConfig, Store, open_store
from reconciler.fs import atomic_write
from reconciler.model.catalog import Catalog
from reconciler.resources.base import MIN_SECRET, Secrets, leaves

LAST = "facts-published.json"  # under the state directory: what this node last published
# The key of a facts document (``reconciler facts --all``) that says when the facts were taken
# and which were left out; never a fact (one of that name is not published).
META_KEY = "_reconciler"
# Facts that change at every run: a change of these alone does not republish.
VOLATILE: tuple[tuple[str, ...], ...] = (("uptime_seconds",), ("memory", "available_bytes"))
MAX_DEPTH = 64  # levels of nesting in a record's facts (the facts loader's bound)
MAX_NAMED = 1000  # paths listed as withheld or dropped; past it, a count of the rest
MAX_PATH = 512  # characters of one listed path
_TAKEN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")

Warn = Callable[[str], None]
FactPath = tuple[str, ...]


def _ignore(message: str) -> None:
    pass


@dataclass(frozen=True)
class PublishedFacts:
    """One node's facts as it published them."""

    node: str
    taken: str  # when the node gathered them, UTC: 2026-12-01T03:00:00Z
    facts: dict[str, Any]
    withheld: list[str] = field(default_factory=list)  # sensitive: never left the node
    dropped: list[str] = field(default_factory=list)  # the largest, past the size bound

    def document(self) -> dict[str, Any]:
        """The node's facts as ``reconciler facts`` prints them, and under ``META_KEY`` when
        they were taken and which were left out."""
        meta = {"taken": self.taken, "withheld": self.withheld, "dropped": self.dropped}
        return {**self.facts, META_KEY: meta}


def safe_node_name(node: str) -> str | None:
    """Why ``node`` cannot name a file ``<node>.yaml`` in a directory; None when it can."""
    if not node:
        return "an empty name"
    if "/" in node or "\0" in node:
        return "a name with '/' or NUL"
    if node.startswith("."):
        return "a name starting with '.'"
    if len(node.encode()) > 250:
        return "a name longer than 250 bytes"
    return None


# -- publishing ----------------------------------------------------------------------------------


def _shown(path: FactPath) -> str:
    text = ".".join(path)
    return text if len(text) <= MAX_PATH else text[: MAX_PATH - 3] + "..."


def _named(paths: list[FactPath]) -> list[str]:
    shown = sorted(_shown(p) for p in paths)
    if len(shown) > MAX_NAMED:
        return [*shown[:MAX_NAMED], f"(and {len(shown) - MAX_NAMED} more)"]
    return shown


def _texts(value: Any) -> Iterator[str]:
    """Every scalar and every mapping key inside a value, as text."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _texts(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, str):
        yield value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)


def sensitivity(catalog: Catalog, facts: Mapping[str, Any]) -> Callable[[str], bool]:
    """Whether a text is sensitive for ``catalog``: it holds one of its sensitive values, or it
    is a part of a sensitive parameter's (or a decrypted) value. The node's name is never
    sensitive (it names the record), nor is a part of such a value that the agent computed
    itself (``trusted``: the host name in a DSN, say)."""
    secrets: Secrets = catalog.secrets
    parts = catalog.param_secrets.values
    trusted = facts.get("trusted")
    identity = set(leaves(trusted)) if isinstance(trusted, Mapping) else set()

    def sensitive(text: str) -> bool:
        if text == catalog.node:
            return False
        if secrets.found_in(text):
            return True
        return (
            len(text) >= MIN_SECRET
            and text not in identity
            and any(text in value for value in parts)
        )

    return sensitive


def _withhold(
    facts: Mapping[str, Any], sensitive: Callable[[str], bool]
) -> tuple[dict[str, Any], list[FactPath], list[FactPath]]:
    """The facts less those holding anything sensitive (withheld) and those nested deeper than
    MAX_DEPTH or named ``META_KEY`` (dropped). A list counts as one fact."""
    withheld: list[FactPath] = []
    dropped: list[FactPath] = []

    def keep(value: Any, path: FactPath) -> tuple[bool, Any]:
        if isinstance(value, Mapping):
            if len(path) >= MAX_DEPTH:
                dropped.append(path)
                return False, None
            kept: dict[str, Any] = {}
            for key, item in value.items():
                name = str(key)
                if sensitive(name):
                    withheld.append((*path, "<sensitive name>"))
                    continue
                ok, item = keep(item, (*path, name))
                if ok:
                    kept[name] = item
            return True, kept
        if _depth(value) + len(path) > MAX_DEPTH:
            dropped.append(path)
            return False, None
        if any(sensitive(text) for text in _texts(value)):
            withheld.append(path)
            return False, None
        plain = _json_value(value)
        if plain is _NOT_JSON:
            dropped.append(path)
            return False, None
        return True, plain

    top = {k: v for k, v in facts.items() if k != META_KEY}
    if META_KEY in facts:
        dropped.append((META_KEY,))
    _, kept = keep(top, ())
    return kept, withheld, dropped


_NOT_JSON = object()


def _json_value(value: Any) -> Any:
    """A fact as JSON data: a date or time from a YAML fact file as ISO text; _NOT_JSON for
    what JSON cannot hold (binary, sets, NaN)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else _NOT_JSON
    if isinstance(value, datetime.date):  # a datetime is a date too
        return value.isoformat()
    if isinstance(value, list | tuple):
        items = [_json_value(item) for item in value]
        return _NOT_JSON if any(item is _NOT_JSON for item in items) else items
    if isinstance(value, Mapping):
        pairs = {str(k): _json_value(v) for k, v in value.items()}
        return _NOT_JSON if any(v is _NOT_JSON for v in pairs.values()) else pairs
    return _NOT_JSON


def _depth(value: Any) -> int:
    """Levels of lists and mappings in a value (a scalar: 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            stack += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list | tuple):
            stack += [(v, level + 1) for v in item]
        else:
            deepest = max(deepest, level)
            continue
        deepest = max(deepest, level + 1)
        if deepest > MAX_DEPTH + 1:
            break
    return deepest


def _leaves(facts: Mapping[str, Any], path: FactPath = ()) -> Iterator[tuple[FactPath, int]]:
    """Every fact that is not a mapping (a list counts as one), and its size as JSON."""
    for key, value in facts.items():
        here = (*path, key)
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, here)
        else:
            yield here, len(json.dumps(key)) + len(json.dumps(value)) + 2


def _remove(facts: dict[str, Any], path: FactPath) -> None:
    for key in path[:-1]:
        facts = facts[key]
    del facts[path[-1]]


def _encode(
    node: str, taken: str, facts: Mapping[str, Any], withheld: list[str], dropped: list[str]
) -> bytes:
    record = {
        "node": node,
        "taken": taken,
        "facts": facts,
        "withheld": withheld,
        "dropped": dropped,
    }
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def facts_record(
    node: str,
    facts: Mapping[str, Any],
    taken: str,
    sensitive: Callable[[str], bool],
    limit: int = MAX_RECORD["facts"],
) -> tuple[bytes, PublishedFacts]:
    """The record a node publishes: its facts less the sensitive ones, within ``limit`` bytes
    (the largest facts dropped first); ValueError when even that cannot fit."""
    kept, withheld, dropped = _withhold(facts, sensitive)
    by_size = sorted(_leaves(kept), key=lambda leaf: (-leaf[1], leaf[0]))
    budget = limit
    for _attempt in range(8):
        named = (_named(withheld), _named(dropped))
        raw = _encode(node, taken, kept, *named)
        if len(raw) <= limit:
            return raw, PublishedFacts(node, taken, kept, *named)
        # Leave room for the list of what is dropped; the sizes are estimates: tighten on.
        budget = budget - limit // 16
        excess = len(raw) - budget
        while excess > 0 and by_size:
            path, size = by_size.pop(0)
            if path == ("node",):
                continue
            _remove(kept, path)
            dropped.append(path)
            excess -= size
    raise ValueError(f"facts do not fit in {limit} bytes")


def stable_digest(published: PublishedFacts) -> str:
    """What a change of the facts is judged by: all but the time and ``VOLATILE`` facts."""
    facts = json.loads(json.dumps(published.facts))
    for path in VOLATILE:
        try:
            _remove(facts, path)
        except (KeyError, TypeError):
            continue
    text = json.dumps(
        [facts, published.withheld, published.dropped], sort_keys=True, allow_nan=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _store_identity(config: CoordinationConfig) -> str:
    if config.backend == "etcd":
        return json.dumps(["etcd", sorted(config.endpoints), config.username])
    return json.dumps(["local", str(config.path)])


def _due(last: Path, digest: str, identity: str, ttl: float, now: float) -> bool:
    """Whether the record must be written: the facts, the store or the TTL changed, half of
    its lease has passed, or what was last written is unknown."""
    try:
        seen = json.loads(last.read_bytes())
        published = float(seen["published"])
        same = (seen["digest"], seen["store"], float(seen["ttl"])) == (digest, identity, ttl)
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return not same or not (published <= now < published + ttl / 2)


def publish_facts(
    store: Store | None,
    config: CoordinationConfig,
    catalog: Catalog,
    facts: Mapping[str, Any],
    taken: str,
    state_dir: Path,
    warn: Warn = _ignore,
) -> bool:
    """Publish the node's facts if they changed or their lease needs renewing; True when
    written. Any failure is a warning: the run that gathered them stands."""
    if not (config.configured and config.publish_facts):
        return False
    last = state_dir / LAST
    try:
        raw, published = facts_record(catalog.node, facts, taken, sensitivity(catalog, facts))
        if published.dropped:
            warn(
                f"facts published without {len(published.dropped)} of the largest (more than "
                f"{MAX_RECORD['facts']} bytes in all): {', '.join(published.dropped[:5])}"
            )
        digest, identity = stable_digest(published), _store_identity(config)
        now = time.time()
        if not _due(last, digest, identity, config.facts_ttl, now):
            return False
        opened = store is None
        target = open_store(config) if store is None else store
        try:
            target.publish_record("facts", catalog.node, raw, config.facts_ttl)
        finally:
            if opened:
                target.close()
        state = {"digest": digest, "store": identity, "ttl": config.facts_ttl, "published": now}
        atomic_write(last, json.dumps(state).encode())
        return True
    except Exception as exc:  # never fails the run: the store, the disk, a fact unlike JSON
        warn(f"facts not published: {type(exc).__name__}: {exc}")
        return False


# -- reading -------------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode(node: str, raw: bytes) -> PublishedFacts:
    """A record another node published, checked as data; ValueError says what is wrong."""
    why = safe_node_name(node)
    if why is not None:
        raise ValueError(f"{why} cannot be a file name")
    if len(raw) > MAX_RECORD["facts"]:
        raise ValueError(f"larger than {MAX_RECORD['facts']} bytes")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deep") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if data.get("node") != node:
        raise ValueError(f"names node {data.get('node')!r}, not the node it is published under")
    taken, facts = data.get("taken"), data.get("facts")
    if not isinstance(taken, str) or not _TAKEN.match(taken):
        raise ValueError("'taken' is not a UTC time like 2026-12-01T03:00:00Z")
    if not isinstance(facts, dict):
        raise ValueError("'facts' is not a mapping")
    if facts.get("node") != node:
        raise ValueError(f"its 'node' fact is {facts.get('node')!r}, not {node!r}")
    if META_KEY in facts:
        raise ValueError(f"holds a fact named {META_KEY!r}")
    if _depth(facts) > MAX_DEPTH:
        raise ValueError(f"facts nested more than {MAX_DEPTH} levels")
    lists: list[list[str]] = []
    for name in ("withheld", "dropped"):
        items = data.get(name, [])
        if (
            not isinstance(items, list)
            or len(items) > MAX_NAMED + 1
            or not all(isinstance(i, str) and len(i) <= MAX_PATH for i in items)
        ):
            raise ValueError(f"{name!r} is not a list of fact paths")
        lists.append(items)
    return PublishedFacts(node, taken, facts, lists[0], lists[1])


def fleet_published(config: CoordinationConfig, warn: Warn = _ignore) -> dict[str, PublishedFacts]:
    """Every node's live facts record, by node name; a malformed or foreign one is left out
    with a warning naming the node. StoreError when the store cannot be read."""
    store = open_store(config)
    try:
        records = store.records("facts")
    finally:
        store.close()
    found: dict[str, PublishedFacts] = {}
    for node, raw in sorted(records.items()):
        try:
            found[node] = decode(node, raw)
        except ValueError as exc:
            warn(f"facts of node {node!r} left out: {exc}")
    return found


def fleet_facts(config: CoordinationConfig, warn: Warn = _ignore) -> dict[str, dict[str, Any]]:
    """Every node's published facts document (node -> facts as ``reconciler facts`` prints
    them on that node, less what was withheld or dropped, and under ``META_KEY`` which), for
    compiling its catalog elsewhere: a review puts placeholders in the facts left out."""
    return {node: found.document() for node, found in fleet_published(config, warn).items()}
