"""A wheel of reconciler built from this checkout, once per test session, for the tests that
install it as a user would (the demo from an installed package, deploy/install.sh).

It is built with the build backend of the test environment (``make test`` installs it) and no
network: `pip wheel --no-build-isolation --no-index`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.fail(
            f"setuptools {setuptools.__version__} cannot build reconciler's wheel: "
            "pip install -e '.[test]' (`make test` does) installs setuptools>=77",
            pytrace=False,
        )
    # A copy of what the wheel is built from: the build writes build/ and *.egg-info beside
    # its sources, which must not land in the checkout.
    src = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (CHECKOUT / name).exists():
            shutil.copy(CHECKOUT / name, src / name)
    shutil.copytree(
        CHECKOUT / "reconciler", src / "reconciler", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = out.glob("reconciler-*.whl")
    return built
