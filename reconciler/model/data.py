"""Reading data by key: merge behaviour per key, free keys, ``lookup()`` and ``%{...}``.

A key is ``section.name`` (a profile parameter, or one key of a free mapping) or ``name`` (a
free key: any top-level key of a data file that is not a profile's section). ``Lookups`` reads
one node's data levels; every value read from a data file passes through ``data_value`` first,
then its ``%{...}`` interpolations are substituted, then the levels that have the key are
merged as the key's ``lookup_options`` say. Nothing is rendered or executed.

Encrypted values (``ENC[...]``) are decrypted here, when a key is read, by the ``decrypt`` a
compile gives its ``Lookups``: whichever way a value is read (a profile or app parameter,
``lookup()``, ``%{lookup()}``, ``explain``), it is read through ``Lookups.find``, so a value the
node does not read is never decrypted. A ``Found`` that holds a decrypted value, or one
interpolated from it, is ``secret``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from reconciler.errors import Location, ModelError, Problem
from reconciler.model.repo import _MISSING as NO_FACT
from reconciler.model.repo import DataValue, did_you_mean, lookup_fact
from reconciler.model.secrets import TOKEN, encrypted
from reconciler.model.templates import MAX_OUTPUT, _size  # _size: bounded, stops past it
from reconciler.model.yamlload import MAX_DEPTH, LocList, LocMap

MergeMode = Literal["first", "hash", "deep", "unique"]
MERGE_MODES: tuple[MergeMode, ...] = get_args(MergeMode)
OPTION_KEYS = frozenset({"merge", "knockout_prefix"})
HIERA_KEYS = frozenset({"strategy", "knockout_prefix"})  # merge: written as a mapping
RESERVED = "lookup_options"  # the top-level key of a data file that holds its lookup options
_MISSING: Any = object()
# Decrypts one ``ENC[method,body]`` read at a place: its plaintext, or a ModelError there.
Decrypt = Callable[[str, str, Location], str]


def data_value(value: Any, where: Location) -> Any:
    """Every value read from a data file, as written, passes here once per lookup (before its
    interpolations are substituted and before levels are merged)."""
    return value


# -- lookup_options -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LookupOption:
    """How one key (or every key a ``/regex/`` matches) is merged across levels."""

    key: str  # as written
    merge: MergeMode
    knockout_prefix: str | None
    where: Location
    pattern: re.Pattern[str] | None = None

    def matches(self, key: str) -> bool:
        return self.pattern.search(key) is not None if self.pattern else key == self.key


def parse_lookup_options(
    raw: Any, file: str, line: int
) -> tuple[list[LookupOption], list[Problem]]:
    """The options of a ``lookup_options:`` mapping and what is wrong with it."""
    here = Location(file, line, RESERVED)
    if raw is None:  # written, with nothing in it yet
        return [], []
    if not isinstance(raw, LocMap):
        return [], [Problem("lookup_options must be a mapping from keys to options", here)]
    options: list[LookupOption] = []
    problems: list[Problem] = []
    for key, spec in raw.items():
        where = Location(file, raw.line_of(key), f"{RESERVED}.{key}")
        if not isinstance(key, str) or not key:
            problems.append(Problem("a key must be a non-empty string", where))
            continue
        pattern = None
        if len(key) > 1 and key.startswith("/") and key.endswith("/"):
            try:
                pattern = re.compile(key[1:-1])
            except re.error as exc:
                problems.append(Problem(f"not a valid regular expression: {exc}", where))
                continue
        if not isinstance(spec, LocMap):
            problems.append(Problem("must be a mapping like {merge: deep}", where))
            continue
        found = [
            Problem(
                f"unknown key {k!r} in lookup options{did_you_mean(k, OPTION_KEYS)}",
                Location(file, spec.line_of(k), f"{RESERVED}.{key}.{k}"),
            )
            for k in spec
            if k not in OPTION_KEYS
        ]
        merge = spec.get("merge", "first")
        holder, prefix = spec, f"{RESERVED}.{key}"
        if isinstance(merge, LocMap):  # Hiera's form: merge: {strategy: deep, knockout_prefix: -}
            holder, prefix = merge, f"{RESERVED}.{key}.merge"
            found += [
                Problem(
                    f"unknown key {k!r} in merge{did_you_mean(k, HIERA_KEYS)}",
                    Location(file, merge.line_of(k), f"{prefix}.{k}"),
                )
                for k in merge
                if k not in HIERA_KEYS
            ]
            if "knockout_prefix" in spec and "knockout_prefix" in merge:
                found.append(
                    Problem(
                        "give knockout_prefix once, here or in merge",
                        Location(file, spec.line_of("knockout_prefix"), f"{prefix}"),
                    )
                )
            merge = merge.get("strategy", "first")
        if merge not in MERGE_MODES:
            found.append(
                Problem(
                    f"merge must be one of {', '.join(MERGE_MODES)}, not {merge!r}",
                    Location(file, spec.line_of("merge"), f"{RESERVED}.{key}.merge"),
                )
            )
        knockout = holder.get("knockout_prefix", spec.get("knockout_prefix"))
        held = holder if "knockout_prefix" in holder else spec
        at = Location(
            file,
            held.line_of("knockout_prefix"),
            f"{prefix if held is holder else f'{RESERVED}.{key}'}.knockout_prefix",
        )
        if knockout is not None and (not isinstance(knockout, str) or not knockout):
            found.append(Problem("knockout_prefix must be a non-empty string like '--'", at))
        elif knockout is not None and merge != "deep":
            found.append(Problem("knockout_prefix is only for merge: deep", at))
        if found:
            problems += found
            continue
        options.append(LookupOption(key, cast(MergeMode, merge), knockout, where, pattern))
    return options, problems


def option_for(key: str, options: Sequence[LookupOption]) -> LookupOption | None:
    """The option for a key: one written for the key itself, else the first regex matching it."""
    for option in options:
        if option.pattern is None and option.key == key:
            return option
    return next((o for o in options if o.pattern is not None and o.matches(key)), None)


# -- merging ------------------------------------------------------------------------------------


def kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return "a value"


def identity(value: Any) -> Any:
    """What makes two data values the same item of a list (``1`` and ``true`` differ)."""
    if isinstance(value, bool) or value is None:
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, list):
        return ("list", tuple(identity(v) for v in value))
    if isinstance(value, Mapping):
        return ("map", frozenset((identity(k), identity(v)) for k, v in value.items()))
    return (type(value).__name__, repr(value))


def unique(items: Iterable[Any]) -> list[Any]:
    """The items without repeats, each where it was first seen."""
    seen: set[Any] = set()
    kept: list[Any] = []
    for item in items:
        mark = identity(item)
        if mark not in seen:
            seen.add(mark)
            kept.append(item)
    return kept


def _is_marker(value: Any, knockout: str | None) -> bool:
    return knockout is not None and isinstance(value, str) and value.startswith(knockout)


def _knocked(value: Any, names: set[str]) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    return isinstance(value, str | int | float) and str(value) in names


def combine(lower: Any, higher: Any, mode: MergeMode, knockout: str | None = None) -> Any:
    """Two levels' values merged, ``higher`` (the earlier level) over ``lower``.

    Knockout markers are kept (so that they also remove what levels further down set) until
    ``finish`` drops them: merging is then associative, as the docs state."""
    if mode == "first":
        return higher
    if mode == "unique":
        return unique([*_as_list(higher), *_as_list(lower)])
    if mode == "hash":
        return {**lower, **higher}
    if isinstance(lower, Mapping) and isinstance(higher, Mapping):
        gone = {k[len(knockout) :] for k in higher if knockout and _is_marker(k, knockout)}
        merged = {k: v for k, v in lower.items() if _is_marker(k, knockout) or k not in gone}
        for k, v in higher.items():
            both = k in merged and not _is_marker(k, knockout)
            merged[k] = combine(merged[k], v, mode, knockout) if both else v
        return merged
    if isinstance(lower, list) and isinstance(higher, list):
        names = {x[len(knockout) :] for x in higher if knockout and _is_marker(x, knockout)}
        kept = [x for x in lower if _is_marker(x, knockout) or not _knocked(x, names)]
        return unique([*higher, *kept])
    return higher


def finish(value: Any, knockout: str | None) -> Any:
    """A merged value without its knockout markers."""
    if knockout is None:
        return value
    if isinstance(value, Mapping):
        return {k: finish(v, knockout) for k, v in value.items() if not _is_marker(k, knockout)}
    if isinstance(value, list):
        return [finish(v, knockout) for v in value if not _is_marker(v, knockout)]
    return value


def merge_levels(values: Sequence[Any], mode: MergeMode, knockout: str | None = None) -> Any:
    """The values of the levels that have a key, first level first, merged (associatively:
    from the last level up, pairwise)."""
    result = values[-1]
    for value in reversed(values[:-1]):
        result = combine(result, value, mode, knockout)
    if mode == "unique":
        return unique(_as_list(result))
    return finish(result, knockout if mode == "deep" else None)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def merge_problem(found: Sequence[DataValue], mode: MergeMode, knockout: str | None) -> str | None:
    """Why the levels' values cannot be merged this way, or None."""
    if mode == "hash":
        for piece in found:
            if not isinstance(piece.value, Mapping):
                at = f"{piece.where.file}:{piece.where.line}"
                return f"a hash merge needs a mapping at every level; {at} has {kind(piece.value)}"
    elif mode == "unique":
        for piece in found:
            if isinstance(piece.value, Mapping):
                at = f"{piece.where.file}:{piece.where.line}"
                return f"a unique merge needs lists or values; {at} has a mapping"
    elif mode == "deep":
        located = [(p.value, p.where.file or "", p.where.line) for p in found]
        return _kind_conflict(located, "", knockout)
    return None


