"""App rollouts across several nodes on one machine, through the one-shot CLI and the local store.

Each node is its own root, state directory and node name; they share one coordination
directory, as daemons on one machine do. Runs are sequential CLI calls, so the order in which
the nodes run plays the part of time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from reconciler.apps.order import semver_key
from reconciler.apps.store import ComponentState, LocalStore
from reconciler.engine.state import last_report
from tests.conftest import seed_root, write_tree

APP = """\
version: "{version}"
components:
  - name: db
    nodes: {{match: "db-*"}}
    resources:
      - directory: /srv/shop/db
      - file: /srv/shop/db/VERSION
        content: "{{{{ app.version }}}}\\n"
    health: {{command: "test -s $RECONCILER_ROOT/srv/shop/db/VERSION", retries: 0}}
  - name: api
    nodes: {{role: app}}
    requires: [db]
    max_parallel: 1
    on_failure: {on_failure}
    resources:
      - directory: /srv/shop/api
      - file: /srv/shop/api/VERSION
        content: "{{{{ app.name }}}} {{{{ app.version }}}}\\n"
    health:
      command: ["/bin/sh", "-c", "{api_health}"]
      retries: 1
      interval: 0.1
  - name: lb
    nodes: {{match: "lb-*"}}
    requires: [api]
    resources:
      - directory: /srv/shop/lb
      - file: /srv/shop/lb/VERSION
        content: "{{{{ app.version }}}}\\n"
"""

OK = "test -s $RECONCILER_ROOT/srv/shop/api/VERSION"


def control_repo(path: Path, version: str, api_health: str = OK, on_failure: str = "halt") -> Path:
    return write_tree(
        path,
        {
            "nodes.yaml": "nodes:\n  - match: 'api-*'\n    role: app\ndefault: base\n",
            "roles/app.yaml": "profiles: [base]\n",
            "roles/base.yaml": "profiles: [base]\n",
            "profiles/base.yaml": "resources:\n  - directory: /srv/shop\n",
            "apps/shop.yaml": APP.format(
                version=version, api_health=api_health, on_failure=on_failure
            ),
        },
    )


class Fleet:
    """Nodes sharing one coordination directory, each applied with its own --config."""

    def __init__(self, tmp: Path, exports_ttl: str = "1h") -> None:
        self.tmp = tmp
        self.coordination = tmp / "coordination"
        self.repo = tmp / "repo"
        self.exports_ttl = exports_ttl

    def config(self, node: str) -> Path:
        path = self.tmp / node / "config.yaml"
        if not path.exists():
            root = seed_root(self.tmp / node / "root")
            path.write_text(
                textwrap.dedent(
                    f"""\
                    node: {node}
                    root: {root}
                    state_dir: {self.tmp / node / "state"}
                    facts_dirs: []
                    coordination:
                      backend: local
                      path: {self.coordination}
                      exports_ttl: {self.exports_ttl}
                    """
                )
            )
        return path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "NO_COLOR": "1"},
        )

    def apply(self, node: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``apply`` (or the command and options ``args`` give) for ``node``."""
        command = args or ("apply",)
        return self.cli(*command, "--config", str(self.config(node)), "--repo", str(self.repo))

    def read(self, node: str, path: str) -> str:
        return (self.tmp / node / "root" / path).read_text()

    def version(self, node: str, component: str) -> str | None:
        path = self.tmp / node / "root" / "srv/shop" / component / "VERSION"
        return path.read_text().split()[-1] if path.exists() else None

    def states(self, component: str) -> dict[str, tuple[str, str]]:
        store = LocalStore(self.coordination)
        return {n: (s.state, s.version) for n, s in store.states("shop", component).items()}

    def report(self, node: str) -> dict[str, Any]:
        data = last_report(self.tmp / node / "state")
        assert data is not None
        return data


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_a_version_rolls_out_in_dependency_order(fleet: Fleet) -> None:
    control_repo(fleet.repo, "1.0")
    # Before the database is healthy, api and lb wait: no failure, nothing of theirs applied.
    for node in ("api-1", "api-2", "lb-1"):
        done = fleet.apply(node)
        assert done.returncode in (0, 2), done.stderr
        assert "waiting" in done.stdout, done.stdout
        assert fleet.version(node, node.split("-")[0]) is None
    assert "db: no node has reported" in fleet.apply("api-1").stdout
    assert fleet.states("api") == {"api-1": ("waiting", "1.0"), "api-2": ("waiting", "1.0")}

    assert fleet.apply("db-1").returncode == 2
    assert fleet.version("db-1", "db") == "1.0"
    assert fleet.states("db") == {"db-1": ("healthy", "1.0")}
    # status shows what api-2 waited for at its last run, and what that reports now.
    status = fleet.cli("status", "--config", str(fleet.config("api-2")))
    assert "app shop/api 1.0: waiting  waiting for db to be healthy at 1.0" in status.stdout
    assert "shop/db: db-1 healthy@1.0" in status.stdout, status.stdout

    # api deploys node by node; lb waits while any api node is not healthy at 1.0.
    assert fleet.apply("api-1").returncode == 2
    assert fleet.version("api-1", "api") == "1.0"
    done = fleet.apply("lb-1")
    assert "waiting for api" in done.stdout and "api-2 waiting@1.0" in done.stdout
    assert fleet.apply("api-2").returncode == 2
    assert fleet.apply("lb-1").returncode == 2
    assert fleet.version("lb-1", "lb") == "1.0"
    assert fleet.states("api") == {"api-1": ("healthy", "1.0"), "api-2": ("healthy", "1.0")}

    # Published states carry their times: db was healthy before api deployed, api before lb.
    store = LocalStore(fleet.coordination)
    db = store.states("shop", "db")["db-1"].updated
    api = max(s.updated for s in store.states("shop", "api").values())
    lb = store.states("shop", "lb")["lb-1"].updated
    assert db < api < lb

    # A second run changes nothing and publishes nothing new.
    assert fleet.apply("api-1").returncode == 0
    assert store.states("shop", "api")["api-1"].updated <= api

    # A bump: api keeps 1.0 until db is healthy at 2.0.
    control_repo(fleet.repo, "2.0")
    done = fleet.apply("api-1")
    assert done.returncode in (0, 2) and "waiting for db" in done.stdout
    assert fleet.version("api-1", "api") == "1.0"
    fleet.apply("db-1")
    assert fleet.apply("api-1").returncode == 2
    assert fleet.version("api-1", "api") == "2.0"
    assert fleet.report("api-1")["apps"] == [
        {
            "app": "shop",
            "component": "api",
            "version": "2.0",
            "decision": "deploy",
            "state": "healthy",
            "message": "/bin/sh -c " + OK + ": exit 0",
            "previous_version": "1.0",
            "waits_for": {},
        }
    ]


