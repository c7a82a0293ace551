"""Safe YAML loading that remembers where every key and item was written.

Documents are parsed by libyaml when it is there, constructed with PyYAML's safe constructor
(no Python tags), and bounded: file size, nesting depth and alias expansion are capped before
anything is built, so a hostile file cannot exhaust the machine. Mappings come back as
``LocMap`` and sequences as ``LocList``, which carry the line of each key and item. A plain
document (no anchors, aliases, explicit tags or merge keys) is built straight from the parser's
events; any other, and any document with an error, goes through PyYAML's node tree, with the
same result.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import Location, ModelError, ReconcilerError
from reconciler.fs import atomic_write

MAX_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 1_000_000  # nodes after expanding aliases
MAX_INT_DIGITS = 100  # longer integers are refused: Python cannot even print some of them
INT_LIMIT = 10**MAX_INT_DIGITS

_BaseLoader: type[yaml.SafeLoader]
try:
    _BaseLoader = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _BaseLoader = yaml.SafeLoader


class LocMap(dict[Any, Any]):
    """A mapping that knows its own line and the line of each of its keys."""

    line: int = 0
    lines: dict[Any, int]
    # The first key as written. None when the mapping begins with a merge (``<<: *alias``),
    # whose keys come first in the mapping's order though they were written elsewhere.
    first: Any = None

    @classmethod
    def empty(cls, line: int = 0) -> LocMap:
        new = cls()
        new.line, new.lines = line, {}
        return new

    def line_of(self, key: Any) -> int:
        return self.lines.get(key, self.line)


class LocList(list[Any]):
    """A sequence that knows its own line and the line of each item."""

    line: int = 0
    lines: list[int]

    @classmethod
    def empty(cls, line: int = 0) -> LocList:
        new = cls()
        new.line, new.lines = line, []
        return new

    def line_of(self, index: int) -> int:
        return self.lines[index] if 0 <= index < len(self.lines) else self.line


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    pass


_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"


def _decimal(text: str) -> bool:
    """A plain decimal integer (no sign but -, no leading 0, no _), within MAX_INT_DIGITS."""
    digits = text[1:] if text.startswith("-") else text
    return (
        0 < len(digits) < MAX_INT_DIGITS
        and digits.isascii()
        and digits.isdigit()
        and (digits[0] != "0" or digits == "0")
    )


def _construct(loader: _Loader, node: yaml.Node) -> Any:
    """PyYAML's safe constructor, with its plain Python errors (a 2001-02-30 timestamp) turned
    into YAML errors at the node's line, and integers bounded to MAX_INT_DIGITS digits."""
    too_long = f"an integer of more than {MAX_INT_DIGITS} digits"
    if node.tag == _INT and len(str(node.value)) > 4 * MAX_INT_DIGITS:  # even in binary
        raise yaml.constructor.ConstructorError(None, None, too_long, node.start_mark)
    try:
        value = loader.construct_object(node, deep=True)
    except (ValueError, OverflowError) as exc:
        tag = str(node.tag).rsplit(":", 1)[-1]
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot read this {tag}: {exc}", node.start_mark
        ) from None
    if isinstance(value, int) and abs(value) >= INT_LIMIT:
        raise yaml.constructor.ConstructorError(None, None, too_long, node.start_mark)
    return value


def _convert(
    loader: _Loader, node: yaml.Node, memo: dict[int, Any], building: set[int] | None = None
) -> Any:
    """Build values from composed nodes, recording lines; faster than the generic constructor.

    Scalars of other tags and any other collection tag go to PyYAML's safe constructor, which
    refuses Python tags. An alias is the same node object: it is built once (``memo``). An
    alias inside the collection it names (``&a [*a]``) is refused: nothing downstream expects
    a value that contains itself.
    """
    if building is None:
        building = set()
    if id(node) in building:
        raise yaml.constructor.ConstructorError(
            None, None, "an alias refers to a collection that contains it", node.start_mark
        )
    known = memo.get(id(node))
    if known is not None:
        return known
    if isinstance(node, yaml.ScalarNode):
        if node.tag == _STR:
            return node.value
        if node.tag == _INT and _decimal(node.value):
            return int(node.value)  # what the constructor gives, at a tenth of its cost
        return _construct(loader, node)
    if isinstance(node, yaml.MappingNode) and node.tag == _MAP:
        data = LocMap()
        data.line = node.start_mark.line + 1
        data.lines = {}
        memo[id(node)] = data
        building.add(id(node))
        written_first = node.value[0][0] if node.value else None
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = _convert(loader, key_node, memo, building)
            if key_node is written_first:
                data.first = key
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if key in data.lines:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {data.lines[key]})",
                    key_node.start_mark,
                )
            data.lines[key] = key_node.start_mark.line + 1
            data[key] = _convert(loader, value_node, memo, building)
        building.discard(id(node))
        return data
    if isinstance(node, yaml.SequenceNode) and node.tag == _SEQ:
        items = LocList()
        items.line = node.start_mark.line + 1
        items.lines = [child.start_mark.line + 1 for child in node.value]
        memo[id(node)] = items
        building.add(id(node))
        items.extend(_convert(loader, child, memo, building) for child in node.value)
        building.discard(id(node))
        return items
    return _construct(loader, node)


