"""Run reports: what a run found and did, per resource; JSON for machines, text for people."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reconciler.engine.schedule import STATUSES, Status
from reconciler.resources.base import Change, Secrets

# Bytes of diffs one report keeps: past it, diffs are left out (the backups hold the content).
REPORT_DIFF_BUDGET = 1 << 20


@dataclass
class ResourceResult:
    id: str
    status: Status = "in_sync"
    changes: list[Change] = field(default_factory=list)
    error: str | None = None
    duration_seconds: float = 0.0
    corrective: bool = False  # the repo did not change this resource: the node drifted
    origin: str = ""

    def to_dict(
        self, diff_budget: list[int] | None = None, secrets: Secrets | None = None
    ) -> dict[str, Any]:
        """``diff_budget``: bytes of diffs the report may still hold (shared, decremented);
        a diff past it is left out and marked ``diff_omitted``. ``secrets``: values to show
        only as digests wherever they turn up (in an error, a diff)."""
        scrub = _scrubber(secrets)
        changes = []
        for change in self.changes:
            item: dict[str, Any] = {
                "property": change.property,
                "from": scrub(change.before),
                "to": scrub(change.after),
                "corrective": self.corrective,
            }
            if change.diff:
                if diff_budget is None or len(change.diff) <= diff_budget[0]:
                    item["diff"] = scrub(change.diff)
                    if diff_budget is not None:
                        diff_budget[0] -= len(change.diff)
                else:
                    item["diff_omitted"] = True
            changes.append(item)
        return {
            "id": scrub(self.id),
            "status": self.status,
            "changes": changes,
            "error": scrub(self.error),
            "duration_seconds": round(self.duration_seconds, 6),
        }


def _scrubber(secrets: Secrets | None) -> Callable[[Any], Any]:
    """A function that takes the secrets out of a string, of strings inside lists and
    mappings, and passes anything else through."""

    def scrub(value: Any) -> Any:
        if secrets is None or not secrets:
            return value
        if isinstance(value, str):
            return secrets.scrub(value)
        if isinstance(value, list):
            return [scrub(v) for v in value]
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        return value

    return scrub


@dataclass
class RunReport:
    node: str
    revision: str | None
    branch: str | None
    noop: bool
    started: str
    role: str | None = None
    run_id: str = ""
    duration_seconds: float = 0.0
    resources: list[ResourceResult] = field(default_factory=list)
    # Problems of the run itself (a rejected revision, a refused prune), as messages.
    errors: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    # Whether this run compiled its catalog; false when the daemon re-checked the catalog it
    # compiled before from the same inputs (or the run ended before compiling).
    compiled: bool = False
    # App components this node runs: what the run decided and reached for each.
    apps: list[dict[str, Any]] = field(default_factory=list)
    # Values shown only as digests, wherever they turn up: the catalog's secrets.
    secrets: Secrets = field(default_factory=Secrets, repr=False)

    def scrub(self, text: str | None) -> str | None:
        """A message as the report may show it: sensitive values replaced by digests."""
        return None if text is None else self.secrets.scrub(text)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for result in self.resources:
            counts[result.status] += 1
        summary = {"total": len(self.resources), **counts}
        if not self.noop:
            summary.pop("would_change")
        return summary

    @property
    def failed(self) -> bool:
        return (
            bool(self.errors)
            or any(r.status == "failed" for r in self.resources)
            or any(a["state"] == "failed" for a in self.apps)
        )

    @property
    def changed(self) -> bool:
        return any(r.status in ("changed", "would_change") for r in self.resources)

    def exit_code(self) -> int:
        """0 nothing to change, 2 changes, 4 failures, 6 changes and failures."""
        return (2 if self.changed else 0) | (4 if self.failed else 0)

    def to_dict(self) -> dict[str, Any]:
        budget = [REPORT_DIFF_BUDGET]
        scrub = _scrubber(self.secrets)
        return {
            "node": self.node,
            "role": self.role,
            "revision": self.revision,
            "branch": self.branch,
            "noop": self.noop,
            "run_id": self.run_id,
            "started": self.started,
            "duration_seconds": round(self.duration_seconds, 6),
            "phases": {k: round(v, 6) for k, v in self.phases.items()},
            "compiled": self.compiled,
            "summary": self.summary(),
            "errors": scrub(self.errors),
            "resources": [r.to_dict(budget, self.secrets) for r in self.resources],
            "apps": scrub(self.apps),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- text ---------------------------------------------------------------------------------------

_COLOURS = {"add": "32", "change": "33", "remove": "31", "fail": "31;1", "dim": "2", "bold": "1"}
_MARKS = {
    "changed": ("~", "change"),
    "would_change": ("~", "change"),
    "failed": ("!", "fail"),
    "skipped": ("-", "dim"),
}


# What a terminal acts on: C0 and C1 controls (escape sequences start with ESC or CSI), DEL,
# the line and paragraph separators, bidirectional overrides. Tabs pass.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """Text safe to print on a terminal: control characters shown as escapes (``\\x1b``), so
    that a title, a message or a file's content cannot move the cursor, recolour the screen
    or forge a line of the output."""
    return _CONTROL.sub(_escaped, text)


def printable_lines(text: str) -> str:
    """Like printable, but a message's own line breaks are kept (command output)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _hang(text: str, indent: int) -> str:
    """A message's later lines (a command's output) indented under its first."""
    return text.replace("\n", "\n" + " " * indent)


