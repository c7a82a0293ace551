"""Rollouts keep their promises when nodes see a new commit at different times.

Each node applies its own working tree of the control repo, so one node can be at 1.3.0 while
another has not fetched past 1.2.0, as daemons polling at different moments are. The nodes
share a local coordination store; a slow health check holds a node in ``deploying``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.apps.store import EtcdStore, LocalStore, Store
from tests.apps.test_rollout_local import Fleet
from tests.conftest import write_tree
from tests.daemon.conftest import Daemon, GitServer, wait_for

APP = """\
version: "{version}"
components:
  - name: web
    nodes: {{match: "web-*"}}
    max_parallel: {max_parallel}
    resources:
      - file: /srv/VERSION
        content: "{{{{ app.version }}}}\\n"
    health:
      command: "case {{{{ app.version }}}} in 1.2.0) exit 3;; 1.3.0) until test -e {go}; do sleep 0.05; done;; esac"
      retries: 0
      timeout: 60
"""


class Nodes(Fleet):
    """A fleet whose nodes each read their own copy of the control repo."""

    def at(self, node: str, version: str, max_parallel: int = 1) -> None:
        write_tree(
            self.tmp / node / "repo",
            {
                "nodes.yaml": "default: base\n",
                "roles/base.yaml": "profiles: []\n",
                "apps/shop.yaml": APP.format(
                    version=version, max_parallel=max_parallel, go=self.tmp / "go"
                ),
            },
        )

    def argv(self, node: str) -> list[str]:
        config = str(self.config(node))
        repo = str(self.tmp / node / "repo")
        return [sys.executable, "-m", "reconciler.cli", "apply", "--config", config, "--repo", repo]

    def apply(self, node: str, command: str = "apply") -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(node), capture_output=True, text=True, timeout=120)

    def running(self, node: str) -> str | None:
        path = self.tmp / node / "root" / "srv/VERSION"
        return path.read_text().strip() if path.exists() else None

    def deploying(self, node: str) -> subprocess.Popen[str]:
        """Start an apply of ``node`` and return once it holds its slot."""
        proc = subprocess.Popen(self.argv(node), stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while self.states("web").get(node, ("", ""))[0] != "deploying":
            assert proc.poll() is None and time.monotonic() < deadline, "never deploying"
            time.sleep(0.05)
        return proc


@pytest.fixture
def nodes(tmp_path: Path) -> Nodes:
    return Nodes(tmp_path)


def test_a_failure_stays_visible_after_the_failed_node_moves_on(nodes: Nodes) -> None:
    for node in ("web-1", "web-2"):
        nodes.at(node, "1.1.0")
        assert nodes.apply(node).returncode == 2
    # web-1 fails at 1.2.0 (and keeps running it: on_failure halt).
    nodes.at("web-1", "1.2.0")
    assert nodes.apply("web-1").returncode == 6
    # web-1 fetches 1.3.0 and deploys it: its state is now deploying@1.3.0.
    nodes.at("web-1", "1.3.0")
    slow = nodes.deploying("web-1")
    try:
        assert nodes.states("web")["web-1"] == ("deploying", "1.3.0")
        # web-2 has only fetched 1.2.0: the failure there is still visible, and the one slot
        # of web is taken whatever version web-1 deploys.
        nodes.at("web-2", "1.2.0")
        done = nodes.apply("web-2")
        assert done.returncode in (0, 2), done.stdout
        assert "halted: web-1 failed at 1.2.0" in done.stdout, done.stdout
        assert nodes.running("web-2") == "1.1.0"
    finally:
        (nodes.tmp / "go").touch()
        slow.communicate(timeout=60)
    assert slow.returncode == 2
    assert nodes.states("web")["web-1"] == ("healthy", "1.3.0")
    # Still halted at 1.2.0 once web-1 is healthy at 1.3.0.
    done = nodes.apply("web-2")
    assert "halted: web-1 failed at 1.2.0" in done.stdout, done.stdout
    assert nodes.running("web-2") == "1.1.0"
    # web-2 moves past 1.2.0 too: it deploys 1.3.0, and the failure at 1.2.0 is forgotten.
    nodes.at("web-2", "1.3.0")
    assert nodes.apply("web-2").returncode == 2
    assert nodes.running("web-2") == "1.3.0"
    assert nodes.apply("web-1").returncode == 0
    store = LocalStore(nodes.coordination)
    assert store.failures("shop", "web") == []
    assert set(store.versions("shop", "web")) == {"1.3.0"}


def test_max_parallel_counts_nodes_whatever_version_they_deploy(nodes: Nodes) -> None:
    for node in ("web-1", "web-2"):
        nodes.at(node, "1.0.0")
        assert nodes.apply(node).returncode == 2
    nodes.at("web-1", "1.3.0")
    slow = nodes.deploying("web-1")
    try:
        nodes.at("web-2", "1.4.0")  # a later commit already: nobody failed at 1.4.0
        done = nodes.apply("web-2")
        assert "all 1 slot(s) are taken (web-1)" in done.stdout, done.stdout
        assert nodes.running("web-2") == "1.0.0"
        assert LocalStore(nodes.coordination).holders("shop", "web", "*") == ["web-1"]
    finally:
        (nodes.tmp / "go").touch()
        slow.communicate(timeout=60)


def test_a_node_does_not_deploy_a_version_older_than_another_deploys(nodes: Nodes) -> None:
    for node in ("web-1", "web-2", "web-3"):
        nodes.at(node, "1.0.0", max_parallel=3)
        assert nodes.apply(node).returncode == 2
    nodes.at("web-1", "1.3.0", max_parallel=3)
    slow = nodes.deploying("web-1")
    try:
        # web-3 fetched only 1.1.0, and the store sees it after 1.3.0: semantic versions
        # order them. A slot is free and nobody failed at 1.1.0, yet web-3 does not deploy it.
        nodes.at("web-3", "1.1.0", max_parallel=3)
        done = nodes.apply("web-3")
        assert "superseded: web-1 deploys 1.3.0, later than 1.1.0" in done.stdout, done.stdout
        assert nodes.running("web-3") == "1.0.0"
    finally:
        (nodes.tmp / "go").touch()
        slow.communicate(timeout=60)
    # web-1 runs 1.3.0 now, deploying nothing: 1.1.0 is no longer beside a newer deployment
    # (a version is held back by a failure at it, not by a later one running elsewhere).
    done = nodes.apply("web-3")
    assert done.returncode == 2, done.stdout + done.stderr
    assert nodes.running("web-3") == "1.1.0"
    # Every node at 1.3.0: the older versions are forgotten.
    for node in ("web-2", "web-3"):
        nodes.at(node, "1.3.0", max_parallel=3)
        assert nodes.apply(node).returncode == 2
        assert nodes.running(node) == "1.3.0"
    assert set(LocalStore(nodes.coordination).versions("shop", "web")) == {"1.3.0"}


def test_versions_that_are_not_semantic_go_in_the_order_the_store_saw_them(nodes: Nodes) -> None:
    for node in ("web-1", "web-2"):
        nodes.at(node, "blue", max_parallel=2)
        assert nodes.apply(node).returncode == 2
    nodes.at("web-1", "green", max_parallel=2)
    assert nodes.apply("web-1").returncode == 2  # green: seen after blue
    nodes.at("web-2", "green", max_parallel=2)
    assert nodes.apply("web-2").returncode == 2
    # Back to blue: forgotten once every node moved to green, so it is new again.
    nodes.at("web-1", "blue", max_parallel=2)
    assert nodes.apply("web-1").returncode == 2
    assert nodes.running("web-1") == "blue"


class Polling(Daemon):
    """A daemon of one node, polling a control repo of its own; ``coordination``: its store."""

    def __init__(self, tmp: Path, node: str, coordination: str) -> None:
        self.node, self.coordination = node, coordination
        (tmp / node / "git").mkdir(parents=True)
        self.git = GitServer(tmp / node / "git")
        super().__init__(tmp / node, self.git.url, poll_interval="1s")

    def write_config(self, extra: str = "") -> None:
        super().write_config(f"coordination:\n{self.coordination}  lease: 30s\n")
        self.config.write_text(
            self.config.read_text().replace("node: node-1", f"node: {self.node}")
        )

    def push(self, version: str, go: Path) -> None:
        app = APP.format(version=version, max_parallel=1, go=go)
        self.git.push({"nodes.yaml": "default: base\n", "roles/base.yaml": "profiles: []\n",
                       "apps/shop.yaml": app}, f"shop {version}")  # fmt: skip

    def running(self) -> str | None:
        path = self.root / "srv/VERSION"
        return path.read_text().strip() if path.exists() else None


@pytest.mark.parametrize("backend", ["local", "etcd"])
def test_daemons_that_see_a_new_commit_at_different_times(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    go = tmp_path / "go"
    store: Store
    if backend == "etcd":
        etcd = request.getfixturevalue("etcd")
        coordination = f"  backend: etcd\n  endpoints: [{etcd.url}]\n"
        store = EtcdStore([etcd.url])
    else:
        coordination = f"  backend: local\n  path: {tmp_path / 'coordination'}\n"
        store = LocalStore(tmp_path / "coordination")
    web = {n: Polling(tmp_path, n, coordination) for n in ("web-1", "web-2")}

    def state(node: str) -> tuple[str, str]:
        found = store.states("shop", "web").get(node)
        return (found.state, found.version) if found else ("", "")

    try:
        for daemon in web.values():
            daemon.git.start()
            daemon.push("1.1.0", go)
            daemon.start()
        wait_for(lambda: {state(n) for n in web} == {("healthy", "1.1.0")}, 60, "both at 1.1.0")
        # web-1 fails at 1.2.0, then its repo moves on to 1.3.0, which it deploys slowly.
        web["web-1"].push("1.2.0", go)
        wait_for(lambda: state("web-1") == ("failed", "1.2.0"), 60, "web-1 failed at 1.2.0")
        web["web-1"].push("1.3.0", go)
        wait_for(lambda: state("web-1") == ("deploying", "1.3.0"), 60, "web-1 deploying 1.3.0")
        # Only now does web-2's repo get 1.2.0.
        web["web-2"].push("1.2.0", go)
        wait_for(lambda: state("web-2") == ("waiting", "1.2.0"), 60, "web-2 waiting at 1.2.0")
        message = store.states("shop", "web")["web-2"].message
        assert message == "halted: web-1 failed at 1.2.0", message
        go.touch()
        wait_for(lambda: state("web-1") == ("healthy", "1.3.0"), 60, "web-1 healthy at 1.3.0")
        time.sleep(2)  # web-2 polls and runs meanwhile: it must not deploy 1.2.0
        assert state("web-2") == ("waiting", "1.2.0")
        assert web["web-2"].running() == "1.1.0"
        web["web-2"].push("1.3.0", go)
        wait_for(lambda: state("web-2") == ("healthy", "1.3.0"), 60, "web-2 healthy at 1.3.0")
        assert web["web-2"].running() == "1.3.0"
        assert store.failures("shop", "web") == []
    finally:
        go.touch()
        for daemon in web.values():
            daemon.stop()
            daemon.notify.close()
            daemon.git.stop()
        store.close()
