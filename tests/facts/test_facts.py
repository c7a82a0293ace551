from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import facts
from reconciler.errors import ModelError
from tests.conftest import CLI, wait_for
from tests.daemon.conftest import Daemon, GitServer

OS_RELEASES = {
    'ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nNAME="Debian GNU/Linux"\n': (
        "Debian",
        "Debian",
        "12",
    ),
    'ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\nNAME="Ubuntu"\n': ("Debian", "Ubuntu", "24"),
    'ID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.3"\nNAME="Rocky Linux"\n': (
        "RedHat",
        "Rocky",
        "9",
    ),
    'ID=fedora\nVERSION_ID=40\nNAME="Fedora Linux"\n': ("RedHat", "Fedora", "40"),
    'ID=alpine\nVERSION_ID=3.19.1\nNAME="Alpine Linux"\n': ("Alpine", "Alpine", "3"),
    'ID=arch\nNAME="Arch Linux"\n': ("Archlinux", "Arch", ""),
    'ID="sles"\nVERSION_ID="15.5"\nNAME="SLES"\n': ("Suse", "SLES", "15"),
}


@pytest.mark.parametrize(("text", "expected"), OS_RELEASES.items())
def test_os_family(text: str, expected: tuple[str, str, str]) -> None:
    parsed = facts.parse_os_release(text)
    assert (parsed["family"], parsed["name"], parsed["release"]["major"]) == expected


def test_meminfo() -> None:
    parsed = facts.parse_meminfo(
        "MemTotal:       16384 kB\nMemFree: 100 kB\nMemAvailable:    8192 kB\n"
    )
    assert parsed == {"total_bytes": 16384 * 1024, "available_bytes": 8192 * 1024}


def test_this_machine() -> None:
    found = facts.gather(node="n1")
    assert found.facts["node"] == "n1"
    assert found.facts["processors"]["count"] >= 1
    assert found.facts["os"]["family"]
    assert found.facts["memory"]["total_bytes"] > 0
    assert "lo" in found.facts["networking"]["interfaces"]


def test_external_facts_merge_deeply_and_broken_ones_warn(tmp_path: Path) -> None:
    d = tmp_path / "facts.d"
    d.mkdir()
    (d / "10-site.yaml").write_text("datacenter: ams1\nos: {family: Custom}\n")
    (d / "20-json.json").write_text(json.dumps({"rack": 7}))
    exe = d / "30-exe"
    exe.write_text("#!/bin/sh\necho '{\"from_exe\": true}'\n")
    exe.chmod(0o755)
    (d / "40-broken.yaml").write_text("a: [\n")
    slow = d / "50-slow"
    slow.write_text("#!/bin/sh\nsleep 30\n")
    slow.chmod(0o755)
    (d / "60-node.yaml").write_text("node: someone-else\n")
    override = tmp_path / "override.yaml"
    override.write_text("rack: 8\n")
    found = facts.gather(node="n1", facts_dirs=[d], facts_file=override, timeout=1)
    f = found.facts
    assert (f["datacenter"], f["rack"], f["from_exe"]) == ("ams1", 8, True)
    assert f["os"]["family"] == "Custom" and f["os"]["name"]  # only the nested key replaced
    assert f["node"] == "n1"  # a fact source cannot rename the node
    assert any("40-broken.yaml" in w for w in found.warnings)
    assert any("50-slow" in w and "timed out" in w for w in found.warnings)


def test_broken_facts_file_is_an_error_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "facts.yaml"
    bad.write_text("ok: 1\nbad: [\n")
    with pytest.raises(ModelError, match=r"facts.yaml:\d"):
        facts.gather(facts_file=bad)


def test_render_and_lookup() -> None:
    data = {"os": {"family": "Debian"}}
    assert facts.lookup(data, "os.family") == "Debian"
    with pytest.raises(KeyError):
        facts.lookup(data, "os.nope")
    assert json.loads(facts.render(data, "json")) == data
    assert "family: Debian" in facts.render(data, "yaml")


def _alias_bomb() -> str:
    """Nine levels of nine aliases: a few hundred bytes that expand to 9**9 strings."""
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_hostile_fact_files_are_warnings_and_the_other_facts_load(cli: CLI, tmp_path: Path) -> None:
    """An alias bomb and 3000 nested brackets in facts.d: each a warning naming its file, in
    seconds, and the facts beside them still count."""
    d = tmp_path / "facts.d"
    d.mkdir()
    (d / "10-bomb.yaml").write_text(_alias_bomb())
    (d / "20-deep.yaml").write_text("[" * 3000 + "\n")
    (d / "30-deep.json").write_text("[" * 3000 + "\n")
    (d / "40-block.yaml").write_text("- " * 3000 + "x\n")
    (d / "50-site.yaml").write_text("datacenter: ams1\n")
    assert len(_alias_bomb()) < 600  # a few hundred bytes
    config = tmp_path / "config.yaml"
    config.write_text(f"node: n1\nstate_dir: {cli.state}\nfacts_dirs: [{d}]\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "facts",
            "--config",
            str(config),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["datacenter"] == "ams1"
    for name in ("10-bomb.yaml", "20-deep.yaml", "30-deep.json", "40-block.yaml"):
        assert any(name in line and "skipped" in line for line in done.stderr.splitlines()), (
            name,
            done.stderr,
        )
    assert "aliases expand" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_the_daemon_warns_about_hostile_fact_files_and_applies(
    tmp_path: Path, server: GitServer
) -> None:
    """The daemon reads facts_dirs at every run: a bad fact file is a warning in its log, and
    the run applies the revision."""
    d = tmp_path / "facts.d"
    d.mkdir()
    (d / "10-bomb.yaml").write_text(_alias_bomb())
    (d / "20-deep.json").write_text("[" * 3000 + "\n")
    daemon = Daemon(tmp_path, server.url)
    daemon.config.write_text(
        daemon.config.read_text().replace("facts_dirs: []", f"facts_dirs: [{d}]")
    )
    daemon.start()
    try:
        wait_for(daemon.ready, 30, "the revision applied")
        logs = daemon.logs()
        assert "10-bomb.yaml" in logs and "aliases expand" in logs
        assert "20-deep.json" in logs and "nesting depth" in logs
        assert "Traceback" not in logs and "RecursionError" not in logs
    finally:
        assert daemon.stop() == 0
