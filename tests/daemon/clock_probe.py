"""Runs the daemon's real timers (``Schedule``, APScheduler) and its loop's clock check, and
writes what they do to a file, one line each: ``poll``, ``check`` or ``jump <seconds>``.

tests/daemon/test_clock.py starts it under libfaketime to step its wall clock. The whole daemon
cannot run there: libfaketime 0.9.10 fails ``clock_nanosleep`` on the monotonic clock (which
``time.sleep`` uses) as soon as it leaves that clock alone, and a true wall-clock jump must leave
it alone. The stand-in for the agent only records what the timers ask of it.

    python -m tests.daemon.clock_probe CONFIG OUT STOPFILE
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from reconciler.config import load_config
from reconciler.daemon.schedule import Schedule

LIMIT = 120.0  # seconds of monotonic time: the probe always ends


class Recorder:
    """Stands in for the agent: what the timers request is written down, nothing runs."""

    def __init__(self, config: Any, out: Path) -> None:
        self.config = config
        self.out = out.open("a", buffering=1)
        self.lock = threading.Lock()

    def request(self, what: str) -> None:
        self.write(what)

    def write(self, line: str) -> None:
        with self.lock:
            self.out.write(line + "\n")


def main(config_path: str, out: str, stop: str) -> int:
    agent = Recorder(load_config(Path(config_path)), Path(out))
    schedule = Schedule(agent)  # type: ignore[arg-type]
    schedule.start()
    agent.write("started")
    tick = threading.Event()
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline and not Path(stop).exists():
        tick.wait(0.25)  # what the agent's loop does between runs
        skew = schedule.follow_clock()
        if skew:
            agent.write(f"jump {round(skew)}")
    schedule.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
