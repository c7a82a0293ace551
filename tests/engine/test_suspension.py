"""A suspension of enforcement as reconcile() honours it, for the CLI and the daemon alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from reconciler.engine import suspension
from reconciler.reconcile import OutcomeKind, RunOptions, reconcile
from tests.conftest import seed_root

REPO = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": 'resources:\n  - file: /etc/motd\n    content: "managed\\n"\n',
}


class TestReconcileWhileSuspended:
    def options(self, tmp_path: Path, repo: Path, **extra: object) -> RunOptions:
        root = seed_root(tmp_path / "root")
        return RunOptions(
            repo=str(repo), node="n1", root=root, state_dir=tmp_path / "state", **extra
        )

    def test_an_enforcing_run_is_a_noop_run_naming_the_suspension(
        self, tmp_path: Path, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(REPO)
        options = self.options(tmp_path, repo)
        motd = options.root / "etc/motd"
        made = suspension.suspend(options.state_dir, "kernel upgrade", None)

        outcome = reconcile(options)
        assert outcome.kind is OutcomeKind.CHANGED and outcome.report is not None
        assert outcome.report.noop and outcome.suspended == made
        assert not motd.exists()
        assert suspension.current(options.state_dir) == made  # still in force

        outcome = reconcile(self.options(tmp_path, repo, ignore_suspension=True))
        assert outcome.report is not None and not outcome.report.noop
        assert outcome.suspended is None
        assert motd.read_text() == "managed\n"

    def test_a_noop_run_or_a_plan_is_not_marked_and_an_expired_suspension_is_lifted(
        self, tmp_path: Path, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(REPO)
        options = self.options(tmp_path, repo)
        suspension.suspend(options.state_dir, "kernel upgrade", None)
        assert reconcile(options, plan=True).suspended is None
        assert reconcile(self.options(tmp_path, repo, noop=True)).suspended is None

        suspension.resume(options.state_dir)
        suspension.suspend(options.state_dir, "over", until=1.0)  # long past
        outcome = reconcile(options)
        assert outcome.suspended is None and outcome.report is not None
        assert not outcome.report.noop
        assert not (options.state_dir / suspension.FILE).exists()
