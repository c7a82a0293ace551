"""What `make test` needs from the machine: the one list of Debian packages, the script that
installs them, and ``need()``, which fails a test naming the package of a missing command.

The script's non-root path runs for real as the user nobody (``setpriv``); its root path would
install packages, so it is exercised only by `make test` itself.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_PACKAGES, debian_package, need

CHECKOUT = Path(__file__).resolve().parents[2]
SCRIPT = CHECKOUT / "deploy" / "test-deps.sh"


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A directory the user nobody can read (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="reconciler-test-deps-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def as_nobody(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"},
    )


class TestTestDeps:
    def test_a_user_is_told_the_command_that_installs_what_is_missing(
        self, world_readable: Path
    ) -> None:
        script = world_readable / "test-deps.sh"
        shutil.copy(SCRIPT, script)
        packages = world_readable / "packages.txt"
        packages.write_text(
            "# comment\n\ngit  git\nno-such-tool-1  no-such-package-1\n"
            "no-such-tool-2  no-such-package-2\n"
        )
        packages.chmod(0o644)
        done = as_nobody(script, str(packages))
        assert done.returncode == 1, done
        assert (
            "install them with:  sudo apt-get install -y no-such-package-1 no-such-package-2"
            in done.stderr
        )
        assert " git" not in done.stderr  # installed: not asked for

    def test_every_listed_package_is_installed_here(self) -> None:
        """What `make test` installed: the real list, checked as a user would (sbin included)."""
        done = as_nobody(SCRIPT)
        assert done.returncode == 0, done.stderr
        assert done.stdout == done.stderr == ""


class TestNeed:
    def test_a_missing_command_fails_naming_its_package(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("PATH", str(tmp_path))
        with pytest.raises(pytest.fail.Exception) as failed:
            need("promtool")
        assert "promtool is missing: install the Debian package prometheus" in str(failed.value)

    def test_a_present_command_is_its_path(self) -> None:
        assert need("useradd") == shutil.which("useradd", path="/usr/sbin:/sbin")

    def test_every_command_the_tests_need_is_listed(self) -> None:
        """need() of a command missing from the list would be a bug of the tests, found here."""
        called: set[str] = set()
        for path in (CHECKOUT / "tests").rglob("*.py"):
            called.update(re.findall(r"""\bneed\(\s*"([^"]+)"\)""", path.read_text()))
            for loop in re.findall(
                r"for tool in \(([^)]*)\):\s*\n\s*need\(tool\)", path.read_text()
            ):
                called.update(re.findall(r'"([^"]+)"', loop))
        assert {"etcd", "promtool", "faketime", "git", "gpg-agent"} <= called
        for tool in called:
            assert debian_package(tool), tool
        listed = [
            line.split()[0]
            for line in TEST_PACKAGES.read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert len(listed) == len(set(listed)), "a command listed twice"


class TestMakefile:
    def make(self, target: str) -> str:
        done = subprocess.run(
            [
                "make",
                "-n",
                "--no-print-directory",
                "-C",
                str(CHECKOUT),
                target,
                "VENV=/nonexistent/venv",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "MAKEFLAGS": ""},
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def test_demo_installs_only_what_the_demo_needs(self) -> None:
        commands = self.make("demo")
        assert "pip install --quiet -e .\n" in commands
        assert "[test]" not in commands
        assert "test-deps" not in commands

    def test_test_installs_debian_packages_and_test_extras_first(self) -> None:
        commands = self.make("test").splitlines()
        assert commands[0] == "deploy/test-deps.sh"
        assert "/nonexistent/venv/bin/pip install --quiet -e '.[test]'" in commands
        assert commands[-1] == "/nonexistent/venv/bin/python -m pytest -q"
