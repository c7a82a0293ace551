from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.resources.base import Context
from reconciler.resources.directory import Directory
from reconciler.resources.exec import Exec
from reconciler.resources.line import Line
from reconciler.resources.symlink import Symlink
from tests.resources.conftest import make


def root_of(ctx: Context) -> Path:
    return ctx.root.prefix


class TestDirectory:
    def test_purge_keeps_managed_paths_and_backs_up_the_rest(self, ctx: Context) -> None:
        sites = root_of(ctx) / "etc/sites"
        (sites / "keep.d").mkdir(parents=True)
        (sites / "keep.d/a.conf").write_text("a")
        (sites / "managed.conf").write_text("m")
        (sites / "stray.conf").write_text("stray")
        ctx.catalog_paths = frozenset(
            {"/etc/sites", "/etc/sites/managed.conf", "/etc/sites/keep.d/a.conf"}
        )
        d = make(Directory, "/etc/sites", purge=True)
        assert [c.before for c in d.check_apply(ctx, False)] == ["/etc/sites/stray.conf"]
        d.check_apply(ctx, True)
        assert sorted(p.name for p in sites.iterdir()) == ["keep.d", "managed.conf"]
        assert ctx.backups.entries("/etc/sites/stray.conf")
        assert d.check_apply(ctx, False) == []

    def test_create_with_mode_and_remove(self, ctx: Context) -> None:
        make(Directory, "/srv/app", mode="0750").check_apply(ctx, True)
        assert (root_of(ctx) / "srv/app").stat().st_mode & 0o7777 == 0o750
        (root_of(ctx) / "srv/app/data").write_text("d")
        make(Directory, "/srv/app", ensure="absent").check_apply(ctx, True)
        assert not (root_of(ctx) / "srv/app").exists()
        assert ctx.backups.entries("/srv/app/data")


class TestSymlink:
    def test_create_retarget_and_replace_a_file_backed_up(self, ctx: Context) -> None:
        make(Symlink, "/etc/current", target="releases/1").check_apply(ctx, True)
        assert os.readlink(root_of(ctx) / "etc/current") == "releases/1"
        change = make(Symlink, "/etc/current", target="releases/2").check_apply(ctx, True)
        assert (change[0].before, change[0].after) == ("releases/1", "releases/2")
        (root_of(ctx) / "etc/plain").write_text("file")
        make(Symlink, "/etc/plain", target="x").check_apply(ctx, True)
        assert os.readlink(root_of(ctx) / "etc/plain") == "x"
        assert ctx.backups.entries("/etc/plain")


class TestLine:
    def test_replace_append_and_remove(self, ctx: Context) -> None:
        conf = root_of(ctx) / "etc/pg.conf"
        conf.write_text("listen = 'localhost'\n#max_connections = 100\n")
        make(
            Line,
            "max",
            path="/etc/pg.conf",
            text="max_connections = 200",
            match=r"^#?max_connections",
        ).check_apply(ctx, True)
        assert conf.read_text() == "listen = 'localhost'\nmax_connections = 200\n"
        make(Line, "shared_buffers = 1GB", path="/etc/pg.conf").check_apply(ctx, True)
        assert conf.read_text().endswith("shared_buffers = 1GB\n")
        assert make(Line, "shared_buffers = 1GB", path="/etc/pg.conf").check_apply(ctx, False) == []
        make(Line, "shared_buffers = 1GB", path="/etc/pg.conf", ensure="absent").check_apply(
            ctx, True
        )
        assert "shared_buffers" not in conf.read_text()

    def test_missing_file_is_an_error(self, ctx: Context) -> None:
        with pytest.raises(ResourceError, match="does not exist"):
            make(Line, "x = 1", path="/etc/none.conf").check_apply(ctx, False)


class TestExec:
    def test_string_runs_in_a_shell_with_root_and_environment(self, ctx: Context) -> None:
        out = root_of(ctx) / "tmp/out"
        make(Exec, "e", command='echo "$GREETING $RECONCILER_ROOT" > "$RECONCILER_ROOT/tmp/out"',
             environment={"GREETING": "hi"}).check_apply(ctx, True)  # fmt: skip
        assert out.read_text() == f"hi {root_of(ctx)}\n"

    def test_argv_has_no_shell(self, ctx: Context) -> None:
        make(Exec, "e", command=["touch", f"{root_of(ctx)}/tmp/a;b"]).check_apply(ctx, True)
        assert (root_of(ctx) / "tmp/a;b").exists()

    def test_guards(self, ctx: Context) -> None:
        assert make(Exec, "e", command="true", creates="/etc").check_apply(ctx, False) == []
        assert make(Exec, "e", command="true", unless="true").check_apply(ctx, False) == []
        assert make(Exec, "e", command="true", onlyif="false").check_apply(ctx, False) == []
        assert make(Exec, "e", command="true", onlyif="true").check_apply(ctx, False)
        assert make(Exec, "e", command="true", refreshonly=True).check_apply(ctx, False) == []
        assert make(Exec, "e", command="true", refreshonly=True).refresh(ctx, True)

    def test_failure_shows_the_output_unless_sensitive(self, ctx: Context) -> None:
        with pytest.raises(ResourceError, match=r"exited 3 \(expected \[0\]\):\nboom"):
            make(Exec, "e", command="echo boom; exit 3").check_apply(ctx, True)
        make(Exec, "e", command="exit 3", returns=[0, 3]).check_apply(ctx, True)
        with pytest.raises(ResourceError) as err:
            make(Exec, "e", sensitive=True, command="echo hunter2; exit 1").check_apply(ctx, True)
        assert "hunter2" not in str(err.value)

    def test_timeout_kills_the_whole_process_group(self, ctx: Context) -> None:
        pidfile = root_of(ctx) / "tmp/child.pid"
        started = time.monotonic()
        with pytest.raises(ResourceError, match="timed out"):
            make(
                Exec, "e", command=f"sleep 300 & echo $! > {pidfile}; wait", timeout=1
            ).check_apply(ctx, True)
        assert time.monotonic() - started < 30
        pid = int(pidfile.read_text())
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        state = (
            Path(f"/proc/{pid}/stat").read_text().split()[2]
            if Path(f"/proc/{pid}").exists()
            else "gone"
        )
        assert state in ("gone", "Z")
