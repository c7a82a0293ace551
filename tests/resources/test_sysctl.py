"""sysctl: the sysctl.d line under a root, and the live value in a network namespace of its own.

The live cases run the real CLI without --root inside ``unshare -n``: /proc/sys/net shows the
namespace of the process reading it, so the host's own values are never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.errors import ModelError
from reconciler.model.catalog import Compiler
from reconciler.source import DirectorySnapshot
from tests.conftest import CLI, need, write_tree


def repo(base: Path, resources: str) -> Path:
    return write_tree(
        base,
        {
            "nodes.yaml": "default: all\n",
            "roles/all.yaml": "profiles: [case]\n",
            "profiles/case.yaml": "resources:\n" + resources,
        },
    )


def in_netns(script: str) -> str:
    """Run a shell script in a new network namespace; its output (stderr too)."""
    unshare = need("unshare")
    done = subprocess.run(
        [unshare, "-n", "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    return done.stdout + done.stderr


def reconciler(command: str, source: Path, state: Path) -> str:
    """A command line of the CLI without --root, and its exit code echoed after it."""
    return (
        f"{sys.executable} -m reconciler.cli {command} --repo={source} --state-dir={state} "
        f"--node n1; echo exit=$?"
    )


def host_values() -> tuple[str, str]:
    return (
        Path("/proc/sys/net/ipv4/ip_forward").read_text(),
        Path("/proc/sys/net/ipv4/tcp_rmem").read_text(),
    )


def test_without_root_the_live_value_is_set_and_read_back(tmp_path: Path) -> None:
    conf = tmp_path / "sysctl.conf"
    source = repo(
        tmp_path / "repo",
        f"""
  - sysctl: net.ipv4.ip_forward
    value: 1
    target: {conf}
  - sysctl: net.ipv4.tcp_rmem
    value: "4096 131072 6291456"
    target: {conf}
""",
    )
    state = tmp_path / "state"
    before = host_values()
    out = in_netns(
        "; ".join(
            [
                reconciler("plan", source, state),
                "echo live=$(cat /proc/sys/net/ipv4/ip_forward)",
                reconciler("apply", source, state),
                "echo live=$(cat /proc/sys/net/ipv4/ip_forward) $(cat /proc/sys/net/ipv4/tcp_rmem)",
                reconciler("apply", source, state),
            ]
        )
    )
    plan, first, second = out.split("exit=")[:3]
    assert "value: 0 -> 1" in plan and "value: 4096 131072 " in plan
    assert first.startswith("2\nlive=0\n")  # the plan set nothing
    assert "Applied: 2 changed" in first
    assert second.startswith("2\nlive=1 4096 131072 6291456\n")  # fields compared one by one
    assert "Applied: 0 changed" in second and out.endswith("exit=0\n")
    assert conf.read_text() == "net.ipv4.ip_forward = 1\nnet.ipv4.tcp_rmem = 4096 131072 6291456\n"
    assert host_values() == before  # the host's own kernel untouched


def test_a_value_the_kernel_refuses_fails_naming_the_key(tmp_path: Path) -> None:
    source = repo(
        tmp_path / "repo",
        f"""
  - sysctl: net.core.somaxconn
    value: lots
    target: {tmp_path / "a.conf"}
  - sysctl: net.ipv4.no_such_knob
    value: 1
    target: {tmp_path / "b.conf"}
""",
    )
    out = in_netns(reconciler("apply", source, tmp_path / "state"))
    assert "net.core.somaxconn: the kernel refused lots: Invalid argument" in out
    assert "the kernel has no parameter net.ipv4.no_such_knob" in out
    assert out.endswith("exit=4\n")


def test_under_root_only_the_file_is_managed_and_plan_says_so(cli: CLI, tmp_path: Path) -> None:
    (cli.root / "etc/sysctl.d").mkdir()
    shared = cli.root / "etc/sysctl.d/60-net.conf"
    shared.write_text("# tuned by hand\nnet.core.somaxconn=128\nvm.swappiness = 10\n")
    resources = """
  - sysctl: net.core.somaxconn
    value: 1024
    target: /etc/sysctl.d/60-net.conf
  - sysctl: vm.swappiness
    ensure: absent
    target: /etc/sysctl.d/60-net.conf
  - sysctl: net.no.such.key
    value: 1
"""
    source = repo(tmp_path / "repo", resources)
    plan = cli.run("plan", source, "--node", "n1", check=2).stdout
    assert "content (only the file under --root: the live value is not read or set)" in plan
    assert "value:" not in plan  # no live value compared: not even an unknown key's
    assert shared.read_text().endswith("vm.swappiness = 10\n")  # plan changed nothing
    cli.run("apply", source, "--node", "n1", check=2)
    assert shared.read_text() == "# tuned by hand\nnet.core.somaxconn = 1024\n"
    assert (cli.root / "etc/sysctl.d/net.no.such.key.conf").read_text() == "net.no.such.key = 1\n"
    cli.run("apply", source, "--node", "n1", check=0)


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ("  - sysctl: net/ipv4/../../x\n    value: 1\n", r"is not a sysctl key"),
        ("  - sysctl: net.ipv4.ip_forward\n", r"key 'value': a sysctl needs its value"),
        ('  - sysctl: kernel.x\n    value: "1\\nkernel.y = 2"\n', r"'value': must be a single"),
        ("  - sysctl: kernel.x\n    value: 1\n    target: etc/x.conf\n", r"'target': 'etc/x.conf'"),
    ],
)
def test_bad_input_is_refused_when_compiled(tmp_path: Path, declaration: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Compiler(DirectorySnapshot(repo(tmp_path, declaration))).compile("n1", {})