def _kind_conflict(
    located: list[tuple[Any, str, int | None]], path: str, knockout: str | None
) -> str | None:
    """Two levels that give one path values of different kinds (a deep merge refuses them,
    whatever knockouts say, so that its result does not depend on how levels are grouped)."""
    kinds: dict[str, str] = {}
    for value, file, line in located:
        kinds.setdefault(kind(value), f"{file}:{line}")
    if len(kinds) > 1:
        (k1, at1), (k2, at2) = list(kinds.items())[:2]
        where = f" at {path!r}" if path else ""
        return f"a deep merge cannot combine {k1} ({at1}) with {k2} ({at2}){where}"
    if "a mapping" not in kinds:
        return None
    keys: dict[Any, None] = {}
    for value, _, _ in located:
        keys.update((k, None) for k in value if not _is_marker(k, knockout))
    for key in keys:
        inner = [
            (v[key], file, v.line_of(key) if isinstance(v, LocMap) else line)
            for v, file, line in located
            if key in v
        ]
        problem = _kind_conflict(inner, f"{path}.{key}" if path else str(key), knockout)
        if problem:
            return problem
    return None


# -- lookups ------------------------------------------------------------------------------------


@dataclass
class Found:
    """A key's value for one node and the level values it was merged from, first level first."""

    key: str
    value: Any
    merge: MergeMode
    pieces: list[DataValue]
    option: LookupOption | None = None
    typed: bool = False  # some level's value was one %{...}, which keeps the type it names
    secret: bool = False  # it holds a value encrypted in data (decrypted, or as written)

    def origins(self) -> list[tuple[str, list[DataValue]]]:
        """Each piece of a merged value (a key of a mapping, an item of a list) and the levels
        that gave it, with the line of each."""
        if self.merge == "first":
            return []
        if isinstance(self.value, Mapping):
            return [(str(k), self._giving(k)) for k in self.value]
        if isinstance(self.value, list):
            return [(_show(item), self._holding(item)) for item in self.value]
        return []

    def _giving(self, key: Any) -> list[DataValue]:
        given = [
            DataValue(p.value[key], p.level, _line(p, key))
            for p in self.pieces
            if isinstance(p.value, Mapping) and key in p.value
        ]
        return given[:1] if self.merge == "hash" else given

    def _holding(self, item: Any) -> list[DataValue]:
        mark = identity(item)
        for piece in self.pieces:
            values = _as_list(piece.value)
            for index, value in enumerate(values):
                if identity(value) == mark:
                    line = piece.value.line_of(index) if isinstance(piece.value, LocList) else None
                    return [DataValue(value, piece.level, _at(piece.where, line))]
        return []


