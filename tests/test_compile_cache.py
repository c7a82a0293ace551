"""The daemon's compiled-catalog cache, through ``reconcile()`` (the daemon's own run path): a run
re-checks the catalog compiled before while nothing it was compiled from changed, and compiles
again when any input changed, with what the change means applied at that run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from reconciler.apps.store import CoordinationConfig, LocalStore
from reconciler.model import exports as exportsmod
from reconciler.model.secrets import SecretsConfig
from reconciler.reconcile import CompileCache, Outcome, OutcomeKind, Pinned, RunOptions, reconcile
from tests.conftest import commit_all, git, seed_root, write_tree

PROFILE = """\
resources:
  - file: /etc/motd
    content: "{{ facts.site | default('none') }} {{ lookup('greeting') }}\\n"
  - file: /srv/app.conf
    content: "threads=4\\n"
"""

REPO = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": PROFILE,
    "data/common.yaml": "greeting: hello\n",
}


class Node:
    """One node's root, state directory and facts, run through reconcile() with one cache, as
    the daemon runs it: the revision pinned, read from the mirror of the control repo."""

    def __init__(self, tmp: Path, files: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.repo = write_tree(tmp / "repo", files or REPO)
        commit_all(self.repo, "first")
        self.root = seed_root(tmp / "root")
        self.state = tmp / "state"
        self.state.mkdir(mode=0o700)
        self.facts_d = tmp / "facts.d"
        self.facts_d.mkdir()
        self.cache = CompileCache()
        self.options: dict[str, Any] = {}

    def run(self, **options: Any) -> Outcome:
        outcome = self.attempt(**options)
        assert outcome.ran and outcome.report is not None, (outcome.kind, outcome.message)
        assert not outcome.report.failed, outcome.report.to_dict()
        return outcome

    def attempt(self, **options: Any) -> Outcome:
        """One run, however it ends."""
        head = git(self.repo, "rev-parse", "HEAD")
        given: dict[str, Any] = {
            "repo": str(self.repo),
            "ref": "main",
            "node": "node-1",
            "root": self.root,
            "state_dir": self.state,
            "facts_dirs": [self.facts_d],
            "timeout": 30,
            **self.options,
            **options,
        }
        return reconcile(
            RunOptions(**given), pinned=Pinned(head, "main", "missing"), cache=self.cache
        )

    def compiled(self, **options: Any) -> bool:
        outcome = self.run(**options)
        assert outcome.report is not None
        return outcome.report.compiled

    def motd(self) -> str:
        return (self.root / "etc/motd").read_text()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


def test_a_run_with_nothing_changed_does_not_compile_and_still_repairs_drift(node: Node) -> None:
    assert node.compiled()
    assert node.motd() == "none hello\n"
    conf = node.root / "srv/app.conf"
    conf.write_text("tampered\n")
    outcome = node.run()
    assert outcome.report is not None and not outcome.report.compiled
    assert outcome.report.to_dict()["compiled"] is False
    assert outcome.kind is OutcomeKind.CHANGED
    assert conf.read_text() == "threads=4\n"
    written = (node.state / "inventory.json").stat()
    assert not node.compiled()
    again = (node.state / "inventory.json").stat()  # nothing changed: not written again
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)


def test_the_cli_path_without_a_cache_compiles_every_run(node: Node) -> None:
    node.cache = None  # type: ignore[assignment]
    assert node.compiled()
    assert node.compiled()


def test_a_new_revision_compiles(node: Node) -> None:
    assert node.compiled()
    write_tree(node.repo, {"data/common.yaml": "greeting: bonjour\n"})
    commit_all(node.repo, "greeting")
    assert node.compiled()
    assert node.motd() == "none bonjour\n"
    assert not node.compiled()


def test_a_facts_directory_file_that_changed_compiles(node: Node) -> None:
    (node.facts_d / "site.yaml").write_text("site: east\n")
    assert node.compiled()
    assert node.motd() == "east hello\n"
    assert not node.compiled()
    (node.facts_d / "site.yaml").write_text("site: west\n")
    assert node.compiled()
    assert node.motd() == "west hello\n"


def test_a_facts_executable_printing_something_else_compiles(node: Node) -> None:
    source = node.tmp / "site.txt"
    source.write_text("east")
    script = node.facts_d / "site"
    script.write_text(f'#!/bin/sh\nprintf \'{{"site": "%s"}}\' "$(cat {source})"\n')
    script.chmod(0o755)
    assert node.compiled()
    assert node.motd() == "east hello\n"
    assert not node.compiled()
    source.write_text("north")
    assert node.compiled()
    assert node.motd() == "north hello\n"


def test_a_facts_file_that_changed_compiles(node: Node) -> None:
    facts = node.tmp / "facts.json"
    facts.write_text('{"site": "east"}')
    node.options = {"facts_file": facts}
    assert node.compiled()
    assert not node.compiled()
    facts.write_text('{"site": "south"}')
    assert node.compiled()
    assert node.motd() == "south hello\n"


def test_other_settings_compile(node: Node) -> None:
    assert node.compiled()
    assert not node.compiled()
    other = node.tmp / "other.d"
    other.mkdir()
    (other / "site.yaml").write_text("site: far\n")
    assert node.compiled(facts_dirs=[other])
    assert node.motd() == "far hello\n"
    assert node.compiled(node="node-2")


def test_a_catalog_that_reads_a_volatile_fact_compiles_every_run(tmp_path: Path) -> None:
    profile = PROFILE.replace("facts.site | default('none')", "facts.uptime_seconds > 0")
    node = Node(tmp_path, {**REPO, "profiles/app.yaml": profile})
    assert node.compiled()
    assert node.motd() == "True hello\n"
    assert node.compiled()  # uptime changes every second: each run reads it anew


def test_facts_read_whole_count_as_read(tmp_path: Path) -> None:
    profile = PROFILE.replace("facts.site | default('none')", "facts.memory | to_json | length > 0")
    node = Node(tmp_path, {**REPO, "profiles/app.yaml": profile})
    assert node.compiled()
    assert node.compiled()


def test_a_catalog_that_reads_only_stable_facts_is_reused_though_uptime_moved(
    tmp_path: Path,
) -> None:
    profile = PROFILE.replace("facts.site | default('none')", "facts.memory.total_bytes > 0")
    node = Node(tmp_path, {**REPO, "profiles/app.yaml": profile})
    assert node.compiled()
    assert not node.compiled()


def test_exports_collected_from_the_store_that_changed_compile(tmp_path: Path) -> None:
    profile = """\
