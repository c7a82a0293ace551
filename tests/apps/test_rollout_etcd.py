"""App rollouts with a real etcd and real daemons: four nodes on one machine, as subprocesses.

Each daemon has its own root, state directory, node name and port, polls the same control repo
served by `git daemon`, and coordinates through etcd. The api health check writes a line when it
starts and when it ends to a log shared by the nodes: from it the test reads the order of the
rollout, which the published states and their timestamps confirm.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.apps.store import ComponentState, EtcdStore
from tests.apps.conftest import EtcdServer
from tests.daemon.conftest import Daemon, GitServer, wait_for

NODES = ("db-1", "api-1", "api-2", "lb-1")

APP = """\
version: "{version}"
components:
  - name: db
    nodes: {{match: "db-*"}}
    resources:
      - file: /srv/shop/VERSION
        content: "{{{{ app.version }}}}\\n"
  - name: api
    nodes: {{match: "api-*"}}
    requires: [db]
    max_parallel: 1
    resources:
      - file: /srv/shop/VERSION
        content: "{{{{ app.version }}}}\\n"
    health:
      command: "echo start {{{{ node }}}} {{{{ app.version }}}} >> {log}; {api_check}; rc=$?; echo end {{{{ node }}}} {{{{ app.version }}}} >> {log}; exit $rc"
      retries: 0
      timeout: 60
  - name: lb
    nodes: {{match: "lb-*"}}
    requires: [api]
    resources:
      - file: /srv/shop/VERSION
        content: "{{{{ app.version }}}}\\n"
"""


class Node(Daemon):
    """The test daemon, with a node name and the etcd store."""

    def __init__(self, tmp: Path, url: str, node: str, etcd: str) -> None:
        self.node, self.etcd = node, etcd
        super().__init__(tmp / node, url, poll_interval="1s")

    def write_config(self, extra: str = "") -> None:
        super().write_config(
            f"coordination:\n  backend: etcd\n  endpoints: [{self.etcd}]\n  lease: 3s\n" + extra
        )
        self.config.write_text(
            self.config.read_text().replace("node: node-1", f"node: {self.node}")
        )

    def version(self) -> str | None:
        path = self.root / "srv/shop/VERSION"
        return path.read_text().strip() if path.exists() else None


class Fleet:
    def __init__(self, tmp: Path, etcd: EtcdServer) -> None:
        self.tmp = tmp
        self.etcd = etcd
        self.log = tmp / "health.log"
        self.log.touch()
        self.git = GitServer(tmp)
        self.store = EtcdStore([etcd.url])
        self.nodes: dict[str, Node] = {}

    def push(self, version: str, api_check: str = "sleep 0.5", base: str = "") -> None:
        app = APP.format(version=version, log=self.log, api_check=api_check)
        self.git.push(
            {
                "nodes.yaml": "default: node\n",
                "roles/node.yaml": "profiles: [base]\n",
                "profiles/base.yaml": "resources:\n  - directory: /srv/shop\n" + base,
                "apps/shop.yaml": app,
            },
            f"shop {version}",
        )

    def start(self, *names: str) -> None:
        for name in names:
            (self.tmp / name).mkdir(exist_ok=True)
            node = self.nodes.get(name) or Node(self.tmp, self.git.url, name, self.etcd.url)
            self.nodes[name] = node
            node.start()

    def states(self, component: str) -> dict[str, ComponentState]:
        return self.store.states("shop", component)

    def at(self, component: str, state: str, version: str, nodes: int) -> bool:
        found = self.states(component)
        return len(found) == nodes and all(
            (s.state, s.version) == (state, version) for s in found.values()
        )

    def health_log(self, version: str) -> list[tuple[str, str]]:
        lines = [line.split() for line in self.log.read_text().splitlines()]
        return [(what, node) for what, node, v in lines if v == version]

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()
            node.notify.close()
        self.store.close()
        self.git.stop()


@pytest.fixture
def fleet(tmp_path: Path, etcd: EtcdServer) -> Iterator[Fleet]:
    f = Fleet(tmp_path, etcd)
    f.git.start()
    try:
        yield f
    finally:
        f.stop()


def test_a_bump_rolls_out_db_then_api_one_node_at_a_time_then_lb(fleet: Fleet) -> None:
    fleet.push("1.0")
    fleet.start(*NODES)
    wait_for(lambda: fleet.at("lb", "healthy", "1.0", 1), 90, "lb healthy at 1.0")
    assert {n: fleet.nodes[n].version() for n in NODES} == dict.fromkeys(NODES, "1.0")

    fleet.push("2.0")
    wait_for(lambda: fleet.at("lb", "healthy", "2.0", 1), 90, "lb healthy at 2.0")
    assert {n: fleet.nodes[n].version() for n in NODES} == dict.fromkeys(NODES, "2.0")
    # The api nodes checked their health one after the other, never both at once.
    log = fleet.health_log("2.0")
    assert sorted(log) == [
        ("end", "api-1"),
        ("end", "api-2"),
        ("start", "api-1"),
        ("start", "api-2"),
    ]
    first, second = log[0][1], log[2][1]
    assert log == [("start", first), ("end", first), ("start", second), ("end", second)]
    # The published timestamps follow the dependency order.
    db = fleet.states("db")["db-1"].updated
    api = fleet.states("api")
    lb = fleet.states("lb")["lb-1"].updated
    assert db < min(s.updated for s in api.values())
    assert max(s.updated for s in api.values()) < lb
    # The daemons export the component state once the run that published it has ended
    # (the store hears of it mid-run, the metrics at the run's end).
    wait_for(
        lambda: (
            fleet.nodes["lb-1"].metric(
                "reconciler_app_component_state", app="shop", component="lb", state="healthy"
            )
            == 1.0
        ),
        30,
        "lb-1 exporting lb healthy",
    )
    assert "<code>shop/api</code>" in fleet.nodes["api-1"].get("/")[1].decode()


POOL = """\
  - file: /srv/shop/pool
    content: "{{ collect('member') | length }} members\\n"