def _line(piece: DataValue, key: Any) -> Location:
    value = piece.value
    return _at(piece.where, value.line_of(key) if isinstance(value, LocMap) else None)


def _at(where: Location, line: int | None) -> Location:
    return Location(where.file, line or where.line, where.key)


def _show(item: Any) -> str:
    import json

    try:
        return json.dumps(item, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(item)


_INTERPOLATION = re.compile(r"%\{([^{}]*)\}")
_LOOKUP = re.compile(r"""\s*lookup\(\s*(?:'([^']*)'|"([^"]*)")\s*\)\s*\Z""")
_LITERAL = re.compile(r"""\s*literal\(\s*(?:'([^']*)'|"([^"]*)")\s*\)\s*\Z""")
MAX_CHAIN = 32  # interpolations within interpolations: deeper chains are refused


class LookupMissing(ValueError):
    """``lookup()`` in a template found no value and had no default (a template error)."""


@dataclass
class Lookups:
    """One node's data, read by key; results are cached for the compile."""

    levels: list[tuple[str, str, LocMap]]  # (level as written, file, content), first first
    facts: Mapping[str, Any]
    settings_options: Sequence[LookupOption] = ()
    profiles: Collection[str] = ()  # names of the repo's profiles: not free keys
    decrypt: Decrypt | None = None  # None: encrypted values stay as written (validate)
    read_secret: Callable[[], None] | None = None  # called when lookup() returns a secret value
    options: list[LookupOption] = field(init=False)
    _cache: dict[tuple[str, str | None], Found | None] = field(init=False, default_factory=dict)
    _chain: list[tuple[str, Location | None]] = field(init=False, default_factory=list)
    _secret: list[bool] = field(init=False, default_factory=list)  # per key of _chain

    def __post_init__(self) -> None:
        # Each level's options come before those of the levels after it and of reconciler.yaml.
        self.options = []
        for _, file, content in self.levels:
            if RESERVED in content:
                found, _ = parse_lookup_options(content[RESERVED], file, content.line_of(RESERVED))
                self.options += found
        self.options += self.settings_options

    def option(self, key: str) -> LookupOption | None:
        return option_for(key, self.options)

    def find(self, key: str, merge: MergeMode | None = None) -> Found | None:
        """The key's value, merged as its options (or ``merge``) say; None when no level has it.
        A ModelError when the levels' values cannot be merged or an interpolation fails."""
        cached = (key, merge)
        if cached in self._cache:
            return self._cache[cached]
        names = [k for k, _ in self._chain]
        if key in names:
            steps = [
                f"{k} ({at.file}:{at.line})" if at else k
                for k, at in self._chain[names.index(key) :]
            ]
            raise ModelError.one(
                "interpolation cycle: " + " -> ".join([*steps, key]),
                self._chain[-1][1] or Location(key=key),
            )
        if len(self._chain) > MAX_CHAIN:
            raise ModelError.one(
                f"interpolations nested more than {MAX_CHAIN} deep",
                self._chain[-1][1] or Location(),
            )
        self._chain.append((key, None))
        self._secret.append(False)
        try:
            found = self._find(key, merge)
        except RecursionError:  # values nested in values through %{lookup()}, past Python's stack
            raise ModelError.one(
                "the value is nested too deeply once its %{...} are substituted",
                next((at for _, at in reversed(self._chain) if at), Location(key=key)),
            ) from None
        finally:
            self._chain.pop()
            secret = self._secret.pop()
        if found is not None and secret:
            found.secret = True
        self._cache[cached] = found
        return found

    def _find(self, key: str, merge: MergeMode | None) -> Found | None:
        option = self.option(key)
        mode: MergeMode = merge or (option.merge if option else "first")
        knockout = option.knockout_prefix if option and mode == "deep" else None
        pieces: list[DataValue] = []
        typed = False
        for level, file, content in self.levels:
            read = _read(content, key)
            if read is None:
                continue
            raw, line = read
            where = Location(file, line, key)
            value = data_value(raw, where)
            if encrypted(value):
                self._secret[-1] = True
            typed = typed or (isinstance(value, str) and _whole(value) is not None)
            substituted = self.interpolate(value, where)
            if substituted is not value and _size(substituted) > MAX_OUTPUT:
                raise ModelError.one(
                    f"the value is larger than {MAX_OUTPUT} bytes written out once its %{{...}} "
                    f"are substituted",
                    where,
                )
            if substituted is not value and _too_deep(substituted):
                raise ModelError.one(
                    f"the value nests more than {MAX_DEPTH} levels deep once its %{{...}} are "
                    f"substituted",
                    where,
                )
            pieces.append(DataValue(substituted, level, where))
            if mode == "first":
                break
        if not pieces:
            return None
        problem = merge_problem(pieces, mode, knockout)
        if problem:
            raise ModelError.one(f"{key!r} (merge: {mode}): {problem}", pieces[0].where)
        value = merge_levels([p.value for p in pieces], mode, knockout)
        return Found(key, value, mode, pieces, option, typed)

    def lookup(self, key: Any, default: Any = _MISSING, merge: Any = None) -> Any:
        """``lookup('key', default=..., merge=...)`` in templates and values."""
        if not isinstance(key, str) or not key:
            raise ValueError(f"lookup: the key must be a non-empty string, not {key!r}")
        if merge is not None and merge not in MERGE_MODES:
            raise ValueError(
                f"lookup: merge must be one of {', '.join(MERGE_MODES)}, not {merge!r}"
            )
        self.check_key(key)
        found = self.find(key, merge)
        if found is not None:
            if found.secret and self.read_secret is not None:
                self.read_secret()
            return found.value
        if default is not _MISSING:
            return default
        raise LookupMissing(f"lookup({key!r}): {self.not_found(key)}, and no default= was given")

    def check_key(self, key: str) -> None:
        if key.count(".") > 1:
            raise ValueError(f"lookup: {key!r} has more than one '.' (write 'section.name')")
        if key in self.profiles:
            raise ValueError(
                f"lookup: {key!r} is a profile; look up one of its parameters as '{key}.<name>'"
            )
        if key == RESERVED:
            raise ValueError(f"lookup: {RESERVED!r} is not data")

    def not_found(self, key: str) -> str:
        searched = ", ".join(file for _, file, _ in self.levels) or "no data file"
        return f"no data level has {key!r} (searched: {searched})"

    # -- interpolation --------------------------------------------------------------------------

    def interpolate(self, value: Any, where: Location) -> Any:
        """A data value with each ``%{...}`` substituted and each ``ENC[...]`` decrypted (strings
        in lists and mappings too); the value itself when there is none."""
        if isinstance(value, str):
            if self.decrypt is not None and "ENC[" in value:
                return self._reveal(value, where)
            if "%{" not in value:
                return value
            whole = _whole(value)
            if whole is not None:
                return self._substitute(whole, where)
            text = _INTERPOLATION.sub(lambda m: self._text(m.group(1), where), value)
            if len(text) > MAX_OUTPUT:
                raise ModelError.one(
                    f"the value is larger than {MAX_OUTPUT} bytes written out once its %{{...}} "
                    f"are substituted",
                    where,
                )
            return text
        if isinstance(value, LocList):
            items = [self.interpolate(v, _at(where, value.line_of(i))) for i, v in enumerate(value)]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            copy = LocList(items)
            copy.line, copy.lines = value.line, value.lines
            return copy
        if isinstance(value, LocMap):
            values = {
                k: self.interpolate(v, _at(where, value.line_of(k))) for k, v in value.items()
            }
            if all(values[k] is v for k, v in value.items()):
                return value
            mapping = LocMap(values)
            mapping.line, mapping.lines, mapping.first = value.line, value.lines, value.first
            return mapping
        return value

    def _reveal(self, value: str, where: Location) -> str:
        """A string with its ``ENC[...]`` tokens decrypted and the ``%{...}`` of the text around
        them substituted: a plaintext is used as it is, never substituted into."""
        assert self.decrypt is not None
        if "ENC[" in TOKEN.sub("", value):  # a value cut short would be written as it is
            raise ModelError.one(
                "an ENC[ that is not a whole ENC[METHOD,base64] token (cut short?)", where
            )
        whole = TOKEN.fullmatch(value.strip())
        if whole is not None:  # eyaml's block form ends in a newline that is not the secret's
            return self.decrypt(whole.group(1), whole.group(2), where)
        pieces: list[str] = []
        start = 0
        for token in TOKEN.finditer(value):
            pieces.append(self._texts(value[start : token.start()], where))
            pieces.append(self.decrypt(token.group(1), token.group(2), where))
            start = token.end()
        pieces.append(self._texts(value[start:], where))
        return "".join(pieces)

    def _texts(self, text: str, where: Location) -> str:
        if "%{" not in text:
            return text
        return _INTERPOLATION.sub(lambda m: self._text(m.group(1), where), text)

    def _text(self, expression: str, where: Location) -> str:
        value = self._substitute(expression, where)
        if isinstance(value, Mapping | list):
            raise ModelError.one(
                f"%{{{expression}}} is {kind(value)}, which cannot be put inside text "
                f"(a value that is only %{{...}} keeps its type)",
                where,
            )
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def _substitute(self, expression: str, where: Location) -> Any:
        text = expression.strip()
        if text.startswith("facts."):
            value = lookup_fact(self.facts, text[6:])
            if value is NO_FACT:
                raise ModelError.one(
                    f"%{{{expression}}}: this node has no fact {text[6:]!r}", where
                )
            return value
        literal = _LITERAL.match(text)
        if literal:
            return literal.group(1) if literal.group(1) is not None else literal.group(2)
        named = _LOOKUP.match(text)
        if not named:
            raise ModelError.one(
                f"%{{{expression}}}: write %{{facts.<path>}}, %{{lookup('<key>')}} or "
                f"%{{literal('%')}}",
                where,
            )
        key = named.group(1) if named.group(1) is not None else named.group(2)
        try:
            self.check_key(key)
        except ValueError as exc:
            raise ModelError.one(f"%{{{expression}}}: {exc}", where) from None
        if self._chain:
            self._chain[-1] = (self._chain[-1][0], where)
        found = self.find(key)
        if found is None:
            raise ModelError.one(f"%{{{expression}}}: {self.not_found(key)}", where)
        if found.secret and self._secret:
            self._secret[-1] = True
        return found.value


def _too_deep(value: Any) -> bool:
    """Whether a value nests deeper than a data file may (measured after its size, which
    bounds the walk)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping | list):
            if depth >= MAX_DEPTH:
                return True
            stack += [
                (v, depth + 1) for v in (item.values() if isinstance(item, Mapping) else item)
            ]
    return False


def _whole(value: str) -> str | None:
    """The expression of a string that is exactly one ``%{...}``."""
    match = _INTERPOLATION.fullmatch(value)
    return match.group(1) if match else None


def _read(content: LocMap, key: str) -> tuple[Any, int] | None:
    """A key's value in one data file, with its line."""
    section, dot, name = key.partition(".")
    if section == RESERVED or section not in content:
        return None
    if not dot:
        return content[section], content.line_of(section)
    inner = content[section]
    if isinstance(inner, LocMap) and name in inner:
        return inner[name], inner.line_of(name)
    return None


def function(lookups: Lookups) -> Callable[..., Any]:
    """``lookup`` as templates and values call it."""

    def lookup(key: Any, default: Any = _MISSING, merge: Any = None) -> Any:
        return lookups.lookup(key, default, merge)

    return lookup
