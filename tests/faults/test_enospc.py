"""A full disk under `reconciler apply`.

The managed root is a real 1 MiB tmpfs mounted for the test (the tests run as root), so ENOSPC
comes from the kernel in the middle of writing a temporary file, and the CLI runs as a
subprocess. Where mounting is not possible (no CAP_SYS_ADMIN, or RECONCILER_TEST_NO_MOUNT set),
the same scenarios run the CLI in-process with an OSError(ENOSPC) injected into os.write for
files under the root once they would pass 1 MiB: the engine sees the same error, at the same
place.

What must hold: the file whose new content does not fit keeps its previous content; only that
resource fails (its dependents are skipped, everything else converges); apply exits with the
failure exit code (4 failures only, 6 changes and failures) and says which resource failed
and why; no temporary file is left behind; once there is room again, a run converges.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler import fs as _fs
from reconciler.fs import TMP_MARK
from tests.conftest import write_tree

CAPACITY = 1 << 20  # the tmpfs size (size=1m)


@dataclass
class Disk:
    root: Path
    state: Path
    mounted: bool
    capsys: pytest.CaptureFixture[str]

    def apply(self, repo: Path, *extra: str) -> tuple[int, str, str]:
        argv = [
            "apply",
            "--repo",
            str(repo),
            "--root",
            str(self.root),
            "--state-dir",
            str(self.state),
            "--node",
            "n1",
            *extra,
        ]
        if self.mounted:
            done = subprocess.run(
                [sys.executable, "-m", "reconciler.cli", *argv],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "NO_COLOR": "1"},
            )
            return done.returncode, done.stdout, done.stderr
        self.capsys.readouterr()
        code = cli.main(argv)
        out, err = self.capsys.readouterr()
        return code, out, err

    def temporaries(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if TMP_MARK in p.name]


def _used(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file())


@pytest.fixture
def disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Disk]:
    root = tmp_path / "root"
    root.mkdir()
    mounted = False
    if not os.environ.get("RECONCILER_TEST_NO_MOUNT"):
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(root)],
            capture_output=True,
        )
        mounted = done.returncode == 0
    if not mounted:
        real_write = os.write
        prefix = str(root) + "/"

        def write(fd: int, data: Any) -> int:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.startswith(prefix) and _used(root) + len(data) > CAPACITY:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(_fs.os, "write", write)
    (root / "srv").mkdir()
    try:
        yield Disk(root, tmp_path / "state", mounted, capsys)
    finally:
        unmounted = mounted and subprocess.run(["umount", str(root)]).returncode == 0
        if mounted and not unmounted:
            subprocess.run(["umount", "-l", str(root)], check=True)


def repo_with(base: Path, resources: str, files: dict[str, bytes] | None = None) -> Path:
    repo = base / "repo"
    write_tree(
        repo,
        {
            "nodes.yaml": "default: app\n",
            "roles/app.yaml": "profiles: [app]\n",
            "profiles/app.yaml": "resources:\n" + resources,
            **{f"files/{name}": data for name, data in (files or {}).items()},
        },
    )
    return repo


APP = """
  - directory: /srv/app
  - file: /srv/app/big.dat
    source: big.dat
  - file: /srv/app/needs-big.conf
    content: "uses big.dat\\n"
    require: file:/srv/app/big.dat
  - file: /srv/app/a.conf
    content: "a = {version}\\n"
  - file: /srv/app/b.conf
    content: "b = {version}\\n"
  - file: /srv/app/{version}.conf
    content: "new in {version}\\n"
"""


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in report["resources"]}


def test_a_file_too_big_for_the_disk_fails_alone_and_keeps_its_old_content(
    disk: Disk, tmp_path: Path
) -> None:
    repo = repo_with(tmp_path, APP.format(version="v1"), {"big.dat": b"old content\n"})
    code, _, err = disk.apply(repo)
    assert code == 2, err
    app = disk.root / "srv/app"
    assert (app / "big.dat").read_bytes() == b"old content\n"

    big = bytes(range(256)) * (2 * CAPACITY // 256)  # twice the size of the whole disk
    repo = repo_with(tmp_path, APP.format(version="v2"), {"big.dat": big})
    code, out, err = disk.apply(repo, "--format", "json")
    assert code == 6, (code, out, err)  # exit code: changes and failures
    report = json.loads(out)
    results = by_id(report)

    failed = {rid for rid, r in results.items() if r["status"] == "failed"}
    assert failed == {"file:/srv/app/big.dat"}
    error = results["file:/srv/app/big.dat"]["error"]
    assert "/srv/app/big.dat" in error and "No space left on device" in error, error
    assert results["file:/srv/app/needs-big.conf"]["status"] == "skipped"
    assert "DependencyFailed" in results["file:/srv/app/needs-big.conf"]["error"]
    for rid in ("file:/srv/app/a.conf", "file:/srv/app/b.conf", "file:/srv/app/v2.conf"):
        assert results[rid]["status"] == "changed", results[rid]
    assert report["summary"]["failed"] == 1

    assert (app / "big.dat").read_bytes() == b"old content\n"
    assert (app / "a.conf").read_text() == "a = v2\n"
    assert (app / "b.conf").read_text() == "b = v2\n"
    assert (app / "v2.conf").read_text() == "new in v2\n"
    assert disk.temporaries() == []

    # The text a person reads names the resource and the reason as well.
    code, out, _ = disk.apply(repo)
    assert code == 4  # only the failure is left
    assert "file:/srv/app/big.dat" in out and "No space left on device" in out, out
    assert (app / "big.dat").read_bytes() == b"old content\n"
    assert disk.temporaries() == []


def test_a_replacement_that_needs_room_for_both_copies_keeps_the_old_one(
    disk: Disk, tmp_path: Path
) -> None:
    """The new content alone would fit, but not beside the old one until the rename."""
    old = b"o" * (350 * 1024)
    new = b"n" * (350 * 1024)
    resources = "  - directory: /srv/data\n  - file: /srv/data/blob\n    source: blob\n"
    code, _, err = disk.apply(repo_with(tmp_path, resources, {"blob": old}))
    assert code == 2, err
    blob = disk.root / "srv/data/blob"
    ballast = disk.root / "srv/ballast"  # not managed: someone else's data on the same disk
    ballast.write_bytes(b"b" * (400 * 1024))

    repo = repo_with(tmp_path, resources, {"blob": new})
    code, out, err = disk.apply(repo, "--format", "json")
    assert code == 4, (code, out, err)  # exit code: failures, nothing changed
    result = by_id(json.loads(out))["file:/srv/data/blob"]
    assert result["status"] == "failed"
    assert "No space left on device" in result["error"]
    assert blob.read_bytes() == old
    assert disk.temporaries() == []
    assert ballast.read_bytes() == b"b" * (400 * 1024)

    ballast.unlink()  # room again: the next run converges
    code, out, err = disk.apply(repo, "--format", "json")
    assert code == 2, (code, out, err)
    assert blob.read_bytes() == new
    assert disk.temporaries() == []
