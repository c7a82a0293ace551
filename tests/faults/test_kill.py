"""SIGKILL in the middle of `reconciler apply`: never a half-written file.

A control repo declares a few hundred files whose content alternates between two versions. The
real CLI is started as a subprocess and killed with SIGKILL after a seeded random delay, again
and again, each run starting from whatever the previous kill left, so that the kills land on
replacements; every fourth run also finds a quarter of the files deleted, so that they land on
creations too. After every kill each managed file must be absent or exactly one of the two
versions with its mode, never a prefix or a mix. A last run to completion must converge
everything and clean up the temporaries the kills left, and a plan after it must find nothing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from reconciler.fs import TMP_MARK
from tests.conftest import seed_root, write_tree

FILES = 240
DIRS = 8
SIZE = 12 * 1024  # big enough that a torn write would show as a prefix
KILLS = 20
SEED = 20261125


def content(version: str, i: int) -> str:
    """A file's content in one version: distinct per file and per version, same length."""
    unit = f"{version}:{i:04d}:" + "0123456789abcdef"[i % 16] * 9 + "\n"
    return (unit * (SIZE // len(unit) + 1))[:SIZE]


def rel(i: int) -> str:
    return f"srv/fleet/d{i % DIRS}/f{i:04d}.conf"


MANAGED = {rel(i) for i in range(FILES)}


def write_repo(repo: Path, version: str) -> None:
    lines = ["resources:", "  - directory: /srv/fleet"]
    lines += [f"  - directory: /srv/fleet/d{d}" for d in range(DIRS)]
    for i in range(FILES):
        lines.append(f"  - file: /{rel(i)}")
        lines.append(f"    content: {json.dumps(content(version, i))}")
        lines.append('    mode: "0640"')
    write_tree(
        repo,
        {
            "nodes.yaml": "default: fleet\n",
            "roles/fleet.yaml": "profiles: [fleet]\n",
            "profiles/fleet.yaml": "\n".join(lines) + "\n",
        },
    )


def command(verb: str, repo: Path, root: Path, state: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "reconciler.cli",
        verb,
        "--repo",
        str(repo),
        "--root",
        str(root),
        "--state-dir",
        str(state),
        "--node",
        "n1",
        *extra,
    ]


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def leftovers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if TMP_MARK in p.name)


def check_no_torn_file(root: Path, kill: int) -> dict[str, int]:
    """Every managed file is absent, all of A or all of B; count which."""
    seen = {"absent": 0, "A": 0, "B": 0}
    for i in range(FILES):
        path = root / rel(i)
        try:
            data = path.read_text()
        except FileNotFoundError:
            seen["absent"] += 1
            continue
        assert path.stat().st_mode & 0o7777 == 0o640, f"after kill {kill}: mode of {path}"
        if data == content("A", i):
            seen["A"] += 1
        elif data == content("B", i):
            seen["B"] += 1
        else:
            raise AssertionError(
                f"after kill {kill}: {path} is neither version "
                f"({len(data)} bytes, starts {data[:20]!r})"
            )
    # Anything else in the tree is a temporary of the atomic write, and never readable by
    # others: it got its final mode before its first byte.
    for path in (root / "srv/fleet").rglob("*"):
        if not path.is_file():
            continue
        if TMP_MARK in path.name:
            assert path.stat().st_mode & 0o007 == 0, f"after kill {kill}: {path} is world-readable"
        else:
            assert path.relative_to(root).as_posix() in MANAGED, f"unexpected file {path}"
    return seen


def holds_lock(lock: Path, pid: int) -> bool:
    try:
        return lock.read_text().strip() == str(pid)
    except FileNotFoundError:
        return False


def calibrate(base: Path) -> tuple[float, float]:
    """Wall time of a whole replacement run, and how long its apply phase took, on a scratch root.

    The kill delays are drawn over the apply phase so that they land on writes and renames on a
    fast machine and a slow one alike.
    """
    repo, root, state = base / "calib-repo", seed_root(base / "calib-root"), base / "calib-state"
    write_repo(repo, "A")
    assert run(command("apply", repo, root, state)).returncode == 2
    write_repo(repo, "B")
    started = time.monotonic()
    done = run(command("apply", repo, root, state, "--format", "json"))
    wall = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    report = json.loads(done.stdout)
    return wall, float(report["phases"]["apply"])


def test_sigkill_at_random_points_never_leaves_a_partial_file(tmp_path: Path) -> None:
    wall, apply_phase = calibrate(tmp_path)
    rng = random.Random(SEED)
    repo = tmp_path / "repo"
    root = seed_root(tmp_path / "root")
    state = tmp_path / "state"
    lock = state / "run.lock"

    interrupted = 0
    replacements = 0  # kills of a run that was replacing files of the other version
    torn_temporaries = 0
    counts: list[dict[str, int]] = []
    for kill in range(KILLS):
        version = "AB"[kill % 2]
        other = "BA"[kill % 2]
        replacing = bool(counts) and counts[-1][other] > 0
        if kill % 4 == 3:  # some files go missing, so that later kills land on creations too
            for i in rng.sample(range(FILES), FILES // 4):
                (root / rel(i)).unlink(missing_ok=True)
        write_repo(repo, version)
        proc = subprocess.Popen(
            command("apply", repo, root, state),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The delay counts from the moment the run takes its lock (its pid in run.lock), just
        # before it starts checking and writing: the kills land in the apply phase, at random
        # points of it, however long the interpreter took to start.
        while proc.poll() is None and not holds_lock(lock, proc.pid):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, apply_phase * 1.2))
        if proc.poll() is None:
            interrupted += 1
            replacements += replacing
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=300)
        if leftovers(root):
            torn_temporaries += 1
        counts.append(check_no_torn_file(root, kill))

    # The premise of the test: kills hit live runs (not all: the delays are random), among
    # them runs that were replacing existing files, not only creating them.
    assert interrupted >= KILLS // 4, (interrupted, wall, apply_phase)
    assert replacements >= 1, counts

    # A run to completion converges on the last version and cleans up what the kills left.
    final = "AB"[KILLS % 2]
    write_repo(repo, final)
    done = run(command("apply", repo, root, state, "--format", "json"))
    assert done.returncode in (0, 2), (done.returncode, done.stderr)
    report = json.loads(done.stdout)
    assert report["summary"]["failed"] == 0, report["summary"]
    for i in range(FILES):
        path = root / rel(i)
        assert path.read_text() == content(final, i), path
        assert path.stat().st_mode & 0o7777 == 0o640, path
    assert leftovers(root) == []
    assert [p for p in state.rglob("*") if ".tmp-" in p.name or TMP_MARK in p.name] == []
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert files == MANAGED

    plan = run(command("plan", repo, root, state))
    assert plan.returncode == 0, (plan.stdout, plan.stderr)
    assert plan.stdout.startswith("No changes."), plan.stdout
    print(
        f"\n{KILLS} kills, {interrupted} of a live run ({replacements} replacing), "
        f"{torn_temporaries} left temporaries; "
        f"run {wall:.2f}s, apply phase {apply_phase:.2f}s; on disk after each kill: "
        + " ".join(f"{c['absent']}/{c['A']}/{c['B']}" for c in counts)
    )


