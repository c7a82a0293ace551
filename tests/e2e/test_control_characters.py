"""Resource titles, file contents and command output with newlines and terminal escape
sequences: the daemon's log keeps one record per event, and the text that plan and apply print
passes no control character to the terminal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CLI
from tests.daemon.conftest import Daemon, GitServer, wait_for

ESC = "\x1b"
# A title that tries to end its log record, forge one, clear the screen and recolour it.
TITLE = 'evil\n{"event": "forged", "level": "error"}\r\x1b[2J\x1b[31mred\x07\u202etxt.exe'
EXEC_ID = f"exec:{TITLE}"
FILE_TITLE = "/etc/new\nline\x1b[2J"

PROFILE = r"""
resources:
  - exec: "evil\n{\"event\": \"forged\", \"level\": \"error\"}\r\e[2J\e[31mred\a\u202Etxt.exe"
    command: "true"
  - file: "/etc/new\nline\e[2J"
    content: "x\n"
  - file: /etc/coloured
    content: "plain\n\e[31mred\e[0m\n"
  - exec: noisy
    command: "printf 'out \\033[2J\\033]0;title\\007 \\r done\\n'; exit 1"
"""

REPO = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": PROFILE,
}


def assert_printable(where: str, text: str) -> None:
    bad = sorted({c for c in text if (ord(c) < 32 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0})
    assert not bad, f"control characters {bad!r} in {where}:\n{text!r}"
    assert "\u202e" not in text


def test_plan_and_apply_print_no_control_characters(
    cli: CLI, make_repo: Callable[..., Path]
) -> None:
    repo = make_repo(REPO)
    plan = cli.run("plan", repo, "--node", "n1", check=2)
    applied = cli.run("apply", repo, "--node", "n1", check=6)
    # The files are written as the repo says.
    assert (cli.root / "etc/new\nline\x1b[2J").read_text() == "x\n"
    assert (cli.root / "etc/coloured").read_text() == "plain\n\x1b[31mred\x1b[0m\n"
    (cli.root / "etc/coloured").write_text("plain\n\x1b[32mgreen\x1b[0m\n")
    drift = cli.run("plan", repo, "--node", "n1", check=2)
    outputs = {"plan": plan.stdout, "apply": applied.stdout, "plan after drift": drift.stdout}
    for name, text in outputs.items():
        assert_printable(name, text)
    # The ids stay on one line each, their escapes visible.
    shown = 'exec:evil\\n{"event": "forged", "level": "error"}\\r\\x1b[2J\\x1b[31mred\\x07'
    assert shown + "\\u202etxt.exe" in plan.stdout
    assert not any(line.startswith('{"event": "forged"') for line in plan.stdout.splitlines())
    assert "+ file:/etc/new\\nline\\x1b[2J" in plan.stdout
    # The diff and the command's output keep their lines; the escapes in them are shown.
    assert "      -\\x1b[32mgreen\\x1b[0m" in drift.stdout
    assert "      +\\x1b[31mred\\x1b[0m" in drift.stdout
    assert "out \\x1b[2J\\x1b]0;title\\x07" in applied.stdout
    # JSON keeps the exact values, escaped by JSON itself.
    report = json.loads(cli.run("plan", repo, "--node", "n1", "--format", "json").stdout)
    assert EXEC_ID in {r["id"] for r in report["resources"]}
    # status shows the failed exec of the last report; errors on stderr are escaped too.
    status = cli("status", "--state-dir", str(cli.state), check=0)
    assert_printable("status", status.stdout)
    assert "exec:noisy: exited 1" in status.stdout
    broken = make_repo({**REPO, "roles/app.yaml": 'profiles: ["bad\\e[2Jname"]\n'}, "broken")
    refused = cli.run("plan", broken, "--node", "n1", check=1)
    assert_printable("stderr", refused.stderr)
    assert "bad\\x1b[2Jname" in refused.stderr


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_daemon_log_keeps_one_record_per_event(tmp_path: Path, log_format: str) -> None:
    server = GitServer(tmp_path)
    server.start()
    base = tmp_path / "agent"
    base.mkdir()
    daemon = Daemon(base, server.url, poll_interval="1s", interval="1h", watch="false")
    daemon.write_config()
    daemon.config.write_text(
        daemon.config.read_text().replace("format: json", f"format: {log_format}")
    )
    try:
        server.push(REPO, "titles with control characters")
        daemon.start()
        wait_for(
            lambda: "run finished" in daemon.logs() and "exec:noisy" in daemon.logs(),
            what="a run logged",
        )
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
        server.stop()
    raw = daemon.log.read_bytes()
    assert ESC.encode() not in raw and b"\r" not in raw and b"\x07" not in raw
    lines = raw.decode().splitlines()
    assert not any(line.startswith(('{"event": "forged"', "forged")) for line in lines)
    if log_format == "json":
        events = [json.loads(line) for line in lines]  # every line is one whole record
        logged = [e for e in events if e.get("event") == "resource changed"]
        assert EXEC_ID in {e["resource"] for e in logged}  # the exact title, escaped by JSON
        assert f"file:{FILE_TITLE}" in {e["resource"] for e in logged}
        assert any("\x1b[2J" in (e.get("error") or "") for e in events)
    else:
        [line] = [line for line in lines if "resource changed" in line and "evil" in line]
        assert 'evil\\n{"event": "forged", "level": "error"}\\r\\x1b[2J\\x1b[31mred' in line
        assert any("exec:noisy" in line and "\\x1b[2J" in line for line in lines)
