"""The wheel a user installs holds the example control repo, and `reconciler demo` runs from it
far from any checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, running_demo

pytestmark = pytest.mark.slow


def test_the_wheel_holds_every_file_of_the_example(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    example = {
        f"reconciler/examples/control-repo/{path.relative_to(EXAMPLE)}"
        for path in EXAMPLE.rglob("*")
        if path.is_file()
    }
    assert len(example) > 20
    assert example <= names, sorted(example - names)
    assert "reconciler/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "examples/"))]


def test_demo_runs_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """`pip install reconciler`, then `reconciler demo` from the user's home directory.

    The wheel goes into a directory of its own with `pip install --target`; its dependencies
    come from the test environment (no network), the checkout is not on the path."""
    target = tmp_path / "installed"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(target), "HOME": str(home), "LANG": "C"}
    where = subprocess.run(
        [sys.executable, "-c", "import reconciler.demo as d; print(d.EXAMPLE)"],
        cwd=home, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert where.stdout.strip() == str(target / "reconciler/examples/control-repo"), where

    argv = [str(target / "bin/reconciler"), "demo", "--exit-after", "60"]
    with running_demo(argv, cwd=home, env=env) as demo:
        site = demo.root / "etc/nginx/sites-available/site.conf"
        assert "listen 8081;" in site.read_text()
