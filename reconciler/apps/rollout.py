"""Rolling out app components on this node: gate, deploy, health-check, publish.

For each component the node runs, a run decides one of:

``deploy``
    the node is not yet at the app's version, everything the component requires is healthy at
    that version on all of its nodes, no node of the component failed at it (a failure is kept
    until every node has moved past its version), no other node deploys a later version, and a
    slot (one of the component's ``max_parallel``, whatever the version) is taken: the
    component's resources at the new version are applied, then its health check runs, and the
    result is published.
``enforce``
    the node already deployed this version: its resources are enforced like a profile's; the
    health check runs again when a resource of the component changed or the component is not
    healthy (a resource that stopped converging failed it; it heals when it converges again).
``waiting``
    something above is missing: the component's resources at the new version stay out of the
    catalog and the node keeps enforcing the version it last deployed. Not a failure.
``failed``
    this node's deployment failed at this version and revision: nothing more is deployed
    until a new version or revision arrives; the run counts it as a failure.

What a node last deployed (its resources, as compiled then) is kept under
``state_dir/apps/<app>/<component>.json``, so that a waiting or failed component keeps being
enforced at its previous version, and ``on_failure: rollback`` can put it back.
"""

from __future__ import annotations

import base64
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.apps.order import SLOTS, Peers
from reconciler.apps.store import ComponentState, Store, StoreError
from reconciler.engine import state as statemod
from reconciler.engine.report import ResourceResult
from reconciler.errors import Location, ModelError
from reconciler.model.apps import Deployment
from reconciler.model.catalog import Catalog, Entry, link
from reconciler.resources.base import REGISTRY, Context, ResourceId, Secrets

Warn = Callable[[str], None]


def _ignore(message: str) -> None:
    pass


@dataclass
class Outcome:
    """What a run decided and reached for one component on this node."""

    app: str
    component: str
    version: str
    decision: str  # deploy | enforce | waiting | failed
    state: str  # as published: deploying | healthy | failed | waiting | rolledback
    message: str = ""
    previous_version: str | None = None
    waits_for: dict[str, dict[str, str]] = field(default_factory=dict)  # component -> node -> st

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "component": self.component,
            "version": self.version,
            "decision": self.decision,
            "state": self.state,
            "message": self.message,
            "previous_version": self.previous_version,
            "waits_for": self.waits_for,
        }


