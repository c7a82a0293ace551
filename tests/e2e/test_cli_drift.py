"""Drift that heals as users expect, through the real CLI: a managed symlink that `sed -i`
turned into a regular file, a managed file replaced by a symlink. Both are repaired without
``force`` (what stood there kept in the backup store); a directory in the way still needs it."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from reconciler.fs import BackupStore
from tests.conftest import CLI, tree_hash

REPO_FILES = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
}


def repo_with(make_repo: Callable[..., Path], resources: str) -> Path:
    return make_repo({**REPO_FILES, "profiles/app.yaml": "resources:\n" + resources})


def results(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    return {r["id"]: r for r in json.loads(done.stdout)["resources"]}


LINKED = """\
  - file: /etc/app.conf.real
    content: "port = 80\\n"
  - symlink: /etc/app.conf
    target: app.conf.real
"""


def test_a_link_that_sed_i_turned_into_a_file_is_linked_again_and_the_edit_kept(
    cli: CLI, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = repo_with(make_repo, LINKED)
    cli.run("apply", repo, "--node", "n1", check=2)
    link, real = cli.root / "etc/app.conf", cli.root / "etc/app.conf.real"
    assert os.readlink(link) == "app.conf.real"

    # The most common hand edit: GNU sed -i writes a new regular file in place of the link.
    subprocess.run(["sed", "-i", "s/80/8080/", str(link)], check=True)
    assert not link.is_symlink() and link.read_text() == "port = 8080\n"
    assert real.read_text() == "port = 80\n"

    planned = cli.run("plan", repo, "--node", "n1", "--format", "json", check=2)
    change = results(planned)["symlink:/etc/app.conf"]["changes"][0]  # type: ignore[index]
    assert (change["property"], change["from"], change["to"]) == ("ensure", "file", "symlink")
    assert link.read_text() == "port = 8080\n"  # a plan changes nothing

    done = cli.run("apply", repo, "--node", "n1", "--format", "json", check=2)
    outcome = results(done)["symlink:/etc/app.conf"]
    assert outcome["status"] == "changed", outcome
    assert os.readlink(link) == "app.conf.real"
    assert real.read_text() == "port = 80\n"

    # The hand edit is in the backup store, and can be put back as it was.
    [entry] = BackupStore(cli.state).entries("/etc/app.conf")
    restored = tmp_path / "restored"
    BackupStore(cli.state).restore(entry["sha256"], restored)
    assert restored.read_text() == "port = 8080\n"
    cli.run("apply", repo, "--node", "n1", check=0)


def test_a_file_replaced_by_a_symlink_is_written_again_and_the_other_file_untouched(
    cli: CLI, make_repo: Callable[..., Path]
) -> None:
    repo = repo_with(
        make_repo, '  - file: /etc/motd\n    content: "managed\\n"\n    mode: "0644"\n'
    )
    cli.run("apply", repo, "--node", "n1", check=2)
    motd, other = cli.root / "etc/motd", cli.root / "etc/motd.local"
    other.write_text("someone else's\n")
    other.chmod(0o600)
    motd.unlink()
    motd.symlink_to("motd.local")
    before = other.stat()

    done = cli.run("apply", repo, "--node", "n1", "--format", "json", check=2)
    outcome = results(done)["file:/etc/motd"]
    assert outcome["status"] == "changed", outcome
    assert not motd.is_symlink() and motd.read_text() == "managed\n"
    assert motd.stat().st_mode & 0o7777 == 0o644
    # Not written through: the file the link pointed at is as it was.
    after = other.stat()
    assert other.read_text() == "someone else's\n"
    assert (after.st_mode, after.st_mtime_ns, after.st_ino) == (
        before.st_mode,
        before.st_mtime_ns,
        before.st_ino,
    )
    # The link itself was moved aside, not lost.
    [aside] = (cli.state / "backups/displaced").iterdir()
    assert aside.is_symlink() and os.readlink(aside) == "motd.local"
    cli.run("apply", repo, "--node", "n1", check=0)


def test_a_directory_in_the_way_still_needs_force(cli: CLI, make_repo: Callable[..., Path]) -> None:
    resources = """\
  - symlink: /etc/app.conf
    target: app.conf.real
  - file: /etc/motd
    content: "managed\\n"
"""
    for path in ("etc/app.conf", "etc/motd"):
        (cli.root / path / "sub").mkdir(parents=True)
        (cli.root / path / "sub/data").write_text("keep me\n")
    before = tree_hash(cli.root)

    done = cli.run("apply", repo_with(make_repo, resources), "--node", "n1", "--format", "json")
    assert done.returncode == 4, done.stderr
    found = results(done)
    for rid, path in (("symlink:/etc/app.conf", "/etc/app.conf"), ("file:/etc/motd", "/etc/motd")):
        assert found[rid]["status"] == "failed"
        assert f"{path} is a directory; set force: true to replace it" in str(found[rid]["error"])
    assert tree_hash(cli.root) == before

    forced = resources.replace("real\n", "real\n    force: true\n").replace(
        '"managed\\n"\n', '"managed\\n"\n    force: true\n'
    )
    cli.run("apply", repo_with(make_repo, forced), "--node", "n1", check=2)
    assert os.readlink(cli.root / "etc/app.conf") == "app.conf.real"
    assert (cli.root / "etc/motd").read_text() == "managed\n"
    kept = list((cli.state / "backups/displaced").iterdir())
    assert sorted(p.name.rsplit("-", 1)[1] for p in kept) == ["app.conf", "motd"]
    assert all((p / "sub/data").read_text() == "keep me\n" for p in kept)
