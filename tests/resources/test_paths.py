"""Symlinks on the way to a managed path.

Directories are opened component by component from the root with O_NOFOLLOW, and every change
is made relative to the opened parent. A symlink on the way is followed only when root (or the
agent's own user) owns it, and then only inside the root. The tests run as root, so a symlink
"planted by an unprivileged user" is one chowned to nobody (uid 65534).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import PathEscape, ReconcilerError, ResourceError
from reconciler.fs import TMP_MARK, Root
from reconciler.reconcile import RunOptions, run
from reconciler.resources.artifact import Artifact
from reconciler.resources.base import Context, Resource
from reconciler.resources.directory import Directory
from reconciler.resources.file import File
from reconciler.resources.line import Line
from reconciler.resources.symlink import Symlink
from tests.conftest import seed_root, write_tree
from tests.resources.conftest import make

NOBODY = 65534

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chowns a symlink to another user")


def plant(link: Path, target: str | Path, uid: int = NOBODY) -> None:
    """A symlink as another user would make it."""
    os.symlink(target, link)
    os.lchown(link, uid, uid)


def everything_below(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the root, holding a file nobody may touch through the root."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "victim").write_text("untouched\n")
    return out


def assert_untouched(outside: Path) -> None:
    assert everything_below(outside) == ["victim"]
    assert (outside / "victim").read_text() == "untouched\n"


@needs_root
class TestPlantedSymlink:
    """A directory component is a symlink owned by another user: refused, with its name."""

    @pytest.fixture
    def planted(self, ctx: Context, outside: Path) -> Path:
        app = ctx.root.prefix / "srv/app"
        app.mkdir()
        plant(app / "uploads", outside)
        return app / "uploads"

    def test_file_is_not_written_through_it(
        self, ctx: Context, outside: Path, planted: Path
    ) -> None:
        for apply in (False, True):
            with pytest.raises(PathEscape) as caught:
                make(File, "/srv/app/uploads/victim", content="owned\n").check_apply(ctx, apply)
            message = str(caught.value)
            assert "/srv/app/uploads is a symlink owned by uid 65534" in message, message
            assert "not followed" in message
        assert_untouched(outside)

    def test_nor_read_through_it(self, ctx: Context, outside: Path, planted: Path) -> None:
        """The check would read the old content for a diff: that is refused as well."""
        with pytest.raises(PathEscape):
            make(File, "/srv/app/uploads/victim", content="x\n").check_apply(ctx, False)
        with pytest.raises(PathEscape):
            make(Line, "x=1", path="/srv/app/uploads/victim").check_apply(ctx, True)
        assert_untouched(outside)

    def test_directory_symlink_and_removal_are_refused(
        self, ctx: Context, outside: Path, planted: Path
    ) -> None:
        with pytest.raises(PathEscape):
            make(Directory, "/srv/app/uploads/sub", mode="0777").check_apply(ctx, True)
        with pytest.raises(PathEscape):
            make(Symlink, "/srv/app/uploads/link", target="/etc/shadow").check_apply(ctx, True)
        with pytest.raises(PathEscape):
            make(File, "/srv/app/uploads/victim", ensure="absent").check_apply(ctx, True)
        assert_untouched(outside)

    def test_a_run_fails_only_that_resource_with_the_reason(
        self, tmp_path: Path, outside: Path
    ) -> None:
        root = seed_root(tmp_path / "root")
        (root / "srv/app").mkdir()
        plant(root / "srv/app/uploads", outside)
        repo = write_tree(
            tmp_path / "repo",
            {
                "nodes.yaml": "default: n\n",
                "roles/n.yaml": "profiles: [p]\n",
                "profiles/p.yaml": """
                    resources:
                      - file: /srv/app/uploads/victim
                        content: "owned\\n"
                      - file: /srv/app/fine.conf
                        content: "fine\\n"
                """,
            },
        )
        options = RunOptions(repo=str(repo), node="n", root=root, state_dir=tmp_path / "state")
        report, _ = run(options)
        results = {r.id: r for r in report.resources}
        bad = results["file:/srv/app/uploads/victim"]
        assert bad.status == "failed"
        assert bad.error is not None and "symlink owned by uid 65534" in bad.error, bad.error
        assert results["file:/srv/app/fine.conf"].status == "changed"
        assert (root / "srv/app/fine.conf").read_text() == "fine\n"
        assert_untouched(outside)


class TestTrustedSymlinks:
    """Symlinks root owns are followed, but their targets are resolved inside the root."""

    def test_a_link_inside_the_root_is_followed(self, ctx: Context) -> None:
        root = ctx.root.prefix
        (root / "usr/lib").mkdir(parents=True)
        (root / "lib").symlink_to("usr/lib")  # a merged /usr
        make(File, "/lib/x.conf", content="x\n").check_apply(ctx, True)
        assert (root / "usr/lib/x.conf").read_text() == "x\n"

    def test_an_absolute_target_is_taken_from_the_root(self, ctx: Context, outside: Path) -> None:
        root = ctx.root.prefix
        (root / "etc/conf.d").symlink_to(outside)  # the host path of a directory outside
        with pytest.raises(ResourceError, match="parent directory does not exist"):
            make(File, "/etc/conf.d/victim", content="owned\n").check_apply(ctx, True)
        inside = root / str(outside).lstrip("/")
        inside.mkdir(parents=True)
        make(File, "/etc/conf.d/victim", content="inside\n").check_apply(ctx, True)
        assert (inside / "victim").read_text() == "inside\n"
        assert_untouched(outside)

    def test_dot_dot_never_climbs_above_the_root(self, ctx: Context, outside: Path) -> None:
        root = ctx.root.prefix
        assert root.parent / "outside" == outside
        (root / "srv/up").symlink_to("../../outside")  # from root/srv: the root's sibling
        with pytest.raises(ResourceError, match="parent directory does not exist"):
            make(File, "/srv/up/victim", content="owned\n").check_apply(ctx, True)
        (root / "outside").mkdir()  # where the link leads when the root is /
        make(File, "/srv/up/victim", content="inside\n").check_apply(ctx, True)
        assert (root / "outside/victim").read_text() == "inside\n"
        assert_untouched(outside)

    def test_a_loop_and_a_file_on_the_way_are_clear_errors(self, ctx: Context) -> None:
        root = ctx.root.prefix
        (root / "srv/a").symlink_to("b")
        (root / "srv/b").symlink_to("a")
        with pytest.raises(PathEscape, match="too many symlinks"):
            make(File, "/srv/a/x", content="x").check_apply(ctx, False)
        (root / "srv/plain").write_text("a file")
        with pytest.raises(ResourceError, match="/srv/plain is not a directory"):
            make(File, "/srv/plain/x", content="x").check_apply(ctx, False)

    def test_a_link_owned_by_the_agents_own_user_is_followed(self, tmp_path: Path) -> None:
        root = Root(seed_root(tmp_path / "root"))
        (root.prefix / "usr/share").mkdir(parents=True)
        (root.prefix / "share").symlink_to("usr/share")
        os.lchown(root.prefix / "share", os.geteuid(), os.getegid())
        place = root.locate("/share/x")
        assert place.dir is not None and place.lstat() is None


# -- races ---------------------------------------------------------------------------------------

RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): one of them always exists."""
    if _libc.renameat2(-100, bytes(a), -100, bytes(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


class Swapper(threading.Thread):
    """Swaps a directory and a symlink beside it, again and again, while ``active`` is set.

    ``pause`` waits until it stands still with the directory back under its own name.
    """

    def __init__(self, directory: Path, link: Path) -> None:
        super().__init__(daemon=True)
        self.directory, self.link = directory, link
        self.active = threading.Event()
        self.idle = threading.Event()
        self.done = False
        self.swaps = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        swapped = False
        try:
            while not self.done:
                if self.active.is_set():
                    self.idle.clear()
                    exchange(self.directory, self.link)
                    swapped = not swapped
                    self.swaps += 1
                    continue
                if swapped:
                    exchange(self.directory, self.link)
                    swapped = False
                self.idle.set()
                self.active.wait(0.05)
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.idle.set()

    def pause(self) -> None:
        self.active.clear()
        self.idle.wait()
        assert self.error is None, self.error

    def stop(self) -> None:
        self.done = True
        self.active.set()
        self.join()


@pytest.fixture
def fast_switching() -> object:
    """Let the swapping thread run between the engine's system calls, not every 5 ms."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield None
    sys.setswitchinterval(before)


# What a resource may say when the race got it: the symlink it refused, or the path it found
# missing (a relative link resolved inside the root leads nowhere); a re-check that met the
# symlink fails the same way.
CLEAR = ("is a symlink owned by uid", "the parent directory does not exist", "DidNotConverge")

RUNS = 120
FILES = 24


def repo_version(base: Path, version: int) -> Path:
    lines = ["resources:"]
    for i in range(FILES):
        lines += [f"  - file: /srv/app/conf/f{i:02d}.conf", f'    content: "v{version} {i}\\n"']
    return write_tree(
        base / f"repo-{version}",
        {
            "nodes.yaml": "default: n\n",
            "roles/n.yaml": "profiles: [p]\n",
            "profiles/p.yaml": "\n".join(lines) + "\n",
        },
    )


@needs_root
@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize(
    ("absolute", "owner"),
    [(True, NOBODY), (False, NOBODY), (False, 0)],
    ids=["planted-absolute", "planted-relative", "root-owned-relative"],
)
def test_swapping_a_directory_for_a_symlink_during_applies_never_writes_outside(
    tmp_path: Path, outside: Path, absolute: bool, owner: int
) -> None:
    """A second thread swaps the directory holding the managed files for a symlink leading
    out of the root, and back, all through many applies; nothing ever lands outside, and
    every resource either converged inside or failed saying why."""
    root = seed_root(tmp_path / "root")
    app = root / "srv/app"
    (app / "conf").mkdir(parents=True)
    # From root/srv/app/conf, ../../../outside is the root's sibling: outside, on the host.
    plant(app / ".evil", outside if absolute else "../../../outside", owner)
    repos = [repo_version(tmp_path, 0), repo_version(tmp_path, 1)]
    swapper = Swapper(app / "conf", app / ".evil")
    swapper.start()
    outcomes: Counter[str] = Counter()
    try:
        for n in range(RUNS):
            version = n % 2
            options = RunOptions(
                repo=str(repos[version]), node="n", root=root, state_dir=tmp_path / "state"
            )
            swapper.active.set()
            try:
                report, _ = run(options)
            finally:
                swapper.pause()
            assert_untouched(outside)
            assert (app / ".evil").is_symlink() and not (app / "conf").is_symlink()
            for result in report.resources:
                outcomes[result.status] += 1
                path = app / "conf" / result.id.rsplit("/", 1)[1]
                if result.status == "failed":
                    assert result.error and any(c in result.error for c in CLEAR), result.error
                else:
                    assert result.status in ("changed", "in_sync"), result
                    assert path.read_text() == f"v{version} {int(path.stem[1:])}\n"
    finally:
        swapper.stop()
    assert swapper.error is None, swapper.error
    assert swapper.swaps > 0
    # Once nothing swaps any more, a run converges everything and leaves no temporary.
    report, _ = run(
        RunOptions(repo=str(repos[0]), node="n", root=root, state_dir=tmp_path / "state")
    )
    assert not report.failed, [(r.id, r.error) for r in report.resources if r.error]
    assert [p.name for p in (app / "conf").iterdir() if TMP_MARK in p.name] == []
    assert_untouched(outside)
    print(f"{swapper.swaps} swaps; outcomes over {RUNS} runs: {dict(outcomes)}")


@pytest.fixture
def swapper(ctx: Context, outside: Path) -> Iterator[Swapper]:
    """/srv/app/conf under the root, and a thread ready to swap it for a symlink leading out."""
    app = ctx.root.prefix / "srv/app"
    (app / "conf").mkdir(parents=True)
    plant(app / ".evil", outside)
    s = Swapper(app / "conf", app / ".evil")
    s.start()
    yield s
    s.stop()
    assert s.error is None, s.error


def apply_while_swapping(
    ctx: Context, swapper: Swapper, outside: Path, resources: list[Resource], refusals: Counter[str]
) -> None:
    """Apply each resource, resolved afresh, while the directory swaps; nothing may land
    outside, and a resource that fails says why."""
    swapper.active.set()
    try:
        for resource in resources:
            ctx.root.forget()  # resolve afresh, as a new run would
            try:
                resource.check_apply(ctx, True)
            except ReconcilerError as exc:
                message = str(exc)
                assert any(c in message for c in CLEAR), message
                refusals[message.split(": ", 1)[1][:40]] += 1
    finally:
        swapper.pause()
    assert_untouched(outside)


@needs_root
@pytest.mark.usefixtures("fast_switching")
def test_the_same_race_against_single_resources(
    ctx: Context, outside: Path, swapper: Swapper
) -> None:
    """The race at the resource level, without the engine's batch: writes, chmods and line
    edits, many times each."""
    conf = swapper.directory
    (conf / "lines").write_text("a=1\n")
    refusals: Counter[str] = Counter()
    for n in range(600):
        resources = [
            make(File, "/srv/app/conf/victim", content=f"{n}\n", mode="0640"),
            make(File, "/srv/app/conf/victim", mode="0600" if n % 2 else "0644"),
            make(Line, f"b={n}", path="/srv/app/conf/lines", match="^b="),
        ]
        apply_while_swapping(ctx, swapper, outside, resources, refusals)
    # Once nothing swaps, the same resource converges.
    ctx.root.forget()
    make(File, "/srv/app/conf/victim", content="done\n").check_apply(ctx, True)
    assert (conf / "victim").read_text() == "done\n"
    assert swapper.swaps > 0
    print(f"{swapper.swaps} swaps; refusals: {dict(refusals)}")


@needs_root
@pytest.mark.usefixtures("fast_switching")
def test_the_same_race_against_an_artifact(
    ctx: Context, outside: Path, tmp_path: Path, swapper: Swapper
) -> None:
    """A release unpacked and swapped in while the directory above it is swapped for a symlink
    out of the root: the staging directory, the unpacked files and the renames stay inside."""
    releases = []
    for version in (1, 2):
        tree = write_tree(tmp_path / f"release-{version}", {"VERSION": f"{version}\n"})
        archive = ctx.root.prefix / f"var/cache/release-{version}.tar.gz"  # read inside the root
        archive.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(tree / "VERSION", arcname="VERSION")
        sha = hashlib.sha256(archive.read_bytes()).hexdigest()
        releases.append(
            make(Artifact, "/srv/app/conf/release", url=f"file:///var/cache/{archive.name}",
                 sha256=sha, extract="tar.gz")
        )  # fmt: skip
    refusals: Counter[str] = Counter()
    for n in range(200):
        apply_while_swapping(ctx, swapper, outside, [releases[n % 2]], refusals)
    conf = swapper.directory
    ctx.root.forget()
    releases[0].check_apply(ctx, True)
    assert (conf / "release/VERSION").read_text() == "1\n"
    assert [p.name for p in conf.iterdir() if TMP_MARK in p.name] == []
    assert swapper.swaps > 0
    print(f"{swapper.swaps} swaps; refusals: {dict(refusals)}")
