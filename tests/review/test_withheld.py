"""Facts a node withheld (or dropped for size) from what it published: a review compiles with a
placeholder in each one's place, sensitive, and names them per node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ReconcilerError
from reconciler.review import load_facts_dir
from reconciler.review.fleet import Request, diff_fleet, validate_fleet
from reconciler.review.render import to_json, to_markdown, to_text
from reconciler.review.withheld import placeholder, review_facts
from reconciler.source import open_snapshot
from tests.conftest import commit_all, write_tree

DB = """
    params:
      password: "{{ facts.site.db_password }}"
    sensitive_params: [password]
    resources:
      - file: /etc/db.conf
        content: "password={{ params.password }}\\nregion={{ facts.site.region }}\\n"
      - file: /etc/motd
        content: "hello\\n"
"""
FILES = {
    "nodes.yaml": "nodes:\n  - match: 'db-*'\n    role: db\n  - match: 'web-*'\n    role: web\n",
    "roles/db.yaml": "profiles: [db]\n",
    "roles/web.yaml": "profiles: []\n",
    "profiles/db.yaml": DB,
}


def document(node: str, withheld: list[str], dropped: tuple[str, ...] = ()) -> dict[str, Any]:
    """A node's facts as `reconciler facts --all` gives them: db_password left out."""
    meta = {"taken": "2026-12-01T03:00:00Z", "withheld": withheld, "dropped": list(dropped)}
    return {"_reconciler": meta, "node": node, "site": {"region": "eu-west"}}


FLEET = {
    "db-1": document("db-1", ["site.db_password"]),
    "db-2": document("db-2", ["site.db_password"]),
    "web-1": document("web-1", []),
}


class TestReviewFacts:
    def test_each_left_out_fact_gets_its_placeholder(self) -> None:
        given = document(
            "db-1", ["site.db_password", "keys.<sensitive name>"], ("inventory.disks",)
        )
        found = review_facts("db-1", given)
        assert found.facts == {
            "node": "db-1",
            "site": {"region": "eu-west", "db_password": "<withheld fact site.db_password>"},
            "inventory": {"disks": "<withheld fact inventory.disks>"},
        }
        # a key that was itself sensitive names no fact to fill in: listed all the same
        assert found.withheld == ("site.db_password", "keys.<sensitive name>", "inventory.disks")
        assert found.placeholders == (
            placeholder("site.db_password"),
            placeholder("inventory.disks"),
        )
        assert "db_password" not in given["site"]  # the caller's facts are left as they were

    def test_a_fact_given_by_hand_is_used_and_not_listed(self) -> None:
        given = document("db-1", ["site.db_password", "site.region.code"])
        given["site"]["db_password"] = "typed-in-for-review"
        found = review_facts("db-1", given)
        assert found.facts["site"]["db_password"] == "typed-in-for-review"
        # under a fact that is not a mapping: cannot be filled in, still named
        assert found.withheld == ("site.region.code",)
        assert found.placeholders == ()

    def test_facts_without_the_key_are_used_as_they_are(self) -> None:
        found = review_facts("web-1", {"node": "web-1", "os": {"family": "Debian"}})
        assert (found.facts, found.withheld) == ({"node": "web-1", "os": {"family": "Debian"}}, ())

    @pytest.mark.parametrize(
        ("meta", "says"),
        [
            ("yes", "key '_reconciler': not a mapping"),
            ({"withheld": "site.db_password"}, "key '_reconciler.withheld': not a list"),
            ({"dropped": [1]}, "key '_reconciler.dropped': not a list"),
        ],
    )
    def test_a_malformed_key_is_an_error_naming_node_and_key(self, meta: Any, says: str) -> None:
        with pytest.raises(ReconcilerError, match=f"facts of node db-1: {says}"):
            review_facts("db-1", {"node": "db-1", "_reconciler": meta})


def test_a_facts_dir_keeps_what_was_left_out_and_names_a_bad_key_with_its_line(
    tmp_path: Path,
) -> None:
    directory = write_tree(
        tmp_path / "facts",
        {
            "db-1.yaml": """
                _reconciler: {taken: '2026-12-01T03:00:00Z', withheld: [site.db_password]}
                site: {region: eu-west}
            """
        },
    )
    loaded = load_facts_dir(directory)
    assert review_facts("db-1", loaded["db-1"]).withheld == ("site.db_password",)
    (directory / "db-1.yaml").write_text("node: db-1\n_reconciler:\n  withheld: site.x\n")
    with pytest.raises(ReconcilerError) as raised:
        load_facts_dir(directory)
    assert str(raised.value) == (
        f"facts of node db-1: {directory / 'db-1.yaml'}:2: key '_reconciler.withheld': "
        "not a list of fact paths"
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = write_tree(tmp_path / "repo", FILES)
    commit_all(repo, "base")
    return repo


@pytest.mark.parametrize("workers", [1, 2])
def test_validate_compiles_with_placeholders_and_names_them(
    repo: Path, tmp_path: Path, workers: int
) -> None:
    state = tmp_path / "state"
    snapshot = open_snapshot(str(repo), "HEAD", state)
    stripped = {
        node: {k: v for k, v in d.items() if k != "_reconciler"} for node, d in FLEET.items()
    }
    try:
        # without what was left out, the catalog reading the fact does not compile
        bare = validate_fleet(snapshot, stripped, state, workers=workers)
        assert "has no attribute 'db_password'" in str(bare.nodes[0].problems[0])
        checked = validate_fleet(snapshot, FLEET, state, workers=workers)
    finally:
        getattr(snapshot, "close", lambda: None)()
    assert [(n.node, n.failed, n.withheld) for n in checked.nodes] == [
        ("db-1", False, ("site.db_password",)),
        ("db-2", False, ("site.db_password",)),
        ("web-1", False, ()),
    ]
    assert checked.compiles == 2  # the same placeholder on both db nodes: one catalog


def test_diff_shows_no_change_of_its_own_and_the_placeholder_only_as_a_digest(
    repo: Path,
) -> None:
    write_tree(repo, {"profiles/db.yaml": DB.replace("hello", "hello there")})
    commit_all(repo, "motd")
    result = diff_fleet(Request(str(repo), "HEAD~1", "HEAD", FLEET, workers=1))
    db = {n.node: n for n in result.nodes if n.node.startswith("db-")}
    # db.conf reads the placeholder at both revisions: only the motd changes
    assert [c.id for c in db["db-1"].resources] == ["file:/etc/motd"]
    assert db["db-1"].withheld == ("site.db_password",)
    text = to_text(result)
    assert (
        "node db-1, db-2 (2 nodes): role db\n  compiled with withheld facts: site.db_password\n"
    ) in text
    assert "compiled with withheld facts: site.db_password" in to_markdown(result)
    assert '"withheld_facts": [\n        "site.db_password"\n      ]' in to_json(result)

    write_tree(repo, {"profiles/db.yaml": DB.replace("region=", "zone=")})
    commit_all(repo, "db.conf")
    result = diff_fleet(Request(str(repo), "HEAD~1", "HEAD", FLEET, workers=1))
    (conf,) = [c for c in result.nodes[0].resources if c.id == "file:/etc/db.conf"]
    (content,) = conf.changes
    # sensitive, as the value is on the node: digests, never the text around it
    assert content.before is not None and content.before.startswith("sha256:")
    assert content.after is not None and content.after.startswith("sha256:")
    for shown in (to_text(result), to_json(result), to_markdown(result)):
        assert "<withheld fact" not in shown and "zone=" not in shown
