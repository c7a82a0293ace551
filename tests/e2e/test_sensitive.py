"""Sensitive values never leave the managed files and the backup store: not through the CLI's
output (text and JSON), the run reports, the inventory, error messages, or the daemon's logs,
metrics, /status and status page. Where a value is shown, its sha256 digest stands in for it.

Real subprocesses throughout: the CLI, a `git daemon` on 127.0.0.1 and the reconciler daemon.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from reconciler.resources.base import digest
from tests.conftest import CLI
from tests.daemon.conftest import Daemon, GitServer, wait_for

CANARY = "s3cr3t-CANARY-5b1e0c9d"
DIGEST = "sha256:" + hashlib.sha256(CANARY.encode()).hexdigest()
# Written as it is in a file marked sensitive: no parameter holds it.
LITERAL = "l1ter4l-CANARY-e0a7f3"
# Any part of a canary is a leak, not only the whole of it.
MARKS = (CANARY, "CANARY", "5b1e0c9d", LITERAL, "e0a7f3")

PROFILE = (
    """
params:
  password: changeme
  user: app
sensitive_params: [password]
resources:
  - directory: /etc/app
  # uses the parameter by name
  - file: /etc/app/password
    content: "{{ params.password }}"
  # a template that includes one that uses it
  - file: /etc/app/app.conf
    template: app.conf.j2
  - file: /etc/app/app.ini
    content: "[main]\\n"
    replace: false
  - line: database password
    path: /etc/app/app.ini
    text: "password = {{ params.password }}"
  # holds the value without naming the parameter
  - file: /etc/app/copy
    source: copy.txt
  # a failing download whose URL holds it
  - artifact: /opt/release
    url: "file:///nonexistent/{{ params.password }}/release.tar.gz"
    sha256: "@ZEROS@"
    extract: tar.gz
  # marked sensitive: a failing command that prints what it holds
  - exec: check-token
    command: "echo token @CANARY@; echo @CANARY@ >&2; exit 3"
    sensitive: true
  # marked sensitive, with no parameter: a line editing it shows no diff of the file
  - file: /etc/app/token
    content: "# api access\\ntoken = @LITERAL@\\nmode = ro\\n"
    sensitive: true
    replace: false
  - line: mode = rw
    path: /etc/app/token
    match: "^mode ="
  # nothing sensitive here, but its command and its guard print the values
  - exec: show-token
    command: 'cat "$RECONCILER_ROOT/etc/app/token" "$RECONCILER_ROOT/etc/app/password"; exit 4'
    unless: 'cat "$RECONCILER_ROOT/etc/app/token" "$RECONCILER_ROOT/etc/app/password"; exit 1'
    require: [file:/etc/app/token, file:/etc/app/password]
  # nothing sensitive here: shown as it is, with a diff
  - file: /etc/app/plain.conf
    content: "user={{ params.user }}\\n"
""".replace("@ZEROS@", "0" * 64)
    .replace("@CANARY@", CANARY)
    .replace("@LITERAL@", LITERAL)
)

# An app component whose failing health check prints both values.
APP = """
version: "1"
components:
  - name: agent
    nodes: {role: app}
    resources:
      - file: /etc/app/agent.conf
        content: "agent\\n"
    health:
      command: 'cat "$RECONCILER_ROOT/etc/app/token" "$RECONCILER_ROOT/etc/app/password"; exit 1'
      timeout: 10
"""

# A revision that cannot compile: its errors would quote the value.
BAD_RESOURCES = """
  - file: /etc/app/mode
    ensure: "{{ params.password }}"
  - file: /etc/app/lookup
    content: "{{ params[params.password] }}"
"""

REPO = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": PROFILE,
    "data/common.yaml": f"app:\n  password: {CANARY}\n",
    "templates/app.conf.j2": "[db]\nuser = {{ params.user }}\n{% include 'secret.j2' %}",
    "templates/secret.j2": "password = {{ params.password }}\n",
    "files/copy.txt": f"copied {CANARY}\n",
}


def assert_clean(where: str, text: str) -> None:
    for mark in MARKS:
        assert mark not in text, f"{mark!r} shown in {where}:\n{text}"


def files_below(base: Path, skip: tuple[str, ...] = ()) -> Iterator[Path]:
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith(skip):
            yield path


def assert_state_clean(state: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Every file of the state directory but the backup store (which holds the real content)
    and what ``skip`` names; returns the relative paths checked."""
    checked = []
    for path in files_below(state, ("backups/", *skip)):
        data = path.read_bytes()
        for mark in MARKS:
            assert mark.encode() not in data, f"{mark!r} in {path}"
        checked.append(path.relative_to(state).as_posix())
    return checked


