"""Benchmark the daemon: idle footprint, and how fast pushes, webhooks and tampering take effect.

Usage: python bench/daemon.py [--files 1000] [--idle 60] [--repeat 5] [--poll 5]

Runs the real daemon on a generated control repo of N files (a local git repository as the
source, a private root), then measures:
  idle RSS and CPU      over --idle seconds with nothing changing (polls still run)
  tamper -> healed      a managed file overwritten; until the watcher restored it
  webhook -> applied    a commit and a signed webhook; until the file on disk changed
  poll -> applied       a commit and no webhook; until the file on disk changed
  poll, nothing new     the cost of one poll that finds the head unchanged (one ls-remote)

``warm_check`` (bench/run.py's "daemon warm check" row) runs the daemon with nothing drifting
and a drift check every --interval seconds, and reports the median duration of those checks
(from the daemon's own run reports) and the daemon's CPU over the whole window (checks, polls
and idle time) as % of one core.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import generate_git_repo, git

SECRET = b"bench-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(predicate, timeout: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise SystemExit("timed out")
        time.sleep(0.002)
    return time.perf_counter() - start


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return bytes(r.read())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime, and those of waited-for children (git ls-remote, commands)
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_daemon(
    base: Path, files: int, poll: float, interval: float
) -> tuple[subprocess.Popen[bytes], int, Path, float]:
    """The daemon on a generated repo of ``files`` files under ``base`` (``base/repo``,
    ``base/root``), once it is ready; its process, HTTP port, state directory and the seconds
    from its start to its first revision applied."""
    repo = base / "repo"
    if not repo.exists():
        generate_git_repo(repo, files, "bench")
    root, state = base / "root", base / "state"
    (root / "srv").mkdir(parents=True)
    (base / "secret").write_bytes(SECRET)
    port = free_port()
    config = base / "config.yaml"
    config.write_text(
        f"node: bench\nroot: {root}\nstate_dir: {state}\nfacts_dirs: []\n"
        f"source: {{url: {repo}, branch: production, poll_interval: {poll}s}}\n"
        f"reconcile: {{interval: {interval}s, splay: 0s, watch: true}}\n"
        f"listen: 127.0.0.1:{port}\nwebhook: {{secret_file: {base / 'secret'}}}\n"
        "log: {format: json, level: warning}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "daemon", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    def ready() -> bool:
        try:
            return get(port, "/readyz") == b"ready\n"
        except OSError:
            return False

    try:
        first = until(ready, 300)
    except BaseException:
        proc.kill()
        raise
    return proc, port, state, first


def warm_check(
    base: Path, files: int, window: float = 90.0, interval: float = 30.0
) -> tuple[float, float, int]:
    """The daemon at ``files`` files, nothing drifting, a check every ``interval`` seconds (and
    a poll every 60 s): (median seconds of a check that compiled nothing, CPU % of one core
    over ``window`` seconds, how many such checks ran)."""
    proc, _, state, _ = start_daemon(base, files, 60.0, interval)
    try:
        time.sleep(2)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(window)
        cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    durations = []
    for path in sorted((state / "reports").glob("*.json")):
        report = json.loads(path.read_text())
        changed = report["summary"].get("changed", 0) + report["summary"].get("failed", 0)
        if report.get("compiled", False) is False and not changed:
            durations.append(report["duration_seconds"])
            if os.environ.get("BENCH_VERBOSE"):
                print("   check", report["duration_seconds"], report["phases"], file=sys.stderr)
    if not durations:
        raise SystemExit("no warm check ran in the window")
    return statistics.median(durations), cpu, len(durations)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--poll", type=float, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-daemon-") as tmp:
        base = Path(tmp)
        repo, root = base / "repo", base / "root"
        proc, port, _, first = start_daemon(base, args.files, args.poll, 3600.0)
        try:
            print(
                f"daemon, {args.files}-file catalog, poll every {args.poll:g}s, {os.cpu_count()} cores"
            )
            print(f"  start to first revision applied   {first:8.2f} s")
            time.sleep(2)
            cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
            peak = 0.0
            while time.monotonic() - t0 < args.idle:
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(1)
            cpu = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0) * 100
            print(f"  idle RSS (peak over {args.idle:g} s)        {peak:8.1f} MB")
            print(f"  idle CPU                          {cpu:8.2f} % of one core")

            target = root / "srv/bench/d0000/f00000.conf"
            good = target.read_bytes()
            heals = []
            for _ in range(args.repeat):
                target.write_text("tampered\n")
                heals.append(until(lambda: target.read_bytes() == good))
                time.sleep(0.5)
            print(f"  tamper -> healed (median)         {statistics.median(heals) * 1000:8.0f} ms")

            profile = repo / "profiles/bench.yaml"
            text = profile.read_text()

            def commit(i: int) -> bytes:
                new = text.replace("file 0 of the benchmark", f"file 0 of the benchmark, v{i}")
                profile.write_text(new)
                git(repo, "commit", "-qam", f"v{i}")
                return f"file 0 of the benchmark, v{i}".encode()

            hooks = []
            for i in range(args.repeat):
                want = commit(i)
                body = b"{}"
                sig = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
                start = time.perf_counter()
                req = urllib.request.Request(f"http://127.0.0.1:{port}/webhook", data=body, method="POST",
                                             headers={"X-Hub-Signature-256": sig, "X-GitHub-Delivery": f"d{i}"})  # fmt: skip
                urllib.request.urlopen(req, timeout=5).read()
                until(lambda want=want: want in target.read_bytes())
                hooks.append(time.perf_counter() - start)
                time.sleep(0.3)
            print(f"  webhook -> applied (median)       {statistics.median(hooks) * 1000:8.0f} ms")

            polls = []
            for i in range(args.repeat):
                want = commit(100 + i)
                polls.append(until(lambda want=want: want in target.read_bytes(), args.poll * 3))
            print(
                f"  poll -> applied (median, max)     {statistics.median(polls):8.2f} s, {max(polls):.2f} s"
                f"  (poll interval {args.poll:g} s)"
            )

            env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
            costs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                subprocess.run(["git", "ls-remote", "--", str(repo), "refs/heads/production"],
                               env=env, check=True, capture_output=True)  # fmt: skip
                costs.append(time.perf_counter() - start)
            print(
                f"  poll, nothing new (one ls-remote) {statistics.median(costs) * 1000:8.0f} ms, no compile"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


if __name__ == "__main__":
    main()
