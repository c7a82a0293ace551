"""Managed files are compared and backed up a chunk at a time, and a file past
``reconcile.max_file_size`` fails alone with a clear error: a local user who grows a managed file
to 3 GB cannot make the agent run out of memory, nor keep the other resources from converging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CLI, write_tree

GIB = 1024**3
MIB = 1024**2

REPO = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": """
        resources:
          - file: /var/lib/app/data
            content: "small\\n"
          - file: /etc/motd
            content: "welcome\\n"
        """,
}

# Runs the CLI as a child under an address-space limit (the unit's MemoryMax, roughly), and
# prints the child's peak RSS in KiB.
_RUN = """
import resource, subprocess, sys
def limit():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=limit)
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(done.returncode)
"""


def apply(cli: CLI, config: Path, repo: Path) -> tuple[int, dict[str, object], str, int]:
    """``reconciler apply`` as a user runs it; its exit code, JSON report, stderr and peak RSS."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN, sys.executable, "-m", "reconciler.cli", "apply",
         "--config", str(config), "--repo", str(repo), "--format", "json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    *errors, peak = done.stderr.splitlines()
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, "\n".join(errors), int(peak) * 1024


def setup(cli: CLI, tmp_path: Path, size: int, extra: str = "") -> tuple[Path, Path, Path]:
    repo = write_tree(tmp_path / "repo", REPO)
    big = cli.root / "var/lib/app/data"
    big.parent.mkdir(parents=True, exist_ok=True)
    with open(big, "wb") as f:
        f.write(b"owned by a local user\n")
    os.truncate(big, size)  # sparse: costs no disk
    config = tmp_path / "config.yaml"
    config.write_text(
        f"node: n1\nroot: {cli.root}\nstate_dir: {cli.state}\nfacts_dirs: []\n"
        f"reconcile:\n  mode: enforce\n{extra}"
    )
    return repo, big, config


def results(report: dict[str, object]) -> dict[str, dict[str, object]]:
    resources = report["resources"]
    assert isinstance(resources, list)
    return {r["id"]: r for r in resources}


def test_a_3_gb_managed_file_fails_alone_in_bounded_memory(cli: CLI, tmp_path: Path) -> None:
    repo, big, config = setup(cli, tmp_path, 3 * GIB)
    code, report, errors, peak = apply(cli, config, repo)
    assert code == 6, errors  # changes and a failure
    by_id = results(report)
    failed = by_id["file:/var/lib/app/data"]
    assert failed["status"] == "failed"
    error = str(failed["error"])
    assert "/var/lib/app/data" in error and str(3 * GIB) in error and str(64 * MIB) in error
    assert "max_file_size" in error
    assert by_id["file:/etc/motd"]["status"] == "changed"
    assert (cli.root / "etc/motd").read_text() == "welcome\n"
    assert big.stat().st_size == 3 * GIB  # neither read nor replaced
    assert not list((cli.state / "backups").rglob("objects/*/*"))
    assert peak < 200 * MIB, peak >> 20
    assert "Traceback" not in errors


def test_a_big_file_under_the_limit_is_replaced_and_backed_up_by_streaming(
    cli: CLI, tmp_path: Path
) -> None:
    """``reconcile.max_file_size: 256MiB``: a 160 MiB file (more than the default allows) is
    compared, backed up whole and replaced, and the agent's memory does not grow with it."""
    repo, big, config = setup(cli, tmp_path, 160 * MIB, "  max_file_size: 256MiB\n")
    code, report, errors, peak = apply(cli, config, repo)
    assert code == 2, errors  # changes were made
    assert results(report)["file:/var/lib/app/data"]["status"] == "changed"
    assert big.read_text() == "small\n"
    entry = json.loads((cli.state / "backups/index.jsonl").read_text().splitlines()[-1])
    assert entry["path"] == "/var/lib/app/data"
    stored = cli.state / "backups/objects" / entry["sha256"][:2] / entry["sha256"]
    assert stored.stat().st_size == 160 * MIB
    with open(stored, "rb") as f:
        assert f.read(22) == b"owned by a local user\n"
    assert peak < 120 * MIB, peak >> 20


def test_a_lower_limit_is_obeyed(cli: CLI, tmp_path: Path) -> None:
    repo, big, config = setup(cli, tmp_path, 4096, "  max_file_size: 1KiB\n")
    code, report, errors, _ = apply(cli, config, repo)
    assert code == 6, errors
    failed = results(report)["file:/var/lib/app/data"]
    assert failed["status"] == "failed"
    assert "4096 bytes, more than the limit of 1024 bytes" in str(failed["error"])
    assert big.stat().st_size == 4096


def test_a_backup_copy_left_by_a_killed_run_is_removed(cli: CLI, tmp_path: Path) -> None:
    """A backup is copied in under a temporary name and renamed to its digest; what a killed
    run left half copied is removed by the next run."""
    repo, _, config = setup(cli, tmp_path, 4096)
    objects = cli.state / "backups/objects"
    objects.mkdir(parents=True)
    stray = objects / ".incoming.reconciler-tmp-999999999-0"
    stray.write_bytes(b"half a copy")
    code, _, errors, _ = apply(cli, config, repo)
    assert code == 2, errors
    assert not stray.exists()
    assert [p.name for p in objects.iterdir() if p.is_file()] == []


def test_a_3_gb_file_a_line_edits_fails_alone(cli: CLI, tmp_path: Path) -> None:
    repo = write_tree(
        tmp_path / "repo",
        {
            **REPO,
            "profiles/app.yaml": """
                resources:
                  - line: "key=value"
                    path: /etc/big.conf
                  - file: /etc/motd
                    content: "welcome\\n"
                """,
        },
    )
    big = cli.root / "etc/big.conf"
    big.write_bytes(b"other=1\n")
    os.truncate(big, 3 * GIB)
    config = tmp_path / "config.yaml"
    config.write_text(f"node: n1\nroot: {cli.root}\nstate_dir: {cli.state}\nfacts_dirs: []\n")
    code, report, errors, peak = apply(cli, config, repo)
    assert code == 6, errors
    failed = [r for r in results(report).values() if r["status"] == "failed"]
    assert len(failed) == 1 and str(3 * GIB) in str(failed[0]["error"]), failed
    assert "/etc/big.conf" in str(failed[0]["error"])
    assert (cli.root / "etc/motd").read_text() == "welcome\n"
    assert peak < 200 * MIB, peak >> 20
