"""The fleet view: each node's run summary in the coordination store, and the rows shown from it.

After every run (daemon runs and ``apply --config``), a node with a coordination store publishes
a short summary of it (``RunSummary``): revision, when the run ended and how, counts of drifted,
changed and failed resources, whether enforcement is suspended, its role and reconciler's
version. It is a record of the store's ``summary`` kind, at most ``MAX_RECORD["summary"]``
bytes, on a lease of ``coordination.exports_ttl``: a node that stops running drops out when the
lease runs out, and is shown ``stale`` once three quarters of it have passed without a run.

Records are data from other nodes: each is checked field by field when read, and one that is
malformed, or that names another node than the one it is stored under, is left out with a
warning. ``fleet_rows`` is the one function that turns summaries into the rows that
``reconciler fleet``, the daemon's ``/fleet`` page and ``/fleet.json`` show.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from reconciler.apps.order import SLOTS
from reconciler.apps.store import MAX_RECORD, ComponentState, Store
from reconciler.engine.report import printable

Warn = Callable[[str], None]

# How a run ended (a skipped run, another holding the lock, publishes nothing).
Result = Literal["in_sync", "changed", "failed", "rejected", "fetch_failed", "error"]
RESULTS: tuple[Result, ...] = get_args(Result)
# What ``--state`` selects: a result, or one of these.
Condition = Literal["stale", "suspended"]
STATES: tuple[str, ...] = (*RESULTS, *get_args(Condition))
# Results that need someone's attention (with a stale node): exit 4 of ``reconciler fleet``.
BAD: frozenset[str] = frozenset({"failed", "rejected", "fetch_failed", "error"})
STALE_AFTER = 0.75  # of the record's TTL without a run
MAX_MESSAGE = 300  # characters of a failed run's message kept in its summary
MAX_COUNT = 2**53  # resources a count may hold: the largest whole number JSON keeps exact
MAX_ROWS = 1000  # rows the daemon's page shows; the rest are counted


@dataclass(frozen=True)
class RunSummary:
    """What one node says about its last run."""

    node: str
    role: str | None
    revision: str | None
    branch: str | None
    ended: float  # unix time the run ended
    result: Result
    drifted: int  # resources found away from what was applied (or differing, in noop)
    changed: int
    failed: int
    noop: bool
    suspended: bool
    version: str  # reconciler's
    ttl: float  # seconds the record lives after ``ended``
    message: str = ""  # why the run failed, shortened


def encode(summary: RunSummary) -> bytes:
    """The record, within ``MAX_RECORD["summary"]`` (the message is shortened to fit);
    ValueError when even that does not fit (a node or role name of kilobytes)."""
    limit = MAX_RECORD["summary"]
    message = summary.message[:MAX_MESSAGE]
    while True:
        data = {**asdict(summary), "message": message}
        raw = json.dumps(data, sort_keys=True).encode()
        if len(raw) <= limit:
            return raw
        if not message:
            raise ValueError(f"a run summary is at most {limit} bytes; this one is {len(raw)}")
        message = message[: len(message) // 2]


_STRINGS = ("node", "result", "version")
_OPTIONAL = ("role", "revision", "branch")
_COUNTS = ("drifted", "changed", "failed")
_FLAGS = ("noop", "suspended")


def decode(node: str, raw: bytes) -> RunSummary:
    """One node's record, checked; ValueError naming the field that is wrong."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    for key in _STRINGS:
        if not isinstance(data.get(key), str):
            raise ValueError(f"{key} must be a string")
    if data["node"] != node:
        raise ValueError(f"it names node {data['node']!r}, not the node it is stored under")
    if data["result"] not in RESULTS:
        raise ValueError(f"result must be one of {', '.join(RESULTS)}, not {data['result']!r}")
    for key in _OPTIONAL:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ValueError(f"{key} must be a string or null")
    for key in _COUNTS:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise ValueError(f"{key} must be a whole number from 0 to {MAX_COUNT}")
    for key in _FLAGS:
        if not isinstance(data.get(key), bool):
            raise ValueError(f"{key} must be true or false")
    for key in ("ended", "ttl"):
        value = data.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value < math.inf  # JSON's 1e999 is infinity: never stale
        ):
            raise ValueError(f"{key} must be a finite number above 0")
    message = data.get("message", "")
    if not isinstance(message, str):
        raise ValueError("message must be a string")
    return RunSummary(
        node=node,
        role=data.get("role"),
        revision=data.get("revision"),
        branch=data.get("branch"),
        ended=float(data["ended"]),
        result=data["result"],
        drifted=data["drifted"],
        changed=data["changed"],
        failed=data["failed"],
        noop=data["noop"],
        suspended=data["suspended"],
        version=data["version"],
        ttl=float(data["ttl"]),
        message=message[:MAX_MESSAGE],
    )


def publish(store: Store, summary: RunSummary) -> None:
    store.publish_record("summary", summary.node, encode(summary), summary.ttl)


