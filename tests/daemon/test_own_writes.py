"""The agent's own writes are not drift: counted in runs and drift events, on the real daemon.

The demo is what a new user runs first: the daemon on the bundled example, with the file
watcher on and the example app waiting for its database (so the coordination store is watched
too). A commit must cost one run and no drift event; one tampering one event and one repair.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Demo, git, running_demo
from tests.daemon.conftest import GitServer, running_daemon, wait_for

COUNTERS = ("reconciler_runs_total", "reconciler_drift_events_total")


def counts(port: int) -> dict[str, float]:
    """Runs and drift events, by label value (``runs:success``, ``drift:file``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "reconciler_runs_total":
                found[f"runs:{s.labels['result']}"] = s.value
            elif s.name == "reconciler_drift_events_total":
                found[f"drift:{s.labels['type']}"] = s.value
    return found


def settled(port: int, quiet: float = 2.0, timeout: float = 30.0) -> dict[str, float]:
    """The counters once they have not moved for ``quiet`` seconds (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    last, since = counts(port), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"the counters never settled: {last}"
        time.sleep(0.2)
        now = counts(port)
        if now != last:
            last, since = now, time.monotonic()
    return last


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What moved between two readings (nothing that did not)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


@pytest.fixture
def demo() -> Iterator[Demo]:
    with running_demo([sys.executable, "-m", "reconciler.cli", "demo", "--exit-after", "120"]) as d:
        yield d


class TestDemo:
    def test_a_commit_is_one_run_and_no_drift(self, demo: Demo) -> None:
        before = settled(demo.port)
        web = demo.repo / "data/nodes/web-1.yaml"
        web.write_text(web.read_text().replace("8081", "9000"))
        git(
            demo.repo, "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "9000"
        )
        site = demo.root / "etc/nginx/sites-available/site.conf"
        wait_for(lambda: "listen 9000;" in site.read_text(), 30, "the commit applied")
        # The apply rewrote site.conf (a temporary file renamed into a watched, managed
        # directory) and published web-1's state to the store it watches: neither is news.
        assert moved(before, settled(demo.port)) == {"runs:success": 1}

    def test_one_tampering_is_one_drift_event_and_one_repair(self, demo: Demo) -> None:
        before = settled(demo.port)
        motd = demo.root / "etc/motd"
        subprocess.run(["sh", "-c", f"echo tampered > {motd}"], check=True)
        wait_for(lambda: "web-1 (web" in motd.read_text(), 15, "the watcher to heal the motd")
        assert moved(before, settled(demo.port)) == {"drift:file": 1, "runs:success": 1}


class TestFixture:
    """The small control repo of the daemon tests: no app, a managed directory and a file in it."""

    def test_rewriting_a_file_in_a_managed_directory_is_not_directory_drift(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        with running_daemon(tmp_path, server.url, poll_interval="1s", interval="1h") as d:
            before = settled(d.port)
            profile = (server.work / "profiles/app.yaml").read_text()
            server.push({"profiles/app.yaml": profile.replace("threads=4", "threads=8")})
            config = d.root / "srv/app/config"
            wait_for(lambda: config.read_text() == "threads=8\n", what="the push applied")
            assert moved(before, settled(d.port)) == {"runs:success": 1}

    def test_a_file_removed_from_a_managed_directory_is_one_event_of_the_file(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        with running_daemon(tmp_path, server.url, poll_interval="1h", interval="1h") as d:
            before = settled(d.port)
            config = d.root / "srv/app/config"
            config.unlink()
            wait_for(config.exists, what="the file restored")
            assert moved(before, settled(d.port)) == {"drift:file": 1, "runs:success": 1}

    def test_a_purging_directory_ignores_its_own_rewrite_and_sees_a_stray_file(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        profile = (server.work / "profiles/app.yaml").read_text()
        purging = profile.replace("- directory: /srv/app", "- directory: /srv/app\n    purge: true")
        assert purging != profile
        server.push({"profiles/app.yaml": purging})
        with running_daemon(tmp_path, server.url, poll_interval="1s", interval="1h") as d:
            before = settled(d.port)
            server.push({"profiles/app.yaml": purging.replace("threads=4", "threads=8")})
            config = d.root / "srv/app/config"
            wait_for(lambda: config.read_text() == "threads=8\n", what="the push applied")
            after = settled(d.port)
            assert moved(before, after) == {"runs:success": 1}
            # What nothing manages inside it is the directory's drift: one event, purged.
            stray = d.root / "srv/app/stray"
            subprocess.run(["sh", "-c", f"echo left behind > {stray}"], check=True)
            wait_for(lambda: not stray.exists(), what="the stray file purged")
            assert moved(after, settled(d.port)) == {"drift:directory": 1, "runs:success": 1}

    def test_a_managed_directory_changed_by_hand_is_one_event(
        self, tmp_path: Path, server: GitServer
    ) -> None:
        profile = (server.work / "profiles/app.yaml").read_text()
        server.push(
            {
                "profiles/app.yaml": profile.replace(
                    "- directory: /srv/app", '- directory: /srv/app\n    mode: "0755"'
                )
            }
        )
        with running_daemon(tmp_path, server.url, poll_interval="1h", interval="1h") as d:
            before = settled(d.port)
            app = d.root / "srv/app"
            app.chmod(0o700)  # seen both by the watch on /srv and by the one on /srv/app
            wait_for(lambda: app.stat().st_mode & 0o777 == 0o755, what="the mode repaired")
            assert moved(before, settled(d.port)) == {"drift:directory": 1, "runs:success": 1}
