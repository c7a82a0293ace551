"""A sensitive resource's changes and errors show its values only as digests."""

from __future__ import annotations

import pytest

from reconciler.errors import ResourceError
from reconciler.resources.artifact import Artifact
from reconciler.resources.base import Context, digest
from reconciler.resources.exec import Exec
from reconciler.resources.symlink import Symlink
from tests.resources.conftest import make

SECRET = "hunter2-token"


def test_symlink_target(ctx: Context) -> None:
    [change] = make(Symlink, "/etc/link", sensitive=True, target=SECRET).check_apply(ctx, True)
    assert (change.before, change.after) == ("absent", "present")
    [change] = make(Symlink, "/etc/link", sensitive=True, target="other").check_apply(ctx, False)
    assert (change.before, change.after) == (digest(SECRET), digest("other"))
    [plain] = make(Symlink, "/etc/link", target="other").check_apply(ctx, False)
    assert (plain.before, plain.after) == (SECRET, "other")


def test_exec_command_that_cannot_run(ctx: Context) -> None:
    program = f"/nonexistent/{SECRET}"
    with pytest.raises(ResourceError) as err:
        make(Exec, "e", sensitive=True, command=[program, "x"]).check_apply(ctx, True)
    assert str(err.value) == f"command not found: {digest(program)}"
    with pytest.raises(ResourceError, match=SECRET):
        make(Exec, "e", command=[program, "x"]).check_apply(ctx, True)


def test_artifact_download_errors(ctx: Context) -> None:
    url = f"file:///nonexistent/{SECRET}/release.tar.gz"
    attrs = {"url": url, "sha256": "0" * 64, "extract": "tar.gz"}
    with pytest.raises(ResourceError) as err:
        make(Artifact, "/opt/release", sensitive=True, **attrs).check_apply(ctx, True)
    assert str(err.value) == f"{digest(url)}: download failed: No such file or directory"
    with pytest.raises(ResourceError, match=SECRET):
        make(Artifact, "/opt/release", **attrs).check_apply(ctx, True)
