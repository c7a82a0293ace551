"""`reconciler suspend` as the command line honours it: `apply` runs in noop and says why,
`--ignore-suspension` enforces anyway, `status` shows the suspension, `resume` ends it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CLI

REPO = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": 'resources:\n  - file: /etc/motd\n    content: "managed\\n"\n',
}
SUSPENDED = re.compile(
    r"reconciler: enforcement is suspended \(kernel upgrade, until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\):"
    r" running in noop; --ignore-suspension to apply anyway"
)


class TestSuspendedApply:
    def test_apply_measures_drift_changes_nothing_and_says_why(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(REPO)
        cli.run("apply", repo, "--node", "n1", check=2)
        motd = cli.root / "etc/motd"
        cli("suspend", "--reason", "kernel upgrade", "--until", "1h", "--state-dir", str(cli.state))
        motd.write_text("by hand\n")

        done = cli.run("apply", repo, "--node", "n1", check=2)  # as `apply --noop` on drift
        assert SUSPENDED.search(done.stderr), done.stderr
        assert "~ file:/etc/motd  (drift)" in done.stdout and "Plan: 1 to change" in done.stdout
        assert motd.read_text() == "by hand\n"
        report = json.loads(cli("status", "--state-dir", str(cli.state), "--format", "json").stdout)
        assert report["noop"] is True
        assert report["suspended"]["reason"] == "kernel upgrade"

        done = cli.run("apply", repo, "--node", "n1", "--ignore-suspension", check=2)
        assert "suspended" not in done.stderr
        assert motd.read_text() == "managed\n"

        cli("resume", "--state-dir", str(cli.state), check=0)
        motd.write_text("by hand again\n")
        done = cli.run("apply", repo, "--node", "n1", check=2)
        assert done.stderr == ""
        assert motd.read_text() == "managed\n"

    def test_status_shows_the_suspension_until_resumed(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        cli.run("apply", make_repo(REPO), "--node", "n1", check=2)
        state = ("--state-dir", str(cli.state))
        cli("suspend", "--reason", "kernel upgrade", "--until", "2099-01-01T00:00Z", *state)
        shown = cli("status", *state, check=0).stdout
        assert re.match(
            r"enforcement: suspended since \d{4}-\S+Z by \S+ until 2099-01-01T00:00:00Z: "
            r"kernel upgrade\n",
            shown,
        ), shown
        cli("resume", *state, check=0)
        shown = cli("status", *state, check=0).stdout
        assert "suspended" not in shown and shown.startswith("node:      n1 (role app)\n")
        assert "suspended" not in json.loads(cli("status", *state, "--format", "json").stdout)

    def test_status_shows_a_suspension_before_any_run(self, cli: CLI) -> None:
        state = ("--state-dir", str(cli.state))
        cli("suspend", "--reason", "new machine, not yet reviewed", *state, check=0)
        done = cli("status", *state, check=1)
        assert "until resumed: new machine, not yet reviewed" in done.stdout
        assert f"no run report in {cli.state} yet" in done.stderr
