"""The daemon runs again when what its last compile collected changes in the store."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.apps.test_exports import FILES, Fleet, ok
from tests.conftest import wait_for
from tests.daemon.conftest import Daemon, GitServer


def test_a_node_joining_the_pool_reaches_the_daemon_before_its_interval(
    tmp_path: Path, daemon: Daemon, server: GitServer
) -> None:
    nodes = FILES["nodes.yaml"].replace('match: "lb-*"', 'match: "node-1"')
    server.push({**FILES, "nodes.yaml": nodes})
    fleet = Fleet(tmp_path / "fleet")
    fleet.repo = server.work
    daemon.write_config(
        textwrap.dedent(
            f"""\
            coordination:
              backend: local
              path: {fleet.coordination}
            """
        )
    )
    cfg = daemon.root / "etc/haproxy.cfg"
    daemon.start()
    wait_for(daemon.ready, what="/readyz")
    wait_for(lambda: cfg.exists(), what="the first run")
    assert cfg.read_text() == ""
    ok(fleet.apply("web-1"))
    # interval is 10 minutes: only the watch on what was collected can bring web-1 in.
    wait_for(lambda: "server web-1 " in cfg.read_text(), timeout=60, what="web-1 in the pool")
    assert "collected exports changed" in daemon.logs()
    ok(fleet.apply("web-2"))
    wait_for(lambda: "server web-2 " in cfg.read_text(), timeout=60, what="web-2 in the pool")
