"""A component's health check: a command that exits 0, or an HTTP URL that answers 2xx.

Each attempt has the check's timeout; a failed attempt is retried ``retries`` times, ``interval``
seconds apart. The result says which attempt decided and why, in a line for the report.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from dataclasses import dataclass

from reconciler.model.apps import Health
from reconciler.resources.exec import argv_of
from reconciler.resources.runner import Runner

MAX_BODY = 4096  # bytes of a failed answer kept for the message


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    message: str
    attempts: int


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # a redirect is an answer, not a reason to go elsewhere


_OPENER = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def _attempt(health: Health, runner: Runner) -> tuple[bool, str]:
    if health.http:
        try:
            with _OPENER.open(health.http, timeout=health.timeout) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return False, f"GET {health.http}: {reason}"
        if 200 <= status < 300:
            return True, f"GET {health.http}: {status}"
        return False, f"GET {health.http}: {status}"
    assert health.command is not None
    result = runner.run(argv_of(health.command), timeout=health.timeout)
    if result.timed_out:
        return False, f"{health.describe()}: timed out after {health.timeout:g}s"
    if result.returncode == 0:
        return True, f"{health.describe()}: exit 0"
    tail = result.tail(5)
    return False, f"{health.describe()}: exit {result.returncode}" + (f": {tail}" if tail else "")


def check(health: Health, runner: Runner, stop: threading.Event | None = None) -> HealthResult:
    """Run the check until it passes or its retries are spent (or ``stop`` is set)."""
    stop = stop or threading.Event()
    message = ""
    for attempt in range(1, health.retries + 2):
        ok, message = _attempt(health, runner)
        if ok:
            return HealthResult(True, message, attempt)
        if attempt <= health.retries and stop.wait(health.interval):
            break
    return HealthResult(False, message, attempt)