def _short(value: str | None) -> str | None:
    """Digests shortened for people; reports keep them whole."""
    if value is not None and value.startswith("sha256:") and len(value) > 19:
        return value[:19] + "…"
    return value


def render_text(report: RunReport, colour: bool, plan: bool) -> str:
    """A report as an operator reads it: what changes, with diffs, and a one-line summary."""

    def paint(text: str, style: str) -> str:
        return f"\033[{_COLOURS[style]}m{text}\033[0m" if colour else text

    def shown(text: str | None) -> str:
        return printable(report.scrub(text) or "") if text is not None else "None"

    lines: list[str] = []
    for result in report.resources:
        if result.status == "in_sync":
            continue
        mark, style = _MARKS[result.status]
        if result.changes and result.changes[0].property == "ensure":
            if result.changes[0].after == "absent":
                mark, style = "-", "remove"
            elif result.status != "failed":
                mark, style = "+", "add"
        why = ""
        if result.status in ("changed", "would_change") and result.corrective:
            why = paint("  (drift)", "dim")
        lines.append(f"{paint(mark, style)} {paint(shown(result.id), 'bold')}{why}")
        for change in result.changes:
            if change.property in ("executed", "refreshed"):
                lines.append(f"    {change.property}: {shown(change.after)}")
                continue
            if change.property == "state":  # a change known only after apply
                lines.append(f"    {shown(change.after)}")
                continue
            lines.append(
                f"    {shown(change.property)}: {shown(_short(change.before))} -> "
                f"{shown(_short(change.after))}"
            )
            if change.diff:
                diff = report.scrub(change.diff) or ""
                for raw_line in diff.rstrip("\n").split("\n"):
                    diff_line = printable(raw_line)
                    diff_style = (
                        "add"
                        if diff_line.startswith("+") and not diff_line.startswith("+++")
                        else "remove"
                        if diff_line.startswith("-") and not diff_line.startswith("---")
                        else "dim"
                    )
                    lines.append("      " + paint(diff_line, diff_style))
        error = printable_lines(report.scrub(result.error) or "")
        if result.status == "skipped":
            lines.append(f"    skipped: {_hang(error or 'None', 6)}")
        elif error:
            lines.append("    " + paint(f"error: {_hang(error, 6)}", "fail"))
    for message in report.errors:
        lines.append(
            paint(f"error: {_hang(printable_lines(report.scrub(message) or ''), 2)}", "fail")
        )
    lines += render_apps([_scrubber(report.secrets)(app) for app in report.apps], paint)
    summary = report.summary()
    pending = summary.get("would_change", 0)
    revision = (report.revision or "working tree")[:12]
    if plan or report.noop:
        if pending:
            head = f"Plan: {pending} to change"
        else:
            head = "No changes. The node matches the desired state"
        tail = f", {summary['failed']} failed" if summary["failed"] else ""
        lines.append(
            paint(head, "bold")
            + f"{tail} ({summary['total']} resources, revision {revision}, role {report.role})."
        )
    else:
        parts = [f"{summary['changed']} changed", f"{summary['failed']} failed"]
        if summary["skipped"]:
            parts.append(f"{summary['skipped']} skipped")
        lines.append(
            paint("Applied: " + ", ".join(parts), "bold")
            + f" ({summary['total']} resources in {report.duration_seconds:.2f}s, "
            f"revision {revision}, role {report.role})."
        )
    return "\n".join(lines) + "\n"


_APP_STYLES = {"healthy": "add", "failed": "fail", "waiting": "dim", "deploying": "change"}


def render_apps(apps: list[dict[str, Any]], paint: Any = None) -> list[str]:
    """One line per app component on this node, and what a waiting one waits for."""
    paint = paint or (lambda text, style: text)
    lines = []
    for app in apps:
        version = app["version"]
        if app.get("previous_version") not in (None, version) and app["state"] != "healthy":
            version = f"{app['previous_version']} -> {version}"
        state = paint(app["state"], _APP_STYLES.get(app["state"], "dim"))
        lines.append(
            f"app {app['app']}/{app['component']} {printable(str(version))}: {state}  "
            f"{printable(str(app['message']))}"
        )
        for component, nodes in sorted(app.get("waits_for", {}).items()):
            shown = ", ".join(f"{n} {s}" for n, s in nodes.items()) or "no node has reported"
            lines.append(f"    {component}: {printable(shown)}")
    return lines
