"""One run through ``reconcile.run``: what it leaves behind in the process and the state
directory besides the managed files."""

from __future__ import annotations

import gc
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.reconcile import RunOptions, run
from tests.conftest import seed_root, wait_for
from tests.engine.test_run import repo_with


@pytest.fixture
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


# Touches started, then waits (bounded) for go: a run that stays under way until told.
WAIT_FOR_GO = (
    "touch $RECONCILER_ROOT/srv/started; "
    "for i in $(seq 400); do [ -e $RECONCILER_ROOT/srv/go ] && exit 0; sleep 0.05; done; exit 1"
)


class TestGarbageCollector:
    def test_a_run_pauses_the_collector_until_the_last_overlapping_run_ends(
        self, tmp_path: Path, collector_on: None
    ) -> None:
        """The daemon's run and a plan may overlap: the one ending first must not turn the
        collector back on under the other, nor leave it off once both are done."""
        slow_repo = repo_with(tmp_path / "slow", ["- exec: wait", f'  command: "{WAIT_FOR_GO}"'])
        slow_root = seed_root(tmp_path / "slow-root")
        slow = RunOptions(
            repo=str(slow_repo), node="n", root=slow_root, state_dir=tmp_path / "slow-state"
        )
        outcomes: list[bool] = []
        thread = threading.Thread(target=lambda: outcomes.append(run(slow)[0].failed))
        thread.start()
        try:
            wait_for(lambda: (slow_root / "srv/started").exists(), what="the slow run")
            assert not gc.isenabled()
            quick = RunOptions(
                repo=str(repo_with(tmp_path / "quick", ["- file: /srv/a.conf", "  content: a"])),
                node="n",
                root=seed_root(tmp_path / "quick-root"),
                state_dir=tmp_path / "quick-state",
            )
            report, _ = run(quick)
            assert report.changed and not report.failed
            assert not gc.isenabled(), "the slow run is still under way"
        finally:
            (slow_root / "srv/go").touch()
            thread.join(timeout=60)
        assert outcomes == [False]
        assert gc.isenabled()

    def test_a_run_leaves_a_collector_that_was_off_off(self, tmp_path: Path) -> None:
        was = gc.isenabled()
        gc.disable()
        try:
            repo = repo_with(tmp_path, ["- file: /srv/a.conf", "  content: a"])
            options = RunOptions(
                repo=str(repo), node="n", root=seed_root(tmp_path / "root"),
                state_dir=tmp_path / "state",
            )  # fmt: skip
            assert run(options)[0].changed
            assert not gc.isenabled()
        finally:
            if was:
                gc.enable()


class TestInventory:
    def test_a_run_that_changes_nothing_leaves_the_inventory_file_alone(
        self, tmp_path: Path
    ) -> None:
        repo = repo_with(
            tmp_path,
            [
                "- file: /srv/a.conf",
                "  content: a",
                "  mode: '0644'",
                "- file: /srv/b.conf",
                "  content: b",
            ],
        )
        root = seed_root(tmp_path / "root")
        options = RunOptions(repo=str(repo), node="n", root=root, state_dir=tmp_path / "state")
        inventory = tmp_path / "state/inventory.json"
        assert run(options)[0].changed
        written = inventory.stat()
        report, _ = run(options)
        assert not report.changed and not report.failed
        again = inventory.stat()
        assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)

        # A file touched by hand and repaired: the inventory holds what the repair left, so
        # the next run knows the file unchanged without reading it.
        (root / "srv/a.conf").chmod(0o600)
        os.utime(root / "srv/b.conf")
        assert run(options)[0].changed
        saved = json.loads(inventory.read_text())["fingerprints"]
        for name in ("a.conf", "b.conf"):
            st = (root / "srv" / name).stat()
            size, mtime_ns, ctime_ns, inode, _ = saved[f"/srv/{name}"]
            assert (size, mtime_ns, ctime_ns, inode) == (
                st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
            )  # fmt: skip
