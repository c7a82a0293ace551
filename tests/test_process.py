"""The one way to run a process: output capped as it arrives, a timeout that ends the whole
process group and returns even while something the command started holds its output open."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import process
from reconciler.resources.runner import MAX_OUTPUT, Runner
from tests.conftest import CLI, wait_for, write_tree

BIG = 600_000_000  # what an exec printed when it took the agent to 1.2 GB
MEMORY_BOUND_KB = 150 * 1024  # a fresh interpreter running it stays far below this


def gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its reaper has ended too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


@pytest.fixture
def leftovers(tmp_path: Path) -> Iterator[Path]:
    """A directory where scripts write the pids they start; those still running are ended."""
    pids = tmp_path / "pids"
    pids.mkdir()
    yield pids
    for path in pids.iterdir():
        pid = int(path.read_text())
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def peak_memory_kb(code: str) -> dict[str, int]:
    """Run ``code`` in a fresh interpreter; what it prints as JSON, with its peak RSS."""
    script = textwrap.dedent(code) + textwrap.dedent(
        """
        import json as _json
        from pathlib import Path as _Path
        _status = _Path("/proc/self/status").read_text().splitlines()
        _hwm = next(int(line.split()[1]) for line in _status if line.startswith("VmHWM:"))
        print(_json.dumps({**found, "hwm_kb": _hwm}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


class TestOutput:
    def test_a_command_printing_600_mb_keeps_the_agent_small(self) -> None:
        found = peak_memory_kb(
            f"""
            from reconciler.resources.runner import Runner
            done = Runner().run(["sh", "-c", "yes | head -c {BIG}"], timeout=120)
            found = {{"code": done.returncode, "kept": len(done.output), "dropped": done.dropped}}
            """
        )
        assert found["code"] == 0
        assert found["kept"] == MAX_OUTPUT
        assert found["dropped"] == BIG - MAX_OUTPUT
        assert found["hwm_kb"] < MEMORY_BOUND_KB, found

    def test_head_tail_and_what_was_dropped(self) -> None:
        script = "printf 'first\\n'; yes middle | head -c 100000; printf 'last\\n'"
        both = process.run(["sh", "-c", script], timeout=10, output_cap=20, keep="both")
        assert both.stdout.startswith(b"first\n") and both.stdout.endswith(b"last\n")
        assert len(both.stdout) == 20 and both.stdout_dropped == 100011 - 20
        assert both.text().startswith(f"[{100011 - 20} bytes of output dropped]\n")
        head = process.run(["sh", "-c", script], timeout=10, output_cap=6, keep="head")
        assert head.stdout == b"first\n"

    def test_stderr_apart_or_merged_and_input_fed(self) -> None:
        script = "cat; echo oops >&2; exit 3"
        apart = process.run(
            ["sh", "-c", script], timeout=10, input=b"x" * 300_000, output_cap=300_000
        )
        assert (apart.returncode, len(apart.stdout), apart.stderr) == (3, 300_000, b"oops\n")
        merged = process.run(["sh", "-c", script], timeout=10, input=b"in\n", stderr="merge")
        assert merged.stdout == b"in\noops\n" and merged.stderr == b""

    def test_kill_on_overflow_ends_a_command_that_never_stops(self) -> None:
        done = process.run(["yes"], timeout=30, output_cap=1000, kill_on_overflow=True)
        assert done.overflowed and done.returncode is None and not done.timed_out

    def test_a_command_that_cannot_start_raises(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            process.run([str(tmp_path / "missing")], timeout=1)


class TestTimeout:
    def test_a_timeout_returns_while_a_grandchild_holds_the_output_open(
        self, leftovers: Path
    ) -> None:
        # One grandchild stays in the group (it must die with it); one leaves the group with
        # setsid and keeps stdout open (it must not be waited for).
        script = (
            f"sleep 30 & echo $! > {leftovers}/in-group\n"
            f"setsid sleep 20 & echo $! > {leftovers}/escaped\n"
            "sleep 30\n"
        )
        started = time.monotonic()
        done = Runner().run(["sh", "-c", script], timeout=1)
        elapsed = time.monotonic() - started
        assert done.timed_out and done.returncode == -1
        assert elapsed < 5, elapsed
        in_group = int((leftovers / "in-group").read_text())
        wait_for(lambda: gone(in_group), timeout=5, what="the grandchild in the group ended")

    def test_what_a_finished_command_left_in_its_group_is_ended(self, leftovers: Path) -> None:
        script = f"sleep 30 & echo $! > {leftovers}/child; echo done"
        started = time.monotonic()
        done = process.run(["sh", "-c", script], timeout=20)
        assert done.ok and done.stdout == b"done\n"
        assert time.monotonic() - started < 5
        child = int((leftovers / "child").read_text())
        wait_for(lambda: gone(child), timeout=5, what="the command's leftover ended")

    def test_what_watch_raises_ends_the_process(self, leftovers: Path) -> None:
        """A caller's watch (git checks that its lock is still held) can stop a command."""
        calls: list[float] = []

        def watch() -> None:
            calls.append(time.monotonic())
            if len(calls) == 3:
                raise RuntimeError("lock lost")

        script = f"echo $$ > {leftovers}/shell; sleep 30"
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="lock lost"):
            process.run(["sh", "-c", script], timeout=30, watch=watch, watch_every=0.1)
        assert time.monotonic() - started < 5
        shell = int((leftovers / "shell").read_text())
        wait_for(lambda: gone(shell), timeout=5, what="the command ended")

    def test_check_timeout_raises(self) -> None:
        done = process.run(["sleep", "30"], timeout=0.2, grace=0.1)
        with pytest.raises(process.TimedOut, match=r"sleep: timed out after 0\.2s"):
            done.check_timeout()


def exec_repo(tmp_path: Path, command: str, timeout: int = 300) -> Path:
    profile = textwrap.dedent(
        f"""
        resources:
          - exec: noisy
            command: {json.dumps(command)}
            timeout: {timeout}
        """
    )
    return write_tree(
        tmp_path / "repo",
        {
            "nodes.yaml": "default: r\n",
            "roles/r.yaml": "profiles: [p]\n",
            "profiles/p.yaml": profile,
        },
    )


class TestExecThroughTheCli:
    def test_an_exec_printing_600_mb_keeps_the_agent_small(self, tmp_path: Path) -> None:
        cli = CLI(tmp_path)
        repo = exec_repo(tmp_path, f"yes | head -c {BIG}")
        argv = [
            sys.executable, "-m", "reconciler.cli", "apply", f"--repo={repo}",
            "--root", str(cli.root), "--state-dir", str(cli.state),
        ]  # fmt: skip
        found = peak_memory_kb(
            f"""
            import resource, subprocess
            done = subprocess.run({argv!r}, capture_output=True)
            found = {{
                "code": done.returncode,
                "hwm_kb": 0,
                "children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            }}
            """
        )
        assert found["code"] == 2  # changed: the exec ran and exited 0
        assert found["children_kb"] < MEMORY_BOUND_KB, found

    def test_an_exec_past_its_timeout_fails_at_once(self, tmp_path: Path, leftovers: Path) -> None:
        cli = CLI(tmp_path)
        command = f"setsid sleep 20 & echo $! > {leftovers}/escaped; sleep 30"
        repo = exec_repo(tmp_path, command, timeout=1)
        started = time.monotonic()
        done = cli.run("apply", repo, check=4)
        assert time.monotonic() - started < 10
        assert "timed out after 1s" in done.stdout + done.stderr