def test_cli_never_shows_a_sensitive_value(
    cli: CLI, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    repo = make_repo(REPO)
    outputs: dict[str, str] = {}

    def run(name: str, *args: str, check: int) -> str:
        """A command on the test's root and state directory; its output kept to search."""
        done = cli.run(*args, check=check) if args[0] != "status" else cli(*args, check=check)
        outputs[name + " stdout"], outputs[name + " stderr"] = done.stdout, done.stderr
        return done.stdout

    first_plan = run("plan", "plan", repo, "--node", "n1", check=2)
    assert "executed: sha256:" in first_plan

    run("apply", "apply", repo, "--node", "n1", check=6)  # changed; exec and download failed
    assert (cli.root / "etc/app/password").read_text() == CANARY
    assert f"password = {CANARY}" in (cli.root / "etc/app/app.conf").read_text()
    assert f"password = {CANARY}\n" in (cli.root / "etc/app/app.ini").read_text()

    # drift, then plan and apply again
    (cli.root / "etc/app/password").write_text("tampered\n")
    (cli.root / "etc/app/copy").write_text("tampered\n")
    ini = cli.root / "etc/app/app.ini"
    ini.write_text(ini.read_text().replace(f"password = {CANARY}", "password = old"))
    (cli.root / "etc/app/plain.conf").write_text("user=someone\n")
    token = cli.root / "etc/app/token"
    assert token.read_text() == f"# api access\ntoken = {LITERAL}\nmode = rw\n"
    token.write_text(token.read_text().replace("mode = rw", "mode = ro"))
    drift = run("plan after drift", "plan", repo, "--node", "n1", check=2)
    assert "content: sha256:" in drift and "(drift)" in drift
    # Only the file that is not sensitive shows a diff.
    hunks = [line for line in drift.splitlines() if line.strip().startswith("@@")]
    assert len(hunks) == 1 and "+user=app" in drift

    report = json.loads(
        run("apply json", "apply", repo, "--node", "n1", "--format", "json", check=6)
    )
    by_id = {r["id"]: r for r in report["resources"]}
    password = by_id["file:/etc/app/password"]["changes"]
    assert password == [
        {
            "property": "content",
            "from": "sha256:" + hashlib.sha256(b"tampered\n").hexdigest(),
            "to": DIGEST,
            "corrective": True,
        }
    ]
    assert by_id["line:database password"]["status"] == "changed"
    assert "diff" not in by_id["line:database password"]["changes"][0]
    assert by_id["exec:check-token"]["error"] == "exited 3 (expected [0])"
    assert by_id["line:mode = rw"]["status"] == "changed"
    assert "diff" not in by_id["line:mode = rw"]["changes"][0]
    # Another resource's output: each value that it printed is shown as its digest.
    shown = by_id["exec:show-token"]["error"]
    assert shown.startswith("exited 4 (expected [0]):\n") and "# api access" not in shown
    assert digest(f"token = {LITERAL}") in shown and DIGEST in shown
    assert by_id["artifact:/opt/release"]["status"] == "failed"
    assert by_id["artifact:/opt/release"]["error"].startswith("sha256:")
    assert (cli.root / "etc/app/password").read_text() == CANARY

    run("status", "status", "--state-dir", str(cli.state), check=0)
    run("status json", "status", "--state-dir", str(cli.state), "--format", "json", check=0)
    assert "exec:check-token" in outputs["status stdout"]

    # A revision whose errors would quote the value: refused, with its digest instead.
    bad = make_repo({**REPO, "profiles/app.yaml": PROFILE + BAD_RESOURCES}, name="bad")
    for command in ("plan", "apply"):
        done = cli.run(command, bad, "--node", "n1", check=1)
        outputs[f"bad {command} stdout"], outputs[f"bad {command} stderr"] = (
            done.stdout,
            done.stderr,
        )
    done = cli("validate", "--repo", str(bad), check=1)
    outputs["validate stdout"], outputs["validate stderr"] = done.stdout, done.stderr
    for name in ("bad plan stderr", "validate stderr"):
        assert f"must be one of present, absent, not {DIGEST}" in outputs[name]
        assert f"'dict object' has no attribute '{DIGEST}'" in outputs[name]

    for name, text in outputs.items():
        assert_clean(name, text)
    checked = assert_state_clean(cli.state)
    assert "inventory.json" in checked and any(p.startswith("reports/") for p in checked)
    # The backups hold the real content replaced by the apply.
    assert any(b"password = old" in p.read_bytes() for p in files_below(cli.state / "backups"))


def test_a_health_check_shows_sensitive_values_as_digests(
    cli: CLI, make_repo: Callable[..., Path]
) -> None:
    """Its output is kept in the node's record, published to the coordination store and
    reported: everywhere, the values it printed are digests."""
    repo = make_repo({**REPO, "apps/vault.yaml": APP})
    outputs = {}
    for n, code in ((1, 6), (2, 4)):  # the second reports the failure the first recorded
        done = cli.run("apply", repo, "--node", "n1", "--format", "json", check=code)
        outputs[f"apply {n} stdout"], outputs[f"apply {n} stderr"] = done.stdout, done.stderr
        [app] = json.loads(done.stdout)["apps"]
        assert app["state"] == "failed"
        assert DIGEST in app["message"] and digest(f"token = {LITERAL}") in app["message"]
    done = cli("status", "--state-dir", str(cli.state), check=0)
    outputs["status stdout"], outputs["status stderr"] = done.stdout, done.stderr
    assert "vault/agent" in done.stdout
    for name, text in outputs.items():
        assert_clean(name, text)
    checked = assert_state_clean(cli.state)
    assert any(p.startswith("coordination/") for p in checked)
    assert any(p.startswith("apps/") for p in checked)


def test_daemon_never_shows_a_sensitive_value(tmp_path: Path) -> None:
    server = GitServer(tmp_path)
    server.start()
    base = tmp_path / "agent"
    base.mkdir()
    daemon = Daemon(base, server.url, poll_interval="1s", interval="1h")
    try:
        good = server.push({**REPO, "apps/vault.yaml": APP}, "sensitive values")
        daemon.start()
        wait_for(lambda: (daemon.root / "etc/app/password").exists(), what="first apply")
        wait_for(daemon.ready, what="/readyz")
        # drift, healed by the watcher
        (daemon.root / "etc/app/password").write_text("tampered\n")
        wait_for(
            lambda: (daemon.root / "etc/app/password").read_text() == CANARY,
            what="the drift healed",
        )
        bad = server.push({"profiles/app.yaml": PROFILE + BAD_RESOURCES}, "bad revision")
        wait_for(lambda: bad in json.loads(daemon.get("/status")[1])["rejected"], what="rejection")
        status_code, status_body = daemon.get("/status")
        status = json.loads(status_body)
        assert status_code == 200 and status["revision"] == good
        assert f"not {DIGEST}" in status["rejected"][bad]
        failed = {f["id"]: f["error"] for f in status["failed"]}
        assert failed["exec:check-token"] == "exited 3 (expected [0])"
        assert digest(f"token = {LITERAL}") in failed["exec:show-token"]
        [app] = status["apps"]
        assert app["state"] == "failed" and DIGEST in app["message"]
        page_code, page = daemon.get("/")
        metrics_code, metrics = daemon.get("/metrics")
        assert page_code == 200 and metrics_code == 200
    finally:
        assert daemon.stop() == 0
        daemon.notify.close()
        server.stop()

    logs = daemon.logs()
    events = [json.loads(line) for line in logs.splitlines() if line.strip()]
    healed = [
        e
        for e in events
        if e.get("event") == "resource changed" and e.get("resource") == "file:/etc/app/password"
    ]
    assert any(e["corrective"] for e in healed)
    assert any(
        e.get("event") == "revision rejected; enforcing the last good revision"
        and DIGEST in e["error"]
        for e in events
    )
    for name, text in (
        ("the daemon's log", logs),
        ("/status", status_body.decode()),
        ("the status page", page.decode()),
        ("/metrics", metrics.decode()),
    ):
        assert_clean(name, text)
    # source/ is the daemon's mirror of the control repo, where the value is written in data.
    checked = assert_state_clean(daemon.state, skip=("source/",))
    assert {"inventory.json", "daemon.json"} <= set(checked)
    reports = [json.loads((daemon.state / p).read_text()) for p in checked if "reports/" in p]
    shown = [
        change["to"]
        for r in reports
        for res in r["resources"]
        if res["id"] == "file:/etc/app/password"
        for change in res["changes"]
    ]
    assert DIGEST in shown
    assert (daemon.root / "etc/app/password").read_text() == CANARY
