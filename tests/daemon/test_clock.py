"""E11: the wall clock jumps under the daemon's timers.

libfaketime, preloaded into one process, steps its wall clock when the test writes an offset to a
file; its monotonic clock and the machine's clocks stay true (stepping this shared machine's
clock is not possible here). That process runs the daemon's real timers (``Schedule`` on
APScheduler) and the clock check of the agent's loop, with a recorder standing in for the agent:
see tests/daemon/clock_probe.py for why not the whole daemon. The timers keep their cadence: no
hour-long pause after the clock is set back an hour, no catch-up burst after it is set forward a
day.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need, wait_for

LIBFAKETIME = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
ROOT = Path(__file__).resolve().parents[2]


class Probe:
    def __init__(self, tmp: Path) -> None:
        self.offset = tmp / "clock-offset"
        self.offset.write_text("+0\n")
        self.out = tmp / "timers.log"
        self.stopfile = tmp / "stop"
        config = tmp / "config.yaml"
        config.write_text(
            f"node: node-1\nroot: {tmp / 'root'}\nstate_dir: {tmp / 'state'}\n"
            "source:\n  url: file:///nonexistent\n  poll_interval: 1s\n"
            "reconcile:\n  interval: 30s\n  splay: 0s\n"
        )
        env = {
            **os.environ,
            "LD_PRELOAD": str(LIBFAKETIME[0]),
            "FAKETIME_TIMESTAMP_FILE": str(self.offset),
            "FAKETIME_NO_CACHE": "1",
            "DONT_FAKE_MONOTONIC": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.daemon.clock_probe", str(config), str(self.out),
             str(self.stopfile)],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def count(self, what: str) -> int:
        return self.lines().count(what)

    def jumps(self) -> list[int]:
        return [int(line.split()[1]) for line in self.lines() if line.startswith("jump ")]

    def shift(self, seconds: int) -> None:
        self.offset.write_text(f"{seconds:+d}\n")

    def stop(self) -> str:
        self.stopfile.touch()
        _, err = self.proc.communicate(timeout=30)
        return err


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[Probe]:
    need("faketime")
    assert LIBFAKETIME, "libfaketime.so.1 is missing: install the Debian package faketime"
    p = Probe(tmp_path)
    try:
        wait_for(lambda: p.count("poll") >= 2, 30, "the poll timer firing")
        assert p.jumps() == []
        yield p
    finally:
        err = p.stop()
    assert p.proc.returncode == 0, err


def test_clock_set_back_an_hour_does_not_pause_the_timers(probe: Probe) -> None:
    probe.shift(-3600)
    jumps = wait_for(probe.jumps, 30, "the jump noticed")
    assert len(jumps) == 1 and -3610 < jumps[0] < -3590
    before = probe.count("poll")
    # Left to itself, APScheduler would wait an hour of the new clock for its next firing.
    wait_for(lambda: probe.count("poll") >= before + 3, 30, "polls every second after the step")


def test_clock_set_forward_a_day_fires_no_catch_up_burst(probe: Probe) -> None:
    checks = probe.count("check")
    probe.shift(86400)
    jumps = wait_for(probe.jumps, 30, "the jump noticed")
    assert len(jumps) == 1 and 86390 < jumps[0] < 86410
    before = probe.count("poll")
    wait_for(lambda: probe.count("poll") >= before + 3, 30, "polls every second after the step")
    # A day of 30 s intervals was skipped over: at most one drift check for it, not 2880;
    # and the poll timer did not fire once per missed second either.
    assert probe.count("check") <= checks + 1
    assert probe.count("poll") < before + 20