class _Composed(Exception):
    """This document needs the composed path: an anchor, an alias, an explicit tag, a merge
    key, or something wrong, whose error the composed path reports."""


_KEY_TAGS_COMPOSED = frozenset({"tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"})


def _from_events(loader: _Loader) -> Any:
    """Build a plain document straight from the parser's events, never holding its node tree.

    The same values, lines and first keys as ``_convert`` over the composed tree, whose nodes
    and marks take several times the memory of the values they become (450 MB for a profile of
    100000 files). Whatever this path does not handle raises ``_Composed``.
    """
    get = loader.get_event
    get()  # StreamStartEvent
    event = get()
    if isinstance(event, yaml.StreamEndEvent):
        return None
    if not isinstance(event, yaml.DocumentStartEvent):
        raise _Composed
    # Open collections: [collection, key waiting for its value (or _NO_KEY), that key's line]
    stack: list[list[Any]] = []
    result: Any = None
    while True:
        event = get()
        kind = event.__class__
        if kind is yaml.ScalarEvent:
            if event.anchor is not None or event.tag not in (None, "!"):
                raise _Composed
            line = event.start_mark.line + 1
            text = event.value
            tag = loader.resolve(yaml.ScalarNode, text, event.implicit)
            if tag == _STR:
                value: Any = text
            elif tag == _INT and _decimal(text):
                value = int(text)
            elif tag in _KEY_TAGS_COMPOSED:
                raise _Composed
            else:
                node = yaml.ScalarNode(tag, text, event.start_mark, event.end_mark, event.style)
                value = _construct(loader, node)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            if event.anchor is not None or event.tag not in (None, "!"):
                raise _Composed
            collection: LocMap | LocList
            if kind is yaml.MappingStartEvent:
                collection = LocMap()
                collection.lines = {}
            else:
                collection = LocList()
                collection.lines = []
            collection.line = event.start_mark.line + 1
            stack.append([collection, _NO_KEY, 0])
            continue
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            value = stack.pop()[0]
            line = value.line
        elif kind is yaml.DocumentEndEvent:
            break
        else:  # an alias
            raise _Composed
        if not stack:
            result = value
            continue
        top = stack[-1]
        into = top[0]
        if into.__class__ is LocList:
            into.append(value)
            into.lines.append(line)
        elif top[1] is _NO_KEY:
            try:
                if value in into.lines:  # a duplicate; hash() refuses a collection as key
                    raise _Composed
            except TypeError:
                raise _Composed from None
            if not into.lines:
                into.first = value
            top[1], top[2] = value, line
        else:
            into.lines[top[1]] = top[2]
            into[top[1]] = value
            top[1] = _NO_KEY
    if not isinstance(get(), yaml.StreamEndEvent):
        raise _Composed  # more than one document
    return result


_NO_KEY = object()


# Only flow collections, anchors and aliases can nest deeply on few bytes or expand. Block
# nesting costs at least one column per two levels (a sequence may sit at its key's column),
# written as indentation or as "- " and "? " indicators: a line that starts that far in is
# checked level by level.
_RISKY = re.compile(r"[\[{*&]")
_DEEP_INDENT = re.compile(rf"^[ ?:-]{{{MAX_DEPTH // 2},}}", re.MULTILINE)


