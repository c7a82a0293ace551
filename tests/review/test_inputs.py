"""Which nodes share a compiled catalog: only those for which every fact the revision may read
agrees (and the name, when it may read it). A node sharing a catalog it should not would be
shown another node's changes; these cases would catch that."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.review.fleet import FleetDiff, Request, diff_fleet
from tests.conftest import commit_all, write_tree

NODES = {
    "web-1": {"os": {"family": "Debian"}, "dc": "east", "uptime_seconds": 1},
    "web-2": {"os": {"family": "Debian"}, "dc": "east", "uptime_seconds": 2},
    "web-3": {"os": {"family": "Debian"}, "dc": "west", "uptime_seconds": 3},
}


def fleet_diff(tmp_path: Path, files: dict[str, str], content: str) -> FleetDiff:
    """Two commits of a repo whose one file's content is ``content`` (with OLD, then NEW)."""
    base = {
        "nodes.yaml": "default: web\n",
        "roles/web.yaml": "profiles: [p]\n",
        "profiles/p.yaml": f"""
            resources:
              - file: /etc/f
                content: "{content}"
        """,
        **files,
    }
    repo = write_tree(tmp_path / "repo", {k: v.replace("VERSION", "OLD") for k, v in base.items()})
    commit_all(repo, "base")
    write_tree(repo, {k: v.replace("VERSION", "NEW") for k, v in base.items()})
    commit_all(repo, "change")
    facts: dict[str, dict[str, Any]] = {n: {**f, "node": n} for n, f in NODES.items()}
    return diff_fleet(Request(str(repo), "HEAD~1", "HEAD", facts, workers=1))


def after(result: FleetDiff, node: str) -> str:
    change = next(n for n in result.nodes if n.node == node).resources[0]
    return change.changes[0].after or ""


CASES = [
    # (files, the file's content, catalogs compiled per revision)
    ({}, "VERSION {{ facts.os.family }}", 1),  # every node reads the same os
    ({}, "VERSION {{ facts.dc }}", 2),  # east and west
    ({}, "VERSION {{ facts['dc'] }}", 3),  # not a plain name: every fact counts
    ({}, "VERSION {{ facts.get('dc') }}", 3),
    ({}, "VERSION {{ facts | tojson }}", 3),
    ({}, "VERSION {{ node }}", 3),
    ({}, "VERSION {{ lookup('greeting') }}", 2),  # data that reads a fact
]


@pytest.mark.parametrize(("files", "content", "per_revision"), CASES)
def test_a_catalog_is_shared_only_by_nodes_that_agree_on_what_it_reads(
    tmp_path: Path, files: dict[str, str], content: str, per_revision: int
) -> None:
    if "lookup" in content:
        files = {"data/common.yaml": 'greeting: "hello %{facts.dc}"\n'}
    result = fleet_diff(tmp_path, files, content)
    assert result.compiles == 2 * per_revision
    if "dc" in content or "lookup" in content:
        assert "east" in after(result, "web-1") and "west" in after(result, "web-3")
    if "node" in content:
        assert [after(result, n) for n in NODES] == [f"NEW {n}" for n in NODES]


def test_a_data_file_named_after_one_node_gives_it_its_own_catalog(tmp_path: Path) -> None:
    result = fleet_diff(
        tmp_path,
        {
            "data/common.yaml": "p:\n  word: common\n",
            "data/nodes/web-2.yaml": "p:\n  word: own\n",
            "profiles/p.yaml": """
                params:
                  word: x
                resources:
                  - file: /etc/f
                    content: "VERSION {{ params.word }}"
            """,
        },
        "",
    )
    assert result.compiles == 4  # web-1 and web-3 share one; web-2 has its own
    assert [after(result, n) for n in NODES] == ["NEW common", "NEW own", "NEW common"]


def test_an_app_component_chosen_by_a_fact_counts_that_fact(tmp_path: Path) -> None:
    app = """
        version: "VERSION"
        components:
          - name: c
            nodes: {facts: {dc: east}}
            resources:
              - file: /etc/app
                content: "{{ app.version }}"
    """
    result = fleet_diff(tmp_path, {"apps/a.yaml": app}, "same")
    assert result.compiles == 4
    assert {n.node: n.apps for n in result.nodes} == {
        "web-1": [("a/c", "OLD", "NEW")],
        "web-2": [("a/c", "OLD", "NEW")],
        "web-3": [],
    }


def test_an_app_component_chosen_by_name_counts_whether_the_name_matches(
    tmp_path: Path,
) -> None:
    app = """
        version: "VERSION"
        components:
          - name: c
            nodes: {match: "web-[12]"}
            resources:
              - file: /etc/app
                content: "{{ app.version }}"
    """
    result = fleet_diff(tmp_path, {"apps/a.yaml": app}, "same")
    assert result.compiles == 4  # web-1 and web-2 share one catalog, web-3 has its own
    assert {n.node: n.apps for n in result.nodes} == {
        "web-1": [("a/c", "OLD", "NEW")],
        "web-2": [("a/c", "OLD", "NEW")],
        "web-3": [],
    }
