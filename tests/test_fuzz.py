"""The atheris fuzz targets under fuzz/, each run for a bounded number of inputs.

A short run from the committed seeds on every test run: it keeps the targets working and
catches a regression the seeds or a few thousand mutations of them reach. Longer runs are
`make fuzz` (docs/development.md, "Fuzzing").
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _atheris() -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.fail(
            "atheris is missing: pip install -e '.[test]' (`make test` does)", pytrace=False
        )


@pytest.mark.parametrize(("target", "runs"), [("model", 3000), ("webhook", 20000)])
def test_fuzz_target_runs_clean(tmp_path: Path, target: str, runs: int) -> None:
    seeds = FUZZ / "corpus" / target
    assert len(list(seeds.iterdir())) >= 5, f"the seed corpus {seeds} is missing"
    corpus = tmp_path / "corpus"
    shutil.copytree(seeds, corpus)  # libFuzzer adds new inputs to it: never to the seeds
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(FUZZ / f"fuzz_{target}.py"),
            f"-runs={runs}",
            "-max_total_time=120",
            "-timeout=30",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/",
            str(corpus),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = "\n".join(line for line in done.stderr.splitlines() if "Instrumenting" not in line)
    found = sorted(p.name for p in artifacts.iterdir())
    assert done.returncode == 0 and not found, f"findings {found}:\n{log[-6000:]}"
    assert "Done " in log and "stat::number_of_executed_units" in log, log[-3000:]
