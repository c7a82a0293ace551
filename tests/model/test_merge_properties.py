"""Properties of merging data levels, as docs/control-repo.md states them.

Levels are merged pairwise, a level over the merge of the levels after it; a knockout removes
what any level after it set; and the grouping does not matter: merging the first k levels,
then that over the merge of the rest, gives the same value as merging all of them at once.
"""

from __future__ import annotations

import json
from functools import reduce
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import Location
from reconciler.model.data import (
    LookupOption,
    Lookups,
    MergeMode,
    combine,
    finish,
    merge_levels,
)
from reconciler.model.yamlload import load

KO = "--"
SCALARS = st.one_of(st.integers(-3, 3), st.sampled_from(["x", "y", "z", "1"]), st.booleans())
# An item of a list: a value, or a knockout of one.
ITEMS = st.one_of(SCALARS, st.sampled_from(["--x", "--y", "--1", "--2"]))


def mappings(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings whose keys say their kind (a, b: values; l: a list; m, n: a mapping), so that
    no two levels give one path values of different kinds; ``--k`` keys are knockouts."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "a": SCALARS,
        "b": SCALARS,
        "l": st.lists(ITEMS, max_size=4),
        "--a": st.none(),
        "--l": st.none(),
        "--m": st.none(),
    }
    if depth > 0:
        fields["m"] = st.deferred(lambda: mappings(depth - 1))
        fields["n"] = st.deferred(lambda: mappings(depth - 1))
    return st.fixed_dictionaries({}, optional=fields)


LEVELS = st.lists(mappings(), min_size=1, max_size=5)


def fold(levels: list[Any], mode: MergeMode) -> Any:
    """Levels merged pairwise from the last up, knockouts kept."""
    return reduce(lambda lower, higher: combine(lower, higher, mode, KO), reversed(levels))


def same(a: Any, b: Any) -> bool:
    """Equal, with mapping keys and list items in the same order."""
    return json.dumps(a) == json.dumps(b)


@settings(max_examples=300, deadline=None)
@given(LEVELS, st.data())
def test_deep_merging_is_associative(levels: list[dict[str, Any]], data: st.DataObject) -> None:
    k = data.draw(st.integers(1, len(levels)), label="split")
    whole = merge_levels(levels, "deep", KO)
    if k == len(levels):
        grouped = finish(fold(levels, "deep"), KO)
    else:
        grouped = finish(
            combine(fold(levels[k:], "deep"), fold(levels[:k], "deep"), "deep", KO), KO
        )
    assert same(grouped, whole)


@settings(max_examples=200, deadline=None)
@given(LEVELS)
def test_a_knockout_removes_what_the_levels_after_it_set(levels: list[dict[str, Any]]) -> None:
    merged = merge_levels(levels, "deep", KO)

    def first(predicate: Any) -> int:
        return next((i for i, level in enumerate(levels) if predicate(level)), len(levels))

    if "a" in merged:  # set by a level before any that knocks it out
        assert first(lambda level: "a" in level) <= first(lambda level: "--a" in level)
    for item in merged.get("l", []):
        text = item if isinstance(item, str) else str(item)
        knocked = first(lambda level, text=text: KO + text in level.get("l", []))
        assert first(lambda level, item=item: item in level.get("l", [])) <= knocked
    assert not any(isinstance(k, str) and k.startswith(KO) for k in merged)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(SCALARS, max_size=5), min_size=1, max_size=5), st.data())
def test_unique_keeps_each_item_once_where_first_seen(
    levels: list[list[Any]], data: st.DataObject
) -> None:
    merged = merge_levels(levels, "unique")
    seen: list[str] = []
    for item in (i for level in levels for i in level):
        if json.dumps(item) not in seen:
            seen.append(json.dumps(item))
    assert [json.dumps(i) for i in merged] == seen
    k = data.draw(st.integers(1, len(levels)), label="split")
    assert merge_levels([merge_levels(levels[:k], "unique"), *levels[k:]], "unique") == merged


@settings(max_examples=200, deadline=None)
@given(LEVELS)
def test_hash_takes_each_key_from_the_first_level_that_has_it(
    levels: list[dict[str, Any]],
) -> None:
    merged = merge_levels(levels, "hash")
    assert set(merged) == {key for level in levels for key in level}
    for key, value in merged.items():
        assert same(value, next(level[key] for level in levels if key in level))


@settings(max_examples=100, deadline=None)
@given(LEVELS, st.data())
def test_a_lookup_merges_the_levels_of_real_data_files(
    levels: list[dict[str, Any]], data: st.DataObject
) -> None:
    files = [
        (
            f"level{i}",
            f"data/{i}.yaml",
            load(yaml.safe_dump({"key": level}, sort_keys=False).encode(), f"{i}.yaml"),
        )
        for i, level in enumerate(levels)
    ]
    option = LookupOption("key", "deep", KO, Location("reconciler.yaml", 2))
    found = Lookups(files, {}, [option]).find("key")
    assert found is not None
    k = data.draw(st.integers(1, len(levels)), label="split")
    upper, lower = fold(levels[:k], "deep"), fold(levels[k:], "deep") if k < len(levels) else {}
    assert same(found.value, finish(combine(lower, upper, "deep", KO), KO))
    assert [p.where.file for p in found.pieces] == [file for _, file, _ in files]
