"""Timers: poll every ``poll_interval``, a full drift check every ``interval`` plus a splay.

APScheduler fires the timers; each job only raises a flag for the agent's single worker, so a
timer never waits for a run and never starts a second one. ``coalesce`` and a misfire grace
time keep a clock jump or a suspended machine from causing a burst of catch-up runs. APScheduler
counts intervals on the wall clock, so a clock set back an hour would hold every timer for that
hour: the worker loop compares the wall clock with the monotonic one (``ClockWatch``) and, when
they part, starts the timers afresh from the new time. The splay is APScheduler's jitter: drawn
afresh for every firing, so a fleet stays spread out.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

if TYPE_CHECKING:
    from reconciler.daemon.agent import Agent

# Wall and monotonic clocks parting by this much between two looks is a jump (a step by NTP or
# by hand, or a suspend, which the monotonic clock does not count), not drift.
CLOCK_JUMP = 10.0


class ClockWatch:
    """Notices the wall clock jumping, by how much it moved beside the monotonic clock."""

    def __init__(self, threshold: float = CLOCK_JUMP) -> None:
        self.threshold = threshold
        self._wall, self._mono = time.time(), time.monotonic()

    def jumped(self) -> float:
        """Seconds the wall clock jumped (negative: backwards) since the last look, or 0."""
        wall, mono = time.time(), time.monotonic()
        skew = (wall - self._wall) - (mono - self._mono)
        self._wall, self._mono = wall, mono
        return skew if abs(skew) >= self.threshold else 0.0


class Schedule:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone="UTC",
        )
        self._clock = ClockWatch()

    def start(self) -> None:
        self._add_jobs()
        self.scheduler.start()

    def _add_jobs(self) -> None:
        config = self.agent.config
        self.scheduler.add_job(
            self.agent.request,
            IntervalTrigger(seconds=config.source.poll_interval),
            args=("poll",),
            id="poll",
            replace_existing=True,
        )
        self.scheduler.add_job(
            self.agent.request,
            IntervalTrigger(
                seconds=config.reconcile.interval, jitter=config.reconcile.splay or None
            ),
            args=("check",),
            id="check",
            replace_existing=True,
        )

    def reschedule(self) -> None:
        self._add_jobs()

    def follow_clock(self) -> float:
        """Start the timers afresh from the new time if the wall clock jumped since the last
        call; returns the jump in seconds (0 for none). Called from the agent's loop."""
        skew = self._clock.jumped()
        if skew:
            self._add_jobs()
        return skew

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
