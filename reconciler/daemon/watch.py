"""React at once to changes of managed paths made behind the agent's back.

watchdog observes the directories that hold managed paths (not recursively). An event on a
managed path is drift only when the path is no longer what the agent last left or found there
(see ``fingerprint``); then it is counted once, and after a short debounce the agent is asked
for a drift check. The agent's own writes are not drift: events that arrive while a run is
under way are held and judged when it ends, against what the run left. Where the watcher
cannot observe (no inotify, too many watches), the interval check still catches everything.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import TYPE_CHECKING, Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

if TYPE_CHECKING:
    from reconciler.daemon.agent import Agent

DEBOUNCE_SECONDS = 0.2

Fingerprint = tuple[int, ...]


def fingerprint(path: str, entries: bool = False) -> Fingerprint | None:
    """What a path is now, as far as drift goes; None when it does not exist.

    A directory is its inode, type, mode and owner: the entries it holds are not its state (a
    file written or removed inside it changes its times, and that file has events of its own),
    unless ``entries`` (a directory that purges what nothing manages): then their names too.
    Anything else is also its size and its change times, so any write shows.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    kind = stat.S_IFMT(st.st_mode)
    attributes = (st.st_ino, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    if kind != stat.S_IFDIR:
        return (*attributes, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if entries:
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return attributes
        return (*attributes, hash(tuple(names)))
    return attributes


class Watcher(FileSystemEventHandler):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._lock = threading.Lock()
        self._managed: dict[str, str] = {}
        self._listed: frozenset[str] = frozenset()  # directories whose entries are their state
        self._watched: dict[str, Any] = {}
        self._holding = False  # a run is under way: events wait for its end
        self._held: set[str] = set()
        # What each managed path was when the agent last wrote or checked it.
        self._known: dict[str, Fingerprint | None] = {}
        self._counted: set[str] = set()  # drifted paths counted since the last run ended
        self._timer: threading.Timer | None = None
        self.observer: Any = Observer()
        self.observer.daemon = True
        self.observer.start()

    def update(
        self, managed: dict[str, str], written: set[str], listed: frozenset[str] = frozenset()
    ) -> None:
        """Watch these paths from now on; ``written``: the paths the last run changed;
        ``listed``: the directories that purge what nothing manages (their entries count).

        inotify events of the agent's own writes may arrive during the run or after it. Each
        path is remembered as the run left it, and an event is drift only when its path differs
        from that. A path the run did not write but that had events during the run is judged
        against what it was before the run: a change made meanwhile is still drift.
        """
        with self._lock:
            self._holding = False
            held, self._held = self._held, set()
            known: dict[str, Fingerprint | None] = {}
            for path in managed:
                if path in held and path not in written and path in self._known:
                    known[path] = self._known[path]
                else:
                    known[path] = fingerprint(path, path in listed)
            self._managed, self._listed = managed, listed
            self._known, self._counted = known, set()
        for path in sorted(held):
            self._seen(path)
        dirs = {os.path.dirname(p) for p in managed} | {
            p for p, _ in managed.items() if os.path.isdir(p)
        }
        for directory in set(self._watched) - dirs:
            self.observer.unschedule(self._watched.pop(directory))
        for directory in dirs - set(self._watched):
            if os.path.isdir(directory):
                try:
                    self._watched[directory] = self.observer.schedule(
                        self, directory, recursive=False
                    )
                except OSError as exc:
                    self.agent.log.warning(
                        "cannot watch; the interval check covers it", path=directory, error=str(exc)
                    )

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = os.fsdecode(raw) if raw else ""
            if path and path in self._managed:
                with self._lock:
                    if self._holding:
                        self._held.add(path)
                        continue
                self._seen(path)

    def hold(self) -> None:
        """A run starts: hold events until ``update`` (or ``release``) judges them."""
        with self._lock:
            self._holding = True

    def release(self) -> None:
        """A run ended without a report (skipped, rejected, failed): judge what was held."""
        with self._lock:
            self._holding = False
            held, self._held = self._held, set()
            self._counted = set()
        for path in sorted(held):
            self._seen(path)

    def _seen(self, path: str) -> None:
        """One event on a managed path: count it and ask for a check if it is drift.

        Writing a file is several events (a truncation, writes, the close); they make one
        drift event: a path is counted once until the next run ends.
        """
        with self._lock:
            kind = self._managed.get(path)
            if kind is None or path in self._counted:
                return
            now = fingerprint(path, path in self._listed)
            if path in self._known and self._known[path] == now:
                return  # as the agent left it: its own write, or a directory's entries
            self._counted.add(path)
            if self._timer is None:
                self._timer = threading.Timer(DEBOUNCE_SECONDS, self._fire)
                self._timer.daemon = True
                self._timer.start()
        self.agent.metrics.drift_events.labels(kind).inc()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        self.agent.request("check")

    def stop(self) -> None:
        self.observer.stop()