def test_max_parallel_holds_the_second_node_back(fleet: Fleet) -> None:
    control_repo(
        fleet.repo, "1.0", api_health=f"{OK} && until test -e {fleet.tmp}/go; do sleep 0.05; done"
    )
    fleet.apply("db-1")
    # api-1 deploys and holds the only slot while its health check waits for "go".
    slow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "apply",
            "--config",
            str(fleet.config("api-1")),
            "--repo",
            str(fleet.repo),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        store = LocalStore(fleet.coordination)
        deadline = time.monotonic() + 60
        while store.holders("shop", "api", "*") != ["api-1"] and time.monotonic() < deadline:
            time.sleep(0.05)
        done = fleet.apply("api-2")
        assert "slot(s) are taken (api-1)" in done.stdout
        assert fleet.version("api-2", "api") is None
    finally:
        (fleet.tmp / "go").touch()
        slow.communicate(timeout=60)
    assert slow.returncode == 2
    assert fleet.apply("api-2").returncode == 2
    assert fleet.version("api-2", "api") == "1.0"


def test_a_failed_health_check_halts_the_rollout(fleet: Fleet) -> None:
    control_repo(fleet.repo, "1.0")
    for node in ("db-1", "api-1", "api-2", "lb-1"):
        fleet.apply(node)
    assert fleet.version("lb-1", "lb") == "1.0"
    control_repo(fleet.repo, "2.0", api_health="exit 3", on_failure="rollback")
    fleet.apply("db-1")
    done = fleet.apply("api-1")
    assert done.returncode == 6, (done.stdout, done.stderr)  # changed, and failed
    assert "exit 3" in done.stdout and "rolled back to 1.0" in done.stdout
    assert fleet.version("api-1", "api") == "1.0"  # the previous version is back
    assert fleet.states("api")["api-1"] == ("failed", "2.0")
    # The other api node does not start; lb keeps 1.0 and waits.
    done = fleet.apply("api-2")
    assert done.returncode in (0, 2) and "halted: api-1 failed at 2.0" in done.stdout
    assert fleet.version("api-2", "api") == "1.0"
    assert "waiting for api" in fleet.apply("lb-1").stdout
    assert fleet.version("lb-1", "lb") == "1.0"
    # The failed node stays failed at this revision: nothing is tried again, the run fails.
    again = fleet.apply("api-1")
    assert again.returncode == 4 and fleet.version("api-1", "api") == "1.0"
    # A fixed revision rolls on.
    control_repo(fleet.repo, "2.0")
    assert fleet.apply("api-1").returncode == 2
    assert fleet.version("api-1", "api") == "2.0"