"""


def test_a_node_that_collects_and_then_waits_is_woken_by_its_app(fleet: Fleet) -> None:
    """Nodes whose catalogs collect watch the exports records; once their component waits for
    a slot, their watch covers the app's keys as well, so a freed slot brings them in at
    once: not after the store watch's 30 s timeout, nor the 10 minute interval."""
    nodes = ("db-1", "api-1", "api-2")
    fleet.push("1.0", base=POOL)
    fleet.start(*nodes)
    wait_for(lambda: fleet.at("api", "healthy", "1.0", 2), 90, "api healthy at 1.0")
    assert (fleet.nodes["api-1"].root / "srv/shop/pool").read_text() == "0 members\n"
    fleet.push("2.0", api_check="sleep 2", base=POOL)
    # One api node deploys (2 s of health check), the other waits for its slot: woken by the
    # slot's release, it deploys within seconds. 20 s is below the 30 s of a store wait.
    wait_for(lambda: fleet.at("api", "healthy", "2.0", 2), 20, "both api nodes at 2.0")
    log = fleet.health_log("2.0")
    assert [what for what, _ in log] == ["start", "end", "start", "end"]
    waited = next(n for n in ("api-1", "api-2") if n != log[0][1])
    assert "coordination store changed; checking waiting components" in fleet.nodes[waited].logs()


def test_a_failing_health_check_halts_the_rollout(fleet: Fleet) -> None:
    fleet.push("1.0")
    fleet.start(*NODES)
    wait_for(lambda: fleet.at("lb", "healthy", "1.0", 1), 90, "lb healthy at 1.0")
    fleet.push("2.0", api_check="(exit 7)")
    wait_for(
        lambda: any(s.state == "failed" for s in fleet.states("api").values()),
        60,
        "an api node failed",
    )
    failed = next(n for n, s in fleet.states("api").items() if s.state == "failed")
    other = "api-2" if failed == "api-1" else "api-1"
    wait_for(
        lambda: (
            "halted" in fleet.states("api").get(other, ComponentState("", "", "", "", 0)).message
        ),
        30,
        "the other api node halted",
    )
    wait_for(lambda: fleet.states("lb")["lb-1"].state == "waiting", 30, "lb waiting")
    time.sleep(2)  # give the halted nodes time to do what they must not do
    assert fleet.nodes[other].version() == "1.0"
    assert fleet.nodes["lb-1"].version() == "1.0"
    assert fleet.health_log("2.0") == [("start", failed), ("end", failed)]
    wait_for(
        lambda: (
            fleet.nodes[failed].metric(
                "reconciler_app_component_state", app="shop", component="api", state="failed"
            )
            == 1.0
        ),
        30,
        f"{failed} exporting api failed",
    )


def test_a_node_killed_holding_a_slot_frees_it_when_its_lease_expires(fleet: Fleet) -> None:
    hold = fleet.tmp / "release"
    fleet.push("1.0", api_check=f"until test -e {hold}; do sleep 0.1; done")
    fleet.start("db-1", "api-1")
    wait_for(lambda: fleet.store.holders("shop", "api", "*") == ["api-1"], 60, "api-1 deploying")
    fleet.start("api-2")
    wait_for(
        lambda: (
            "slot" in fleet.states("api").get("api-2", ComponentState("", "", "", "", 0)).message
        ),
        30,
        "api-2 waiting for the slot",
    )
    killed = fleet.nodes["api-1"]
    assert killed.proc is not None
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(10)
    hold.touch()  # api-2's own check passes at once
    # The lease (3 s) runs out; api-2 takes the slot and deploys without waiting for its interval.
    wait_for(lambda: fleet.states("api")["api-2"].state == "healthy", 60, "api-2 healthy")
    assert fleet.nodes["api-2"].version() == "1.0"


def test_nodes_keep_enforcing_while_etcd_is_away_and_resume_when_it_returns(
    fleet: Fleet,
) -> None:
    fleet.push("1.0")
    fleet.start(*NODES)
    wait_for(lambda: fleet.at("lb", "healthy", "1.0", 1), 90, "lb healthy at 1.0")
    fleet.etcd.stop()
    fleet.push("2.0")
    api = fleet.nodes["api-1"]
    away = "coordination store is unavailable"
    wait_for(lambda: away in api.get("/status")[1].decode(), 30, "api-1 reports the store away")
    # Still enforcing 1.0: drift is repaired while the store is away.
    (api.root / "srv/shop/VERSION").write_text("tampered\n")
    wait_for(lambda: api.version() == "1.0", 30, "api-1 repairs its file")
    assert fleet.nodes["db-1"].version() == "1.0"  # no slot can be taken: nothing deploys
    fleet.etcd.start()
    wait_for(
        lambda: fleet.at("lb", "healthy", "2.0", 1), 120, "lb healthy at 2.0 after etcd returns"
    )
    assert {n: fleet.nodes[n].version() for n in NODES} == dict.fromkeys(NODES, "2.0")
