"""user and group through the real shadow tools, on the account files of a temporary root."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.resources.base import Context
from reconciler.resources.group import Group
from reconciler.resources.user import User
from tests.conftest import need
from tests.resources.conftest import make


@pytest.fixture
def accounts(ctx: Context) -> Path:
    need("useradd")
    etc = ctx.root.prefix / "etc"
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\n")
    for name, line in (("shadow", "root:*:19000:0:99999:7:::\n"), ("gshadow", "root:*::\n")):
        (etc / name).write_text(line)
        (etc / name).chmod(0o640)
    return etc


def test_group_create_change_remove(ctx: Context, accounts: Path) -> None:
    web = make(Group, "web", gid=2000)
    assert [c.property for c in web.check_apply(ctx, False)] == ["ensure"]
    assert "web" not in (accounts / "group").read_text()  # plan ran nothing
    web.check_apply(ctx, True)
    assert "web:x:2000:" in (accounts / "group").read_text()
    assert web.check_apply(ctx, False) == []
    change = make(Group, "web", gid=2001).check_apply(ctx, True)
    assert (change[0].before, change[0].after) == ("2000", "2001")
    make(Group, "web", ensure="absent").check_apply(ctx, True)
    assert "web" not in (accounts / "group").read_text()


def test_user_create_change_remove(ctx: Context, accounts: Path) -> None:
    make(Group, "web", gid=2000).check_apply(ctx, True)
    make(Group, "deploy", gid=2100).check_apply(ctx, True)
    app = make(
        User, "app", uid=2001, gid="web", groups=["deploy"], home="/srv/app", shell="/bin/sh"
    )
    app.check_apply(ctx, True)
    assert "app:x:2001:2000::/srv/app:/bin/sh" in (accounts / "passwd").read_text()
    assert "deploy:x:2100:app" in (accounts / "group").read_text()
    assert app.check_apply(ctx, False) == []
    assert not (ctx.root.prefix / "srv/app").exists()  # homes are directory resources' job
    changed = make(User, "app", shell="/bin/bash", groups=[]).check_apply(ctx, True)
    assert {c.property: (c.before, c.after) for c in changed} == {
        "shell": ("/bin/sh", "/bin/bash"),
        "groups": ("deploy", ""),
    }
    assert "deploy:x:2100:\n" in (accounts / "group").read_text()
    make(User, "app", ensure="absent").check_apply(ctx, True)
    assert "app:" not in (accounts / "passwd").read_text()


def test_tool_failure_is_reported(ctx: Context, accounts: Path) -> None:
    with pytest.raises(ResourceError, match="useradd failed"):
        make(User, "app", gid="no-such-group").check_apply(ctx, True)


@pytest.mark.parametrize("name", ["-rf", "a b", "root;id", "x\ny", ""])
def test_names_that_could_inject_are_refused(name: str) -> None:
    assert User.validate(name, {}) and Group.validate(name, {})
