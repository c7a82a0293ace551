"""Soak the daemon's worker loop: many consecutive runs in one process, with drift between them.

Usage: python bench/soak.py [--runs 1000] [--files 200] [--every 50] [--warmup 100]
                            [--commit-every 25] [--seed 1]

Builds the agent in-process from a config file, as `reconciler daemon` does (a local git
repository as the source, a private root, the file watcher on), applies the first revision
with a poll, then does --runs runs of its loop back to back: before each, drift is injected
(files edited, chmodded, deleted; now and then a whole directory removed), and the run is the
loop's drift check (Agent.check), or every --commit-every runs a new commit and a poll
(Agent.poll). Every run must repair all the drift and fail nothing.

Every --every runs it prints the process's RSS (VmRSS), open file descriptors, threads,
metric series and the mean run time, then says whether RSS, descriptors, threads and series
are stable: the final figures against those after --warmup runs. Exit status 1 if not.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import generate_git_repo, git

from reconciler.daemon.agent import Agent

RSS_SLACK_MB = 8.0  # allocator noise after the warm-up; a leak of 1000 runs shows well above


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def series(agent: Agent) -> int:
    """How many metric series the agent exposes (a label leak shows here)."""
    from prometheus_client import generate_latest

    text = generate_latest(agent.metrics.registry).decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / (1 << 20)


class Drift:
    """Damage to managed files between runs, and the check that a run repaired it."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.base = root / "srv" / "bench"
        self.rng = rng
        self.files = sorted(self.base.rglob("*.conf"))
        self.dirs = sorted(p for p in self.base.iterdir() if p.is_dir())
        self.good: dict[Path, tuple[bytes, int]] = {}

    def remember(self) -> None:
        self.good = {p: (p.read_bytes(), p.stat().st_mode & 0o7777) for p in self.files}

    def inject(self, run: int) -> int:
        """Damage a few files (every 20th run, a whole directory too); return how many."""
        picked = self.rng.sample(self.files, 6)
        for path in picked[:3]:
            path.write_text(f"tampered in run {run}\n")  # new content each time: new backups
        for path in picked[3:5]:
            path.chmod(0o600)
        picked[5].unlink()
        damaged = set(picked)
        if run % 20 == 0:
            victim = self.rng.choice(self.dirs)
            damaged.update(p for p in self.files if p.parent == victim)
            shutil.rmtree(victim)
        return len(damaged)

    def repaired(self) -> bool:
        for path, (data, mode) in self.good.items():
            try:
                if path.read_bytes() != data or path.stat().st_mode & 0o7777 != mode:
                    return False
            except FileNotFoundError:
                return False
        return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--commit-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="reconciler-soak-") as tmp:
        base = Path(tmp)
        repo = base / "repo"
        generate_git_repo(repo, args.files, "soak")
        root = base / "root"
        (root / "srv").mkdir(parents=True)
        state = base / "state"
        config = base / "config.yaml"
        config.write_text(
            f"node: soak\nroot: {root}\nstate_dir: {state}\nfacts_dirs: []\n"
            f"source: {{url: {repo}, branch: production, poll_interval: 1h}}\n"
            "reconcile: {interval: 1h, splay: 0s, watch: true}\n"
            "log: {format: json, level: warning}\n"
        )
        profile = repo / "profiles" / "bench.yaml"
        original = profile.read_text()

        agent = Agent(config)
        agent._take_daemon_lock()  # as serve() does
        agent._load_good()
        if not agent.poll():
            raise SystemExit("the first revision was not applied")
        drift = Drift(root, rng)
        drift.remember()

        print(
            f"soak: {args.runs} runs of the agent loop, {args.files}-file catalog, "
            f"drift before every run, a new commit every {args.commit_every} runs, "
            f"{os.cpu_count()} cores"
        )
        print(
            f"{'run':>6} {'RSS MB':>8} {'fds':>5} {'threads':>7} {'series':>7} "
            f"{'state MB':>8} {'ms/run':>7}"
        )
        samples: dict[int, tuple[float, int, int, int]] = {}

        def sample(run: int, ms: float) -> None:
            figures = (rss_mb(), open_fds(), threading.active_count(), series(agent))
            samples[run] = figures
            print(
                f"{run:>6} {figures[0]:>8.1f} {figures[1]:>5} {figures[2]:>7} {figures[3]:>7} "
                f"{dir_mb(state):>8.1f} {ms:>7.1f}",
                flush=True,
            )

        sample(0, 0.0)
        elapsed = 0.0
        repaired = commits = 0
        for run in range(1, args.runs + 1):
            repaired += drift.inject(run)
            started = time.perf_counter()
            if run % args.commit_every == 0:
                commits += 1
                profile.write_text(original.replace("file 0 of", f"file 0 (v{commits}) of"))
                git(repo, "commit", "-qam", f"v{commits}")
                if not agent.poll():
                    raise SystemExit(f"run {run}: the new commit was not applied")
                drift.remember()
            else:
                agent.check()
            elapsed += time.perf_counter() - started
            report = agent.state.last_report or {}
            summary = report.get("summary", {})
            if summary.get("failed") or agent.state.last_error:
                raise SystemExit(f"run {run} failed: {summary} {agent.state.last_error}")
            if not drift.repaired():
                raise SystemExit(f"run {run} left drift unrepaired: {summary}")
            if run % args.every == 0:
                sample(run, elapsed / args.every * 1000)
                elapsed = 0.0

        if agent.watcher is not None:
            agent.watcher.stop()
        warm = max(r for r in samples if r <= args.warmup)
        last = max(samples)
        (rss0, fds0, threads0, series0), (rss1, fds1, threads1, series1) = (
            samples[warm],
            samples[last],
        )
        # Among the runs after warm-up, the highest figures: a leak grows, noise comes and goes.
        peak_fds = max(s[1] for r, s in samples.items() if r >= warm)
        verdicts = {
            "RSS": (rss1 - rss0 <= RSS_SLACK_MB, f"{rss0:.1f} -> {rss1:.1f} MB"),
            "open fds": (fds1 <= fds0 and peak_fds <= fds0 + 2, f"{fds0} -> {fds1}"),
            "threads": (threads1 <= threads0 + 1, f"{threads0} -> {threads1}"),
            "metric series": (series1 == series0, f"{series0} -> {series1}"),
        }
        print(f"{args.runs} runs, {repaired} damaged files repaired, {commits} new commits applied")
        for name, (ok, figures) in verdicts.items():
            print(
                f"  {name:<14} after {warm} runs vs. after {last}: {figures}  "
                + ("stable" if ok else "GROWING")
            )
        stable = all(ok for ok, _ in verdicts.values())
        print("stable" if stable else "NOT STABLE")
        return 0 if stable else 1


if __name__ == "__main__":
    sys.exit(main())
