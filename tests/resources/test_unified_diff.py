"""``unified_diff``: difflib's diff where that is cheap, one replacing hunk where it is not. The
file resources' diffs and ``reconciler diff`` show it; ``patch`` applies it."""

from __future__ import annotations

import difflib
import random
import subprocess
from pathlib import Path

from reconciler.resources.base import unified_diff
from tests.conftest import CLI, commit_all, need, write_tree
from tests.e2e.test_diff import BASE, diff, facts_dir

# 40000 lines and the same with every third line left out: difflib took minutes over them.
SLOW_BEFORE = [f"{i}\n" for i in range(40000)]
SLOW_AFTER = [line for i, line in enumerate(SLOW_BEFORE) if i % 3]


def patched(tmp_path: Path, before: list[str], patch: list[str]) -> str:
    target, diff_file = tmp_path / "file", tmp_path / "file.diff"
    target.write_text("".join(before))
    diff_file.write_text("".join(patch))
    subprocess.run([need("patch"), "-s", str(target), str(diff_file)], check=True)
    return target.read_text()


def test_small_diffs_are_difflibs_own() -> None:
    rng = random.Random(7)
    for _ in range(200):
        before = [f"{rng.randint(0, 30)}\n" for _ in range(rng.randint(0, 80))]
        after = [f"{rng.randint(0, 30)}\n" for _ in range(rng.randint(0, 80))]
        assert unified_diff(before, after, "a", "b") == list(
            difflib.unified_diff(before, after, "a", "b")
        )


def test_a_costly_diff_is_one_hunk_that_patch_applies(tmp_path: Path) -> None:
    head, tail = ["#!/bin/sh\n", "set -e\n"], ["exit 0\n"]
    before, after = head + SLOW_BEFORE + tail, head + SLOW_AFTER + tail
    shown = unified_diff(before, after, "old", "new")
    assert shown[:3] == ["--- old\n", "+++ new\n", "@@ -1,40003 +1,26669 @@\n"]
    assert patched(tmp_path, before, shown) == "".join(after)
    # the lines both share at their ends are context, not changes
    assert shown[3:5] == [" #!/bin/sh\n", " set -e\n"] and shown[-1] == " exit 0\n"


def test_reconciler_diff_shows_such_changes_of_several_files(cli: CLI, tmp_path: Path) -> None:
    """Three files whose content a change thins out: the review ends within the CLI's bound of
    two minutes (difflib took more than two minutes for each file)."""
    repo = write_tree(tmp_path / "repo", BASE)
    for name in ("a", "b", "c"):
        write_tree(repo, {f"files/{name}.txt": "".join(SLOW_BEFORE)})
    write_tree(
        repo,
        {
            "profiles/motd.yaml": "resources:\n"
            + "".join(f"  - file: /etc/{n}.txt\n    source: {n}.txt\n" for n in "abc")
        },
    )
    commit_all(repo, "base")
    for name in ("a", "b", "c"):
        write_tree(repo, {f"files/{name}.txt": "".join(SLOW_AFTER)})
    commit_all(repo, "thinned")
    done = diff(cli, repo, facts_dir(tmp_path, ("db-1",)), check=2)
    for name in ("a", "b", "c"):
        assert f"--- file:/etc/{name}.txt content (HEAD~1)" in done.stdout
    assert "@@ -1,40000 +1,26666 @@" in done.stdout
