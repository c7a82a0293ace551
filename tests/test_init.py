"""`reconciler init`: a configuration written only for a control repo that can be read.

The repo is served by a real `git daemon` on 127.0.0.1; the CLI runs as a subprocess.
"""

from __future__ import annotations

import stat
from pathlib import Path

from reconciler.config import load_config
from tests.conftest import CLI
from tests.daemon.conftest import GitServer, free_port


def init(cli: CLI, config: Path, *args: str, check: int) -> tuple[str, str]:
    done = cli("init", "--config", str(config), *args, check=check)
    return done.stdout, done.stderr


class TestInit:
    def test_writes_a_config_the_daemon_loads_and_runs_from(
        self, cli: CLI, server: GitServer, tmp_path: Path
    ) -> None:
        config = tmp_path / "etc/reconciler/config.yaml"
        out, _ = init(cli, config, "--repo", server.url, "--node", "web-1", check=0)
        assert f"wrote {config}: node web-1, branch production of {server.url}" in out
        assert f"(now at {server.head[:12]})" in out
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
        loaded = load_config(config)
        assert (loaded.node, loaded.source.url) == ("web-1", server.url)
        assert loaded.source.branch == "production"  # the remote's default branch, made explicit
        # The written file drives a real run: the repo is fetched and its profile planned.
        done = cli("plan", "--config", str(config), "--root", str(cli.root),
                   "--state-dir", str(cli.state), check=2)  # fmt: skip
        assert "/etc/motd" in done.stdout

    def test_an_unreadable_repo_writes_nothing(self, cli: CLI, tmp_path: Path) -> None:
        config = tmp_path / "etc/reconciler/config.yaml"
        url = f"git://127.0.0.1:{free_port()}/control.git"  # nothing listens there
        _, err = init(cli, config, "--repo", url, "--node", "web-1", check=1)
        assert f"cannot read the control repo: {url}: git ls-remote failed" in err
        assert not config.parent.exists()

    def test_a_missing_branch_names_the_branches_there(
        self, cli: CLI, server: GitServer, tmp_path: Path
    ) -> None:
        config = tmp_path / "config.yaml"
        args = ("--repo", server.url, "--node", "web-1", "--branch", "main")
        _, err = init(cli, config, *args, check=1)
        assert "ref not found: branch 'main' (the remote has 'production')" in err
        assert not config.exists()

    def test_a_password_in_the_url_is_never_shown(self, cli: CLI, tmp_path: Path) -> None:
        config = tmp_path / "config.yaml"
        url = f"https://deploy:s3cret-token@127.0.0.1:{free_port()}/control.git"
        _, err = init(cli, config, "--repo", url, "--node", "web-1", check=1)
        assert "s3cret-token" not in err
        assert "https://deploy:***@127.0.0.1" in err
        assert not config.exists()

    def test_an_existing_config_is_replaced_only_with_force(
        self, cli: CLI, server: GitServer, tmp_path: Path
    ) -> None:
        config = tmp_path / "config.yaml"
        config.write_text("node: old\n")
        _, err = init(cli, config, "--repo", server.url, "--node", "web-1", check=1)
        assert f"{config} exists; --force replaces it" in err
        assert config.read_text() == "node: old\n"
        init(cli, config, "--repo", server.url, "--node", "web-1", "--force", check=0)
        assert load_config(config).node == "web-1"

    def test_an_unwritable_place_is_an_error_not_a_traceback(
        self, cli: CLI, server: GitServer, tmp_path: Path
    ) -> None:
        blocker = tmp_path / "etc"
        blocker.write_text("a file where the directory would be\n")
        config = blocker / "reconciler/config.yaml"
        _, err = init(cli, config, "--repo", server.url, "--node", "web-1", check=1)
        assert err.startswith(f"reconciler: {config}: cannot write the configuration: ")
        assert "Traceback" not in err

    def test_refuses_what_the_daemon_would_refuse(self, cli: CLI, tmp_path: Path) -> None:
        config = tmp_path / "config.yaml"
        _, err = init(cli, config, "--repo", "ext::sh -c id", "--node", "web-1", check=1)
        assert "transport helpers (x::) are not allowed" in err
        _, err = init(cli, config, "--repo", "/srv/repo", "--node", "web 1\n", check=1)
        assert "node name 'web 1\\n'" in err
        assert not config.exists()
