"""The long-running agent: poll the control repo, reconcile on a schedule, heal drift at once.

One worker thread does every run, so at most one is ever under way; triggers (the poll and
drift-check timers, webhooks, the file watcher) only set flags, and flags raised during a run
coalesce into one follow-up run. The last good revision is enforced whatever goes wrong with a
newer one: an unreachable remote, a broken commit, a rewind, a commit not signed by a trusted key.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from reconciler.config import Config, load_config
from reconciler.daemon import suspend as suspendmod
from reconciler.daemon.metrics import Metrics
from reconciler.daemon.notify import Notifier
from reconciler.daemon.webhook import WebhookVerifier
from reconciler.engine import state
from reconciler.engine.pipeline import RunOptions, run
from reconciler.engine.report import RunReport
from reconciler.errors import (
    ConfigError,
    LockHeld,
    ModelError,
    ReconcilerError,
    SignatureError,
    SourceError,
)
from reconciler.source import GitSnapshot
from reconciler.source.git import Mirror, run_git

BACKOFF_MIN = 1.0
BACKOFF_MAX = 15 * 60.0
STORE_WAIT = 30.0  # seconds of one wait on the coordination store
STORE_RETRY = 5.0  # seconds between runs while the store is away and a component waits


class Backoff:
    """Exponential delay with full jitter, from BACKOFF_MIN to BACKOFF_MAX; reset on success."""

    def __init__(self, low: float = BACKOFF_MIN, high: float = BACKOFF_MAX) -> None:
        self.low, self.high, self.failures = low, high, 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.high, self.low * 2 ** (self.failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


@dataclass
class AgentState:
    """What the HTTP endpoints show; replaced as a whole, so readers never wait for a run."""

    node: str | None = None
    revision: str | None = None  # the last good revision, being enforced
    branch: str | None = None
    applied: bool = False
    last_report: dict[str, Any] | None = None
    last_error: str | None = None
    rejected: dict[str, str] = field(default_factory=dict)  # revision -> why
    suspended: str | None = None
    source_error: str | None = None
    started: float = field(default_factory=time.time)


def configure_logging(config: Config) -> None:
    level = {"debug": 10, "info": 20, "warning": 30, "error": 40}[config.log.level]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if config.log.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class Agent:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        configure_logging(self.config)
        self.log = structlog.get_logger("reconciler")
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.state = AgentState(node=self.config.node)
        self.verifier = WebhookVerifier(self._webhook_secret())
        self._cond = threading.Condition()
        self._pending: set[str] = set()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._backoff = Backoff()
        self._next_fetch = 0.0  # monotonic time before which polls are skipped (backoff)
        self._refetch = False  # the last good revision could not be read: fetch it again
        self._rejected_backoff: dict[str, tuple[float, Backoff]] = {}
        self.watcher: Any = None
        self._lock_fd: int | None = None
        self._mirror = self._make_mirror(self.config)
        # App deployments: one store for the daemon's life, and a watch on it while waiting.
        self._store: Any = None
        self._store_config: Any = None
        self._apps_waiting = threading.Event()

    # -- setup -----------------------------------------------------------------------------

    def _webhook_secret(self) -> bytes | None:
        path = self.config.webhook_secret_file
        if path is None:
            return None
        try:
            secret = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"webhook.secret_file {path}: {exc.strerror}") from None
        return secret or None

    def _make_mirror(self, config: Config) -> Mirror:
        if not config.source.url:
            raise ConfigError(f"{self.config_path}: source.url is required for the daemon")
        return Mirror(config.source.url, config.state_dir / "source", config.source.timeout)

    def _take_daemon_lock(self) -> None:
        state.prepare_state_dir(self.config.state_dir)
        path = self.config.state_dir / "daemon.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockHeld(f"another daemon uses {self.config.state_dir} (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _load_good(self) -> None:
        raw = state.read_json(self.config.state_dir / "daemon.json", self._warn)
        if isinstance(raw, dict) and isinstance(raw.get("revision"), str):
            self.state.revision = raw["revision"]
            self.state.branch = raw.get("branch")
            if self.state.revision and self.state.branch:
                self.metrics.set_revision(self.state.revision, self.state.branch)

    def _save_good(self) -> None:
        state.write_json(
            self.config.state_dir / "daemon.json",
            {"revision": self.state.revision, "branch": self.state.branch},
        )

    def _warn(self, message: str) -> None:
        self.log.warning("warning", message=message)

    # -- triggers ----------------------------------------------------------------------------

    def request(self, what: str) -> None:
        """Ask the worker for a poll ("poll") or a drift check ("check"); never blocks."""
        with self._cond:
            self._pending.add(what)
            self._cond.notify()

    def _take_pending(self, timeout: float) -> set[str]:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._pending) or self._stop.is_set(), timeout)
            pending, self._pending = self._pending, set()
            return pending

    # -- the worker loop -------------------------------------------------------------------

    def serve(self) -> int:
        """Run until SIGTERM. Returns the exit code."""
        from reconciler.daemon.http import HttpServer
        from reconciler.daemon.schedule import Schedule

        self._take_daemon_lock()
        self._load_good()
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request("reload"))
        http = HttpServer(self)
        http.start()
        schedule = Schedule(self)
        schedule.start()
        threading.Thread(target=self._watch_store, name="store-watch", daemon=True).start()
        self.log.info(
            "started",
            listen=http.address,
            source=self.config.source.url,
            branch=self.config.source.branch,
            revision=self.state.revision,
            pid=os.getpid(),
        )
        self.notifier.ready(self._status_line())
        self.request("poll")
        beat = min(5.0, (self.notifier.watchdog_seconds or 10.0) / 3)
        try:
            while not self._stop.is_set():
                pending = self._take_pending(beat)
                self.notifier.watchdog()
                if self._stop.is_set():
                    break
                skew = schedule.follow_clock()
                if skew:
                    # The timers keep their cadence from the new time (no hour-long pause after
                    # a step back, no catch-up burst after a step forward); one poll now.
                    self.log.warning(
                        "wall clock jumped; timers restarted from now", seconds=round(skew)
                    )
                    pending.add("poll")
                if "reload" in pending:
                    self.reload(schedule)
                applied = False
                if "poll" in pending:
                    applied = self.poll()
                if "check" in pending and not applied:
                    self.check()
        finally:
            self.notifier.stopping()
            schedule.stop()
            http.stop()
            if self.watcher is not None:
                self.watcher.stop()
            if self._store is not None:
                self._store.close()
            self.log.info("stopped")
        return 0

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()

    def reload(self, schedule: Any) -> None:
        self.notifier.reloading()
        try:
            config = load_config(self.config_path)
            mirror = self._make_mirror(config)
        except ReconcilerError as exc:
            self.log.error("reload refused; keeping the running configuration", error=str(exc))
        else:
            self.config = config
            self._mirror = mirror
            configure_logging(config)
            try:
                self.verifier = WebhookVerifier(self._webhook_secret())
            except ConfigError as exc:
                self.log.error("webhook disabled", error=str(exc))
                self.verifier = WebhookVerifier(None)
            schedule.reschedule()
            self.log.info("configuration reloaded", path=str(self.config_path))
            self.request("poll")
        self.notifier.ready(self._status_line())

    # -- polling -----------------------------------------------------------------------------

    def poll(self) -> bool:
        """Ask the remote for the branch head; fetch, compile and apply only when it moved.

        Returns whether a run happened (so that a pending drift check can be skipped).
        """
        if time.monotonic() < self._next_fetch:
            return False
        t = time.perf_counter()
        try:
            head, branch = self._mirror.remote_head(self.config.source.branch)
        except (SourceError, ConfigError) as exc:
            self._fetch_failed(exc)
            return False
        if head == self.state.revision and self.state.applied and not self._refetch:
            self.metrics.fetches.labels("unchanged").inc()
            self._fetch_ok()
            return False
        if head in self._rejected_backoff:
            retry_at, _ = self._rejected_backoff[head]
            if time.monotonic() < retry_at:
                self.metrics.fetches.labels("unchanged").inc()
                return False
        try:
            if head != self.state.revision:
                self._mirror.fetch(branch)
            else:
                self._mirror.ensure()
                self._ensure_commit(head, branch)
        except (SourceError, ConfigError) as exc:
            self._fetch_failed(exc)
            return False
        self.metrics.fetches.labels("success").inc()
        self.metrics.run_duration.labels("fetch").observe(time.perf_counter() - t)
        self._fetch_ok()
        if head != self.state.revision:
            reason = self._refuse_rewind(head)
            if reason:
                self._reject(head, "rewind", reason)
                return False
            try:
                self._verify(head)
            except SignatureError as exc:
                self._reject(head, "signature", str(exc))
                if not self.state.applied and self.state.revision is not None:
                    self.check()
                return False
        return self._apply(head, branch)

    def _verify(self, head: str) -> None:
        """With source.verify, refuse a head not signed by a trusted key, before reading it."""
        verify = self.config.source.verify
        if verify is not None:
            from reconciler.source.verify import verify_commit

            verify_commit(self._mirror.git_dir, head, verify, self.config.source.timeout)

    def _ensure_commit(self, head: str, branch: str) -> None:
        if not self._mirror.has_commit(head):
            self._mirror.fetch(branch)

    def _unreadable(self) -> None:
        """A revision could not be read from the mirror: poll, and fetch even an unchanged head
        (a damaged mirror is replaced by a fresh clone then)."""
        if not self._refetch:
            self._refetch = True
            self.request("poll")

    def _fetch_ok(self) -> None:
        self._refetch = False
        self._backoff.reset()
        self._next_fetch = 0.0
        self.state.source_error = None

    def _fetch_failed(self, exc: Exception) -> None:
        delay = self._backoff.next_delay()
        self._next_fetch = time.monotonic() + delay
        self.state.source_error = str(exc)
        self.log.error(
            "fetch failed; enforcing the last good revision",
            reason="FetchFailed",
            error=str(exc),
            retry_in_seconds=round(delay, 1),
            revision=self.state.revision,
        )
        # The counter moves once the status and the log tell why: whoever it alerts finds both.
        self.metrics.fetches.labels("error").inc()
        self._retry_after(delay)
        self.notifier.status(self._status_line())
        if self.state.revision is not None and not self.state.applied:
            self.check()  # enforce what we have even when the remote is away at start

    def _retry_after(self, delay: float) -> None:
        timer = threading.Timer(delay, self.request, args=("poll",))
        timer.daemon = True
        timer.start()

    def _refuse_rewind(self, head: str) -> str | None:
        good = self.state.revision
        if good is None or self.config.source.allow_rewind:
            return None
        try:
            run_git(["merge-base", "--is-ancestor", good, head], self._mirror.git_dir, 30)
        except SourceError:
            return (
                f"RevisionRegression: {head[:12]} does not descend from the applied "
                f"{good[:12]} (set source.allow_rewind: true to accept it)"
            )
        return None

    def _reject(self, revision: str, reason: str, message: str) -> None:
        previous = self._rejected_backoff.get(revision)
        backoff = previous[1] if previous else Backoff(30.0, BACKOFF_MAX)
        self._rejected_backoff[revision] = (time.monotonic() + backoff.next_delay(), backoff)
        while len(self._rejected_backoff) > 64:
            self._rejected_backoff.pop(next(iter(self._rejected_backoff)))
        self.state.rejected = {revision: message, **dict(list(self.state.rejected.items())[:9])}
        self.log.error(
            "revision rejected; enforcing the last good revision",
            rejected=revision,
            reason=reason,
            error=message,
            revision=self.state.revision,
        )
        self.metrics.rejected.labels(reason).inc()  # last, as for a failed fetch
        self.notifier.status(self._status_line())

    # -- runs ----------------------------------------------------------------------------------

    def _options(self, noop: bool) -> RunOptions:
        c = self.config
        return RunOptions(
            repo=str(c.source.url),
            node=c.node,
            root=c.root,
            state_dir=c.state_dir,
            facts_dirs=list(c.facts_dirs),
            noop=noop,
            timeout=c.source.timeout,
            stop=self._stop,
            store=self._coordination_store(),
            coordination=c.coordination,
            max_file_size=c.reconcile.max_file_size,
            secrets=c.secrets,
        )

    def _coordination_store(self) -> Any:
        """The store app deployments coordinate through, opened once (again after a reload
        that changed it). None when it cannot be opened: the run then says why."""
        from reconciler.apps.store import StoreError, open_store

        if self._store is not None and self._store_config == self.config.coordination:
            return self._store
        if self._store is not None:
            self._store.close()
            self._store = None
        try:
            self._store = open_store(self.config.coordination)
            self._store_config = self.config.coordination
        except StoreError as exc:
            self.log.error("coordination store unavailable", error=str(exc))
        return self._store

    def _watch_store(self) -> None:
        """While a component waits, run again as soon as the store changes (its requirement
        turned healthy, a slot was freed), instead of at the next interval."""
        from reconciler.apps.store import StoreError

        while not self._stop.is_set():
            if not self._apps_waiting.wait(5.0):
                continue
            store = self._store
            if store is None:
                self._stop.wait(5.0)
                continue
            try:
                changed = store.wait(STORE_WAIT)
            except StoreError:
                # Away: try again in a while; the run says why it waits, and deploys once the
                # store is back.
                if not self._stop.wait(STORE_RETRY):
                    self.request("check")
                continue
            if changed and self._apps_waiting.is_set() and not self._stop.is_set():
                self.log.info("coordination store changed; checking waiting components")
                self.request("check")

    def _enforcing(self) -> tuple[bool, str | None]:
        s = suspendmod.current(self.config.state_dir)
        self.metrics.suspended.set(1 if s else 0)
        self.state.suspended = s.describe() if s else None
        return (self.config.reconcile.mode == "enforce" and s is None), self.state.suspended

    def _apply(self, revision: str, branch: str) -> bool:
        """Compile and run a new revision; on a model error keep the last good one."""
        try:
            snapshot = GitSnapshot(
                self._mirror.git_dir, revision, branch, f"{self.config.source.url}@{branch}"
            )
        except ModelError as exc:  # a tree not read: too large, or with a .git path
            self._reject(revision, exc.stage, str(exc))
            return False
        except SourceError as exc:
            self._fetch_failed(exc)
            self._unreadable()
            return False
        try:
            report = self._run(snapshot, revision)
        except ModelError as exc:
            self._reject(revision, exc.stage, str(exc))
            if not self.state.applied and self.state.revision is not None:
                self.check()
            return False
        finally:
            snapshot.close()
        if report is None:
            return False
        self._rejected_backoff.pop(revision, None)
        self.state.revision, self.state.branch, self.state.applied = revision, branch, True
        self.metrics.set_revision(revision, branch)
        self._save_good()
        return True

    def check(self) -> None:
        """A drift check of the last good revision (repairing it when enforcing)."""
        if self.state.revision is None:
            return
        branch = self.state.branch or ""
        try:
            snapshot = GitSnapshot(self._mirror.git_dir, self.state.revision, branch, "last good")
        except SourceError as exc:
            self.log.error("the last good revision is not in the mirror", error=str(exc))
            self._unreadable()
            return
        try:
            if self._run(snapshot, self.state.revision) is not None:
                self.state.applied = True
        except ModelError as exc:
            # The revision compiled before; it may fail now because facts changed.
            self.metrics.rejected.labels(exc.stage).inc()
            self.log.error("the last good revision no longer compiles", error=str(exc))
        finally:
            snapshot.close()

    def _run(self, snapshot: GitSnapshot, revision: str) -> RunReport | None:
        enforcing, suspended = self._enforcing()
        log = self.log.bind(revision=revision)
        self._running.set()  # the watcher holds events until _update_watch settles them
        try:
            report, catalog = run(
                self._options(noop=not enforcing), snapshot=snapshot, warn=self._warn
            )
        except LockHeld as exc:
            self._running.clear()
            log.warning("run skipped", reason="LockHeld", error=str(exc))
            return None
        except ModelError:
            self._running.clear()
            raise
        except ReconcilerError as exc:
            self._running.clear()
            log.error("run failed", error=str(exc))
            self.state.last_error = str(exc)
            self.metrics.runs.labels("failure").inc()
            return None
        ended = time.time()
        self.state.node = report.node
        self.metrics.observe_run(report, ended, enforcing)
        log = log.bind(run_id=report.run_id, node=report.node)
        for result in report.resources:
            if result.status in ("changed", "would_change", "failed", "skipped"):
                log.info(
                    "resource " + result.status,
                    resource=report.scrub(result.id),
                    changes=[c.property for c in result.changes],
                    corrective=result.corrective,
                    error=report.scrub(result.error),
                )
        summary = report.summary()
        log.info(
            "run finished",
            noop=report.noop,
            suspended=suspended,
            duration_seconds=round(report.duration_seconds, 3),
            **{k: v for k, v in summary.items()},
        )
        self.state.last_report = report.to_dict()
        if any(a["state"] == "waiting" for a in report.apps):
            self._apps_waiting.set()
        else:
            self._apps_waiting.clear()
        self.state.last_error = "; ".join(str(report.scrub(e)) for e in report.errors) or None
        try:
            self._update_watch(catalog, report)
        finally:
            self._running.clear()
        self.notifier.status(self._status_line())
        return report

    def _update_watch(self, catalog: Any, report: RunReport) -> None:
        if not self.config.reconcile.watch:
            return
        from reconciler.daemon.watch import Watcher

        managed: dict[str, str] = {}
        root = self.config.root
        for entry in catalog.entries.values():
            for path in entry.resource.managed_paths():
                managed[str(root / path.lstrip("/"))] = entry.resource.type
        changed_paths = {
            str(root / p.lstrip("/"))
            for r in report.resources
            if r.status == "changed" and r.id in catalog.entries
            for p in catalog.entries[r.id].resource.managed_paths()
        }
        if self.watcher is None:
            self.watcher = Watcher(self)
        self.watcher.update(managed, written=changed_paths)

    @property
    def running(self) -> bool:
        return self._running.is_set()

    def _status_line(self) -> str:
        revision = (self.state.revision or "none")[:12]
        parts = [f"revision {revision}"]
        if self.state.last_report:
            s = self.state.last_report["summary"]
            parts.append(f"last run: {s.get('changed', 0)} changed, {s.get('failed', 0)} failed")
        if self.state.suspended:
            parts.append("SUSPENDED")
        if self.state.source_error:
            parts.append("source unreachable")
        return "; ".join(parts)


def main(config_path: Path) -> int:
    agent = Agent(config_path)
    with contextlib.suppress(KeyboardInterrupt):
        return agent.serve()
    return 0
