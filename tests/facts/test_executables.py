"""Facts executables are bounded: in time (killed with everything they started, a warning,
gathering goes on) and in output (cut off, memory bounded). Facts from them are data: they
cannot rename the node, move it to another role, or change the daemon's configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import facts
from tests.conftest import CLI, write_tree
from tests.daemon.conftest import wait_for


def executable(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its reaper has ended too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids the test's scripts started; any still running at the end are ended."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_slow_executable_is_killed_with_its_children(
    tmp_path: Path, leftovers: list[int]
) -> None:
    d = tmp_path / "facts.d"
    executable(
        d / "10-slow",
        f"echo $$ > {tmp_path}/slow.pid\n"
        f"sleep 300 &\necho $! > {tmp_path}/child.pid\n"
        "echo '{\"partial\": true'\nsleep 300\n",
    )
    executable(d / "20-after", "echo '{\"after\": 1}'\n")
    found = facts.gather(node="n1", facts_dirs=[d], timeout=1)
    pids = [int((tmp_path / name).read_text()) for name in ("slow.pid", "child.pid")]
    leftovers += pids
    assert found.warnings == [
        f"facts {d / '10-slow'}: timed out after 1s; killed with its process group; skipped"
    ]
    assert found.facts["after"] == 1 and "partial" not in found.facts  # gathering went on
    for pid in pids:
        wait_for(lambda pid=pid: gone(pid), what=f"process {pid} ended")  # type: ignore[misc]


def test_a_process_that_left_the_group_cannot_hold_the_run(
    tmp_path: Path, leftovers: list[int]
) -> None:
    """One that started a new session, out of reach of the group kill, keeps the output pipe
    open: gathering does not wait for it, and what the executable printed before it exited
    counts."""
    d = tmp_path / "facts.d"
    executable(
        d / "10-escaped",
        # it exits once the other has left the group: the group kill must not reach it
        f"setsid sh -c 'echo $$ > {tmp_path}/escaped.pid; exec sleep 120' &\n"
        f"while [ ! -s {tmp_path}/escaped.pid ]; do sleep 0.01; done\n"
        "echo '{\"x\": 1}'\n",
    )
    executable(d / "20-after", "echo '{\"after\": 1}'\n")
    started = time.monotonic()
    found = facts.gather(node="n1", facts_dirs=[d], timeout=10)
    assert time.monotonic() - started < 5  # not the timeout: the executable itself ended
    escaped = int((tmp_path / "escaped.pid").read_text())
    leftovers.append(escaped)
    assert not gone(escaped)  # gathering did not wait for it to end
    assert found.warnings == []
    assert found.facts["x"] == 1 and found.facts["after"] == 1


def test_a_flood_of_output_is_cut_off_in_bounded_memory(tmp_path: Path) -> None:
    d = tmp_path / "facts.d"
    executable(d / "10-flood", "head -c 104857600 /dev/zero\n")  # 100 MiB
    executable(d / "20-endless", "yes '{\"x\": 1}'\n")
    executable(d / "30-after", "echo '{\"after\": 1}'\n")
    # In a process of its own: its high-water mark of resident memory (VmHWM, which starts
    # afresh at exec) before and after gathering.
    probe = (
        "import json, re, sys\n"
        "from pathlib import Path\n"
        "from reconciler import facts\n"
        "def hwm():\n"
        "    status = Path('/proc/self/status').read_text()\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024\n"
        "before = hwm()\n"
        "found = facts.gather(node='n1', facts_dirs=[Path(sys.argv[1])], timeout=60)\n"
        "print(json.dumps({'warnings': found.warnings, 'after': found.facts.get('after'),"
        " 'growth': hwm() - before}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(d)], capture_output=True, text=True, check=True
    )
    result = json.loads(done.stdout)
    limit = facts.MAX_FACT_BYTES
    assert result["warnings"] == [
        f"facts {d / name}: printed more than {limit} bytes; killed with its process group; skipped"
        for name in ("10-flood", "20-endless")
    ]
    assert result["after"] == 1
    assert result["growth"] < 16 * 1024 * 1024  # far below the 100 MiB printed


def test_an_executable_that_cannot_run_is_a_warning(tmp_path: Path) -> None:
    d = tmp_path / "facts.d"
    (d / "10-not-a-program").parent.mkdir(parents=True)
    (d / "10-not-a-program").write_text("no interpreter line\x00\x01")
    (d / "10-not-a-program").chmod(0o755)
    executable(d / "20-after", "echo '{\"after\": 1}'\n")
    found = facts.gather(node="n1", facts_dirs=[d], timeout=5)
    assert len(found.warnings) == 1 and "10-not-a-program: cannot run" in found.warnings[0]
    assert found.facts["after"] == 1


def test_apply_goes_on_and_facts_cannot_steer_it(cli: CLI, tmp_path: Path) -> None:
    """A run with hostile facts sources: one floods, one claims another node, role, root,
    state directory and mode, and carries template syntax. The run applies the repo's
    desired state for the configured node, into the configured root, and the text stays text."""
    repo = write_tree(
        tmp_path / "repo",
        {
            "nodes.yaml": "nodes:\n  - match: n1\n    role: app\ndefault: other\n",
            "roles/app.yaml": "profiles: [app]\n",
            "roles/other.yaml": "profiles: []\n",
            "data/nodes/evil.yaml": "app: {motd: from the wrong node}\n",
            "profiles/app.yaml": """
                params: {motd: from the repo}
                resources:
                  - file: /etc/motd
                    content: "{{ params.motd }} node={{ node }} role={{ role }} {{ facts.note }}\\n"
                """,
        },
    )
    elsewhere = tmp_path / "elsewhere"
    hostile = {
        "node": "evil",
        "role": "other",
        "params": {"motd": "from facts"},
        "root": str(elsewhere),
        "state_dir": str(elsewhere / "state"),
        "facts_dirs": [],
        "reconcile": {"mode": "noop"},
        "noop": True,
        "note": "{{ 7 * 7 }}",
    }
    d = tmp_path / "facts.d"
    executable(d / "10-flood", "exec cat /dev/zero\n")
    executable(d / "20-hostile", f"echo '{json.dumps(hostile)}'\n")
    (d / "30-hostile.yaml").write_text(json.dumps({"node": "evil-too", "role": "other"}))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"node: n1\nroot: {cli.root}\nstate_dir: {cli.state}\nfacts_dirs: [{d}]\n"
        "reconcile: {mode: enforce}\n"
    )
    done = cli("apply", "--config", str(config), "--repo", str(repo), check=2)
    assert "10-flood: printed more than" in done.stderr
    assert (cli.root / "etc/motd").read_text() == ("from the repo node=n1 role=app {{ 7 * 7 }}\n")
    assert not elsewhere.exists()
    report = json.loads(cli("status", "--config", str(config), "--format", "json").stdout)
    assert (report["node"], report["role"], report["noop"]) == ("n1", "app", False)
