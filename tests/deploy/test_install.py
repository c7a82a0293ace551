"""deploy/install.sh into a scratch root, then `reconciler init` from what it installed.

What is real: the script, `python -m venv`, pip installing the wheel built from this checkout,
`systemd-analyze verify --root` of the installed unit, and a control repo served by `git daemon`.
What stands in: the scratch root is not a booted node (systemd is not PID 1 here), so the host's
unit files and kill(1) are copied into it for systemd-analyze to resolve the unit's
dependencies; and reconciler's dependencies come from the test environment (`--no-deps` and a
.pth file) instead of from PyPI, so that the test needs no network.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from reconciler.config import load_config
from tests.conftest import need
from tests.daemon.conftest import GitServer

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[2]
SCRIPT = CHECKOUT / "deploy" / "install.sh"
UNIT = "/etc/systemd/system/reconciler.service"
VENV = "opt/reconciler"


def install(root: Path, wheel: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT), "--root", str(root), "--no-deps", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": os.environ["PATH"], "PYTHON": sys.executable, "LANG": "C"},
    )


def provide_dependencies(root: Path) -> None:
    """The installed environment finds reconciler's dependencies where the tests' own are."""
    (site,) = (root / VENV / "lib").glob("python3*/site-packages")
    here = [p for p in sys.path if p.endswith("site-packages")]
    (site / "test-dependencies.pth").write_text("".join(f"{p}\n" for p in here))


def unit_values(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("systemd-analyze"), "verify", f"--root={root}", UNIT],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A scratch root with what a Debian node has that the unit needs: systemd's units, kill."""
    root = tmp_path / "node"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir()
    shutil.copy2("/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    return root


class TestInstall:
    def test_a_user_is_told_to_be_root(self, tmp_path: Path) -> None:
        checkout = Path(tempfile.mkdtemp(prefix="reconciler-install-"))
        try:
            checkout.chmod(0o755)
            (checkout / "deploy").mkdir(mode=0o755)
            shutil.copy(SCRIPT, checkout / "deploy/install.sh")
            done = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 "sh", str(checkout / "deploy/install.sh")],
                capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
            )  # fmt: skip
        finally:
            shutil.rmtree(checkout)
        assert done.returncode == 1
        assert "installing on this node needs root (sudo " in done.stderr

    def test_installs_the_agent_its_unit_and_docs(self, node: Path, wheel: Path) -> None:
        done = install(node, wheel)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"installed reconciler 0.1.0 in {node}/opt/reconciler" in done.stdout
        assert "next: reconciler init --repo URL --node NAME" in done.stdout

        unit = (node / UNIT.lstrip("/")).read_text()
        (exec_start,) = unit_values(unit, "ExecStart")
        assert (
            exec_start
            == "/opt/reconciler/bin/reconciler daemon --config /etc/reconciler/config.yaml"
        )
        program = node / exec_start.split()[0].lstrip("/")
        assert os.access(program, os.X_OK)
        # The console script names the environment's python where it is on the node.
        assert program.read_text().splitlines()[0] == "#!/opt/reconciler/bin/python"
        docs = unit_values(unit, "Documentation")
        assert docs
        for url in docs:
            assert url.startswith("file:///"), url
            assert (node / url.removeprefix("file:///")).is_file(), url
        assert (node / "opt/reconciler/share/doc/reconciler/config.example.yaml").is_file()
        assert os.readlink(node / "usr/local/bin/reconciler") == "/opt/reconciler/bin/reconciler"
        etc = node / "etc/reconciler"
        assert stat.S_IMODE(etc.stat().st_mode) == 0o700
        assert etc.stat().st_uid == 0

        done = verify(node)
        assert done.returncode == 0, done.stderr
        # The check is real: without the program the install made, the unit does not verify.
        program.rename(program.with_name("moved"))
        done = verify(node)
        assert done.returncode != 0
        assert "Command /opt/reconciler/bin/reconciler is not executable" in done.stderr

    def test_init_from_the_installed_agent_then_reinstall_keeps_the_config(
        self, node: Path, wheel: Path, server: GitServer
    ) -> None:
        assert install(node, wheel).returncode == 0
        provide_dependencies(node)
        python, program = node / VENV / "bin/python", node / VENV / "bin/reconciler"
        config = node / "etc/reconciler/config.yaml"
        done = subprocess.run(
            [str(python), str(program), "init", "--repo", server.url, "--node", "web-1",
             "--config", str(config)],
            capture_output=True, text=True, timeout=120, cwd=node,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert load_config(config).source.url == server.url
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        written = config.read_text()

        again = install(node, wheel)
        assert again.returncode == 0, again.stderr
        assert "next: reconciler init" not in again.stdout  # configured already
        assert config.read_text() == written
