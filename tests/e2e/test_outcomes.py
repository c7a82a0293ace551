"""How `apply` and `plan` end, as the real CLI runs them: a rewind refused as the daemon refuses
it, an unexpected error said in one line (never a traceback), credentials never shown."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CLI, git
from tests.daemon.conftest import GitServer

MOTD = "profiles/app.yaml"


def motd_profile(text: str) -> dict[str, str]:
    return {MOTD: f'resources:\n  - file: /etc/motd\n    content: "{text}\\n"\n'}


def write_config(cli: CLI, url: str, extra: str = "") -> Path:
    config = cli.root.parent / "config.yaml"
    config.write_text(
        f"node: node-1\nroot: {cli.root}\nstate_dir: {cli.state}\nfacts_dirs: []\n"
        f"source:\n  url: {url}\n  branch: production\n  timeout: 10s\n{extra}"
    )
    return config


class TestRewind:
    def test_apply_with_config_refuses_a_branch_moved_back(
        self, cli: CLI, server: GitServer
    ) -> None:
        config = write_config(cli, server.url)
        cli("apply", "--config", str(config), check=2)
        first = server.head
        server.push(motd_profile("version 2"))
        cli("apply", "--config", str(config), check=2)
        assert (cli.root / "etc/motd").read_text() == "version 2\n"
        git(server.bare, "update-ref", "refs/heads/production", first)
        for command in ("apply", "plan"):
            done = cli(command, "--config", str(config), check=1)
            assert "RevisionRegression" in done.stderr
            assert f"{first[:12]} does not descend from the applied" in done.stderr
            assert "Traceback" not in done.stderr
        assert (cli.root / "etc/motd").read_text() == "version 2\n"
        report = json.loads(cli("status", "--config", str(config), "--format", "json").stdout)
        assert report["revision"] == first and "RevisionRegression" in report["errors"][0]
        # allowed in the configuration, or for one run
        cli("apply", "--config", str(config), "--allow-rewind", check=2)
        assert (cli.root / "etc/motd").read_text() != "version 2\n"
        server.push(motd_profile("version 3"))
        cli("apply", "--config", str(config), check=2)
        git(server.bare, "update-ref", "refs/heads/production", first)
        config = write_config(cli, server.url, "  allow_rewind: true\n")
        cli("apply", "--config", str(config), check=2)

    def test_a_new_commit_on_the_branch_is_applied(self, cli: CLI, server: GitServer) -> None:
        config = write_config(cli, server.url)
        cli("apply", "--config", str(config), check=2)
        server.push(motd_profile("version 2"))
        cli("apply", "--config", str(config), check=2)
        cli("apply", "--config", str(config), check=0)


class TestUnexpected:
    def test_an_unreadable_inventory_is_a_failed_run_with_its_reason(
        self, cli: CLI, server: GitServer
    ) -> None:
        config = write_config(cli, server.url)
        cli("apply", "--config", str(config), check=2)
        (cli.state / "inventory.json").unlink()
        (cli.state / "inventory.json").mkdir()
        done = cli("apply", "--config", str(config), check=1)
        assert "Unexpected: IsADirectoryError" in done.stderr
        assert "Traceback" not in done.stderr
        report = json.loads(cli("status", "--config", str(config), "--format", "json").stdout)
        assert report["errors"][0].startswith("Unexpected: IsADirectoryError")

    def test_a_reports_directory_in_the_way_fails_the_run_and_says_why(
        self, cli: CLI, server: GitServer
    ) -> None:
        config = write_config(cli, server.url)
        cli.state.mkdir(mode=0o700)
        (cli.state / "reports").write_text("in the way\n")
        done = cli("apply", "--config", str(config), "--format", "json", check=6)
        assert "Traceback" not in done.stderr
        assert f"ReportNotWritten: {cli.state / 'reports'}" in done.stderr
        report = json.loads(done.stdout)
        assert any(e.startswith("ReportNotWritten") for e in report["errors"])
        assert (cli.root / "etc/x").exists() or (cli.root / "etc/motd").exists()


class TestCredentials:
    def test_a_token_in_the_url_is_never_shown(self, cli: CLI, tmp_path: Path) -> None:
        url = "https://deploy:s3cr3t-token@127.0.0.1:1/control.git"
        config = write_config(cli, url)
        for command in ("apply", "plan"):
            done = cli(command, "--config", str(config), check=1)
            assert "s3cr3t-token" not in done.stdout + done.stderr
        report = json.loads(cli("status", "--config", str(config), "--format", "json").stdout)
        assert "FetchFailed" in report["errors"][0]
        assert "s3cr3t-token" not in json.dumps(report)
        # a scheme refused by name: the URL is in the message, its token is not
        config = write_config(cli, url.replace("https:", "http:"))
        for command in ("apply", "plan"):
            done = cli(command, "--config", str(config), check=1)
            assert "s3cr3t-token" not in done.stdout + done.stderr
            assert "http://deploy:***@127.0.0.1:1/control.git" in done.stderr