def _check_bounds(text: str, name: str) -> None:
    if not _RISKY.search(text) and not _DEEP_INDENT.search(text):
        return
    depth = 0
    aliases = 0
    try:
        for event in yaml.parse(text, Loader=_BaseLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark: Any = event.start_mark
                    raise ModelError.one(
                        f"nesting deeper than {MAX_DEPTH} levels",
                        Location(name, mark.line + 1 if mark is not None else None),
                        "parse",
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
    except yaml.YAMLError:
        return  # the real parse below reports it with its line
    if aliases:
        _check_expansion(text, name)


def _check_expansion(text: str, name: str) -> None:
    """Refuse documents whose aliases would expand past MAX_NODES (billion laughs)."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a recursive alias counts once; the constructor refuses loops
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        sizes[id(node)] = total
        return total

    try:
        roots = list(yaml.compose_all(text, Loader=_BaseLoader))
    except yaml.YAMLError:
        return  # an undefined alias, say: the real parse below reports it with its line
    for root in roots:
        if root is not None and size(root) > MAX_NODES:
            raise ModelError.one(
                f"aliases expand to more than {MAX_NODES} nodes", Location(name), "parse"
            )


class ParseCache:
    """Parsed large documents, by the sha256 of their bytes, so a run with an unchanged repo
    does not parse its big profiles again. Kept under the state directory, and used only
    while that directory is ours alone (it holds pickles)."""

    MIN_BYTES = 64 * 1024
    KEEP = 32

    def __init__(self, directory: Path, readonly: bool = False) -> None:
        self.directory = directory
        self.readonly = readonly  # plan writes no state, but may use what is there

    def _usable(self) -> bool:
        try:
            if not self.readonly:
                self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            st = os.stat(self.directory)
        except OSError:
            return False
        return st.st_uid == os.geteuid() and not st.st_mode & 0o022

    def get(self, key: str) -> Any:
        if not self._usable():
            return None
        try:
            with open(self.directory / f"{key}.pickle", "rb") as f:
                return pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            return None

    def put(self, key: str, value: Any) -> None:
        if self.readonly or not self._usable():
            return
        path = self.directory / f"{key}.pickle"
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            atomic_write(path, data, mode=0o600)
            entries = sorted(self.directory.glob("*.pickle"), key=lambda p: p.stat().st_mtime)
            for stale in entries[: -self.KEEP]:
                stale.unlink()
        except (OSError, ReconcilerError):  # a cache that cannot be written is no cache
            pass


_cache: ParseCache | None = None


def use_cache(cache: ParseCache | None) -> None:
    """Cache parsed large documents from now on (None: stop)."""
    global _cache
    _cache = cache


def load(data: bytes | str, name: str) -> Any:
    """Parse one YAML document safely; ``name`` is the repo-relative file for errors."""
    cache = _cache
    if cache is not None and len(data) >= ParseCache.MIN_BYTES:
        raw = data if isinstance(data, bytes) else data.encode()
        key = hashlib.sha256(raw).hexdigest()
        value = cache.get(key)
        if value is None:
            value = _load(data, name)
            if value is not None:
                cache.put(key, value)
        return value
    return _load(data, name)


def _load(data: bytes | str, name: str) -> Any:
    if len(data) > MAX_BYTES:
        raise ModelError.one(f"file is larger than {MAX_BYTES} bytes", Location(name), "parse")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelError.one(f"not UTF-8 text: {exc}", Location(name), "parse") from None
    else:
        text = data
    _check_bounds(text, name)
    loader = _Loader(text)
    try:
        return _from_events(loader)
    except (_Composed, yaml.YAMLError):
        pass  # composed below, which reports an error with its line
    finally:
        loader.dispose()
    return _composed(text, name)


def _composed(text: str, name: str) -> Any:
    """The document through PyYAML's composer (its node tree), then ``_convert``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _convert(loader, node, {})
    except yaml.MarkedYAMLError as exc:
        mark: Any
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}: {problem}"
        raise ModelError.one(f"invalid YAML: {problem}", Location(name, line), "parse") from None
    except yaml.YAMLError as exc:
        raise ModelError.one(f"invalid YAML: {exc}", Location(name), "parse") from None
    except RecursionError:
        raise ModelError.one("document nests too deeply", Location(name), "parse") from None
    finally:
        loader.dispose()
