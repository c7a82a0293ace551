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


class Watcher(FileSystemEventHandler):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._lock = threading.Lock()
        self._managed: dict[str, str] = {}
        self._watched: dict[str, Any] = {}
        self._held: list[str] = []
        self._timer: threading.Timer | None = None
        self.observer: Any = Observer()
        self.observer.daemon = True
        self.observer.start()

    def update(self, managed: dict[str, str], ignore: set[str]) -> None:
        """Watch these paths from now on; drop held events for paths the last run wrote."""
        with self._lock:
            self._managed = managed
            held, self._held = self._held, []
        for path in held:
            if path not in ignore:
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
