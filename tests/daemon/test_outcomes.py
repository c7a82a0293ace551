"""How the daemon's runs end when something unexpected happens, and what it shares with the CLI:
the last applied commit (a rewind refused either way) and URLs shown without credentials."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import git
from tests.daemon.conftest import Daemon, GitServer, wait_for
from tests.daemon.test_daemon import motd, new_motd

FAILURES = ("reconciler_runs_total", {"result": "failure"})


def failures(d: Daemon) -> float:
    return d.metric(FAILURES[0], **FAILURES[1])


class TestUnexpected:
    def test_an_exception_in_a_run_is_a_failed_run_and_the_daemon_stays_up(
        self, daemon: Daemon, server: GitServer
    ) -> None:
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        inventory = daemon.state / "inventory.json"
        inventory.unlink()
        inventory.mkdir()
        server.push(new_motd("version 2"))
        wait_for(lambda: failures(daemon) >= 1, what="a failed run counted")
        assert "Unexpected: IsADirectoryError" in daemon.logs()
        assert "Traceback" not in daemon.logs()
        status = json.loads(daemon.get("/status")[1])
        assert status["last_error"].startswith("Unexpected: IsADirectoryError")
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert daemon.get("/healthz")[0] == 200
        inventory.rmdir()
        wait_for(lambda: motd(daemon) == "version 2\n", what="v2 once the state is sound")

    def test_reports_that_cannot_be_written_fail_the_run_not_the_daemon(
        self, daemon: Daemon, server: GitServer
    ) -> None:
        daemon.state.mkdir(mode=0o700)
        (daemon.state / "reports").write_text("in the way\n")
        daemon.start()
        wait_for(lambda: motd(daemon) == "version 1\n", what="v1 applied")
        wait_for(lambda: failures(daemon) >= 1, what="the run counted as failed")
        assert "ReportNotWritten" in daemon.logs()
        assert "Traceback" not in daemon.logs()
        # still enforcing what it applied
        (daemon.root / "etc/motd").write_text("tampered\n")
        wait_for(lambda: motd(daemon) == "version 1\n", what="healed")
        assert daemon.proc is not None and daemon.proc.poll() is None


class TestSharedWithTheCli:
    def test_a_commit_applied_by_the_cli_is_not_rewound_by_the_daemon(
        self, daemon: Daemon, server: GitServer
    ) -> None:
        first = server.head
        server.push(new_motd("version 2"))
        done = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "apply", "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        git(server.bare, "update-ref", "refs/heads/production", first)
        daemon.start()
        wait_for(lambda: daemon.get("/healthz")[0] == 200, what="/healthz")
        wait_for(
            lambda: daemon.metric("reconciler_revisions_rejected_total", reason="rewind") == 1,
            what="rewind refused",
        )
        assert motd(daemon) == "version 2\n"


class TestCredentials:
    def test_the_url_is_logged_and_shown_without_its_token(self, tmp_path: Path) -> None:
        d = Daemon(tmp_path, "https://deploy:s3cr3t-token@127.0.0.1:1/control.git")
        try:
            d.start()
            wait_for(lambda: '"event": "started"' in d.logs(), what="started")
            wait_for(lambda: "fetch failed" in d.logs(), what="a failed fetch")
            status = d.get("/status")[1].decode()
            assert "s3cr3t-token" not in d.logs() + status
            assert "https://deploy:***@127.0.0.1:1/control.git" in d.logs()
        finally:
            d.stop()
            d.notify.close()


class TestStateDir:
    def test_a_mirror_tampered_by_another_user_is_never_used(
        self, daemon: Daemon, server: GitServer, tmp_path: Path
    ) -> None:
        from tests.source.test_untrusted import NOBODY, chown_tree, plant_command

        marker = tmp_path / "ran"
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        mirror = daemon.state / "source" / "mirror.git"
        plant_command(mirror, tmp_path / "elsewhere.git", marker)
        chown_tree(mirror, NOBODY.pw_uid, NOBODY.pw_gid)
        server.push(new_motd("version 2"))
        wait_for(lambda: failures(daemon) >= 1, what="the refusal counted")
        assert "StateDirUnsafe" in daemon.logs() and str(mirror) in daemon.logs()
        assert not marker.exists()
        # nothing is read from it, not even the last good revision, to repair drift
        (daemon.root / "etc/motd").write_text("tampered\n")
        wait_for(lambda: failures(daemon) >= 2, what="the drift check refused too")
        assert motd(daemon) == "tampered\n"
        assert daemon.proc is not None and daemon.proc.poll() is None
        shutil.rmtree(mirror)
        wait_for(lambda: motd(daemon) == "version 2\n", timeout=60, what="v2 once sound")
        assert not marker.exists()

    def test_a_daemon_refuses_to_start_on_a_planted_mirror(
        self, daemon: Daemon, tmp_path: Path
    ) -> None:
        from tests.source.test_untrusted import NOBODY, chown_tree, planted_mirror

        marker = tmp_path / "ran"
        mirror = planted_mirror(daemon.state, tmp_path, marker)
        chown_tree(mirror, NOBODY.pw_uid, NOBODY.pw_gid)
        daemon.start()
        assert daemon.proc is not None and daemon.proc.wait(30) == 1
        assert f"{mirror}: refusing a state directory owned by uid 65534" in daemon.logs()
        assert not marker.exists()
