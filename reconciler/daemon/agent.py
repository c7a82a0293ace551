"""The long-running agent: poll the control repo, reconcile on a schedule, heal drift at once.

One worker thread does every run, so at most one is ever under way; triggers (the poll and
drift-check timers, webhooks, the file watcher) only set flags, and flags raised during a run
coalesce into one follow-up run. The last good revision is enforced whatever goes wrong with a
newer one: an unreachable remote, a broken commit, a rewind, a commit not signed by a trusted key.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
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
from reconciler.engine.report import RunReport
from reconciler.errors import (
    ConfigError,
    LockHeld,
    ReconcilerError,
    SourceError,
)
from reconciler.reconcile import (
    CompileCache,
    Outcome,
    OutcomeKind,
    Pinned,
    RunOptions,
    reconcile,
)
from reconciler.source.git import Mirror, redact, shown_url

BACKOFF_MIN = 1.0
BACKOFF_MAX = 15 * 60.0
STORE_WAIT = 30.0  # seconds of one wait on the coordination store
STORE_RETRY = 5.0  # seconds between runs while the store is away and a component waits
PUSH_WAIT = 300.0  # seconds of one watch of the pushed revision alone


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
        # Exported data: the names the last compile collected and what they gave then; a
        # change in the store to what they give is a change of the catalog.
        self._collected: tuple[frozenset[str], str] | None = None
        self._watching_store = threading.Event()  # apps waiting, or something collected
        self._waiting_apps: frozenset[str] = frozenset()  # the apps of the waiting components
        self._waiting_for: Any = None  # what the store watch under way watches (a Watched)
        # Pushed revisions: the one last known in the store (pushed here, or seen there), when
        # the last poll a push asked for was made, and whether a poll put off is due.
        self._pushed: str | None = None
        self._push_polled = -math.inf
        self._push_delayed = threading.Event()
        self._store_opened = threading.Event()
        # The last compiled catalog, re-checked while nothing it was compiled from changed.
        self._compiled = CompileCache()

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
        """The last applied revision, as the engine recorded it (by this daemon or by
        ``reconciler apply --config``)."""
        applied = state.load_applied(self.config.state_dir, self._warn)
        if applied is not None:
            self.state.revision = applied.revision
            self.state.branch = applied.branch
            if self.state.revision and self.state.branch:
                self.metrics.set_revision(self.state.revision, self.state.branch)

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
            source=shown_url(self.config.source.url or ""),
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
                    applied = self._guarded(self.poll)
                if "check" in pending and not applied:
                    self._guarded(self.check)
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

    def _guarded(self, step: Any) -> bool:
        """A poll or a check; what it did not expect (EMFILE, MemoryError, a bug) is a failed
        run, logged and counted, and the daemon goes on enforcing the last good revision."""
        try:
            return bool(step())
        except Exception as exc:
            self._run_ended()
            self._run_failed("Unexpected", f"Unexpected: {type(exc).__name__}: {exc}")
            return False

    def _run_failed(self, reason: str, message: str) -> None:
        message = redact(message)
        self.log.error(
            "run failed; enforcing the last good revision",
            reason=reason,
            error=message,
            revision=self.state.revision,
        )
        self.state.last_error = message
        self.notifier.status(self._status_line())
        self.metrics.runs.labels("failure").inc()  # last: the log and status say why

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
            self._compiled.clear()  # the next run compiles with the new settings
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
        """Ask the remote for the branch head; run the engine only when it moved.

        Returns whether a run happened (so that a pending drift check can be skipped).
        """
        if time.monotonic() < self._next_fetch:
            return False
        t = time.perf_counter()
        try:
            head, branch = self._mirror.remote_head(self.config.source.branch)
        except (SourceError, ConfigError) as exc:
            self._fetch_failed(str(exc))
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
        new = head != self.state.revision
        asked = time.perf_counter() - t  # ls-remote: the first part of the fetch
        if new:
            self._push(head)
        outcome = self._run(Pinned(head, branch, "always" if new else "missing", verify=new))
        if outcome.fetched:
            self.metrics.fetches.labels("success").inc()
            self.metrics.run_duration.labels("fetch").observe(asked + outcome.fetch_seconds)
            self._fetch_ok()
        revision = outcome.revision or head
        if outcome.kind is OutcomeKind.FETCH_FAILED:
            self._fetch_failed(outcome.message)
            if outcome.stage == "read":
                self._unreadable()
            return False
        if outcome.kind is OutcomeKind.REJECTED:
            self._reject(revision, outcome.stage or "compile", outcome.message)
            if (
                outcome.stage != "rewind"
                and not self.state.applied
                and self.state.revision is not None
            ):
                self.check()
            return False
        if outcome.kind is OutcomeKind.ERROR and outcome.reason == "StateDirUnsafe":
            delay = self._backoff.next_delay()
            self._next_fetch = time.monotonic() + delay
            self._retry_after(delay)
        if not outcome.ran:
            return False
        self._rejected_backoff.pop(revision, None)
        self.state.revision, self.state.branch, self.state.applied = (
            revision,
            outcome.branch or branch,
            True,
        )
        self.metrics.set_revision(revision, self.state.branch or branch)
        return True

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

    def _fetch_failed(self, message: str) -> None:
        delay = self._backoff.next_delay()
        self._next_fetch = time.monotonic() + delay
        self.state.source_error = redact(message)
        self.log.error(
            "fetch failed; enforcing the last good revision",
            reason="FetchFailed",
            error=self.state.source_error,
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
            ref=c.source.branch,
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
            allow_rewind=c.source.allow_rewind,
            verify=c.source.verify,
            secrets=c.secrets,
        )

    def _coordination_store(self) -> Any:
        """The store app deployments coordinate through, opened once (again after a reload
        that changed it). None when it cannot be opened: the run then says why."""
        from reconciler.apps.store import StoreError, open_store

        if self._store is not None and self._store_config == self.config.coordination:
            return self._store
        if self._store is not None:
            self._store_opened.clear()
            self._store.close()
            self._store = None
        try:
            self._store = open_store(self.config.coordination)
            self._store_config = self.config.coordination
            self._store_opened.set()
        except StoreError as exc:
            self.log.error("coordination store unavailable", error=str(exc))
        return self._store

    def _source_key(self) -> str:
        from reconciler.apps.store import source_key

        return source_key(self.config.source.url or "", self.config.source.branch)

    def _push(self, revision: str) -> None:
        """Tell the daemons that share the store that the branch moved: they poll at once and
        fetch, verify and apply what their own remote gives them."""
        from reconciler.apps.store import StoreError

        if not self.config.coordination.push or revision == self._pushed:
            return
        store = self._coordination_store()
        if store is None:
            return
        self._pushed = revision
        try:
            if store.push_revision(self._source_key(), revision):
                self.log.info("new revision pushed to the store", pushed=revision)
        except (StoreError, ValueError) as exc:
            self.log.warning("new revision not pushed to the store", error=str(exc))

    def _pushed_by_another(self, revision: str | None) -> None:
        """What another node pushed: a poll now, or once ``push_min_interval`` has passed
        since the last poll a push asked for; nothing when it is no commit id or known."""
        if revision is None:
            return
        if not revision:
            self.metrics.pushes.labels("invalid").inc()
            return
        if revision in (self.state.revision, self._pushed):
            self.metrics.pushes.labels("known").inc()
            return
        self._pushed = revision
        now = time.monotonic()
        delay = self._push_polled + self.config.coordination.push_min_interval - now
        if delay <= 0:
            self._push_polled = now
            self.log.info("another node pushed a revision; polling now", pushed=revision)
            self.metrics.pushes.labels("poll").inc()
            self.request("poll")
        elif self._push_delayed.is_set():
            self.metrics.pushes.labels("merged").inc()  # the poll put off is still to come
        else:
            self._push_delayed.set()
            self._push_polled = now + delay
            self.log.info(
                "another node pushed a revision; polling later (coordination.push_min_interval)",
                pushed=revision,
                poll_in_seconds=round(delay, 1),
            )
            self.metrics.pushes.labels("delayed").inc()

            def poll() -> None:
                self._push_delayed.clear()
                self.request("poll")

            timer = threading.Timer(delay, poll)
            timer.daemon = True
            timer.start()

    def _note_collected(self, catalog: Any) -> None:
        from reconciler.apps.exports import collected_view

        records = catalog.collected_records
        if catalog.collected and records is not None:
            self._collected = (catalog.collected, collected_view(records, catalog.collected))
        else:
            self._collected = None
        if self._apps_waiting.is_set() or self._collected is not None:
            if not self._watching_store.is_set():
                self._watching_store.set()
                if self._store is not None:
                    self._store.interrupt()  # from the pushed revision alone to the store
            elif self._store is not None and self._watched() != self._waiting_for:
                self._store.interrupt()  # the wait under way watches other apps' keys
        else:
            self._watching_store.clear()

    def _watched(self) -> Any:
        """What of the store the watch wakes for: the keys of the apps whose components wait,
        the exports records (what the last compile collected, or the values a waiting component
        consumes), and the pushed revision."""
        from reconciler.apps.store import Watched

        return Watched(
            apps=self._waiting_apps if self._apps_waiting.is_set() else frozenset(),
            exports=True,
            revision=self._source_key() if self.config.coordination.push else None,
        )

    def _collected_changed(self, store: Any) -> bool:
        """Whether what the last compile collected reads differently in the store now."""
        from reconciler.apps.exports import collected_view

        collected = self._collected
        if collected is None:
            return False
        names, seen = collected
        return collected_view(store.records("exports"), names) != seen

    def _watch_store(self) -> None:
        """While a component waits, run again as soon as the store changes (its requirement
        turned healthy, a slot was freed), instead of at the next interval; and when what the
        last compile collected changes (a node joined, left or changed its exports). With
        ``coordination.push``, poll when another node pushes a revision: one watch covers all,
        of the waiting apps' keys, the exports records and the pushed revision while something
        above needs it (``_watched``), else of the pushed revision's key alone."""
        from reconciler.apps.store import StoreError

        known: tuple[Any, str] | None = None  # the store and source whose revision was read
        while not self._stop.is_set():
            push = self.config.coordination.push
            if not push and not self._watching_store.wait(5.0):
                continue
            store = self._store
            if store is None:
                self._store_opened.wait(5.0)
                continue
            wide = self._watching_store.is_set()
            changed, pushed = False, None
            try:
                if push and known != (store, self._source_key()):
                    # Read once, so that a watch from here on misses no push; what is there
                    # now, the poll at start or after a reload fetches anyway.
                    known = (store, self._source_key())
                    there = store.pushed_revision(known[1])
                    if there and there not in (self.state.revision, self._pushed):
                        self.log.info("the store names a newer revision; polling", pushed=there)
                        self.request("poll")
                    self._pushed = there or self._pushed
                elif not wide:
                    pushed = store.watch_revision(self._source_key(), PUSH_WAIT)
                else:
                    self._waiting_for = self._watched()
                    changed = store.wait(STORE_WAIT, self._waiting_for)
                    # What changed, when the store says (after a timeout: nothing it saw); a
                    # read in a run meanwhile may have moved the wait past a change, so the
                    # timeout reads what it covers anyway.
                    woke = store.woke_for if changed else None
                    read = True  # the exports were read here: the wait moved past what it saw
                    if not changed and self._collected is not None:
                        changed = self._collected_changed(store)  # a record that ran out
                    elif changed and woke is not None and not woke & {"apps", "exports"}:
                        changed, read = False, False  # only the pushed revision: read below
                    elif changed and not self._apps_waiting.is_set():
                        changed = self._collected_changed(store)
                    else:
                        read = False
                    if push and (woke is None or "revision" in woke or read):
                        # Read last: the next wait counts from here, so no push falls between
                        # (a read in a run meanwhile may skip one: the timeout's read finds it).
                        pushed = store.pushed_revision(self._source_key())
                        if pushed == self._pushed:
                            pushed = None  # no news: read at every wake
            except StoreError as exc:
                # Away: try again in a while; the run says why it waits, and deploys once the
                # store is back.
                if known is not None and not wide:
                    self.log.warning("coordination store not watched; pushes wait", error=str(exc))
                known = None
                if not self._stop.wait(STORE_RETRY) and self._apps_waiting.is_set():
                    self.request("check")
                continue
            if pushed is not None and not self._stop.is_set():
                self._pushed_by_another(pushed)
            if changed and self._watching_store.is_set() and not self._stop.is_set():
                if self._apps_waiting.is_set():
                    self.log.info("coordination store changed; checking waiting components")
                else:
                    self.log.info("collected exports changed; checking")
                self.request("check")

    def _enforcing(self) -> tuple[bool, str | None]:
        s = suspendmod.current(self.config.state_dir)
        self.metrics.suspended.set(1 if s else 0)
        self.state.suspended = s.describe() if s else None
        return (self.config.reconcile.mode == "enforce" and s is None), self.state.suspended

    def check(self) -> None:
        """A drift check of the last good revision (repairing it when enforcing)."""
        if self.state.revision is None:
            return
        outcome = self._run(
            Pinned(self.state.revision, self.state.branch or "", "never", verify=False)
        )
        if outcome.ran:
            self.state.applied = True
        elif outcome.kind is OutcomeKind.FETCH_FAILED:
            self.log.error("the last good revision is not in the mirror", error=outcome.message)
            self._unreadable()
        elif outcome.kind is OutcomeKind.REJECTED:
            # The revision compiled before; it may fail now because facts changed.
            self.metrics.rejected.labels(outcome.stage or "compile").inc()
            self.log.error("the last good revision no longer compiles", error=outcome.message)

    def _run(self, pinned: Pinned) -> Outcome:
        """One run of the engine; the outcome of a run that ran (or could not run) moves the
        metrics, the log and the status here, a fetch failure or a rejection in the caller."""
        enforcing, suspended = self._enforcing()
        log = self.log.bind(revision=pinned.commit)
        self._running.set()
        if self.watcher is not None:
            self.watcher.hold()  # events wait until _update_watch judges them
        options = self._options(noop=not enforcing)
        # Where the store watch counts from once this run has decided (its reads move it on):
        # a change made while the run read and wrote is then still news.
        store = self._store
        mark = store.position() if store is not None else None
        outcome = reconcile(options, warn=self._warn, pinned=pinned, cache=self._compiled)
        if store is not None and mark is not None:
            store.rewind(mark)
        report, catalog = outcome.report, outcome.catalog
        if outcome.revision is not None:
            log = self.log.bind(revision=outcome.revision)
        if outcome.kind is OutcomeKind.SKIPPED:
            self._run_ended()
            log.warning("run skipped", reason=outcome.reason, error=outcome.message)
            return outcome
        if outcome.kind in (OutcomeKind.REJECTED, OutcomeKind.FETCH_FAILED):
            self._run_ended()
            return outcome
        if not outcome.ran or report is None or catalog is None:
            self._run_ended()
            self._run_failed(outcome.reason, outcome.message)
            return outcome
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
            compiled=report.compiled,
            suspended=suspended,
            duration_seconds=round(report.duration_seconds, 3),
            **{k: v for k, v in summary.items()},
        )
        self.state.last_report = report.to_dict()
        # The apps whose components wait: their keys are what the store watch wakes for.
        self._waiting_apps = frozenset(a["app"] for a in report.apps if a["state"] == "waiting")
        if self._waiting_apps:
            self._apps_waiting.set()
        else:
            self._apps_waiting.clear()
        self._note_collected(catalog)
        self.state.last_error = "; ".join(str(report.scrub(e)) for e in report.errors) or None
        try:
            self._update_watch(catalog, report)
        finally:
            self._run_ended()
        self.notifier.status(self._status_line())
        return outcome

    def _update_watch(self, catalog: Any, report: RunReport) -> None:
        if not self.config.reconcile.watch:
            return
        from reconciler.daemon.watch import Watcher

        managed: dict[str, str] = {}
        listed: set[str] = set()  # directories that purge: what they hold is their state
        root = self.config.root
        for entry in catalog.entries.values():
            for path in entry.resource.managed_paths():
                managed[str(root / path.lstrip("/"))] = entry.resource.type
                if entry.resource.type == "directory" and entry.resource.attrs.get("purge"):
                    listed.add(str(root / path.lstrip("/")))
        changed_paths = {
            str(root / p.lstrip("/"))
            for r in report.resources
            if r.status == "changed" and r.id in catalog.entries
            for p in catalog.entries[r.id].resource.managed_paths()
        }
        if self.watcher is None:
            self.watcher = Watcher(self)
        self.watcher.update(managed, written=changed_paths, listed=frozenset(listed))

    def _run_ended(self) -> None:
        self._running.clear()
        if self.watcher is not None:
            self.watcher.release()  # nothing, after _update_watch

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
