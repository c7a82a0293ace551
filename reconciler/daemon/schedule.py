"""Timers: poll every ``poll_interval``, a full drift check every ``interval`` plus a splay.

APScheduler fires the timers; each job only raises a flag for the agent's single worker, so a
timer never waits for a run and never starts a second one. ``coalesce`` and a misfire grace
time keep a clock jump or a suspended machine from causing a burst of catch-up runs. The splay
is APScheduler's jitter: drawn afresh for every firing, so a fleet stays spread out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

if TYPE_CHECKING:
    from reconciler.daemon.agent import Agent


class Schedule:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
            timezone="UTC",
        )

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

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
