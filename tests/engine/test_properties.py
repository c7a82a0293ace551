"""Properties of the engine over generated catalogs of files and directories.

For any catalog: after an apply, a plan finds nothing to change; a second apply changes
nothing; and whatever drift is then made on disk, one apply repairs all of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.reconcile import RunOptions, run
from tests.conftest import seed_root, tree_hash, write_tree

NAMES = st.sampled_from(["a", "b", "c", "conf", "data"])
MODES = st.sampled_from(["0644", "0600", "0755", "0640"])
TEXT = st.text(alphabet="abcxyz \n=#", max_size=40)


@st.composite
def catalogs(draw: st.DrawFn) -> tuple[list[str], dict[str, tuple[str, str]]]:
    dirs = sorted(draw(st.sets(st.lists(NAMES, min_size=1, max_size=2).map("/".join), max_size=4)))
    # every parent of a managed directory is managed too
    dirs = sorted({"/".join(d.split("/")[: i + 1]) for d in dirs for i in range(d.count("/") + 1)})
    files: dict[str, tuple[str, str]] = {}
    for _ in range(draw(st.integers(0, 8))):
        parent = draw(st.sampled_from(["", *dirs]))
        name = draw(NAMES) + ".txt"
        path = f"{parent}/{name}" if parent else name
        files[path] = (draw(TEXT), draw(MODES))
    return dirs, files


def profile(dirs: list[str], files: dict[str, tuple[str, str]]) -> str:
    lines = ["resources:"]
    for d in dirs:
        lines.append(f"  - directory: /srv/{d}")
    for path, (content, mode) in files.items():
        lines.append(f"  - file: /srv/{path}")
        lines.append(f"    content: {json.dumps(content)}")
        lines.append(f'    mode: "{mode}"')
    return "\n".join(lines) + "\n"


DRIFT = st.lists(
    st.tuples(st.sampled_from(["content", "mode", "delete"]), st.integers(0, 100)), max_size=5
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogs(), DRIFT)
def test_apply_converges_and_repairs_any_drift(
    catalog: tuple[list[str], dict[str, tuple[str, str]]], drift: list[tuple[str, int]]
) -> None:
    dirs, files = catalog
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        repo = write_tree(
            base / "repo",
            {
                "nodes.yaml": "default: r\n",
                "roles/r.yaml": "profiles: [p]\n",
                "profiles/p.yaml": profile(dirs, files),
            },
        )
        root = seed_root(base / "root")
        options = RunOptions(repo=str(repo), node="n", root=root, state_dir=base / "state")

        first, _ = run(options)
        assert not first.failed, first.to_json()
        for rel, (content, mode) in files.items():
            path = root / "srv" / rel
            assert path.read_text() == content
            assert path.stat().st_mode & 0o7777 == int(mode, 8)

        plan, _ = run(options, plan=True)
        assert not plan.changed, plan.to_json()
        before = tree_hash(root)
        second, _ = run(options)
        assert not second.changed and not second.failed
        assert tree_hash(root) == before

        managed = sorted(files)
        for action, pick in drift:
            if not managed:
                break
            path = root / "srv" / managed[pick % len(managed)]
            if not path.exists():
                continue
            if action == "content":
                path.write_text(path.read_text() + "drift\n")
            elif action == "mode":
                os.chmod(path, 0o666)
            else:
                path.unlink()
        repair, _ = run(options)
        assert not repair.failed, repair.to_json()
        assert tree_hash(root) == before
        after, _ = run(options, plan=True)
        assert not after.changed
