"""Suspending enforcement: a file in the state directory that says why, by whom and until when.

While suspended, runs still check every resource (drift stays measured and alerted on) but
change nothing: ``reconcile`` turns an enforcing run into a noop run, for the CLI and the daemon
alike. A suspension with an end time lifts itself.
"""

from __future__ import annotations

import contextlib
import getpass
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.engine.state import read_json, write_json
from reconciler.errors import ReconcilerError
from reconciler.units import parse_duration

FILE = "suspend.json"


@dataclass(frozen=True)
class Suspension:
    reason: str
    since: float
    until: float | None  # epoch seconds, or None: until resumed
    by: str | None = None  # the user who suspended it, when known

    def describe(self) -> str:
        by = f" by {self.by}" if self.by else ""
        return f"suspended since {_iso(self.since)}{by} {self.end()}: {self.reason}"

    def end(self) -> str:
        return "until resumed" if self.until is None else f"until {_iso(self.until)}"

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "since": self.since, "until": self.until, "by": self.by}


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_until(text: str, now: float | None = None) -> float:
    """``--until``: an ISO 8601 time (``2026-11-25T08:00``, UTC when no zone) or a duration."""
    now = time.time() if now is None else now
    try:
        return now + parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ReconcilerError(
            f"--until {text!r}: give a time like 2026-11-25T08:00Z or a duration like 2h"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.timestamp() <= now:
        raise ReconcilerError(f"--until {text!r} is in the past")
    return moment.timestamp()


def suspend(state_dir: Path, reason: str, until: float | None) -> Suspension:
    if not reason.strip():
        raise ReconcilerError("--reason must say why enforcement is suspended")
    s = Suspension(reason.strip(), time.time(), until, _user())
    write_json(state_dir / FILE, s.to_dict())
    return s


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a container), no $USER
        return None


def resume(state_dir: Path) -> bool:
    try:
        (state_dir / FILE).unlink()
    except FileNotFoundError:
        return False
    return True


def current(state_dir: Path, now: float | None = None) -> Suspension | None:
    """The suspension in force, or None; an expired one is removed."""
    raw = read_json(state_dir / FILE)
    if not isinstance(raw, dict) or not isinstance(raw.get("reason"), str):
        return None
    until = raw.get("until")
    now = time.time() if now is None else now
    if isinstance(until, int | float) and until <= now:
        with contextlib.suppress(OSError):
            (state_dir / FILE).unlink()
        return None
    return Suspension(
        raw["reason"],
        float(raw.get("since") or now),
        float(until) if isinstance(until, int | float) else None,
        raw["by"] if isinstance(raw.get("by"), str) else None,
    )


def expires_in(s: Suspension, now: float | None = None) -> timedelta | None:
    if s.until is None:
        return None
    return timedelta(seconds=max(0.0, s.until - (time.time() if now is None else now)))