def test_a_deployed_component_that_breaks_fails_then_heals(fleet: Fleet) -> None:
    control_repo(fleet.repo, "1.0")
    fleet.apply("db-1")
    assert fleet.apply("api-1").returncode == 2
    api_dir = fleet.tmp / "api-1" / "root" / "srv/shop/api"
    for child in api_dir.iterdir():
        child.unlink()
    api_dir.rmdir()
    api_dir.write_text("not a directory\n")  # the component's directory cannot converge
    broken = fleet.apply("api-1")
    assert broken.returncode == 4, broken.stdout
    assert fleet.states("api")["api-1"] == ("failed", "1.0")
    assert "waiting for api" in fleet.apply("lb-1").stdout
    api_dir.unlink()
    healed = fleet.apply("api-1")
    assert healed.returncode == 2, healed.stdout
    assert fleet.states("api")["api-1"] == ("healthy", "1.0")
    assert fleet.version("api-1", "api") == "1.0"


def test_plan_takes_no_slot_and_publishes_nothing(fleet: Fleet) -> None:
    control_repo(fleet.repo, "1.0")
    fleet.apply("db-1")
    before = fleet.states("api")
    done = fleet.apply("api-1", "plan")
    assert done.returncode == 2 and "file:/srv/shop/api/VERSION" in done.stdout
    assert fleet.states("api") == before == {}
    assert LocalStore(fleet.coordination).holders("shop", "api", "*") == []


def test_a_version_of_thousands_of_digits_in_the_store_is_ordered_not_fatal(
    fleet: Fleet,
) -> None:
    """A node that can write to the store publishes, for itself, a version of 5000 digits: the
    other nodes order it as a semantic version (an earlier one here), without turning it into
    an int (which raised and failed every node's run), and deploy."""
    control_repo(fleet.repo, "1.0")
    assert fleet.apply("db-1").returncode == 2
    store = LocalStore(fleet.coordination)
    huge = "0." + "1" * 5000
    store.publish("shop", "api", ComponentState("api-8", huge, "deploying", "0" * 40, time.time()))
    done = fleet.apply("api-1")
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert fleet.version("api-1", "api") == "1.0"
    assert semver_key(huge) is not None and semver_key("1.0") > semver_key(huge)  # type: ignore[operator]
    assert semver_key("0.\u0663") is None  # ARABIC-INDIC THREE: not a semantic version


def test_the_store_is_beside_the_state_directory_the_command_line_gives(tmp_path: Path) -> None:
    """A configuration with no coordination section keeps the local store in the state
    directory: the one `--state-dir` names when it is given (never the default one)."""
    repo = control_repo(tmp_path / "repo", "1.0")
    config = tmp_path / "db-1.yaml"
    config.write_text(f"node: db-1\nroot: {seed_root(tmp_path / 'root')}\nfacts_dirs: []\n")
    state = tmp_path / "state"
    argv = ["apply", "--config", str(config), "--repo", str(repo), "--state-dir", str(state)]
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    stored = LocalStore(state / "coordination").states("shop", "db")
    assert stored["db-1"].state == "healthy"
