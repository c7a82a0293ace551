"""End-to-end: the daemon against a real git daemon, as an operator would see it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import need
from tests.daemon.conftest import REPO, Daemon, GitServer, wait_for

DOCUMENTED_METRICS = {
    "reconciler_runs_total",
    "reconciler_run_duration_seconds",
    "reconciler_resources",
    "reconciler_drifted_resources",
    "reconciler_resource_changes_total",
    "reconciler_last_run_timestamp_seconds",
    "reconciler_last_success_timestamp_seconds",
    "reconciler_source_fetches_total",
    "reconciler_revision_info",
    "reconciler_revisions_rejected_total",
    "reconciler_drift_events_total",
    "reconciler_webhook_requests_total",
    "reconciler_app_component_state",
    "reconciler_flapping_resources",
    "reconciler_suspended",
}


def motd(d: Daemon) -> str:
    path = d.root / "etc/motd"
    return path.read_text() if path.exists() else ""


def new_motd(text: str) -> dict[str, str]:
    return {"profiles/app.yaml": REPO["profiles/app.yaml"].replace("version 1", text)}


class TestStartAndPoll:
    def test_first_revision_applied_ready_and_metrics(
        self, daemon: Daemon, server: GitServer
    ) -> None:
        daemon.start()
        wait_for(lambda: daemon.saw("READY=1"), what="READY=1")
        wait_for(daemon.ready, what="/readyz")
        assert motd(daemon) == "version 1\n"
        assert daemon.get("/healthz")[0] == 200
        samples = daemon.metrics()
        names = {
            name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            for name, _ in samples
        }
        names |= {n.removesuffix("_created") for n in names}
        missing = {
            m
            for m in DOCUMENTED_METRICS
            if m not in names and m != "reconciler_app_component_state"
        }
        assert not missing, missing
        assert (
            samples[
                ("reconciler_revision_info", (("branch", "production"), ("revision", server.head)))
            ]
            == 1
        )
        assert samples[("reconciler_runs_total", (("result", "success"),))] >= 1
        assert samples[("reconciler_resources", (("state", "changed"),))] == 3
        status = json.loads(daemon.get("/status")[1])
        assert status["revision"] == server.head and status["ready"] is True
        page = daemon.get("/")[1].decode()
        assert "reconciler on node-1" in page and server.head in page
        assert any(m.startswith("STATUS=") for m in daemon.read_notify())
        assert daemon.saw("WATCHDOG=1")

    def test_push_is_applied_on_the_next_poll(self, daemon: Daemon, server: GitServer) -> None:
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        sha = server.push(new_motd("version 2"))
        wait_for(lambda: motd(daemon) == "version 2\n", what="version 2 applied")
        wait_for(
            lambda: (
                daemon.metric("reconciler_revision_info", revision=sha, branch="production") == 1
            )
        )
        time.sleep(1)  # past the watcher's debounce: the agent's own writes are not drift
        assert daemon.metric("reconciler_drift_events_total", type="file") == 0
        # polls with nothing new cost one ls-remote and no run
        runs = daemon.metric("reconciler_runs_total", result="success")
        unchanged = daemon.metric("reconciler_source_fetches_total", result="unchanged")
        wait_for(
            lambda: (
                daemon.metric("reconciler_source_fetches_total", result="unchanged")
                >= unchanged + 2
            )
        )
        assert daemon.metric("reconciler_runs_total", result="success") == runs

    def test_second_daemon_on_the_same_state_dir_refuses(
        self, daemon: Daemon, tmp_path: Path
    ) -> None:
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        other = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "daemon", "--config", str(daemon.config)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert other.returncode == 1
        assert f"pid {daemon.proc.pid if daemon.proc else ''}" in other.stderr


class TestWebhook:
    def test_signed_webhook_applies_a_push_long_before_the_poll(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        d = Daemon(tmp_path, server.url, poll_interval="1h")
        try:
            d.start()
            wait_for(d.ready, what="/readyz")
            server.push(new_motd("from webhook"))
            body = b'{"ref": "refs/heads/evil", "after": "0000000"}'
            started = time.monotonic()
            assert d.post("/webhook", body, d.signed(body, "delivery-1")) == 202
            wait_for(
                lambda: motd(d) == "from webhook\n", timeout=10, what="webhook-triggered apply"
            )
            assert time.monotonic() - started < 10
            assert (
                d.post("/webhook", body, d.signed(body, "delivery-1")) == 200
            )  # a replay: ignored
            assert d.post("/webhook", body, {"Content-Type": "application/json"}) == 401
            wrong = d.signed(body + b" ", "delivery-2")
            assert d.post("/webhook", body, wrong) == 401
            assert d.post_declaring(2 * 1024 * 1024, d.signed(b"x", "big")) == 413
            assert d.get("/healthz")[0] == 200  # still serving
            assert d.metric("reconciler_webhook_requests_total", result="accepted") == 1
            assert d.metric("reconciler_webhook_requests_total", result="unauthorized") == 2
            assert d.metric("reconciler_webhook_requests_total", result="too_large") == 1
            assert d.metric("reconciler_webhook_requests_total", result="duplicate") == 1
        finally:
            d.stop()
            d.notify.close()

    def test_a_replayed_delivery_under_a_new_id_fetches_nothing(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        """Whoever captured one signed delivery resends it with fresh delivery ids (which the
        signature does not cover): one fetch in all, not one per resend."""
        d = Daemon(tmp_path, server.url, poll_interval="1h")
        try:
            d.start()
            wait_for(d.ready, what="/readyz")

            def polls() -> float:
                return sum(
                    d.metric("reconciler_source_fetches_total", result=result)
                    for result in ("success", "unchanged", "error")
                )

            fetches = polls()
            body = b'{"ref": "refs/heads/main", "after": "1234567"}'
            assert d.post("/webhook", body, d.signed(body, "delivery-1")) == 202
            wait_for(lambda: polls() == fetches + 1, what="the webhook's fetch")
            for n in range(2, 6):
                assert d.post("/webhook", body, d.signed(body, f"delivery-{n}")) == 200
            time.sleep(2)
            assert polls() == fetches + 1
            assert d.metric("reconciler_webhook_requests_total", result="duplicate") == 4
        finally:
            d.stop()
            d.notify.close()

    def test_gitlab_token(self, tmp_path: Path, server: GitServer) -> None:
        d = Daemon(tmp_path, server.url, poll_interval="1h")
        try:
            d.start()
            wait_for(d.ready, what="/readyz")
            assert d.post("/webhook", b"{}", {"X-Gitlab-Token": "wrong"}) == 401
            assert d.post("/webhook", b"{}", {"X-Gitlab-Token": d.secret.decode()}) == 202
        finally:
            d.stop()
            d.notify.close()


class TestDrift:
    def test_tampered_file_is_healed_by_the_watcher(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        d = Daemon(tmp_path, server.url, poll_interval="1h", interval="1h")
        try:
            d.start()
            wait_for(d.ready, what="/readyz")
            (d.root / "srv/app/config").write_text("threads=400\n")
            wait_for(
                lambda: (d.root / "srv/app/config").read_text() == "threads=4\n",
                timeout=10,
                what="heal",
            )
            assert d.metric("reconciler_drift_events_total", type="file") >= 1
            # The run that healed the file reports it once it has ended.
            wait_for(
                lambda: json.loads(d.get("/status")[1]).get("changed") == ["file:/srv/app/config"],
                timeout=10,
                what="the healing run's report",
            )
            assert "corrective" in d.logs()
        finally:
            d.stop()
            d.notify.close()

    def test_suspended_agent_measures_drift_and_changes_nothing(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        d = Daemon(tmp_path, server.url, poll_interval="1h", interval="1h")
        try:
            d.start()
            wait_for(d.ready, what="/readyz")
            subprocess.run(
                [sys.executable, "-m", "reconciler.cli", "suspend", "--reason", "maintenance window",
                 "--state-dir", str(d.state)], check=True, capture_output=True,
            )  # fmt: skip
            (d.root / "etc/motd").write_text("by hand\n")
            wait_for(
                lambda: d.metric("reconciler_drifted_resources", type="file") == 1,
                what="drift measured",
            )
            assert motd(d) == "by hand\n"
            assert d.metric("reconciler_suspended") == 1
            assert "maintenance window" in json.loads(d.get("/status")[1])["suspended"]
            subprocess.run(
                [sys.executable, "-m", "reconciler.cli", "resume", "--state-dir", str(d.state)],
                check=True, capture_output=True,
            )  # fmt: skip
            (d.root / "etc/motd").write_text("by hand again\n")
            wait_for(lambda: motd(d) == "version 1\n", what="healed after resume")
            assert d.metric("reconciler_suspended") == 0
        finally:
            d.stop()
            d.notify.close()


class TestBadRevisions:
    def test_broken_revision_rejected_counted_and_last_good_kept(
        self, daemon: Daemon, server: GitServer
    ) -> None:
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        good = server.head
        bad = server.push(
            {"profiles/app.yaml": "resources:\n  - file: /etc/motd\n    content: [\n"}, "broken"
        )
        wait_for(
            lambda: daemon.metric("reconciler_revisions_rejected_total", reason="parse") == 1,
            what="rejection",
        )
        assert motd(daemon) == "version 1\n"
        assert daemon.metric("reconciler_revision_info", revision=good, branch="production") == 1
        # The counter moves just before the status names the commit.
        why = wait_for(
            lambda: json.loads(daemon.get("/status")[1])["rejected"].get(bad), what="status"
        )
        assert re.search(r"profiles/app.yaml:[34]: invalid YAML", why)
        # not retried on every poll
        time.sleep(3)
        assert daemon.metric("reconciler_revisions_rejected_total", reason="parse") == 1
        # the last good revision is still enforced
        (daemon.root / "etc/motd").write_text("tampered\n")
        wait_for(lambda: motd(daemon) == "version 1\n", what="heal with last good")
        server.push(new_motd("fixed"))
        wait_for(lambda: motd(daemon) == "fixed\n", what="fix applied")

    def test_rewind_is_refused(self, daemon: Daemon, server: GitServer) -> None:
        from tests.conftest import git

        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        first = server.head
        server.push(new_motd("version 2"))
        wait_for(lambda: motd(daemon) == "version 2\n", what="v2")
        git(server.bare, "update-ref", "refs/heads/production", first)
        wait_for(
            lambda: daemon.metric("reconciler_revisions_rejected_total", reason="rewind") == 1,
            what="rewind refused",
        )
        assert motd(daemon) == "version 2\n"
        assert "RevisionRegression" in daemon.logs()


class TestRemote:
    def test_remote_going_away_and_coming_back(self, daemon: Daemon, server: GitServer) -> None:
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        server.stop()
        wait_for(
            lambda: daemon.metric("reconciler_source_fetches_total", result="error") >= 1,
            what="fetch error",
        )
        assert daemon.get("/healthz")[0] == 200
        (daemon.root / "etc/motd").write_text("tampered\n")
        wait_for(lambda: motd(daemon) == "version 1\n", what="still enforcing")
        assert "FetchFailed" in daemon.logs()
        server.push(new_motd("after outage"))
        server.start()
        wait_for(
            lambda: motd(daemon) == "after outage\n", timeout=30, what="applied after the outage"
        )


class TestLifecycle:
    def test_sighup_good_and_bad(self, daemon: Daemon, server: GitServer) -> None:
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        daemon.config.write_text(daemon.config.read_text() + "bogus_key: 1\n")
        daemon.messages.clear()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.saw("RELOADING=1") and daemon.saw("READY=1"), what="reload cycle")
        wait_for(lambda: "reload refused" in daemon.logs(), what="refusal logged")
        assert "bogus_key" in daemon.logs()
        assert daemon.get("/healthz")[0] == 200
        daemon.settings["poll_interval"] = "2s"
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in daemon.logs(), what="reload accepted")

    def test_sigterm_during_a_run_finishes_cleanly(self, tmp_path: Path, server: GitServer) -> None:
        slow = {
            "profiles/app.yaml": """
                resources:
                  - file: /etc/motd
                    content: "version 1\\n"
                  - exec: slow
                    command: "sleep 2"
                  - file: /etc/after-slow
                    content: x
                    require: exec:slow
                """
        }
        server.push(slow)
        d = Daemon(tmp_path, server.url)
        try:
            d.start()
            wait_for(
                lambda: "resource changed" in d.logs() or (d.root / "etc/motd").exists(),
                what="run started",
            )
            d.signal(signal.SIGTERM)
            assert d.stop(timeout=30) == 0
            assert d.saw("STOPPING=1")
            reports = list((d.state / "reports").glob("*.json"))
            assert reports, "the interrupted run wrote its report"
            assert not list(d.root.rglob("*.reconciler-tmp-*"))
        finally:
            d.stop()
            d.notify.close()

    def test_kill_9_and_restart_converge(self, daemon: Daemon, server: GitServer) -> None:
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        assert daemon.proc is not None
        daemon.proc.kill()
        daemon.proc.wait()
        daemon.proc = None
        (daemon.root / "etc/motd").write_text("tampered while down\n")
        server.push(new_motd("version 3"))
        daemon.start()
        wait_for(lambda: motd(daemon) == "version 3\n", what="converged after restart")


class TestSystemdUnit:
    def test_unit_verifies(self, tmp_path: Path) -> None:
        analyze = need("systemd-analyze")
        unit = Path(__file__).resolve().parents[2] / "deploy/systemd/reconciler.service"
        exe = shutil.which("reconciler") or str(Path(sys.executable).parent / "reconciler")
        text = unit.read_text().replace("/opt/reconciler/bin/reconciler", exe)
        assert "Type=notify" in text and "WatchdogSec=" in text
        copy = tmp_path / "reconciler.service"
        copy.write_text(text)
        done = subprocess.run(
            [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
        )
        problems = [line for line in done.stderr.splitlines() if "reconciler.service" in line]
        assert done.returncode == 0 and not problems, done.stderr


class TestJsonLogs:
    def test_every_line_is_one_json_event(self, daemon: Daemon) -> None:
        daemon.start()
        wait_for(daemon.ready, what="/readyz")
        daemon.stop()
        lines = [line for line in daemon.logs().splitlines() if line.strip()]
        assert lines
        events = [json.loads(line) for line in lines]
        assert any(
            e.get("event") == "run finished" and re.fullmatch(r"[0-9a-f]{40}", e["revision"])
            for e in events
        )
        assert all("timestamp" in e and "level" in e for e in events)
        assert os.path.exists(daemon.state / "daemon.json")
