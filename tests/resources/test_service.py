"""service against a stand-in `systemctl`.

systemd is not PID 1 on these machines, so the test puts a stand-in `systemctl` first on PATH:
it records every call and keeps unit state in a JSON file. What is real: the resource's argv,
its exit-code handling, ordering, refresh and daemon-reload logic.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.fs import BackupStore, Root
from reconciler.resources.base import Context
from reconciler.resources.runner import BASE_PATH, Runner
from reconciler.resources.service import Service
from tests.resources.conftest import make

STAND_IN = """#!{python}
import json, os, sys
state_path = os.environ["FAKE_SYSTEMD_STATE"]
args = sys.argv[1:]
with open(state_path + ".calls", "a") as log:
    log.write(" ".join(args) + "\\n")
state = json.load(open(state_path)) if os.path.exists(state_path) else {{}}
unit = args[-1]
unit_state = state.setdefault(unit, {{"active": False, "enabled": False}})
verb = [a for a in args if not a.startswith("-")][0]
code = 0
if verb == "is-active":
    code = 0 if unit_state["active"] else 3
elif verb == "is-enabled":
    code = 0 if unit_state["enabled"] else 1
elif verb in ("start", "restart"):
    if unit == "broken.service":
        code = 1
    else:
        unit_state["active"] = True
elif verb == "stop":
    unit_state["active"] = False
elif verb == "enable":
    unit_state["enabled"] = True
elif verb == "disable":
    unit_state["enabled"] = False
json.dump(state, open(state_path, "w"))
sys.exit(code)
"""


@pytest.fixture
def systemd(tmp_path: Path) -> tuple[Context, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "systemctl"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    state = tmp_path / "systemd.json"
    ctx = Context(
        root=Root("/"),
        state_dir=tmp_path / "state",
        backups=BackupStore(tmp_path / "state"),
        runner=Runner(
            base_env={"PATH": f"{bin_dir}:{BASE_PATH}", "FAKE_SYSTEMD_STATE": str(state)}
        ),
    )
    return ctx, state


def calls(state: Path) -> list[str]:
    path = Path(str(state) + ".calls")
    return path.read_text().splitlines() if path.exists() else []


def test_start_and_enable_then_in_sync(systemd: tuple[Context, Path]) -> None:
    ctx, state = systemd
    nginx = make(Service, "nginx", ensure="running", enable=True)
    planned = nginx.check_apply(ctx, False)
    assert {c.property: c.after for c in planned} == {"enable": "true", "ensure": "running"}
    assert calls(state) == [
        "is-enabled --quiet -- nginx.service",
        "is-active --quiet -- nginx.service",
    ]
    nginx.check_apply(ctx, True)
    assert "start -- nginx.service" in calls(state) and "enable -- nginx.service" in calls(state)
    assert nginx.check_apply(ctx, False) == []


def test_refresh_restarts_running_services_only(systemd: tuple[Context, Path]) -> None:
    ctx, state = systemd
    make(Service, "app", ensure="running").check_apply(ctx, True)
    assert make(Service, "app", ensure="running").refresh(ctx, True)[0].property == "restarted"
    assert "restart -- app.service" in calls(state)
    assert make(Service, "idle", ensure="stopped").refresh(ctx, True) == []
    assert make(Service, "unmanaged").refresh(ctx, True) == []  # not running: not started


def test_daemon_reload_once_when_a_unit_file_changed(systemd: tuple[Context, Path]) -> None:
    ctx, state = systemd
    ctx.run.mark_changed("file:/etc/systemd/system/app.service")
    make(Service, "app", ensure="running").check_apply(ctx, True)
    make(Service, "other", ensure="running").check_apply(ctx, True)
    assert calls(state).count("daemon-reload") == 1


def test_failure_is_reported(systemd: tuple[Context, Path]) -> None:
    ctx, _ = systemd
    with pytest.raises(ResourceError, match=r"systemctl start broken\.service failed"):
        make(Service, "broken", ensure="running").check_apply(ctx, True)


def test_under_a_root_only_enablement_is_managed(
    systemd: tuple[Context, Path], tmp_path: Path
) -> None:
    ctx, state = systemd
    ctx.root = Root(tmp_path)
    make(Service, "web", enable=True).check_apply(ctx, True)
    assert calls(state)[-1] == f"--root={tmp_path} enable -- web.service"
    with pytest.raises(ResourceError, match="under --root"):
        make(Service, "web", ensure="running").check_apply(ctx, False)


@pytest.mark.parametrize("name", ["-now", "a b", "x;reboot", "nginx\n"])
def test_unit_names_that_could_inject_are_refused(name: str) -> None:
    assert Service.validate(name, {})


def test_stand_in_state_is_json(systemd: tuple[Context, Path]) -> None:
    ctx, state = systemd
    make(Service, "db", ensure="running").check_apply(ctx, True)
    assert json.loads(state.read_text())["db.service"]["active"] is True
