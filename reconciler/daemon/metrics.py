"""The daemon's Prometheus metrics, in a registry of their own.

Labels are bounded: result, phase, state, type, reason. The commit appears only on the single
``reconciler_revision_info`` series, which is replaced, never accumulated.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.apps.store import REQUESTS
from reconciler.engine.report import RunReport

RESOURCE_STATES = ("in_sync", "drifted", "changed", "failed", "skipped")
FLAP_WINDOW = 10  # runs
APP_STATES = ("deploying", "healthy", "failed", "waiting")
# What a revision pushed by another node led to: a poll now, one put off (delayed) or already
# put off (merged) by coordination.push_min_interval, nothing (known: the revision applied or
# last pushed; invalid: not a commit id).
PUSH_ACTIONS = ("poll", "delayed", "merged", "known", "invalid")


class _StoreRequests(Collector):
    """Requests this process made to etcd, by operation (every store client it opened)."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "reconciler_store_requests",
            "Requests to the coordination store (etcd), by operation.",
            labels=["op"],
        )
        for op, count in REQUESTS.snapshot().items():
            family.add_metric([op], count)
        yield family


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.runs = Counter("reconciler_runs", "Runs by result.", ["result"], registry=r)
        self.run_duration = Histogram(
            "reconciler_run_duration_seconds",
            "Duration of each phase of a run.",
            ["phase"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.resources = Gauge(
            "reconciler_resources", "Resources by state in the last run.", ["state"], registry=r
        )
        self.drifted = Gauge(
            "reconciler_drifted_resources",
            "Resources found drifted by the last check, by type.",
            ["type"],
            registry=r,
        )
        self.catalogs = Counter(
            "reconciler_catalogs",
            "Catalogs the runs converged, by how each was had: compiled, or reused (compiled by "
            "an earlier run from the same inputs).",
            ["how"],
            registry=r,
        )
        self.resource_changes = Counter(
            "reconciler_resource_changes", "Resources changed, by type.", ["type"], registry=r
        )
        self.last_run = Gauge(
            "reconciler_last_run_timestamp_seconds", "When the last run ended.", registry=r
        )
        self.last_success = Gauge(
            "reconciler_last_success_timestamp_seconds",
            "When the last run without failures ended.",
            registry=r,
        )
        self.fetches = Counter(
            "reconciler_source_fetches", "Polls of the control repo, by result.", ["result"],
            registry=r,
        )  # fmt: skip
        self.revision_info = Gauge(
            "reconciler_revision_info",
            "The revision being enforced (always 1).",
            ["revision", "branch"],
            registry=r,
        )
        self.rejected = Counter(
            "reconciler_revisions_rejected",
            "Revisions refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.drift_events = Counter(
            "reconciler_drift_events",
            "Local changes of managed paths seen by the watcher, by resource type.",
            ["type"],
            registry=r,
        )
        self.webhooks = Counter(
            "reconciler_webhook_requests", "Webhook requests, by result.", ["result"], registry=r
        )
        self.app_state = Gauge(
            "reconciler_app_component_state",
            "1 for the state each application component of this node is in.",
            ["app", "component", "state"],
            registry=r,
        )
        self.flapping = Gauge(
            "reconciler_flapping_resources",
            "Resources corrected in most of the recent runs (something fights the agent).",
            registry=r,
        )
        self.suspended = Gauge(
            "reconciler_suspended", "1 while enforcement is suspended.", registry=r
        )
        self.pushes = Counter(
            "reconciler_pushed_revisions",
            "Revisions other nodes pushed through the coordination store, by what was done.",
            ["action"],
            registry=r,
        )
        for action in PUSH_ACTIONS:
            self.pushes.labels(action)
        r.register(_StoreRequests())
        for result in ("success", "failure", "noop"):
            self.runs.labels(result)
        for state in RESOURCE_STATES:
            self.resources.labels(state)
        for phase in ("fetch", "compile", "check", "apply"):
            self.run_duration.labels(phase)
        for reason in ("signature", "parse", "validate", "compile", "rewind"):
            self.rejected.labels(reason)
        for result in ("success", "unchanged", "error"):
            self.fetches.labels(result)
        for how in ("compiled", "reused"):
            self.catalogs.labels(how)
        for result in (
            "accepted",
            "unauthorized",
            "too_large",
            "duplicate",
            "disabled",
            "bad_request",
        ):
            self.webhooks.labels(result)
        from reconciler.resources.base import REGISTRY

        for kind in REGISTRY:  # every series exists from the start, so rates and alerts work
            self.drift_events.labels(kind)
            self.resource_changes.labels(kind)
            self.drifted.labels(kind).set(0)
        self._revision: tuple[str, str] | None = None
        self._corrected: deque[set[str]] = deque(maxlen=FLAP_WINDOW)
        self._drift_types: set[str] = set(REGISTRY)
        self._apps: set[tuple[str, str]] = set()

    def set_revision(self, revision: str, branch: str) -> None:
        if self._revision is not None and self._revision != (revision, branch):
            self.revision_info.remove(*self._revision)
        self._revision = (revision, branch)
        self.revision_info.labels(revision, branch).set(1)

    def observe_run(self, report: RunReport, ended: float, enforcing: bool) -> None:
        for phase, seconds in report.phases.items():
            self.run_duration.labels(phase).observe(seconds)
        self.catalogs.labels("compiled" if report.compiled else "reused").inc()
        if report.failed:
            self.runs.labels("failure").inc()
        elif report.noop:
            self.runs.labels("noop").inc()
        else:
            self.runs.labels("success").inc()
        counts = dict.fromkeys(RESOURCE_STATES, 0)
        drift_by_type: dict[str, int] = {}
        corrected: set[str] = set()
        for result in report.resources:
            kind = result.id.split(":", 1)[0].rsplit("/", 1)[-1]  # after an instance's scope
            if result.status == "would_change":
                counts["drifted"] += 1
                drift_by_type[kind] = drift_by_type.get(kind, 0) + 1
            elif result.status in counts:
                counts[result.status] += 1
            if result.status == "changed":
                self.resource_changes.labels(kind).inc()
                drift_by_type.setdefault(kind, 0)
                if result.corrective:
                    corrected.add(result.id)
        for state, n in counts.items():
            self.resources.labels(state).set(n)
        for kind in self._drift_types - set(drift_by_type):
            self.drifted.labels(kind).set(0)
        for kind, n in drift_by_type.items():
            self.drifted.labels(kind).set(n)
        self._drift_types |= set(drift_by_type)
        self._observe_apps(report.apps)
        self.last_run.set(ended)
        if not report.failed:
            self.last_success.set(ended)
        if enforcing:
            self._corrected.append(corrected)
            self.flapping.set(len(flapping(self._corrected)))

    def _observe_apps(self, apps: list[dict[str, Any]]) -> None:
        """1 for the state each component is in, 0 for the others; gone components removed."""
        seen = set()
        for app in apps:
            key = (app["app"], app["component"])
            seen.add(key)
            for state in APP_STATES:
                self.app_state.labels(*key, state).set(1 if app["state"] == state else 0)
        for key in self._apps - seen:
            for state in APP_STATES:
                with contextlib.suppress(KeyError):
                    self.app_state.remove(*key, state)
        self._apps = seen

    def render(self) -> bytes:
        return generate_latest(self.registry)


def flapping(history: Iterable[set[str]]) -> set[str]:
    """Resources corrected in more than half of the recent runs (at least three of them)."""
    runs = list(history)
    seen: dict[str, int] = {}
    for corrected in runs:
        for rid in corrected:
            seen[rid] = seen.get(rid, 0) + 1
    return {rid for rid, n in seen.items() if n >= 3 and n * 2 > len(runs)}