def dead_pid() -> int:
    """The pid of a process that has exited, as a killed run's is."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_temporaries_a_killed_run_left_in_the_state_dir_are_removed(tmp_path: Path) -> None:
    """A run killed while writing its report, inventory, parse cache or a backup leaves a
    temporary in the state directory (seen with the kills above: a torn report of a few MB, a
    backup object). Nothing else ever removes them, so the next run must; a temporary of a
    live process (a daemon writing beside this run) is left alone."""
    repo, root, state = tmp_path / "repo", seed_root(tmp_path / "root"), tmp_path / "state"
    write_repo(repo, "A")
    assert run(command("apply", repo, root, state)).returncode == 2
    write_repo(repo, "B")
    assert run(command("apply", repo, root, state)).returncode == 2  # backups exist now
    dead = dead_pid()
    objects = next(p for p in (state / "backups/objects").iterdir() if p.is_dir())
    left = [
        state / f".inventory.json.tmp-{dead}",
        state / "reports" / f".20260101T000000Z-0123456789ab.json.tmp-{dead}",
        objects / f".{'ab' * 32}{TMP_MARK}{dead}-17",
        state / "cache" / "yaml" / f"{'cd' * 32}.tmp-{dead}",
    ]
    live = state / f".daemon.json.tmp-{os.getpid()}"
    for path in [*left, live]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"torn": ')

    write_repo(repo, "A")
    done = run(command("apply", repo, root, state))
    assert done.returncode == 2, done.stderr
    assert [p for p in left if p.exists()] == []
    assert live.exists()
