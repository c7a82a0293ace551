"""cron: jobs in /etc/cron.d and in a user's crontab, written under a root by the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ModelError
from reconciler.fs import BackupStore
from reconciler.model.catalog import Compiler
from reconciler.source import DirectorySnapshot
from tests.conftest import CLI, write_tree

CRONTABS = "var/spool/cron/crontabs"


def repo(base: Path, resources: str) -> Path:
    return write_tree(
        base,
        {
            "nodes.yaml": "default: all\n",
            "roles/all.yaml": "profiles: [case]\n",
            "profiles/case.yaml": "resources:\n" + resources,
        },
    )


def seed_cron(root: Path) -> None:
    """A machine with cron's directories, a user alice and the crontab group."""
    (root / "etc/cron.d").mkdir(parents=True)
    (root / CRONTABS).mkdir(parents=True)
    (root / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nalice:x:1234:1234::/home/alice:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\ncrontab:x:107:\nalice:x:1234:\n")


JOB = """
  - cron: backup
    command: /usr/local/bin/backup --all
    minute: "*/5"
    hour: [1, 2]
    weekday: mon
    environment: [MAILTO=ops]
"""


def test_a_job_in_cron_d_is_one_root_owned_file_with_a_header(cli: CLI, tmp_path: Path) -> None:
    seed_cron(cli.root)
    source = repo(tmp_path / "repo", JOB)
    planned = cli.run("plan", source, "--node", "n1", check=2)
    assert "+*/5 1,2 * * mon root /usr/local/bin/backup --all" in planned.stdout
    assert not (cli.root / "etc/cron.d/backup").exists()  # plan changed nothing
    cli.run("apply", source, "--node", "n1", check=2)
    job = cli.root / "etc/cron.d/backup"
    assert job.read_text() == (
        "# Managed by reconciler: the cron job backup. Changes made here are overwritten.\n"
        "MAILTO=ops\n"
        "*/5 1,2 * * mon root /usr/local/bin/backup --all\n"
    )
    st = job.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o644, 0, 0)
    cli.run("apply", source, "--node", "n1", check=0)  # in sync

    job.write_text("* * * * * root rm -rf /\n")
    job.chmod(0o666)  # cron ignores a group- or world-writable file
    fixed = cli.run("apply", source, "--node", "n1", check=2)
    assert "-* * * * * root rm -rf /" in fixed.stdout and "mode: 0666 -> 0644" in fixed.stdout
    assert "backup --all" in job.read_text() and job.stat().st_mode & 0o7777 == 0o644
    assert BackupStore(cli.state).entries("/etc/cron.d/backup")  # the hand edit is kept

    repo(tmp_path / "repo", JOB + "    ensure: absent\n")
    cli.run("apply", source, "--node", "n1", check=2)
    assert not job.exists()


def test_a_job_in_a_users_crontab_is_a_block_the_rest_stays(cli: CLI, tmp_path: Path) -> None:
    seed_cron(cli.root)
    crontab = cli.root / CRONTABS / "alice"
    theirs = "# alice's own\nMAILTO=alice\n0 3 * * * /home/alice/bin/tidy\n"
    crontab.write_text(theirs)
    crontab.chmod(0o644)
    job = """
  - cron: report
    command: /usr/bin/report
    user: alice
    target: crontab
    special: daily
    environment: {REPORT_TO: ops}
"""
    source = repo(tmp_path / "repo", job)
    cli.run("apply", source, "--node", "n1", check=2)
    assert (
        crontab.read_text()
        == theirs + "# reconciler: report\nREPORT_TO=ops\n@daily /usr/bin/report\n"
    )
    st = crontab.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o600, 1234, 107)

    repo(tmp_path / "repo", job.replace("special: daily", "minute: 30\n    hour: 4"))
    cli.run("apply", source, "--node", "n1", check=2)
    assert (
        crontab.read_text()
        == theirs + "# reconciler: report\nREPORT_TO=ops\n30 4 * * * /usr/bin/report\n"
    )
    cli.run("apply", source, "--node", "n1", check=0)

    repo(tmp_path / "repo", job + "    ensure: absent\n")
    cli.run("apply", source, "--node", "n1", check=2)
    assert crontab.read_text() == theirs


def test_a_crontab_without_crons_spool_fails_naming_the_directory(cli: CLI, tmp_path: Path) -> None:
    job = "  - cron: report\n    command: /usr/bin/report\n    target: crontab\n"
    done = cli.run("apply", repo(tmp_path / "repo", job), "--node", "n1", check=4)
    assert "/var/spool/cron/crontabs does not exist: is cron installed?" in done.stdout
    assert not (cli.root / "var/spool").exists()


def test_a_sensitive_job_shows_only_digests(cli: CLI, tmp_path: Path) -> None:
    seed_cron(cli.root)
    job = """
  - cron: sync
    command: /usr/bin/sync-to --token hunter2-in-cron
    environment: {API_KEY: hunter3-in-cron}
    sensitive: true
"""
    done = cli.run("apply", repo(tmp_path / "repo", job), "--node", "n1", check=2)
    assert "hunter" not in done.stdout + done.stderr and "content:" in done.stdout
    assert "hunter2-in-cron" in (cli.root / "etc/cron.d/sync").read_text()


def compile_job(base: Path, attrs: str) -> None:
    snapshot = DirectorySnapshot(repo(base, "  - cron: job\n" + attrs))
    Compiler(snapshot).compile("n1", {})


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ("    command: x\n    minute: 60\n", r"key 'minute': 60 is out of range 0-59"),
        ("    command: x\n    hour: '*/0'\n", r"key 'hour': the step /0"),
        ("    command: x\n    monthday: 0\n", r"key 'monthday': 0 is out of range 1-31"),
        ("    command: x\n    monthday: 5-2\n", r"key 'monthday': the range 5-2 runs backwards"),
        ("    command: x\n    month: jna\n", r"key 'month': 'jna' is not a cron field"),
        ("    command: x\n    weekday: mon-fri\n", r"key 'weekday': 'mon-fri' is not a cron"),
        ("    command: x\n    weekday: '1;reboot'\n", r"key 'weekday': '1;reboot' is not"),
        ("    command: x\n    special: daily\n    hour: 1\n", r"'special': cannot be combined"),
        ("    command: x\n    special: sometimes\n", r"key 'special': must be one of reboot"),
        ("    command: x\n    user: -oroot\n", r"key 'user': '-oroot' is not a user name"),
        ("    command: x\n    user: 'a b'\n", r"key 'user': 'a b' is not a user name"),
        ('    command: "a\\nb"\n', r"key 'command': must be a single line"),
        ("    minute: 5\n", r"key 'command': a job needs a command"),
        ("    command: x\n    environment: ['1X=y']\n", r"'environment': '1X=y' is not NAME"),
        ('    command: x\n    environment: {A: "x\\ny"}\n', r"the value of A must be a single"),
        ("    command: x\n    target: anacron\n", r"key 'target': must be one of cron.d, crontab"),
    ],
)
def test_a_job_cron_would_reject_is_refused_when_compiled(
    tmp_path: Path, attrs: str, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        compile_job(tmp_path, attrs)


def test_a_name_cron_d_would_skip_is_refused(tmp_path: Path) -> None:
    # run-parts rules: cron ignores /etc/cron.d/backup.sh and /etc/cron.d/backup~.
    snapshot = DirectorySnapshot(repo(tmp_path, "  - cron: backup.sh\n    command: x\n"))
    with pytest.raises(ModelError, match=r"job name 'backup.sh' may hold only letters"):
        Compiler(snapshot).compile("n1", {})
