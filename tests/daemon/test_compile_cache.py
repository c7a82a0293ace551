"""The daemon compiles only when something it compiled from changed: its warm checks re-check
the catalog compiled before (and still repair drift); a changed fact or a reloaded configuration
is compiled at the next run."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from tests.conftest import wait_for
from tests.daemon.conftest import Daemon, GitServer

PROFILE = """
resources:
  - file: /etc/motd
    content: "site {{ facts.site | default('none') }}\\n"
  - file: /srv/app.conf
    content: "threads=4\\n"
"""


def last_run(daemon: Daemon) -> dict[str, object]:
    code, body = daemon.get("/status")
    assert code == 200
    run = json.loads(body)["last_run"]
    assert isinstance(run, dict)
    return run


def test_a_warm_check_does_not_compile_and_a_changed_fact_does(
    tmp_path: Path, daemon: Daemon, server: GitServer
) -> None:
    server.push({"profiles/app.yaml": PROFILE})
    facts_d = tmp_path / "facts.d"
    facts_d.mkdir()
    (facts_d / "site.yaml").write_text("site: east\n")
    daemon.config.write_text(
        daemon.config.read_text().replace("facts_dirs: []", f"facts_dirs: [{facts_d}]")
    )
    motd, conf = daemon.root / "etc/motd", daemon.root / "srv/app.conf"
    daemon.start()
    wait_for(daemon.ready, what="/readyz")
    assert motd.read_text() == "site east\n"
    assert last_run(daemon)["compiled"] is True
    assert daemon.metric("reconciler_catalogs_total", how="compiled") == 1

    # Drift: the watcher's check repairs it from the catalog compiled before.
    conf.write_text("tampered\n")
    wait_for(lambda: conf.read_text() == "threads=4\n", what="the repair")
    wait_for(lambda: daemon.metric("reconciler_catalogs_total", how="reused") >= 1, what="reuse")
    assert last_run(daemon)["compiled"] is False
    assert daemon.metric("reconciler_catalogs_total", how="compiled") == 1

    # A fact changed: the next check compiles, and applies what it means.
    (facts_d / "site.yaml").write_text("site: west\n")
    conf.write_text("tampered again\n")
    wait_for(lambda: motd.read_text() == "site west\n", what="the new fact applied")
    assert daemon.metric("reconciler_catalogs_total", how="compiled") == 2
    assert conf.read_text() == "threads=4\n"


def test_a_reloaded_configuration_compiles(
    tmp_path: Path, daemon: Daemon, server: GitServer
) -> None:
    server.push({"profiles/app.yaml": PROFILE})
    facts_d = tmp_path / "facts.d"
    facts_d.mkdir()
    (facts_d / "site.yaml").write_text("site: north\n")
    motd, conf = daemon.root / "etc/motd", daemon.root / "srv/app.conf"
    daemon.start()
    wait_for(daemon.ready, what="/readyz")
    assert motd.read_text() == "site none\n"
    conf.write_text("tampered\n")
    wait_for(lambda: daemon.metric("reconciler_catalogs_total", how="reused") >= 1, what="reuse")

    daemon.config.write_text(
        daemon.config.read_text().replace("facts_dirs: []", f"facts_dirs: [{facts_d}]")
    )
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in daemon.logs(), what="the reload")
    conf.write_text("tampered again\n")  # the reload's poll finds the same head: a check runs
    wait_for(lambda: motd.read_text() == "site north\n", what="the reloaded facts applied")
    assert daemon.metric("reconciler_catalogs_total", how="compiled") == 2
