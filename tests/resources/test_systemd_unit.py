"""systemd_unit with the real ``systemd-analyze verify`` and ``systemctl --root``.

Under a root, enablement is real: ``systemctl --root`` makes the ``.wants/`` symlinks. systemd is
not PID 1 on these machines, so the live part (no --root: daemon-reload, the service restarted
after its unit changed) runs the engine in a private mount namespace whose
/etc/systemd/system is a fresh tmpfs, with the stand-in ``systemctl`` of the service tests first
on PATH: the host's units are never touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.resources.base import Context
from reconciler.resources.systemd_unit import SystemdUnit
from tests.conftest import need, write_tree
from tests.resources.conftest import make
from tests.resources.test_service import STAND_IN

APP = "[Unit]\nDescription=app\n[Service]\nExecStart=/bin/sleep 1000\n[Install]\nWantedBy=multi-user.target\n"
UNITS = Path("etc/systemd/system")


@pytest.fixture
def units(ctx: Context) -> Path:
    need("systemd-analyze")
    need("systemctl")
    path = ctx.root.prefix / UNITS
    path.mkdir(parents=True)
    return path


def test_plan_then_write_verified_and_enable_under_a_root(ctx: Context, units: Path) -> None:
    app = make(SystemdUnit, "app.service", content=APP, enable=True)
    planned = app.check_apply(ctx, False)
    assert [c.property for c in planned] == ["ensure", "content", "enable"]
    assert not (units / "app.service").exists()  # plan changes nothing
    app.check_apply(ctx, True)
    assert (units / "app.service").read_text() == APP
    assert (units / "app.service").stat().st_mode & 0o777 == 0o644
    wants = units / "multi-user.target.wants" / "app.service"
    assert wants.is_symlink()  # enabled by the real systemctl --root
    assert app.check_apply(ctx, False) == []
    make(SystemdUnit, "app.service", content=APP, enable=False).check_apply(ctx, True)
    assert not wants.is_symlink()


def test_a_unit_that_does_not_verify_is_not_written(ctx: Context, units: Path) -> None:
    (units / "app.service").write_text(APP)
    broken = make(SystemdUnit, "app.service", content="[Service\nExecStart=/bin/true\n")
    assert [c.property for c in broken.check_apply(ctx, False)] == ["content"]
    with pytest.raises(ResourceError, match=r"verify exited 1; not written:\n.*Invalid section"):
        broken.check_apply(ctx, True)
    assert (units / "app.service").read_text() == APP
    assert list(units.iterdir()) == [units / "app.service"]  # no temporary left


def test_a_missing_command_is_refused_unless_the_root_has_it(ctx: Context, units: Path) -> None:
    text = "[Service]\nExecStart=/opt/shop/bin/server --port 80\n"
    shop = make(SystemdUnit, "shop.service", content=text)
    with pytest.raises(ResourceError, match="/opt/shop/bin/server is not executable"):
        shop.check_apply(ctx, True)
    assert not (units / "shop.service").exists()
    server = ctx.root.prefix / "opt/shop/bin/server"
    server.parent.mkdir(parents=True)
    server.write_text("#!/bin/sh\n")
    server.chmod(0o755)  # the unit runs in the root, where the command is
    shop.check_apply(ctx, True)
    assert (units / "shop.service").read_text() == text


def test_a_dropin_is_verified_with_its_unit(ctx: Context, units: Path) -> None:
    (units / "app.service").write_text(APP)
    limits = make(
        SystemdUnit, "app.service", dropin="limits", content="[Service]\nLimitNOFILE=4096\n"
    )
    limits.check_apply(ctx, True)
    assert (units / "app.service.d/limits.conf").read_text() == "[Service]\nLimitNOFILE=4096\n"
    assert (units / "app.service").read_text() == APP  # the unit itself is left alone
    bad = make(
        SystemdUnit,
        "app pre",
        unit="app.service",
        dropin="pre",
        content="[Service]\nExecStartPre=/nonexistent\n",
    )
    with pytest.raises(ResourceError, match="/nonexistent is not executable"):
        bad.check_apply(ctx, True)
    assert not (units / "app.service.d/pre.conf").exists()
    lone = make(SystemdUnit, "nofile.service", dropin="x", content="[Service]\nNice=5\n")
    said = {c.property: c.after for c in lone.check_apply(ctx, True)}
    assert said["verified"] == "no: nofile.service has no unit file"  # written, and said so
    assert (units / "nofile.service.d/x.conf").exists()


def test_absent_removes_the_file_with_a_backup(ctx: Context, units: Path) -> None:
    (units / "old.timer").write_text("[Timer]\nOnCalendar=daily\n")
    gone = make(SystemdUnit, "old.timer", ensure="absent")
    assert gone.check_apply(ctx, True)[0].after == "absent"
    assert not (units / "old.timer").exists()
    assert ctx.backups.entries("/etc/systemd/system/old.timer")
    assert gone.check_apply(ctx, False) == []


@pytest.mark.parametrize(
    ("title", "attrs", "key"),
    [
        ("-now.service", {}, None),
        ("app", {}, None),  # no unit type
        ("a b.service", {}, None),
        ("x.service\n", {}, None),
        ("../x.service", {}, None),
        ("x", {"unit": "--root=/.service"}, "unit"),
        ("x.service", {"dropin": "../escape"}, "dropin"),
        ("x.service", {"dropin": "-o"}, "dropin"),
        ("x.service", {"dropin": "d", "enable": True}, "enable"),
        ("x.service", {"content": None}, None),
    ],
)
def test_bad_input_is_refused_naming_the_attribute(
    title: str, attrs: dict[str, object], key: str | None
) -> None:
    given = {"content": "[Unit]\n", **attrs}
    problems = SystemdUnit.validate(title, given)
    assert problems and problems[0][0] == key


# -- live: the engine in a private mount namespace ------------------------------------------------

LIVE = """
import json, os, subprocess, sys
from pathlib import Path
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/etc/systemd/system"], check=True)
from reconciler.engine.run import execute
from reconciler.fs import BackupStore, Root
from reconciler.model.catalog import Compiler
from reconciler.resources.base import Context
from reconciler.resources.runner import BASE_PATH, Runner
from reconciler.source import DirectorySnapshot
repo, state, bin_dir, fake = sys.argv[1:5]
ctx = Context(
    root=Root("/"), state_dir=Path(state), backups=BackupStore(Path(state)),
    runner=Runner(base_env={"PATH": bin_dir + ":" + BASE_PATH, "FAKE_SYSTEMD_STATE": fake}),
)
catalog = Compiler(DirectorySnapshot(Path(repo))).compile("n1", {})
runs = []
for noop in (True, False, False):
    results = execute(catalog, ctx, noop=noop)
    runs.append({r.id: [r.status, [c.property for c in r.changes], r.error] for r in results})
