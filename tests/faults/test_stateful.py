"""A state machine over the engine: random catalogs, random drift, plan and apply, in any order.

Each example draws a layout (which kind of thing each slot under /srv is: directory, file or
symlink; files and symlinks inside the directories), then runs a random sequence of steps on one
real temporary root: compile a new catalog (a random subset of the slots, with random content,
modes, symlink targets and `line` edits of files declared `replace: false`), damage the disk
(edit, delete, chmod, retarget, drop an edited line), apply, plan. Slots keep their kind for the
whole example: a path that leaves the catalog is left on disk (no prune), as it would be on a
node, and later catalogs meet it there.

Invariants:
- after an apply nothing failed, every managed path is as declared, and a plan finds nothing;
- a plan changes nothing on disk, neither under the root nor in the state directory;
- a plan after drift of a managed path reports that resource as would_change.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from reconciler.engine.report import RunReport
from reconciler.reconcile import RunOptions, run
from tests.conftest import seed_root, tree_hash, write_tree

TOP = ("a", "b", "c", "d")
CHILDREN = ("x", "y", "z")
TEXT = st.text(alphabet="abc xyz\n=#", max_size=30)
FILE_MODES = st.sampled_from([None, "0644", "0600", "0640", "0755"])
DIR_MODES = st.sampled_from([None, "0755", "0750", "0700"])
TARGETS = st.sampled_from(["a", "../b", "x", "/srv/c", "nowhere", "d/x"])
KEYS = ("k1", "k2", "k3")  # letters and digits the file contents never hold


@dataclass
class Line:
    key: str
    value: str
    match: bool
    present: bool

    @property
    def text(self) -> str:
        return f"{self.key}={self.value}"


@dataclass
class FileSpec:
    content: str
    mode: str | None
    replace: bool
    lines: list[Line] = field(default_factory=list)


@dataclass
class Catalog:
    dirs: dict[str, str | None] = field(default_factory=dict)  # path -> mode
    files: dict[str, FileSpec] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # path -> target

    def ids(self) -> dict[str, str]:
        """Managed path (relative to /srv) -> resource id."""
        found = {p: f"directory:/srv/{p}" for p in self.dirs}
        found.update({p: f"file:/srv/{p}" for p in self.files})
        found.update({p: f"symlink:/srv/{p}" for p in self.links})
        return found

    def line_files(self) -> dict[str, str]:
        """Line resource id -> the path (relative to /srv) of the file it edits."""
        return {
            f"line:/srv/{path} {line.key}": path
            for path, spec in self.files.items()
            for line in spec.lines
        }

    def profile(self) -> str:
        out = ["resources:"]
        for path, mode in sorted(self.dirs.items()):
            out.append(f"  - directory: /srv/{path}")
            if mode:
                out.append(f'    mode: "{mode}"')
        for path, spec in sorted(self.files.items()):
            out.append(f"  - file: /srv/{path}")
            out.append(f"    content: {json.dumps(spec.content)}")
            out.append(f"    replace: {json.dumps(spec.replace)}")
            if spec.mode:
                out.append(f'    mode: "{spec.mode}"')
            for line in spec.lines:
                out.append(f"  - line: /srv/{path} {line.key}")
                out.append(f"    path: /srv/{path}")
                out.append(f"    text: {json.dumps(line.text)}")
                out.append(f"    ensure: {'present' if line.present else 'absent'}")
                if line.match:
                    out.append(f'    match: "^{line.key}="')
        for path, target in sorted(self.links.items()):
            out.append(f"  - symlink: /srv/{path}")
            out.append(f"    target: {json.dumps(target)}")
        return "\n".join(out) + "\n"


@st.composite
def layouts(draw: st.DrawFn) -> dict[str, str]:
    """Slot path (relative to /srv) -> kind, fixed for a whole example."""
    layout: dict[str, str] = {}
    for top in TOP:
        kind = draw(st.sampled_from(["directory", "file", "symlink"]))
        layout[top] = kind
        if kind == "directory":
            for child in CHILDREN:
                layout[f"{top}/{child}"] = draw(st.sampled_from(["file", "symlink"]))
    return layout


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.base = Path(tempfile.mkdtemp(prefix="reconciler-stateful-"))
        self.repo = self.base / "repo"
        self.root = seed_root(self.base / "root")
        self.state = self.base / "state"
        self.options = RunOptions(
            repo=str(self.repo), node="n1", root=self.root, state_dir=self.state
        )
        self.layout: dict[str, str] = {}
        self.catalog = Catalog()
        self.drifted: set[str] = set()  # ids whose drift a plan must see
        self.applied = False

    def teardown(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # -- rules -------------------------------------------------------------------------------

    @initialize(layout=layouts(), data=st.data())
    def start(self, layout: dict[str, str], data: st.DataObject) -> None:
        self.layout = layout
        self.new_catalog(data)

    @rule(data=st.data())
    def new_catalog(self, data: st.DataObject) -> None:
        catalog = Catalog()
        for slot, kind in self.layout.items():
            parent = slot.rpartition("/")[0]
            if parent and parent not in catalog.dirs:
                continue  # a child only with its directory managed
            if not data.draw(st.booleans(), label=f"manage {slot}"):
                continue
            if kind == "directory":
                catalog.dirs[slot] = data.draw(DIR_MODES)
            elif kind == "symlink":
                catalog.links[slot] = data.draw(TARGETS)
            else:
                replace = data.draw(st.booleans(), label="replace")
                spec = FileSpec(data.draw(TEXT), data.draw(FILE_MODES), replace)
                if not replace:
                    keys = data.draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=3))
                    spec.lines = [
                        Line(
                            k,
                            data.draw(st.sampled_from(["1", "2", "on"])),
                            data.draw(st.booleans()),
                            data.draw(st.booleans()),
                        )
                        for k in keys
                    ]
                catalog.files[slot] = spec
        self.catalog = catalog
        write_tree(
            self.repo,
            {
                "nodes.yaml": "default: r\n",
                "roles/r.yaml": "profiles: [p]\n",
                "profiles/p.yaml": catalog.profile(),
            },
        )
        self.drifted.clear()
        self.applied = False

    @precondition(lambda self: self.applied)
    @rule(data=st.data())
    def drift(self, data: st.DataObject) -> None:
        """Someone changes a managed path behind the agent's back."""
        ids = self.catalog.ids()
        present = [p for p in sorted(ids) if os.path.lexists(self.root / "srv" / p)]
        if not present:
            return
        rel = data.draw(st.sampled_from(present), label="drifted path")
        host = self.root / "srv" / rel
        action = data.draw(st.sampled_from(["delete", "edit", "chmod", "retarget"]), label="drift")
        if action == "delete":
            if host.is_dir() and not host.is_symlink():
                shutil.rmtree(host)
                for child in ids:
                    if child.startswith(rel + "/"):
                        self.drifted.add(ids[child])
            else:
                host.unlink()
            self.drifted.add(ids[rel])
        elif rel in self.catalog.links:
            os.unlink(host)
            os.symlink("elsewhere", host)
            self.drifted.add(ids[rel])
        elif rel in self.catalog.files and action in ("edit", "retarget"):
            spec = self.catalog.files[rel]
            text = host.read_text()
            lines = [ln for ln in spec.lines if ln.present]
            if spec.replace:
                host.write_text(text + "drift\n")
                self.drifted.add(ids[rel])
            elif lines:  # drop a line the repo wants: the line resource puts it back
                line = data.draw(st.sampled_from(lines), label="dropped line")
                self.drifted.add(f"line:/srv/{rel} {line.key}")
                host.write_text(
                    "".join(t for t in text.splitlines(True) if t.rstrip("\n") != line.text)
                )
            else:
                host.write_text(text + "local edit\n")  # replace: false: the agent keeps it
        else:
            mode = 0o777 if rel in self.catalog.dirs else 0o666
            os.chmod(host, mode)
            wanted = (
                self.catalog.dirs.get(rel)
                if rel in self.catalog.dirs
                else self.catalog.files[rel].mode
            )
            if wanted is not None:
                self.drifted.add(ids[rel])
        self.applied = True  # still the applied catalog, now with drift

    @rule()
    def apply(self) -> None:
        report, _ = run(self.options)
        assert not report.failed, failures(report)
        self.check_disk()
        plan, _ = run(self.options, plan=True)
        assert not plan.changed, changes(plan)
        self.drifted.clear()
        self.applied = True

    @rule()
    def plan(self) -> None:
        before = tree_hash(self.root), tree_hash(self.state) if self.state.exists() else None
        report, _ = run(self.options, plan=True)
        after = tree_hash(self.root), tree_hash(self.state) if self.state.exists() else None
        assert after == before, "plan changed the disk"
        # A plan fails a line whose file does not exist yet, even when the file resource it
        # depends on would create it (a fresh root, a deleted file); nothing else may fail.
        edits = self.catalog.line_files()
        for result in report.resources:
            if result.status == "failed":
                assert result.id in edits, failures(report)
                assert not (self.root / "srv" / edits[result.id]).exists(), failures(report)
        would = {r.id for r in report.resources if r.status == "would_change"}
        missed = self.drifted - would
        assert not missed, f"plan missed drift of {sorted(missed)}: {changes(report)}"
        if self.applied and not self.drifted:
            assert not would, changes(report)

    # -- what the disk must hold after an apply -----------------------------------------------

    def check_disk(self) -> None:
        srv = self.root / "srv"
        for rel, mode in self.catalog.dirs.items():
            st_ = os.lstat(srv / rel)
            assert stat.S_ISDIR(st_.st_mode), rel
            if mode:
                assert st_.st_mode & 0o7777 == int(mode, 8), rel
        for rel, target in self.catalog.links.items():
            assert os.readlink(srv / rel) == target, rel
        for rel, spec in self.catalog.files.items():
            path = srv / rel
            st_ = os.lstat(path)
            assert stat.S_ISREG(st_.st_mode), rel
            if spec.mode:
                assert st_.st_mode & 0o7777 == int(spec.mode, 8), rel
            text = path.read_text()
            if spec.replace:
                assert text == spec.content, rel
            lines = text.splitlines()
            for line in spec.lines:
                if line.present:
                    assert lines.count(line.text) == 1, (rel, line, text)
                    if line.match:
                        assert [t for t in lines if re.match(f"^{line.key}=", t)] == [line.text]
                else:
                    assert line.text not in lines, (rel, line, text)


def failures(report: RunReport) -> str:
    return "; ".join(f"{r.id}: {r.error}" for r in report.resources if r.status == "failed")


def changes(report: RunReport) -> str:
    return "; ".join(
        f"{r.id}: {[c.property for c in r.changes]}"
        for r in report.resources
        if r.status in ("changed", "would_change")
    )


EngineMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestEngineMachine = EngineMachine.TestCase