resources:
  - file: /etc/pool
    content: "{% for m in collect('member') %}{{ m.node }}={{ m.host }} {% endfor %}"
"""
    node = Node(tmp_path, {**REPO, "profiles/app.yaml": profile})
    coordination = CoordinationConfig(path=tmp_path / "coordination")
    store = LocalStore(coordination.path)
    node.options = {"coordination": coordination}

    def publish(name: str, host: str) -> None:
        record = exportsmod.encode(name, "web", [], {"member": {"host": host}})
        store.publish_record("exports", name, record, 3600)

    publish("web-1", "10.0.0.1")
    assert node.compiled()
    assert (node.root / "etc/pool").read_text() == "web-1=10.0.0.1 "
    assert not node.compiled()
    publish("web-2", "10.0.0.2")
    assert node.compiled()
    assert (node.root / "etc/pool").read_text() == "web-1=10.0.0.1 web-2=10.0.0.2 "
    assert not node.compiled()
    publish("web-1", "10.0.0.9")
    assert node.compiled()
    assert (node.root / "etc/pool").read_text() == "web-1=10.0.0.9 web-2=10.0.0.2 "


def _age_identity(path: Path) -> str:
    from pyrage import x25519

    identity = x25519.Identity.generate()
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public())


def _age_encrypt(value: str, recipient: str) -> str:
    import base64

    import pyrage
    from pyrage import x25519

    blob = pyrage.encrypt(value.encode(), [x25519.Recipient.from_str(recipient)])
    return "ENC[AGE," + base64.b64encode(blob).decode() + "]"


def test_a_key_file_that_changed_compiles(tmp_path: Path) -> None:
    key = tmp_path / "node.agekey"
    recipient = _age_identity(key)
    data = f"greeting: {_age_encrypt('secret-hello', recipient)}\n"
    node = Node(tmp_path, {**REPO, "data/common.yaml": data})
    node.options = {"secrets": SecretsConfig(age_identity=key)}
    assert node.compiled()
    assert node.motd() == "none secret-hello\n"
    assert not node.compiled()
    # Another key in its place: the value can no longer be decrypted, and the run says so
    # instead of enforcing what the old key decrypted.
    _age_identity(key)
    outcome = node.attempt()
    assert outcome.kind is OutcomeKind.REJECTED, outcome.message
    assert outcome.stage == "compile" and "age" in outcome.message, outcome.message


def test_a_key_file_made_readable_by_others_compiles_and_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "node.agekey"
    recipient = _age_identity(key)
    data = f"greeting: {_age_encrypt('secret-hello', recipient)}\n"
    node = Node(tmp_path, {**REPO, "data/common.yaml": data})
    node.options = {"secrets": SecretsConfig(age_identity=key)}
    assert node.compiled()
    assert not node.compiled()
    os.chmod(key, 0o644)
    outcome = node.attempt()
    assert outcome.kind is not OutcomeKind.IN_SYNC
    assert "refusing a key file" in outcome.message


def test_a_catalog_that_deploys_app_components_compiles_every_run(tmp_path: Path) -> None:
    from tests.apps.test_rollout_local import control_repo

    repo = tmp_path / "apps-repo"
    control_repo(repo, "1.0")
    files = {
        str(p.relative_to(repo)): p.read_text()
        for p in repo.rglob("*")
        if p.is_file() and ".git" not in p.parts
    }
    node = Node(tmp_path / "n", files)
    node.options = {
        "node": "api-1",
        "coordination": CoordinationConfig(path=tmp_path / "coordination"),
    }
    first = node.run()
    assert first.catalog is not None and first.catalog.deployments
    assert node.compiled()
