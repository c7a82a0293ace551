"""git: checkouts of real repositories served by `git daemon` on 127.0.0.1, under a root.

The served repository has a branch, a tag, a commit on no branch, and hooks; hooks are also put
into the checkout itself. None of them may ever run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.resources.base import Change, Context
from reconciler.resources.git import Git
from tests.conftest import commit_all, git, write_tree
from tests.daemon.conftest import GitServer
from tests.resources.conftest import make

HOOK = "#!/bin/sh\ntouch {marker}\n"


@dataclass
class Served:
    url: str
    work: Path  # the tree the commits are made in
    bare: Path  # what git daemon serves
    first: str  # main at first, tagged v1
    second: str  # main now
    loose: str  # a commit on no branch and no tag
    marker: Path  # what any hook would create


def add_hooks(hooks: Path, marker: Path) -> None:
    hooks.mkdir(parents=True, exist_ok=True)
    for name in (
        "post-checkout",
        "post-merge",
        "reference-transaction",
        "pre-auto-gc",
        "post-index-change",
        "pre-upload-pack",
        "post-upload-pack",
        "fsmonitor",
    ):
        (hooks / name).write_text(HOOK.format(marker=marker))
        (hooks / name).chmod(0o755)  # fmt: skip


@pytest.fixture
def served(server: GitServer, tmp_path: Path) -> Served:
    work = tmp_path / "app-work"
    write_tree(work, {"README": "one\n", "conf/app.ini": "threads=1\n"})
    (work / "current.ini").symlink_to("conf/app.ini")
    first = commit_all(work, "first")
    git(work, "tag", "-a", "-m", "v1", "v1")
    write_tree(work, {"README": "two\n"})
    second = commit_all(work, "second")
    git(work, "checkout", "-q", "-b", "side")
    write_tree(work, {"README": "loose\n"})
    loose = commit_all(work, "on a branch that is deleted")
    git(work, "checkout", "-q", "main")
    bare = server.base / "app.git"
    git(tmp_path, "clone", "-q", "--bare", str(work), str(bare))
    # Served on no branch or tag (a ref of its own reaches it, as a pull request's does): no
    # uploadpack.allow*SHA1InWant needed, protocol v2 serves any commit a ref reaches.
    git(bare, "update-ref", "refs/loose", loose)
    git(bare, "branch", "-D", "side")
    marker = tmp_path / "hook-ran"
    add_hooks(bare / "hooks", marker)
    git(bare, "config", "core.fsmonitor", str(bare / "hooks" / "fsmonitor"))
    url = f"git://127.0.0.1:{server.port}/app.git"
    return Served(url, work, bare, first, second, loose, marker)


def push(served: Served) -> None:
    """The test's own push: the served repository's hooks are not for it either."""
    git(
        served.bare, "-c", "core.hooksPath=/dev/null", "fetch", "-q", str(served.work), "+main:main"
    )


def checkout(title: str = "/srv/app", **attrs: object) -> Git:
    resource = make(Git, title, **attrs)
    assert isinstance(resource, Git)
    return resource


def summary(changes: list[Change]) -> list[tuple[str, str | None, str | None]]:
    return [(c.property, c.before, c.after) for c in changes]


def head(path: Path) -> str:
    return git(path, "rev-parse", "HEAD")


def test_clone_a_branch_then_follow_it_with_latest(ctx: Context, served: Served) -> None:
    app = ctx.root.prefix / "srv/app"
    plan = checkout(source=served.url, revision="main").check_apply(ctx, apply=False)
    assert summary(plan) == [("revision", "absent", served.second)]
    assert not app.exists()  # plan changed nothing
    changes = checkout(source=served.url, revision="main").check_apply(ctx, apply=True)
    assert summary(changes) == [("revision", "absent", served.second)]
    assert (app / "README").read_text() == "two\n"
    assert git(app, "symbolic-ref", "--short", "HEAD") == "main"
    assert os.readlink(app / "current.ini") == "conf/app.ini"  # a link stays a link
    assert checkout(source=served.url, revision="main").check_apply(ctx, apply=True) == []

    write_tree(served.work, {"README": "three\n"})
    third = commit_all(served.work, "third")
    push(served)
    # present: a branch checked out is not followed; latest: it is, and says from where to where.
    assert checkout(source=served.url, revision="main").check_apply(ctx, apply=True) == []
    latest = checkout(source=served.url, revision="main", ensure="latest")
    assert summary(latest.check_apply(ctx, apply=False)) == [("revision", served.second, third)]
    assert (app / "README").read_text() == "two\n"  # plan: ls-remote only
    assert summary(latest.check_apply(ctx, apply=True)) == [("revision", served.second, third)]
    assert (app / "README").read_text() == "three\n"
    assert not served.marker.exists()


def test_a_tag_a_loose_commit_and_back_without_running_any_hook(
    ctx: Context, served: Served
) -> None:
    app = ctx.root.prefix / "srv/app"
    checkout(source=served.url).check_apply(ctx, apply=True)  # the remote's default branch
    assert head(app) == served.second
    # Hooks and an fsmonitor in the checkout itself: never run either.
    add_hooks(app / ".git/hooks", served.marker)
    git(app, "config", "core.hooksPath", str(app / ".git/hooks"))
    git(app, "config", "core.fsmonitor", str(app / ".git/hooks/fsmonitor"))

    tag = checkout(source=served.url, revision="v1")
    assert summary(tag.check_apply(ctx, apply=True)) == [("revision", served.second, served.first)]
    assert (app / "README").read_text() == "one\n"
    loose = checkout(source=served.url, revision=served.loose)
    assert summary(loose.check_apply(ctx, apply=True)) == [("revision", served.first, served.loose)]
    assert (app / "README").read_text() == "loose\n"
    assert loose.check_apply(ctx, apply=True) == []
    assert not served.marker.exists()
    # The hooks are real: plain git in that checkout runs them.
    git(app, "checkout", "-q", "main")
    assert served.marker.exists()


def test_local_changes_are_drift_and_are_put_back(ctx: Context, served: Served) -> None:
    app = ctx.root.prefix / "srv/app"
    resource = checkout(source=served.url, revision="v1")
    resource.check_apply(ctx, apply=True)
    (app / "conf/app.ini").write_text("threads=64\n")
    (app / "README").unlink()
    (app / "notes.txt").write_text("mine\n")  # untracked: not git's, left alone
    plan = resource.check_apply(ctx, apply=False)
    assert summary(plan) == [("local changes", "2 modified: README, conf/app.ini", "reset")]
    assert (app / "conf/app.ini").read_text() == "threads=64\n"
    resource.check_apply(ctx, apply=True)
    assert (app / "conf/app.ini").read_text() == "threads=1\n"
    assert (app / "README").read_text() == "one\n"
    assert (app / "notes.txt").read_text() == "mine\n"
    assert resource.check_apply(ctx, apply=True) == []
    # Moving on to another revision over a local change says what it threw away.
    (app / "conf/app.ini").write_text("threads=64\n")
    moved = checkout(source=served.url, revision="main").check_apply(ctx, apply=True)
    assert summary(moved) == [
        ("revision", served.first, served.second),
        ("local changes", "1 modified: conf/app.ini", "reset"),
    ]
    assert (app / "conf/app.ini").read_text() == "threads=1\n"


def test_source_changes_user_and_absent(ctx: Context, served: Served, tmp_path: Path) -> None:
    app = ctx.root.prefix / "srv/app"
    checkout(source=served.url, revision="main").check_apply(ctx, apply=True)
    other = served.url.replace("app.git", "app-mirror.git")
    git(
        tmp_path,
        "clone",
        "-q",
        "--bare",
        str(served.bare),
        str(served.bare.parent / "app-mirror.git"),
    )
    (ctx.root.prefix / "etc/passwd").write_text("deploy:x:4321:4321::/srv:/bin/sh\n")
    moved = checkout(source=other, revision="main", user="deploy")
    assert summary(moved.check_apply(ctx, apply=True)) == [
        ("source", served.url, other),
        ("owner", "0", "deploy"),
    ]
    assert git(app, "-c", "safe.directory=*", "config", "remote.origin.url") == other
    assert {p.lstat().st_uid for p in [app, *app.rglob("*")]} == {4321}
    assert moved.check_apply(ctx, apply=True) == []  # a checkout owned by another user still works
    gone = checkout(ensure="absent")
    assert summary(gone.check_apply(ctx, apply=False)) == [("ensure", "present", "absent")]
    assert app.exists()
    gone.check_apply(ctx, apply=True)
    assert not app.exists()


def add_submodule(served: Served, server: GitServer) -> None:
    """A repository served beside the first, added to its main branch as the submodule lib/."""
    lib = served.work.parent / "lib-work"
    write_tree(lib, {"lib.txt": "lib\n"})
    commit_all(lib, "lib")
    git(lib.parent, "clone", "-q", "--bare", str(lib), str(server.base / "lib.git"))
    lib_url = f"git://127.0.0.1:{server.port}/lib.git"
    git(served.work, "-c", "protocol.git.allow=always", "submodule", "add", "-q", lib_url, "lib")
    commit_all(served.work, "with a submodule")
    push(served)


def test_submodules_only_when_asked(ctx: Context, served: Served, server: GitServer) -> None:
    add_submodule(served, server)
    without = ctx.root.prefix / "srv/without"
    checkout("/srv/without", source=served.url, revision="main").check_apply(ctx, apply=True)
    assert (without / "lib").is_dir() and not (without / "lib/lib.txt").exists()
    checkout("/srv/with", source=served.url, revision="main", submodules=True).check_apply(
        ctx, apply=True
    )
    assert (ctx.root.prefix / "srv/with/lib/lib.txt").read_text() == "lib\n"
    # Asked for later, on a checkout already at the commit: they are checked out then.
    later = checkout("/srv/without", source=served.url, revision="main", submodules=True)
    assert summary(later.check_apply(ctx, apply=True)) == [("submodules", "lib", "checked out")]
    assert (without / "lib/lib.txt").read_text() == "lib\n"
    assert later.check_apply(ctx, apply=True) == []


def test_an_unknown_revision_and_a_foreign_directory_fail(ctx: Context, served: Served) -> None:
    with pytest.raises(ResourceError, match="has no branch or tag named 'nosuch'"):
        checkout(source=served.url, revision="nosuch").check_apply(ctx, apply=False)
    write_tree(ctx.root.prefix / "srv/app", {"data": "precious\n"})
    with pytest.raises(ResourceError, match="is not empty and is not a git checkout"):
        checkout(source=served.url).check_apply(ctx, apply=True)
    with pytest.raises(ResourceError, match="is not a git checkout; not removed"):
        checkout(ensure="absent").check_apply(ctx, apply=True)
    assert (ctx.root.prefix / "srv/app/data").read_text() == "precious\n"


@pytest.mark.parametrize(
    ("attrs", "key", "message"),
    [
        ({"source": "ext::sh -c touch% /tmp/x"}, "source", "transport helpers"),
        ({"source": "-uhelp"}, "source", "not allowed"),
        ({"source": "http://example.com/x.git"}, "source", "scheme 'http' is not allowed"),
        ({}, "source", "required unless ensure is absent"),
        ({"source": "git://h/x", "revision": "--upload-pack=touch"}, "revision", "not a branch"),
        ({"source": "git://h/x", "revision": "a\nb"}, "revision", "not a branch"),
        ({"source": "git://h/x", "revision": "a..b"}, "revision", "not a branch"),
        ({"source": "git://h/x", "user": "-r"}, "user", "not a user name"),
    ],
)
def test_bad_values_are_refused_naming_the_attribute(
    attrs: dict[str, object], key: str, message: str
) -> None:
    problems = Git.validate("/srv/app", attrs)
    assert any(k == key and message in m for k, m in problems), problems
