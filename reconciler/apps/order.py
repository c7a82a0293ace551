"""What one node knows of the other nodes of a component, for the promises a rollout keeps.

- A failure at a version stays visible (``failed_at``) until every node has moved past that
  version, whatever the failed node publishes afterwards.
- A node does not deploy a version older than one another node deploys (``ahead_of``).
- Slots are counted per component (``SLOTS``), whatever version each node deploys.

Versions are strings. Two that both read as semantic versions (``1.4.2``, ``v2.0``,
``2.1.0-rc.1``: numbers separated by dots, an optional ``v`` before them, an optional ``-``
pre-release and ``+`` build after them) are ordered as such: ``1.10`` after ``1.9``, a release
after its pre-releases. Any other pair is ordered by its *place*: the order in which the store
first saw each version (``Store.note_version``); a version the store has not seen yet counts as
the newest. Versions only go forward: to put an old build back, give it a new version.

Once every node that has published a state for the component is at a later version, a version's
place and its failures are forgotten (``passed``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from reconciler.apps.store import ComponentState, Store

SLOTS = "*"  # the one set of slots of a component, for every version


_SEMVER = re.compile(
    r"v?(?P<release>\d+(?:\.\d+)*)(?:-(?P<pre>[0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?",
    re.ASCII,  # \d: 0-9 only
)

# A number as a key that orders by value: (its count of digits, its digits), no leading zeros.
# Digits are never converted to an int: a version of thousands of digits (another node's, read
# from the store) would raise there.
Number = tuple[int, str]
SemverKey = tuple[tuple[Number, ...], int, tuple[tuple[int, Number, str], ...]]
_ZERO: Number = (0, "")


def _number(digits: str) -> Number:
    value = digits.lstrip("0")
    return len(value), value


def semver_key(version: str) -> SemverKey | None:
    """A key that orders semantic versions, or None when ``version`` is not one."""
    found = _SEMVER.fullmatch(version)
    if found is None:
        return None
    release = tuple(_number(n) for n in found["release"].split("."))
    while len(release) > 1 and release[-1] == _ZERO:
        release = release[:-1]  # 1.0 and 1.0.0 are one release
    pre = found["pre"]
    if pre is None:
        return release, 1, ()
    # Numeric identifiers before alphanumeric ones, numbers by value (as semver.org says).
    parts = tuple((0, _number(p), "") if p.isdigit() else (1, _ZERO, p) for p in pre.split("."))
    return release, 0, parts


@dataclass(frozen=True)
class Peers:
    """The component's states, failures and order of versions, as one node read them."""

    node: str
    version: str  # the version this node is at now (the app's, in its repo)
    states: dict[str, ComponentState]
    failures: list[ComponentState]
    places: dict[str, int]

    @classmethod
    def read(cls, store: Store, app: str, component: str, node: str, version: str) -> Peers:
        return cls(
            node,
            version,
            store.states(app, component),
            store.failures(app, component),
            store.versions(app, component),
        )

    def place(self, version: str) -> float:
        return self.places.get(version, math.inf)

    def later(self, version: str, than: str) -> bool:
        """Whether ``version`` comes after ``than``: semantic versions, else by place."""
        if version == than:
            return False
        mine, theirs = semver_key(version), semver_key(than)
        if mine is not None and theirs is not None and mine != theirs:
            return mine > theirs
        return self.place(version) > self.place(than)

    def versions_now(self) -> dict[str, str]:
        """Every known node's version: its published one, this node's the one it is at."""
        now = {n: s.version for n, s in self.states.items()}
        now[self.node] = self.version
        return now

    def failed_at(self, version: str) -> list[str]:
        """The other nodes whose failure at ``version`` is kept, or who are failed at it."""
        kept = {f.node for f in self.failures if f.version == version}
        kept |= {n for n, s in self.states.items() if s.version == version and s.state == "failed"}
        return sorted(kept - {self.node})

    def ahead_of(self, version: str) -> list[tuple[str, str]]:
        """The other nodes deploying a later version than ``version`` now: (node, version).

        Only a deployment under way counts: nodes that run a later version are no reason to
        wait, so a rollback written in the repo (back to an older version) rolls out like any
        other version, and a node that lags behind cannot deploy an old version beside a newer
        one being deployed. A version known to be bad is held back by its kept failure."""
        return sorted(
            (n, s.version)
            for n, s in self.states.items()
            if n != self.node and s.state == "deploying" and self.later(s.version, version)
        )

    def passed(self) -> list[str]:
        """Versions every node has moved past: their places and failures can go."""
        now = self.versions_now().values()
        noted = set(self.places) | {f.version for f in self.failures}
        return sorted(v for v in noted if all(self.later(w, v) for w in now))