# -- what a node last deployed ------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$bytes"}:
            return base64.b64decode(value["$bytes"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def dump_entries(entries: list[Entry]) -> list[dict[str, Any]]:
    return [
        {
            "type": e.resource.type,
            "title": e.resource.title,
            "attrs": _encode(e.resource.attrs),
            "sensitive": e.resource.sensitive,
            "scope": e.resource.scope,
            "noop": e.noop,
            "relations": e.relations,
            "file": e.where.file,
            "line": e.where.line,
            "origin": e.origin,
        }
        for e in entries
    ]


def load_entries(raw: list[dict[str, Any]]) -> dict[ResourceId, Entry]:
    entries: dict[ResourceId, Entry] = {}
    for item in raw:
        cls = REGISTRY[item["type"]]
        resource = cls(item["title"], _decode(item["attrs"]), sensitive=bool(item["sensitive"]))
        resource.scope = str(item.get("scope") or "")
        where = Location(item.get("file"), item.get("line"))
        entries[resource.id] = Entry(
            resource, where, str(item["origin"]), bool(item["noop"]), dict(item["relations"])
        )
    return entries


class Record:
    """This node's memory of one component: what it deployed last, what it last published."""

    def __init__(self, path: Path, warn: Warn) -> None:
        self.path = path
        raw = statemod.read_json(path, warn) or {}
        self.deployed: dict[str, Any] | None = raw.get("deployed")
        self.last: dict[str, Any] = raw.get("last") or {}
        self.published: dict[str, Any] = raw.get("published") or {}

    @property
    def deployed_version(self) -> str | None:
        return None if self.deployed is None else str(self.deployed["version"])

    def previous_entries(self) -> dict[ResourceId, Entry]:
        if self.deployed is None:
            return {}
        try:
            return load_entries(self.deployed["entries"])
        except (KeyError, TypeError, ValueError):
            return {}

    def save(self) -> None:
        statemod.write_json(
            self.path, {"deployed": self.deployed, "last": self.last, "published": self.published}
        )


# -- the rollout --------------------------------------------------------------------------------


class Rollout:
    """One run's decisions for the app components of this node."""

    def __init__(
        self,
        store: Store | None,
        state_dir: Path,
        node: str,
        revision: str | None,
        noop: bool,
        lease: float = 300.0,
        warn: Warn = _ignore,
        store_error: str | None = None,
    ) -> None:
        self.store = store
        self.store_error = store_error
        self.state_dir = state_dir
        self.node = node
        self.revision = revision or ""
        self.noop = noop
        self.lease = lease
        self.warn = warn
        self.outcomes: dict[str, Outcome] = {}
        self.records: dict[str, Record] = {}
        self.deployments: dict[str, Deployment] = {}
        # The catalog's secrets: a health check's output is scrubbed of them before it is kept,
        # published to the store or reported.
        self.secrets = Secrets()
        # The revision each component is judged at; a working tree's is its app file's digest.
        self.revisions: dict[str, str] = {}
        self._renewing = threading.Event()
        self._renewer: threading.Thread | None = None

    def _record(self, d: Deployment) -> Record:
        if d.key not in self.records:
            path = self.state_dir / "apps" / d.app.name / f"{d.component.name}.json"
            self.records[d.key] = Record(path, self.warn)
        return self.records[d.key]

    # -- before the run

    def decide(self, catalog: Catalog) -> None:
        """Decide every component, then put the chosen version of each into the catalog."""
        self.secrets = catalog.secrets
        for d in catalog.deployments:
            self.deployments[d.key] = d
            self.outcomes[d.key] = self._decide(d)
        self._swap(catalog)
        if not self.noop:
            for key, outcome in self.outcomes.items():
                if outcome.decision != "deploy":
                    self._give_back(self.deployments[key])
                if outcome.decision in ("deploy", "waiting"):
                    self._publish(self.deployments[key], outcome.state, outcome.message)
            if any(o.decision == "deploy" for o in self.outcomes.values()):
                self._renewer = threading.Thread(target=self._renew, daemon=True)
                self._renewer.start()

    def _decide(self, d: Deployment) -> Outcome:
        version = d.app.version
        record = self._record(d)
        outcome = Outcome(
            d.app.name,
            d.component.name,
            version,
            "deploy",
            "deploying",
            previous_version=record.deployed_version,
        )
        last = record.last
        self.revisions[d.key] = self.revision or f"worktree:{d.app.digest[:12]}"
        if d.unavailable and record.deployed_version == version:
            # A value it consumes is gone: what it deployed stays, as compiled then.
            return self._wait(outcome, d.unavailable)
        if record.deployed_version == version:
            # Deployed here already: enforced like a profile; a failure while enforcing it (a
            # resource that stopped converging) heals when it converges and checks healthy.
            outcome.decision = "enforce"
            outcome.state = str(last.get("state") or "healthy")
            outcome.message = str(last.get("message") or outcome.state)
            return outcome
        if (last.get("version"), last.get("state"), last.get("revision")) == (
            version,
            "failed",
            self.revisions[d.key],
        ):
            outcome.decision, outcome.state = "failed", "failed"
            outcome.message = str(last.get("message") or "failed at this version")
            self._keep_failure(d, outcome.message)
            return outcome
        if self.store is None:
            return self._wait(outcome, f"the coordination store is unavailable: {self.store_error}")
        try:
            if not self.noop:
                self.store.note_version(d.app.name, d.component.name, version)
            for required in d.component.requires:
                states = self.store.states(d.app.name, required)
                shown = {n: f"{s.state}@{s.version}" for n, s in sorted(states.items())}
                if not states or any(
                    s.version != version or s.state != "healthy" for s in states.values()
                ):
                    outcome.waits_for[required] = shown
            if outcome.waits_for:
                names = ", ".join(sorted(outcome.waits_for))
                return self._wait(outcome, f"waiting for {names} to be healthy at {version}")
            if d.unavailable:  # a value it consumes is not published: it cannot be compiled
                return self._wait(outcome, d.unavailable)
            peers = Peers.read(self.store, d.app.name, d.component.name, self.node, version)
            if not self.noop:
                for past in peers.passed():
                    self.store.forget_version(d.app.name, d.component.name, past)
            failed = peers.failed_at(version)
            if failed:
                return self._wait(outcome, f"halted: {', '.join(failed)} failed at {version}")
            ahead = peers.ahead_of(version)
            if ahead:
                later = ", ".join(f"{n} deploys {v}" for n, v in ahead)
                return self._wait(outcome, f"superseded: {later}, later than {version}")
            if self.noop:
                holders = self.store.holders(d.app.name, d.component.name, SLOTS)
                free = self.node in holders or len(holders) < d.component.max_parallel
            else:
                free = self.store.acquire_slot(
                    d.app.name,
                    d.component.name,
                    SLOTS,
                    self.node,
                    d.component.max_parallel,
                    self.lease,
                )
                holders = [] if free else self.store.holders(d.app.name, d.component.name, SLOTS)
            if not free:
                return self._wait(
                    outcome,
                    f"all {d.component.max_parallel} slot(s) are taken ({', '.join(holders)})",
                )
        except StoreError as exc:
            return self._wait(outcome, f"the coordination store is unavailable: {exc}")
        outcome.message = f"deploying {version}"
        return outcome

    def _wait(self, outcome: Outcome, message: str) -> Outcome:
        outcome.decision, outcome.state, outcome.message = "waiting", "waiting", message
        return outcome

    def _swap(self, catalog: Catalog) -> None:
        """Take out the new version of what may not deploy; put back what it last deployed."""
        changed = False
        for key, outcome in self.outcomes.items():
            if outcome.decision in ("deploy", "enforce"):
                continue
            d = self.deployments[key]
            for rid in d.ids:
                catalog.entries.pop(rid, None)
            previous = self._record(d).previous_entries()
            d.ids = []
            for rid, entry in previous.items():
                if rid in catalog.entries:
                    self.warn(
                        f"{key}: {rid} of version {outcome.previous_version} is now "
                        "declared elsewhere; the new declaration is enforced"
                    )
                    continue
                catalog.entries[rid] = entry
                d.ids.append(rid)
            changed = True
        if not changed:
            return
        for entry in catalog.entries.values():  # relations to resources no longer there
            for relation, targets in list(entry.relations.items()):
                entry.relations[relation] = [t for t in targets if t in catalog.entries]
        try:
            link(catalog)
        except ModelError as exc:
            raise ModelError(exc.problems, "compile") from None

    def _renew(self) -> None:
        """Keep the slots of deploying components while the run lasts (they are leases)."""
        while not self._renewing.wait(self.lease / 3):
            for key, outcome in self.outcomes.items():
                if outcome.decision != "deploy" or self.store is None:
                    continue
                d = self.deployments[key]
                with contextlib.suppress(StoreError):
                    self.store.acquire_slot(
                        d.app.name,
                        d.component.name,
                        SLOTS,
                        self.node,
                        d.component.max_parallel,
                        self.lease,
                    )

    def _give_back(self, d: Deployment) -> None:
        """A run that ended while deploying (the node died) left its slot taken: free it."""
        if self.store is None or self._record(d).published.get("state") != "deploying":
            return
        try:
            self.store.release_slot(d.app.name, d.component.name, SLOTS, self.node)
        except StoreError as exc:
            self.warn(f"{d.key}: could not release the slot (its lease will): {exc}")

    def _keep_failure(self, d: Deployment, message: str) -> None:
        """Put this node's failure at the app's version in the store, in a record of its own.

        A later state of the node (``waiting`` at the next version) does not hide it: the
        others stay halted at this version until every node has moved past it."""
        if self.noop or self.store is None:
            return
        version = d.app.version
        try:
            kept = self.store.failures(d.app.name, d.component.name)
            if any(f.node == self.node and f.version == version for f in kept):
                return
            self.store.record_failure(
                d.app.name,
                d.component.name,
                ComponentState(
                    self.node, version, "failed", self.revisions[d.key], time.time(), message
                ),
            )
        except StoreError as exc:
            self.warn(f"{d.key}: could not record the failure at {version}: {exc}")

    def _publish(self, d: Deployment, state: str, message: str) -> None:
        """Tell the store, when this differs from what it was last told."""
        record = self._record(d)
        revision = self.revisions[d.key]
        deployed = record.deployed_version or ""
        said = {
            "version": d.app.version,
            "state": state,
            "revision": revision,
            "message": message,
            "deployed": deployed,
        }
        record.last = said
        if self.store is not None and record.published != said:
            try:
                self.store.publish(
                    d.app.name,
                    d.component.name,
                    ComponentState(
                        self.node, d.app.version, state, revision, time.time(), message, deployed
                    ),
                )
                record.published = said
            except StoreError as exc:
                self.warn(f"{d.key}: could not publish {state}: {exc}")
        record.save()

    # -- after the run

    def finish(
        self,
        entries: Mapping[ResourceId, Entry],
        results: Mapping[ResourceId, ResourceResult],
        run_previous: Callable[[dict[ResourceId, Entry]], list[ResourceResult]],
        ctx: Context,
        stop: threading.Event | None = None,
    ) -> list[ResourceResult]:
        """Health-check, publish and record each deployed component; roll back on failure.

        ``entries`` and ``results``: the run's catalog entries and their results.
        ``run_previous`` applies a set of entries (the previous version) and returns their
        results, which are returned here for the report."""
        self._renewing.set()
        extra: list[ResourceResult] = []
        if self.noop:
            return extra
        for key, outcome in self.outcomes.items():
            if outcome.decision not in ("deploy", "enforce"):
                continue
            d = self.deployments[key]
            record = self._record(d)
            before = outcome.state
            mine = [results[rid] for rid in d.ids if rid in results]
            broken = [r.id for r in mine if r.status in ("failed", "skipped")]
            touched = any(r.status == "changed" for r in mine)
            if broken:
                healthy, message = False, f"resources did not converge: {', '.join(broken)}"
            elif outcome.decision == "enforce" and not touched and outcome.state == "healthy":
                healthy, message = True, outcome.message
            elif d.health is None:
                healthy, message = True, "converged (no health check)"
            else:
                from reconciler.apps import health as healthmod  # HTTP, only when checked

                check = healthmod.check(d.health, ctx.runner, stop)
                healthy, message = check.healthy, self.secrets.scrub(check.message)
            if healthy:
                outcome.state, outcome.message = "healthy", message
                record.deployed = {
                    "version": d.app.version,
                    "revision": self.revisions[key],
                    "entries": dump_entries([entries[rid] for rid in d.ids if rid in entries]),
                }
            else:
                outcome.state, outcome.message = "failed", message
                if d.component.on_failure == "rollback" and record.deployed_version not in (
                    None,
                    d.app.version,
                ):
                    rolled = run_previous(record.previous_entries())
                    extra += rolled
                    ok = all(r.status not in ("failed", "skipped") for r in rolled)
                    outcome.message += (
                        f"; rolled back to {record.deployed_version}"
                        if ok
                        else f"; rollback to {record.deployed_version} failed"
                    )
            if not healthy:
                self._keep_failure(d, outcome.message)  # before the slot is given back
            elif self.store is not None and (outcome.decision == "deploy" or before != "healthy"):
                try:
                    self.store.clear_failure(d.app.name, d.component.name, d.app.version, self.node)
                except StoreError as exc:
                    self.warn(f"{key}: could not clear the failure at {d.app.version}: {exc}")
            self._publish(d, outcome.state, outcome.message)
            if outcome.decision == "deploy" and self.store is not None:
                try:
                    self.store.release_slot(d.app.name, d.component.name, SLOTS, self.node)
                except StoreError as exc:
                    self.warn(f"{key}: could not release the slot (its lease will): {exc}")
        return extra

    def close(self) -> None:
        self._renewing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)

    def report(self) -> list[dict[str, Any]]:
        return [o.to_dict() for o in self.outcomes.values()]