def read(store: Store, warn: Warn) -> list[RunSummary]:
    """Every node's live summary, sorted by node; a malformed or foreign one is left out with a
    warning. StoreError when the store cannot be read."""
    found = []
    for node, raw in sorted(store.records("summary").items()):
        try:
            found.append(decode(node, raw))
        except ValueError as exc:
            warn(f"the run summary of node {node!r} is left out: {exc}")
    return found


# -- the rows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetRow:
    """One node as the fleet view shows it."""

    node: str
    role: str | None
    revision: str | None  # shortened to 12 characters
    age: float  # seconds since the run ended
    result: Result
    drifted: int
    changed: int
    failed: int
    suspended: bool
    stale: bool  # no run for three quarters of its record's TTL: it drops out at the TTL
    noop: bool
    version: str
    message: str

    @property
    def bad(self) -> bool:
        return self.stale or self.result in BAD

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "age": round(self.age)}


def fleet_rows(
    summaries: Iterable[RunSummary],
    now: float | None = None,
    role: str | None = None,
    state: str | None = None,
) -> list[FleetRow]:
    """The rows of the fleet view, by node name: those of ``role`` and in ``state`` (a result,
    ``stale`` or ``suspended``) when given."""
    if state is not None and state not in STATES:
        raise ValueError(f"a state is one of {', '.join(STATES)}, not {state!r}")
    now = time.time() if now is None else now
    rows = []
    for s in sorted(summaries, key=lambda s: s.node):
        age = max(0.0, now - s.ended)
        row = FleetRow(
            node=s.node,
            role=s.role,
            revision=s.revision[:12] if s.revision else None,
            age=age,
            result=s.result,
            drifted=s.drifted,
            changed=s.changed,
            failed=s.failed,
            suspended=s.suspended,
            stale=age > s.ttl * STALE_AFTER,
            noop=s.noop,
            version=s.version,
            message=s.message,
        )
        if role is not None and row.role != role:
            continue
        if state == "stale" and not row.stale:
            continue
        if state == "suspended" and not row.suspended:
            continue
        if state in RESULTS and row.result != state:
            continue
        rows.append(row)
    return rows


def exit_code(rows: Iterable[FleetRow]) -> int:
    """As ``apply``'s: 0 all in sync, 2 a node changed something, 4 a node failed (or went
    stale), 6 both."""
    code = 0
    for row in rows:
        if row.bad:
            code |= 4
        elif row.result == "changed":
            code |= 2
    return code


def age_text(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def render_text(rows: list[FleetRow]) -> str:
    """One line per node, in columns."""
    head = ("NODE", "ROLE", "REVISION", "LAST RUN", "RESULT", "DRIFT/CHG/FAIL", "SUSPENDED")
    # Every field is another node's record: one line of its own, whatever it holds.
    table = [head] + [
        (
            printable(r.node),
            printable(r.role or "-"),
            printable(r.revision or "-"),
            age_text(r.age) + " ago",
            r.result + (" (stale)" if r.stale else "") + (" noop" if r.noop else ""),
            f"{r.drifted}/{r.changed}/{r.failed}",
            "yes" if r.suspended else "no",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table
    ]
    for r in rows:
        if r.message and r.result in BAD:
            lines.append(f"{printable(r.node)}: {printable(r.message)}")
    return "\n".join(lines) + "\n"


# -- an app across the fleet ----------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentStatus:
    """One component of an app on every node that published its state."""

    component: str
    states: dict[str, ComponentState]  # node -> its last published state
    failures: list[ComponentState]  # failures kept until every node moved past their version
    holders: list[str]  # nodes holding a deployment slot

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component,
            "nodes": {
                n: {
                    "version": s.version,
                    "state": s.state,
                    "deployed": s.deployed,
                    "message": s.message,
                    "revision": s.revision,
                    "updated": s.updated,
                }
                for n, s in sorted(self.states.items())
            },
            "failures": [
                {"node": f.node, "version": f.version, "message": f.message} for f in self.failures
            ],
            "deploying": self.holders,
        }


def app_status(store: Store, app: str) -> list[ComponentStatus]:
    """Each component of ``app`` some node published, with every node's state; a waiting
    node's message is the reason its rollout gave (what it waits for)."""
    return [
        ComponentStatus(
            component,
            store.states(app, component),
            sorted(store.failures(app, component), key=lambda f: (f.version, f.node)),
            store.holders(app, component, SLOTS),
        )
        for component in store.components(app)
    ]


def render_app_status(app: str, components: list[ComponentStatus]) -> str:
    lines = []
    for c in components:
        lines.append(printable(f"{app}/{c.component}:"))
        for node, s in sorted(c.states.items()):
            runs = f" (runs {s.deployed})" if s.deployed and s.deployed != s.version else ""
            line = f"  {node:<20} {s.state:<10} {s.version}{runs}  {s.message}".rstrip()
            lines.append(printable(line))
        for f in c.failures:
            line = f"  failure kept: {f.node} failed at {f.version}: {f.message}".rstrip()
            lines.append(printable(line))
        if c.holders:
            lines.append(printable(f"  deploying now: {', '.join(c.holders)}"))
    return "\n".join(lines) + "\n"