runs.append(sorted(os.listdir("/etc/systemd/system")))
print(json.dumps(runs))
"""

PROFILE = """
resources:
  - service: app
    ensure: running
  - systemd_unit: app.service
    content: |
      [Service]
      ExecStart=/bin/sleep 1000
  - systemd_unit: app.timer
    source: app.timer
  - service: other
    ensure: running
"""


def test_live_one_daemon_reload_and_the_service_restarts(tmp_path: Path) -> None:
    need("unshare")
    need("systemd-analyze")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(STAND_IN.format(python=sys.executable))
    (bin_dir / "systemctl").chmod(0o755)
    fake = tmp_path / "systemd.json"
    fake.write_text(json.dumps({"app.service": {"active": True, "enabled": False}}))
    repo = write_tree(
        tmp_path / "repo",
        {
            "nodes.yaml": "default: all\n",
            "roles/all.yaml": "profiles: [case]\n",
            "profiles/case.yaml": PROFILE,
            "files/app.timer": "[Timer]\nOnCalendar=daily\n",
        },
    )
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            sys.executable,
            "-c",
            textwrap.dedent(LIVE),
            str(repo),
            str(tmp_path / "state"),
            str(bin_dir),
            str(fake),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    plan, first, second, listed = json.loads(done.stdout)
    assert plan["systemd_unit:app.service"][:2] == ["would_change", ["ensure", "content"]]
    assert "restarted" in plan["service:app"][1]  # the plan shows the restart to come
    assert first["systemd_unit:app.service"][0] == "changed", first
    assert first["systemd_unit:app.timer"][0] == "changed", first
    assert first["service:app"][:2] == ["changed", ["restarted"]], first
    assert first["service:other"][:2] == ["changed", ["ensure"]]  # started, not restarted
    calls = Path(str(fake) + ".calls").read_text().splitlines()
    assert calls.count("daemon-reload") == 1  # two units changed, one reload, in three runs
    assert calls.index("daemon-reload") < calls.index("restart -- app.service")
    assert "restart -- other.service" not in calls
    assert all(status == "in_sync" for status, _, _ in second.values()), second
    assert calls.count("restart -- app.service") == 1  # not again in the run with no change
    assert listed == ["app.service", "app.timer"]  # in the namespace's tmpfs only
    assert not Path("/etc/systemd/system/app.timer").exists()
