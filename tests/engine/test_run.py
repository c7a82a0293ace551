"""The engine's executors on real catalogs: files staged and committed in batches while other
resources run in the pool, each run with its own state."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.engine.run import execute
from reconciler.fs import BackupStore, Root
from reconciler.model.catalog import Compiler
from reconciler.reconcile import RunOptions, run
from reconciler.resources.base import Context
from reconciler.resources.runner import BASE_PATH, Runner
from reconciler.source import DirectorySnapshot
from tests.conftest import seed_root, write_tree

SIBLINGS = 2000
SUBSCRIBERS = 40


def repo_with(tmp_path: Path, resources: list[str]) -> Path:
    profile = "resources:\n" + "".join(f"  {line}\n" for line in resources)
    return write_tree(
        tmp_path / "repo",
        {
            "nodes.yaml": "default: r\n",
            "roles/r.yaml": "profiles: [p]\n",
            "profiles/p.yaml": profile,
        },
    )


@pytest.fixture
def switch_often() -> Iterator[None]:
    """Threads take turns far more often than usual, so that a race shows in every run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def test_a_subscriber_converges_while_its_siblings_batch_their_writes(tmp_path: Path) -> None:
    """Files that subscribe to a changed file run in the pool (a refresh) while the files
    that merely require it are checked inline and staged: each subscriber's write is its
    own, made at once, and its re-check sees it."""
    lines = ["- file: /srv/main.conf", "  content: v1"]
    for i in range(SUBSCRIBERS):
        lines += [f"- file: /srv/derived-{i}.conf", "  content: derived"]
        lines += ["  subscribe: file:/srv/main.conf"]
    for i in range(SIBLINGS):
        lines += [f"- file: /srv/frag-{i}.conf", f"  content: frag {i}"]
        lines += ["  require: file:/srv/main.conf"]
    repo = repo_with(tmp_path, lines)
    root = seed_root(tmp_path / "root")
    options = RunOptions(repo=str(repo), node="n", root=root, state_dir=tmp_path / "state")
    report, _ = run(options)
    failed = {r.id: r.error for r in report.resources if r.status == "failed"}
    assert failed == {}
    assert report.summary()["changed"] == 1 + SUBSCRIBERS + SIBLINGS
    assert (root / f"srv/derived-{SUBSCRIBERS - 1}.conf").read_text() == "derived"
    again, _ = run(options)
    assert not again.changed and not again.failed


# Enablement kept as files in $UNITS: "systemctl --root=R enable -- u" and "is-enabled".
STAND_IN_SYSTEMCTL = """#!/bin/sh
for unit; do :; done
case " $* " in
  *" is-enabled "*) test -e "$UNITS/$unit";;
  *" enable "*) touch "$UNITS/$unit";;
esac
"""


def test_services_in_the_pool_read_what_changed_while_files_finish(
    tmp_path: Path, switch_often: None
) -> None:
    """A service being enabled asks whether a unit file changed in this run while thousands
    of files finish (and are recorded as changed) in the engine's own thread."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(STAND_IN_SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    lines = []
    for i in range(SIBLINGS):
        lines += [f"- file: /srv/f-{i}.conf", f"  content: file {i}"]
    for i in range(SUBSCRIBERS):
        lines += [f"- service: app-{i}", "  enable: true"]
    catalog = Compiler(DirectorySnapshot(repo_with(tmp_path, lines))).compile("n", {})
    root = seed_root(tmp_path / "root")
    state = tmp_path / "state"
    ctx = Context(
        root=Root(root),
        state_dir=state,
        backups=BackupStore(state),
        runner=Runner(base_env={"PATH": f"{bin_dir}:{BASE_PATH}", "UNITS": str(units)}),
    )
    results = execute(catalog, ctx, noop=False)
    failed = {r.id: r.error for r in results if r.status == "failed"}
    assert failed == {}
    assert sum(r.status == "changed" for r in results) == SIBLINGS + SUBSCRIBERS


def test_each_run_has_its_own_state(tmp_path: Path) -> None:
    """A context used for a second run (a rollback after an apply) starts it afresh: what
    the first run changed and did once is not carried into the second."""
    repo = repo_with(tmp_path, ["- file: /srv/a.conf", "  content: a"])
    catalog = Compiler(DirectorySnapshot(repo)).compile("n", {})
    root = seed_root(tmp_path / "root")
    state = tmp_path / "state"
    ctx = Context(Root(root), state, BackupStore(state), Runner())
    first = execute(catalog, ctx, noop=False)
    assert [r.status for r in first] == ["changed"]
    assert ctx.run.changed() == frozenset()  # the caller's context is not the run's
    (root / "srv/a.conf").write_text("drift")
    assert [r.status for r in execute(catalog, ctx, noop=False)] == ["changed"]


EXECUTORS_PROFILE = [
    "- file: /srv/a.conf",
    "  content: a",
    "  notify: exec:reload",
    "- exec: reload",
    '  command: "echo reloaded >> $RECONCILER_ROOT/srv/reload.log"',
    "  refreshonly: true",
    "- exec: broken",
    '  command: "exit 3"',
    "- file: /srv/after-broken.conf",
    "  content: never",
    "  require: exec:broken",
    "- file: /srv/other.conf",
    "  content: other",
    "  subscribe: file:/srv/a.conf",
]


@pytest.mark.parametrize("workers", [1, 8], ids=["inline", "pool"])
def test_every_executor_gives_the_same_outcome(tmp_path: Path, workers: int) -> None:
    catalog = Compiler(DirectorySnapshot(repo_with(tmp_path, EXECUTORS_PROFILE))).compile("n", {})
    root = seed_root(tmp_path / "root")
    state = tmp_path / "state"
    ctx = Context(
        Root(root), state, BackupStore(state), Runner(base_env={"RECONCILER_ROOT": str(root)})
    )
    results = {r.id: r.status for r in execute(catalog, ctx, noop=False, workers=workers)}
    assert results == {
        "file:/srv/a.conf": "changed",
        "exec:reload": "changed",
        "exec:broken": "failed",
        "file:/srv/after-broken.conf": "skipped",
        "file:/srv/other.conf": "changed",
    }
    assert (root / "srv/reload.log").read_text() == "reloaded\n"
    assert not (root / "srv/after-broken.conf").exists()
    again = {r.id: r.status for r in execute(catalog, ctx, noop=False, workers=workers)}
    assert again["file:/srv/a.conf"] == "in_sync" and again["exec:reload"] == "in_sync"
    assert (root / "srv/reload.log").read_text() == "reloaded\n"
