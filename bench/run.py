"""Benchmark the one-shot CLI on a generated catalog of N files, as whole processes.

Scenarios, each timed as a complete ``reconciler apply`` process:
  first apply  - on an empty root
  no change    - everything already in sync
  repair       - after 10% of the files had their content changed and 5% their mode
and, unless --daemon-window 0, the daemon's warm check (bench/daemon.py ``warm_check``):
  daemon warm check - a running daemon, nothing drifted, a drift check every 30 s: the median
                      duration of one check (from its run reports; it compiles nothing) and
                      the daemon's CPU over the window as % of one core

Usage: python bench/run.py [--sizes 1000 10000] [--repeat 5] [--git] [--cfengine]
                          [--baseline DIR] [--profile] [--daemon-window 90]
Prints a table of the median wall time, CPU time and peak RSS of each scenario and column.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def file_path(i: int, n: int) -> str:
    """The i-th file of N, relative to /srv/bench."""
    return f"d{i % max(1, n // 50):04d}/f{i:05d}.conf"


def file_content(i: int) -> str:
    return f"file {i} of the benchmark, value {i * 7919 % 104729}\n"


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
        lines.append(f"  - file: /srv/bench/{file_path(i, n)}")
        lines.append(f'    content: "{file_content(i).rstrip()}\\n"')
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


def timed_cpu(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, float, float, int]:
    """Run a command; return (seconds, CPU seconds, peak RSS in MB, exit code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 2):
        err = proc.stderr.read().decode() if proc.stderr else ""
        raise SystemExit(f"{' '.join(argv)} exited {code}:\n{err}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, code


def damage(root: Path, n: int, rng: random.Random) -> None:
    files = sorted((root / "srv" / "bench").rglob("*.conf"))
    for path in rng.sample(files, n // 10):
        path.write_text(path.read_text().upper())
    for path in rng.sample(files, n // 20):
        path.chmod(0o600)


def verify(root: Path, n: int) -> None:
    """Every file has its content and mode 0644, and the guarded command ran."""
    base = root / "srv" / "bench"
    for i in range(n):
        path = base / file_path(i, n)
        if path.stat().st_mode & 0o7777 != 0o644 or path.read_text() != file_content(i):
            raise SystemExit(f"{path}: not as the workload wants it")
    if not (base / ".marker").exists():
        raise SystemExit(f"{base / '.marker'}: the guarded command did not run")


SCENARIOS = ("first apply", "no change", "repair")


# The checkout this bench belongs to: the one the reconciler column runs.
CHECKOUT = str(Path(__file__).resolve().parents[1])


class Column:
    """One tool run on the workload, as whole processes: each run gets a fresh root. Runs
    start in the scratch directory, so that ``python -m`` finds reconciler only where
    ``PYTHONPATH`` says."""

    name = "reconciler"
    checkout = CHECKOUT
    # Exit codes a run must end with: the first apply and the repair change things.
    codes = {"first apply": 2, "no change": 0, "repair": 2}

    def __init__(self, work: Path, n: int) -> None:
        self.work, self.n = work, n
        self.repo = work / f"repo-{n}"
        if not self.repo.exists():
            generate_repo(self.repo, n)

    def argv(self, root: Path, state: Path) -> list[str]:
        return [sys.executable, "-m", "reconciler.cli", "apply", "--repo", str(self.repo),
                "--node", "bench", "--root", str(root), "--state-dir", str(state)]  # fmt: skip

    def env(self, state: Path) -> dict[str, str] | None:
        return {**os.environ, "PYTHONPATH": self.checkout}


class GitColumn(Column):
    """The same repo as a git repository: ``--ref`` reads the commit from git objects."""

    name = "reconciler git"

    def __init__(self, work: Path, n: int) -> None:
        self.work, self.n = work, n
        self.repo = work / f"git-{n}"
        if not self.repo.exists():
            generate_git_repo(self.repo, n, "bench")

    def argv(self, root: Path, state: Path) -> list[str]:
        return [*super().argv(root, state), "--ref", "production"]


def cfengine_policy(root: Path, src: Path, n: int) -> str:
    """CFEngine's policy for the same workload: each file copied from a staged source and
    compared by digest (CFEngine's way to promise a content), mode 0644; the directories;
    the command, guarded by the marker it creates."""
    base = root / "srv" / "bench"
    out = [
        'body common control\n{\n  bundlesequence => { "bench" };\n}\n',
        'body copy_from digest_of(from)\n{\n  source => "$(from)";\n  compare => "digest";\n}\n',
        'body perms m(mode)\n{\n  mode => "$(mode)";\n  rxdirs => "false";\n}\n',
        'body contain in_shell\n{\n  useshell => "true";\n}\n',
        "bundle agent bench\n{\n  classes:",
        f'    "have_marker" expression => fileexists("{base}/.marker");',
        "  files:",
        f'    "{base}/." create => "true", perms => m("755");',
    ]
    for d in range(max(1, n // 50)):
        out.append(f'    "{base}/d{d:04d}/." create => "true", perms => m("755");')
    for i in range(n):
        rel = file_path(i, n)
        out.append(f'    "{base}/{rel}" copy_from => digest_of("{src}/{rel}"), perms => m("644");')
    out += [
        "  commands:",
        "    !have_marker::",
        f'      "touch {base}/.marker" contain => in_shell;',
    ]
    return "\n".join(out) + "\n}\n"


class BaselineColumn(Column):
    """The directory repo applied by reconciler from another checkout (``--baseline DIR``):
    before and after a change, measured in the same rounds."""

    name = "baseline"
    checkout = ""


class CFEngineColumn(Column):
    """``cf-agent -K`` on the same files, its work directory under the bench's scratch."""

    name = "cfengine"
    codes = {"first apply": 0, "no change": 0, "repair": 0}

    def __init__(self, work: Path, n: int) -> None:
        self.work, self.n = work, n
        agent = shutil.which("cf-agent")
        if agent is None:
            raise SystemExit("--cfengine needs cf-agent (apt-get install cfengine3)")
        self.agent = agent
        self.src = work / f"cf-src-{n}"
        if not self.src.exists():
            for i in range(n):
                path = self.src / file_path(i, n)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(file_content(i))

    def argv(self, root: Path, state: Path) -> list[str]:
        policy = state / "policy.cf"
        if not policy.exists():
            state.mkdir(parents=True)
            policy.write_text(cfengine_policy(root, self.src, self.n))
            # cf-agent wants its keys and, for validating a policy, cf-promises in workdir/bin.
            promises = shutil.which("cf-promises")
            if promises:
                (state / "bin").symlink_to(Path(os.path.realpath(promises)).parent)
            subprocess.run(["cf-key"], env=self.env(state), check=True, capture_output=True)
        return [self.agent, "-K", "-f", str(policy)]

    def env(self, state: Path) -> dict[str, str] | None:
        return {**os.environ, "CFENGINE_TEST_OVERRIDE_WORKDIR": str(state)}


def bench(
    n: int, repeat: int, work: Path, kinds: list[type[Column]]
) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Median seconds, median CPU seconds and peak RSS, by (column, scenario); the columns
    take turns in each round, so that every one sees the machine as it was then."""
    columns = [kind(work, n) for kind in kinds]
    runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for i in range(repeat):
        for column in columns:
            # A fresh root per run, none deleted until the end: ext4 does not reuse an inode
            # freed in the last minutes, and scans past every such inode for each file it
            # creates (recently_deleted in its allocator), which made a first apply right
            # after deleting the previous run's 10000 files cost several times what it costs
            # on a real node.
            label = column.name.replace(" ", "-")
            root, state = work / f"root-{label}-{n}-{i}", work / f"state-{label}-{n}-{i}"
            (root / "srv").mkdir(parents=True)
            rng = random.Random(n * 1000 + i)  # every column repairs the same damage
            for scenario in SCENARIOS:
                if scenario == "repair":
                    damage(root, n, rng)
                argv = column.argv(root, state)
                seconds, cpu, rss, code = timed_cpu(argv, column.env(state), work)
                if code != column.codes[scenario]:
                    raise SystemExit(f"{column.name}, {scenario}: exit code {code}")
                runs.setdefault((column.name, scenario), []).append((seconds, cpu, rss))
                if scenario != "no change":
                    verify(root, n)
    return {
        key: (
            statistics.median(s for s, _, _ in got),
            statistics.median(c for _, c, _ in got),
            max(r for _, _, r in got),
        )
        for key, got in runs.items()
    }


def profile(n: int, work: Path) -> None:
    """Where the time of a no-change run and of a repair goes, phase by phase (cProfile)."""
    column = Column(work, n)
    root, state = work / f"root-profile-{n}", work / f"state-profile-{n}"
    (root / "srv").mkdir(parents=True)
    argv = column.argv(root, state)
    timed_cpu(argv, column.env(state), work)
    script = Path(__file__).with_name("profile_phases.py")
    for scenario in ("no change", "repair"):
        if scenario == "repair":
            damage(root, n, random.Random(n))
        print(f"\n### profile, N={n}, {scenario}, {column.name}", flush=True)
        command = [sys.executable, str(script), "--", *argv[3:]]
        subprocess.run(command, check=True, env=column.env(state), cwd=work)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--git", action="store_true", help="also from a git repository")
    parser.add_argument("--cfengine", action="store_true", help="also CFEngine's cf-agent")
    parser.add_argument("--profile", action="store_true", help="then profile each size")
    parser.add_argument("--baseline", metavar="DIR", help="also reconciler from this checkout")
    parser.add_argument(
        "--daemon-window", type=float, default=90.0,
        help="seconds the daemon's warm check is watched for (0: skip it)",
    )  # fmt: skip
    args = parser.parse_args()
    kinds: list[type[Column]] = [Column]
    if args.baseline:
        BaselineColumn.checkout = os.path.abspath(args.baseline)
        kinds.insert(0, BaselineColumn)
    if args.git:
        kinds.append(GitColumn)
    if args.cfengine:
        kinds.append(CFEngineColumn)
    names = [kind.name for kind in kinds]
    print(f"one-shot runs as whole processes, median of {args.repeat}, {os.cpu_count()} cores;")
    print(
        "wall seconds (CPU seconds, user + system) / peak RSS in MB"
        + (", and reconciler's time as a share of CFEngine's" if args.cfengine else "")
    )
    header = f"{'N':>6}  {'scenario':<12}" + "".join(f" {name:>24}" for name in names)
    print(header + (f" {'ratio':>6}" if args.cfengine else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        for n in args.sizes:
            figures = bench(n, args.repeat, Path(tmp), kinds)
            for scenario in SCENARIOS:
                row = f"{n:>6}  {scenario:<12}"
                for name in names:
                    seconds, cpu, rss = figures[name, scenario]
                    row += f" {seconds:>6.2f} s ({cpu:.2f}) {rss:>4.0f} MB"
                if args.cfengine:
                    ratio = figures["reconciler", scenario][0] / figures["cfengine", scenario][0]
                    row += f" {ratio:>6.2f}"
                print(row, flush=True)
            if args.daemon_window > 0:
                from daemon import warm_check

                base = Path(tmp) / f"daemon-{n}"
                base.mkdir()
                seconds, cpu, runs = warm_check(base, n, args.daemon_window)
                print(
                    f"{n:>6}  {'daemon warm check':<17} {seconds:>6.2f} s"
                    f"  {cpu:.1f}% of one core at a 30 s interval ({runs} checks)",
                    flush=True,
                )
        if args.profile:
            for n in args.sizes:
                profile(n, Path(tmp))


if __name__ == "__main__":
    main()
