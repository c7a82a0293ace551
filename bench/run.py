"""Benchmark the one-shot CLI on a generated catalog of N files, as whole processes.

Scenarios, each timed as a complete ``reconciler apply`` process:
  first apply  - on an empty root
  no change    - everything already in sync
  repair       - after 10% of the files had their content changed and 5% their mode
and, unless --daemon-window 0, the daemon's warm check (bench/daemon.py ``warm_check``):
  daemon warm check - a running daemon, nothing drifted, a drift check every 30 s: the median
                      duration of one check (from its run reports; it compiles nothing) and
                      the daemon's CPU over the window as % of one core

Usage: python bench/run.py [--sizes 1000 10000] [--repeat 5] [--daemon-window 90]
Prints a table of the median wall time and the peak RSS of each scenario.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate_repo(repo: Path, n: int) -> None:
    """A control repo whose one role holds N files in N/50 directories and one guarded exec."""
    (repo / "roles").mkdir(parents=True)
    (repo / "profiles").mkdir()
    (repo / "nodes.yaml").write_text("default: bench\n")
    (repo / "roles" / "bench.yaml").write_text("profiles: [bench]\n")
    lines = ["resources:", "  - directory: /srv/bench"]
    dirs = max(1, n // 50)
    for d in range(dirs):
        lines.append(f"  - directory: /srv/bench/d{d:04d}")
    for i in range(n):
        lines.append(f"  - file: /srv/bench/d{i % dirs:04d}/f{i:05d}.conf")
        lines.append(f'    content: "file {i} of the benchmark, value {i * 7919 % 104729}\\n"')
        lines.append('    mode: "0644"')
    lines.append("  - exec: bench-marker")
    lines.append('    command: "touch $RECONCILER_ROOT/srv/bench/.marker"')
    lines.append("    creates: /srv/bench/.marker")
    (repo / "profiles" / "bench.yaml").write_text("\n".join(lines) + "\n")


def git(repo: Path, *args: str) -> str:
    """git with a fixed identity and no configuration but the repository's own."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}  # fmt: skip
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def generate_git_repo(repo: Path, n: int, message: str) -> None:
    """generate_repo, committed on a branch ``production`` (what the daemon benchmarks poll)."""
    generate_repo(repo, n)
    git(repo, "init", "-q", "-b", "production")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


def timed(argv: list[str]) -> tuple[float, float, int]:
    """Run a command; return (seconds, peak RSS in MB, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 2):
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(argv)} exited {code}:\n{err}")
    return elapsed, usage.ru_maxrss / 1024, code


def damage(root: Path, n: int, rng: random.Random) -> None:
    files = sorted((root / "srv" / "bench").rglob("*.conf"))
    for path in rng.sample(files, n // 10):
        path.write_text(path.read_text().upper())
    for path in rng.sample(files, n // 20):
        path.chmod(0o600)


def bench(n: int, repeat: int, work: Path) -> list[tuple[str, float, float]]:
    repo = work / f"repo-{n}"
    generate_repo(repo, n)
    exe = [sys.executable, "-m", "reconciler.cli", "apply", "--repo", str(repo), "--node", "bench"]
    results: dict[str, list[tuple[float, float]]] = {
        "first apply": [],
        "no change": [],
        "repair": [],
    }
    rng = random.Random(n)
    for i in range(repeat):
        # A fresh root per run, none deleted until the end: ext4 does not reuse an inode freed
        # in the last minutes, and scans past every such inode for each file it creates
        # (recently_deleted in its allocator), which made a first apply right after deleting
        # the previous run's 10000 files cost several times what it costs on a real node.
        root, state = work / f"root-{n}-{i}", work / f"state-{n}-{i}"
        (root / "srv").mkdir(parents=True)
        argv = [*exe, "--root", str(root), "--state-dir", str(state)]
        seconds, rss, code = timed(argv)
        assert code == 2, "the first apply must change things"
        results["first apply"].append((seconds, rss))
        seconds, rss, code = timed(argv)
        assert code == 0, "a second apply must find nothing to change"
        results["no change"].append((seconds, rss))
        damage(root, n, rng)
        seconds, rss, code = timed(argv)
        assert code == 2, "the repair must change things"
        results["repair"].append((seconds, rss))
    return [
        (name, statistics.median(s for s, _ in runs), max(r for _, r in runs))
        for name, runs in results.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--daemon-window", type=float, default=90.0,
        help="seconds the daemon's warm check is watched for (0: skip it)",
    )  # fmt: skip
    args = parser.parse_args()
    print(f"reconciler one-shot CLI, median of {args.repeat} runs, {os.cpu_count()} cores")
    print(f"{'N':>6}  {'scenario':<17} {'seconds':>8} {'peak RSS MB':>12}")
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        for n in args.sizes:
            for name, seconds, rss in bench(n, args.repeat, Path(tmp)):
                print(f"{n:>6}  {name:<17} {seconds:>8.2f} {rss:>12.0f}", flush=True)
            if args.daemon_window > 0:
                from daemon import warm_check

                base = Path(tmp) / f"daemon-{n}"
                base.mkdir()
                seconds, cpu, runs = warm_check(base, n, args.daemon_window)
                print(
                    f"{n:>6}  {'daemon warm check':<17} {seconds:>8.2f} {'':>12}"
                    f"  {cpu:.1f}% of one core at a 30 s interval ({runs} checks)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
