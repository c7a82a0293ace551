"""The rollout's promises over interleavings of nodes, versions, failures and lease expiry.

A Hypothesis state machine drives the real ``Rollout`` of several nodes (each its own state
directory) against one real ``LocalStore`` in a temporary directory. A node's run is split in
two, as in a real run: ``decide`` (gate, take a slot, publish ``deploying``) and ``finish``
(publish the result, give the slot back), so that other nodes run in between. A node may also
die between the two; its slot then stays taken until its lease runs out (the rule writes the
expiry into the slot's file, the store's documented layout, instead of waiting minutes).

The model keeps its own account of what happened and checks, at every deploy and after every
step:

- no more nodes deploy the component at once than ``max_parallel``, whatever their versions;
- no node deploys a version at which another node failed while some node has not moved past it;
- no node deploys a version older than one another node is deploying at the same time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from reconciler.apps.order import semver_key
from reconciler.apps.rollout import Rollout
from reconciler.apps.store import LocalStore
from reconciler.engine.report import ResourceResult
from reconciler.errors import Location
from reconciler.model.apps import App, Component, Deployment
from reconciler.model.catalog import Catalog
from reconciler.model.repo import Settings
from reconciler.model.yamlload import LocList

NODES = ("web-1", "web-2", "web-3")
VERSIONS = ("1.0", "1.1", "1.2", "1.10", "2.0-rc.1", "2.0")
RID = "file:/srv/VERSION"


def older(v: str, w: str) -> bool:
    a, b = semver_key(v), semver_key(w)
    assert a is not None and b is not None
    return a < b


class Rollouts(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="rollout-props-"))
        self.store = LocalStore(self.tmp / "coordination")
        self.max_parallel = 1
        self.seen: dict[str, str] = {}  # the version in each node's repo
        self.ran_at: dict[str, str] = {}  # the version of each node's last run
        self.pending: dict[str, tuple[Rollout, Deployment]] = {}  # decided to deploy
        self.dead: set[str] = set()  # died while deploying; the slot's lease still runs
        self.running: dict[str, tuple[str, str]] = {}  # node -> (state, version), the truth
        self.failed: dict[str, set[str]] = {}  # version -> nodes that failed deploying it
        self.deployed: dict[str, str] = {}  # node -> the version it last deployed, healthy

    def teardown(self) -> None:
        for rollout, _ in self.pending.values():
            rollout.close()
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(max_parallel=st.integers(1, 2))
    def start(self, max_parallel: int) -> None:
        self.max_parallel = max_parallel

    # -- the world

    @rule(node=st.sampled_from(NODES), version=st.sampled_from(VERSIONS))
    def node_sees(self, node: str, version: str) -> None:
        self.seen[node] = version

    @precondition(lambda self: any(n not in self.pending for n in self.seen))
    @rule(data=st.data())
    def node_runs(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(n for n in self.seen if n not in self.pending)))
        version = self.seen[node]
        self.dead.discard(node)  # back up: its slot is its own again
        rollout = Rollout(self.store, self.tmp / node, node, f"rev-{version}", noop=False)
        app = App("shop", "apps/shop.yaml", version)
        component = Component(
            "web", Location(), None, None, [], self.max_parallel, LocList([]), None, "halt"
        )
        deployment = Deployment(app, component, [RID])
        catalog = Catalog(node, "base", f"rev-{version}", None, Settings(), {}, {}, {})
        catalog.deployments = [deployment]
        rollout.decide(catalog)
        decision = rollout.outcomes[deployment.key].decision
        self.ran_at[node] = version
        for at in list(self.failed):  # every node has moved past it: the failures go
            if all(older(at, v) for v in self.ran_at.values()):
                del self.failed[at]
        if decision == "deploy":
            self.pending[node] = (rollout, deployment)  # closed by teardown, whatever happens
            self.check_may_deploy(node, version)
            self.running[node] = ("deploying", version)
            self.check_width()
            return
        self.finish(node, rollout, deployment, ok=True)
        if self.running.get(node, ("", ""))[0] == "deploying":  # died deploying, now waits
            if node in self.deployed:
                self.running[node] = ("healthy", self.deployed[node])
            else:
                del self.running[node]

    @precondition(lambda self: bool(set(self.pending) - self.dead))
    @rule(data=st.data(), ok=st.booleans())
    def deploy_ends(self, data: st.DataObject, ok: bool) -> None:
        node = data.draw(st.sampled_from(sorted(set(self.pending) - self.dead)))
        rollout, deployment = self.pending.pop(node)
        self.finish(node, rollout, deployment, ok)
        if rollout.outcomes[deployment.key].decision == "deploy":
            version = deployment.app.version
            self.running[node] = ("healthy" if ok else "failed", version)
            if ok:
                self.deployed[node] = version
            else:
                self.failed.setdefault(version, set()).add(node)

    @precondition(lambda self: bool(set(self.pending) - self.dead))
    @rule(data=st.data())
    def node_dies_deploying(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(set(self.pending) - self.dead)))
        rollout, _ = self.pending.pop(node)
        rollout.close()  # no result published, the slot not given back
        self.dead.add(node)

    @precondition(lambda self: bool(self.dead))
    @rule(data=st.data())
    def lease_runs_out(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(self.dead)))
        for path in (self.tmp / "coordination" / "slots").rglob("*.json"):
            slot = json.loads(path.read_text())
            if slot["holder"] == node:
                path.write_text(json.dumps({**slot, "expires": 0}))
        self.dead.discard(node)
        self.running.pop(node, None)  # gone for good, as far as the others can tell

    # -- helpers and checks

    def finish(self, node: str, rollout: Rollout, deployment: Deployment, ok: bool) -> None:
        status = "changed" if ok else "failed"
        results = {RID: ResourceResult(RID, status)}  # type: ignore[arg-type]
        rollout.finish({}, results, lambda entries: [], None)  # type: ignore[arg-type]
        rollout.close()

    def visible_failures(self, version: str) -> set[str]:
        """Who failed at ``version`` (kept until every node that has run is past it)."""
        return self.failed.get(version, set())

    def check_may_deploy(self, node: str, version: str) -> None:
        halting = self.visible_failures(version) - {node}
        assert not halting, f"{node} deploys {version}, at which {halting} failed"
        for other, (state, at) in self.running.items():
            if other != node and state == "deploying":
                assert not older(version, at), f"{node} deploys {version}; {other} {state} {at}"

    @invariant()
    def check_width(self) -> None:
        # A node that died deploying and came back to wait has given its slot back.
        holders = set(self.store.holders("shop", "web", "*"))
        deploying = set(self.pending) | self.dead
        assert holders <= deploying, f"{sorted(holders - deploying)} hold a slot, not deploying"
        assert len(deploying) <= self.max_parallel, f"{sorted(deploying)} deploy at once"


Rollouts.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no slow explain
    suppress_health_check=[HealthCheck.too_slow],
)
TestRollouts = Rollouts.TestCase
