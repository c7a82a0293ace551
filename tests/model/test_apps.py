"""apps/<app>.yaml: loading, validation with file and line, and compilation into a catalog."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import ModelError
from reconciler.model.catalog import Compiler, repo_warnings, validate_repo
from reconciler.source import DirectorySnapshot
from tests.model.test_catalog import BASE, FACTS, problems

SHOP = """\
version: "2.1"
components:
  - name: db
    nodes: {match: "db-*"}
    resources:
      - file: /srv/db.conf
        content: "db {{ app.name }} {{ app.version }} on {{ node }}\\n"
  - name: api
    nodes: {role: web}
    requires: [db]
    resources:
      - file: /srv/api.conf
        content: "{{ app.version }}"
        require: file:/etc/base
    health: {http: "http://127.0.0.1:8080/health", timeout: 5}
"""


def snapshot(make_repo: Callable[..., Path], files: dict[str, str]) -> DirectorySnapshot:
    profile = "resources:\n  - file: /etc/base\n    content: base\n"
    files = {**BASE, "profiles/web.yaml": profile, **files}
    return DirectorySnapshot(make_repo({k: textwrap.dedent(v) for k, v in files.items()}))


def test_components_join_the_catalog_of_the_nodes_that_run_them(
    make_repo: Callable[..., Path],
) -> None:
    snap = snapshot(make_repo, {"apps/shop.yaml": SHOP})
    web = Compiler(snap).compile("web-1", FACTS)
    assert [d.key for d in web.deployments] == ["shop/api"]
    entry = web.entries["file:/srv/api.conf"]
    assert entry.origin == "app:shop/api"
    assert entry.resource.attrs["content"] == "2.1"
    assert web.after["file:/srv/api.conf"] == {"file:/etc/base"}  # app -> profile relation
    db = Compiler(snap).compile("db-7", FACTS)
    assert [d.key for d in db.deployments] == ["shop/db"]
    assert db.entries["file:/srv/db.conf"].resource.attrs["content"] == "db shop 2.1 on db-7\n"
    assert Compiler(snap).compile("other", FACTS).deployments == []


def test_every_problem_of_an_app_is_named_with_its_line(make_repo: Callable[..., Path]) -> None:
    bad = """\
    version: 2
    colour: blue
    components:
      - name: db
        nodes: {match: "db-*"}
        requires: [cache]
        max_parallel: 0
      - name: api
        nodes: {zone: a}
        health: {command: "true", http: "http://x/"}
        on_failure: retry
    """
    with pytest.raises(ModelError) as exc:
        Compiler(snapshot(make_repo, {"apps/shop.yaml": bad})).compile("web-1", FACTS)
    assert problems(exc) == [
        "apps/shop.yaml:2, key 'colour': unknown key 'colour' in an app",
        "apps/shop.yaml:6, key 'requires': component 'db' requires 'cache', which is not a component "
        "of app 'shop'",
        "apps/shop.yaml:7, key 'max_parallel': must be a whole number of at least 1",
        "apps/shop.yaml:9, key 'nodes': needs nodes: {role: NAME}, {match: GLOB or /REGEX/}, "
        "{facts: {PATH: VALUE}} or {trusted: {PATH: VALUE}} (several conditions must all hold)",
        "apps/shop.yaml:10, key 'health': give exactly one of command and http",
        "apps/shop.yaml:11, key 'on_failure': must be halt or rollback, not 'retry'",
    ]


def test_components_that_require_each_other_are_a_named_cycle(
    make_repo: Callable[..., Path],
) -> None:
    cyclic = """\
    version: "1"
    components:
      - {name: a, nodes: {role: web}, requires: [c]}
      - {name: b, nodes: {role: web}, requires: [a]}
      - {name: c, nodes: {role: web}, requires: [b]}
    """
    with pytest.raises(ModelError) as exc:
        Compiler(snapshot(make_repo, {"apps/x.yaml": cyclic})).compile("web-1", FACTS)
    assert problems(exc) == [
        "apps/x.yaml:3, key 'requires': components require each other: a -> c -> b -> a"
    ]


def test_a_component_resource_clashing_with_a_profile_is_a_duplicate(
    make_repo: Callable[..., Path],
) -> None:
    clash = SHOP.replace("/srv/api.conf", "/etc/base").replace(
        "        require: file:/etc/base\n", ""
    )
    with pytest.raises(ModelError) as exc:
        Compiler(snapshot(make_repo, {"apps/shop.yaml": clash})).compile("web-1", FACTS)
    assert "duplicate resource file:/etc/base (also declared at profiles/web.yaml:2)" in str(
        exc.value
    )


def test_validate_compiles_every_component_and_warns_about_unmatched_ones(
    make_repo: Callable[..., Path],
) -> None:
    broken = SHOP.replace("{{ node }}", "{{ nodes }}") + (
        '  - name: cache\n    nodes: {role: cache}\n  - name: edge\n    nodes: {match: "edge-*"}\n'
    )
    snap = snapshot(make_repo, {"apps/shop.yaml": broken})
    found = [str(p) for p in validate_repo(snap, FACTS, "web-1")]
    assert any(
        p == "apps/shop.yaml:7, key 'content': template error: 'nodes' is undefined" for p in found
    ), found
    warnings = repo_warnings(snap)
    assert warnings == [
        "apps/shop.yaml:16: component shop/cache runs on role 'cache', which nodes.yaml never gives"
    ]  # edge-* could be any node: nodes.yaml has a default role
