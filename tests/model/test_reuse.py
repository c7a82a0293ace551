"""Defined types, for_each and classification patterns through the model API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import ModelError
from reconciler.model import catalog as catalogmod
from reconciler.model.catalog import Compiler
from reconciler.model.match import name_matches, pattern_problem
from reconciler.source import DirectorySnapshot

BASE = {"nodes.yaml": "default: web\n", "roles/web.yaml": "profiles: [web]\n"}
FACTS = {"os": {"family": "Debian"}}


def test_instance_resources_record_their_instance_and_the_instance_is_a_group(
    make_repo: Callable[..., Path],
) -> None:
    repo = make_repo(
        {
            **BASE,
            "types/site.yaml": "resources:\n  - file: '/etc/{{ title }}'\n  - file: '/etc/{{ title }}.d'\n",
            "profiles/web.yaml": "resources:\n  - site: shop\n",
        }
    )
    catalog = Compiler(DirectorySnapshot(repo)).compile("w1", FACTS)
    assert catalog.entries["site[shop]/file:/etc/shop"].origin == "profile:web/site[shop]"
    assert catalog.groups == {
        "site:shop": ["site[shop]/file:/etc/shop", "site[shop]/file:/etc/shop.d"]
    }


def test_a_catalog_is_bounded_whatever_for_each_gives(
    make_repo: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(catalogmod, "MAX_RESOURCES", 50)
    repo = make_repo(
        {
            **BASE,
            "profiles/web.yaml": "resources:\n  - file: '/etc/f{{ item }}'\n    for_each: range(60)\n",
        }
    )
    with pytest.raises(ModelError, match=r"profiles/web\.yaml:2: more than 50 resources"):
        Compiler(DirectorySnapshot(repo)).compile("w1", FACTS)


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("/web-[0-9]+/", "web-1", True),
        ("/web-[0-9]+/", "web-1x", False),
        ("/^web-[0-9]+$/", "web-22", True),
        ("/(db|cache)-[a-z]+/", "cache-east", True),
        ("web-*", "web-anything", True),
        ("/", "/", True),  # one slash is a glob, matching itself
    ],
)
def test_patterns(pattern: str, name: str, matches: bool) -> None:
    assert pattern_problem(pattern) is None
    assert name_matches(name, pattern) is matches


@pytest.mark.parametrize(
    "pattern",
    ["/(a+)+/", "/(a*)*b/", "/(x|xy)+/", "/((ab)+c)*/", "/(a{2,})+/", "/" + "a" * 300 + "/"],
)
def test_risky_or_long_patterns_are_refused(pattern: str) -> None:
    assert pattern_problem(pattern) is not None


@pytest.mark.parametrize("pattern", ["/(ab)+/", "/[(+]+x/", r"/\(a+\)+/", "/(a|b)/"])
def test_plain_repeats_are_allowed(pattern: str) -> None:
    assert pattern_problem(pattern) is None


def test_an_app_component_kept_for_rollback_keeps_its_scoped_ids_and_relationships(
    make_repo: Callable[..., Path],
) -> None:
    from reconciler.apps.rollout import dump_entries, load_entries

    repo = make_repo(
        {
            **BASE,
            "types/site.yaml": "resources:\n  - exec: reload\n    command: 'true'\n"
            "  - file: '/etc/{{ title }}'\n    notify: exec:reload\n",
            "profiles/web.yaml": "resources:\n  - site: shop\n  - file: /etc/x\n    require: site:shop\n",
        }
    )
    catalog = Compiler(DirectorySnapshot(repo)).compile("w1", FACTS)
    back = load_entries(dump_entries(list(catalog.entries.values())))
    assert list(back) == list(catalog.entries)
    assert back["site[shop]/file:/etc/shop"].relations == {"notify": ["site[shop]/exec:reload"]}
    assert back["file:/etc/x"].relations == {
        "require": ["site[shop]/exec:reload", "site[shop]/file:/etc/shop"]
    }


def test_data_keys_named_like_the_loaders_bookkeeping_read_as_data(
    make_repo: Callable[..., Path],
) -> None:
    """``item.line`` of a data mapping is its key ``line``, not the line it was written on."""
    repo = make_repo(
        {
            **BASE,
            "data/common.yaml": (
                "web:\n  rows:\n    - {line: 'PermitRootLogin no', first: a, lines: 3}\n"
            ),
            "profiles/web.yaml": (
                "params:\n  rows: []\n"
                "resources:\n"
                "  - file: '/etc/row-{{ item.first }}'\n"
                "    for_each: '{{ params.rows }}'\n"
                "    content: '{{ item.line }} {{ item.lines }} {{ params.rows.line is undefined }}'\n"
            ),
        }
    )
    catalog = Compiler(DirectorySnapshot(repo)).compile("w1", FACTS)
    entry = catalog.entries["file:/etc/row-a"]
    assert entry.resource.attrs["content"] == "PermitRootLogin no 3 True"
