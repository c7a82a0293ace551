"""React at once to changes of managed paths made behind the agent's back.

watchdog observes the directories that hold managed paths (not recursively). An event on a
managed path is counted and, after a short debounce, asks the agent for a drift check. The
agent's own writes are not drift: events that arrive while a run is under way are held, and
those for paths the run itself changed are dropped when it ends. Where the watcher cannot
observe (no inotify, too many watches), the interval check still catches everything.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

if TYPE_CHECKING:
    from reconciler.daemon.agent import Agent

DEBOUNCE_SECONDS = 0.2


def signature(path: str) -> tuple[int, int, int, int] | None:
    """What a path is now (size, mtime, ctime, inode); None when it does not exist."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class Watcher(FileSystemEventHandler):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._lock = threading.Lock()
        self._managed: dict[str, str] = {}
        self._watched: dict[str, Any] = {}
        self._held: list[str] = []
        self._own: dict[str, tuple[int, int, int, int] | None] = {}
        self._timer: threading.Timer | None = None
        self.observer: Any = Observer()
        self.observer.daemon = True
        self.observer.start()

    def update(self, managed: dict[str, str], written: set[str]) -> None:
        """Watch these paths from now on; ``written``: the paths the last run changed.

        inotify events of the agent's own writes may arrive during the run or after it. An
        event on a path the run wrote is the agent's own as long as the path is still exactly
        as the run left it (same size, times and inode); any later change is drift.
        """
        own = {path: signature(path) for path in written}
        with self._lock:
            self._managed = managed
            held, self._held = self._held, []
            self._own = own
        for path in held:
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
                if self.agent.running:
                    with self._lock:
                        self._held.append(path)
                else:
                    self._seen(path)

    def _seen(self, path: str) -> None:
        kind = self._managed.get(path)
        if kind is None:
            return
        if path in self._own and self._own[path] == signature(path):
            return  # the agent's own write, still as it left it
        self.agent.metrics.drift_events.labels(kind).inc()
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(DEBOUNCE_SECONDS, self._fire)
                self._timer.daemon = True
                self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        self.agent.request("check")

    def stop(self) -> None:
        self.observer.stop()
