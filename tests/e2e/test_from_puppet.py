"""The example translated from a Puppet control repo (reconciler/examples/from-puppet), driven
through the real CLI: every node validates, and each role's node applies into a root of its
own, showing the translated Hiera and Puppet constructs in the files it writes.

The example's eyaml value is encrypted for a key pair nobody has; the tests make a key pair
with the real ``eyaml createkeys``, encrypt a password with the real ``eyaml`` and put it in a
copy of the example, as a user replacing the value would.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from reconciler.resources.base import digest
from tests.conftest import CLI, EXAMPLE, seed_root
from tests.e2e.test_secrets import eyaml_encrypt, eyaml_keys

FROM_PUPPET = EXAMPLE.parent / "from-puppet"
NODES = ("db01.example.com", "web01.example.com", "web02.example.com", "lb01.example.com")
ROOT_PASSWORD = "mysql-root-Hq73pZ0w"
# What a real node would gather; `sandbox` leaves packages and services out, as the example
# says, since a scratch root has no package database nor systemd of its own.
FACTS = "environment: {env}\nsandbox: true\nos: {{family: Debian, name: Debian}}\n"


class Site:
    """A copy of the example whose eyaml value is encrypted for a fresh key pair, and nodes
    that each apply into a root of their own, coordinating through one local store."""

    def __init__(self, tmp: Path, cli: CLI) -> None:
        self.tmp = tmp
        self.cli = cli
        self.repo = tmp / "repo"
        shutil.copytree(FROM_PUPPET, self.repo)
        self.private, self.public = eyaml_keys(tmp / "eyaml")
        block = eyaml_encrypt(ROOT_PASSWORD, self.private, self.public, "block")
        common = self.repo / "data/common.yaml"
        indented = "\n".join("    " + line.strip() for line in block.splitlines())
        text, count = re.subn(r" {4}ENC\[PKCS7,[^\]]*\]", lambda _: indented, common.read_text())
        assert count == 1
        common.write_text(text)

    def facts(self, env: str) -> Path:
        path = self.tmp / f"facts-{env}.yaml"
        path.write_text(FACTS.format(env=env))
        return path

    def root(self, node: str) -> Path:
        return self.tmp / "nodes" / node / "root"

    def config(self, node: str) -> Path:
        path = self.tmp / "nodes" / node / "config.yaml"
        seed_root(self.root(node))
        path.write_text(
            f"node: {node}\n"
            f"secrets:\n  eyaml_private_key: {self.private}\n  eyaml_public_key: {self.public}\n"
            f"coordination:\n  backend: local\n  path: {self.tmp / 'coordination'}\n"
        )
        return path

    def run(self, command: str, node: str, env: str = "production", check: int | None = 2) -> str:
        done = self.cli(
            command,
            "--repo",
            str(self.repo),
            "--config",
            str(self.config(node)),
            "--root",
            str(self.root(node)),
            "--state-dir",
            str(self.tmp / "nodes" / node / "state"),
            "--facts",
            str(self.facts(env)),
            check=check,
        )
        assert ROOT_PASSWORD not in done.stdout + done.stderr
        return done.stdout

    def read(self, node: str, path: str) -> str:
        return (self.root(node) / path.lstrip("/")).read_text()


@pytest.fixture
def site(tmp_path: Path, cli: CLI) -> Site:
    return Site(tmp_path, cli)


@pytest.mark.parametrize("env", [None, "production", "staging"])
def test_every_node_of_the_example_validates(cli: CLI, tmp_path: Path, env: str | None) -> None:
    nodes = [arg for node in (*NODES, "other.example.com") for arg in ("--node", node)]
    facts: list[str] = []
    if env is not None:
        (tmp_path / "facts.yaml").write_text(FACTS.format(env=env))
        facts = ["--facts", str(tmp_path / "facts.yaml")]

    done = cli("validate", "--repo", str(FROM_PUPPET), *nodes, *facts, check=0)

    assert "valid" in done.stdout
    assert "warning" not in done.stderr
    roles = ("database", "webserver", "webserver", "loadbalancer")
    for node, role in zip(NODES, roles, strict=True):
        assert f"{node}: role {role}," in done.stdout
    assert "other.example.com: role base," in done.stdout


def test_the_committed_secret_is_for_a_key_pair_nobody_has(cli: CLI, tmp_path: Path) -> None:
    # The db node cannot use the example as committed: its value must be replaced.
    (tmp_path / "facts.yaml").write_text(FACTS.format(env="production"))
    done = cli.run(
        "plan", FROM_PUPPET, "--node", NODES[0], "--facts", str(tmp_path / "facts.yaml"), check=1
    )

    assert "key 'mysql.root_password': cannot decrypt ENC[PKCS7,...]" in done.stderr


def test_the_database_node_merges_its_data_and_decrypts_the_eyaml_password(site: Site) -> None:
    out = site.run("apply", "db01.example.com")
    db = "db01.example.com"

    # mysql.override_options, deep-merged: common.yaml, then production's, then the node's,
    # whose knockout removes common's query_cache_size.
    assert site.read(db, "/etc/mysql/conf.d/zz-reconciler.cnf") == (
        "# Managed by reconciler: mysql::server's override_options, merged from data.\n"
        "[client]\n"
        "default-character-set = utf8mb4\n"
        "\n"
        "[mysqld]\n"
        "bind-address = 0.0.0.0\n"  # production
        "character-set-server = utf8mb4\n"  # common
        "innodb_buffer_pool_size = 2G\n"  # production
        "max_connections = 800\n"  # the node, over production's 500
        "\n"
    )
    # The eyaml value, decrypted with the node's key pair; shown only as a digest.
    my_cnf = site.root(db) / "root/.my.cnf"
    assert my_cnf.read_text() == f"[client]\nuser=root\npassword={ROOT_PASSWORD}\n"
    assert my_cnf.stat().st_mode & 0o777 == 0o600
    assert digest(my_cnf.read_text())[: len("sha256:") + 12] + "…" in out  # text shortens it
    # create_resources('mysql_db', $databases): one instance of the defined type per entry.
    assert site.read(db, "/etc/mysql/databases/rgbank.sql") == (
        "CREATE DATABASE IF NOT EXISTS `rgbank`;\n"
        "GRANT ALL PRIVILEGES ON `rgbank`.* TO 'rgbank'@'localhost';\n"
    )
    # base.sysctl, hash-merged: the node's swappiness, common's somaxconn.
    assert "vm.swappiness = 1\n" in site.read(db, "/etc/sysctl.d/60-reconciler.conf")
    assert "net.core.somaxconn = 1024\n" in site.read(db, "/etc/sysctl.d/60-reconciler.conf")
    # notify and subscribe sent their refreshes (recorded by the sandbox's execs).
    refreshes = site.read(db, "/var/log/refreshes.log").splitlines()
    assert sorted(refreshes) == ["load rgbank", "restart mysql", "sysctl --system"]
    assert site.read(db, "/etc/motd").startswith("db01.example.com (database, production)\n")
    # The app's db component deployed here, and the node is in sync afterwards.
    assert "app rgbank-production/db" in out
    assert site.read(db, "/var/lib/rgbank/rgbank-production.schema") == (
        "-- rgbank-production schema 1.2.0 in database rgbank\n"
    )
    site.run("plan", db, check=0)


def test_web_nodes_get_environment_and_node_data_and_vhosts_from_the_defined_type(
    site: Site,
) -> None:
    site.run("apply", "web01.example.com")
    site.run("apply", "web02.example.com")
    web01, web02 = "web01.example.com", "web02.example.com"

    # Per-environment (production: 300 workers, ops@) and per-node (web02: 500) overrides.
    tuning = "/etc/apache2/conf-enabled/tuning.conf"
    assert "MaxRequestWorkers 300\n" in site.read(web01, tuning)
    assert "MaxRequestWorkers 500\n" in site.read(web02, tuning)
    assert "ServerAdmin ops@example.com\n" in site.read(web01, tuning)
    # The free key db_host, per environment, through %{lookup('db_host')} in common.yaml.
    assert "host = db01.example.com\n" in site.read(web01, "/etc/rgbank/config.ini")

    # vhosts: one the rgbank profile declares, and those apache.vhosts (hash-merged) gives
    # through for_each: status.local from common.yaml on both, canary on web02 alone.
    for node in (web01, web02):
        enabled = site.root(node) / "etc/apache2/sites-enabled"
        names = {"10-status.local.conf", "25-rgbank.example.com.conf"}
        if node == web02:
            names.add("25-canary.example.com.conf")
        assert {p.name for p in enabled.iterdir()} == names
        for name in names:
            assert (enabled / name).readlink() == Path("../sites-available", name)
        assert (site.root(node) / "var/www/rgbank").is_dir()
    rgbank = site.read(web01, "/etc/apache2/sites-available/25-rgbank.example.com.conf")
    assert "Listen 8080\n<VirtualHost *:8080>\n    ServerName rgbank.example.com\n" in rgbank
    assert "    DocumentRoot /var/www/rgbank\n" in rgbank
    canary = site.read(web02, "/etc/apache2/sites-available/25-canary.example.com.conf")
    assert "    ServerAlias canary\n    ServerAlias canary.internal\n" in canary
    assert "<VirtualHost *:80>\n" in canary
    assert "reload apache2" in site.read(web01, "/var/log/refreshes.log")


def test_a_staging_node_reads_the_staging_level(site: Site) -> None:
    out = site.run("apply", "web01.example.com", env="staging")
    web = "web01.example.com"

    assert "host = db01.staging.example.com\n" in site.read(web, "/etc/rgbank/config.ini")
    assert "name = rgbank.staging.example.com\n" in site.read(web, "/etc/rgbank/config.ini")
    assert "MaxRequestWorkers 150\n" in site.read(web, "/etc/apache2/conf-enabled/tuning.conf")
    # The staging instance of the app, at its own version, waits for its own database.
    assert "app rgbank-staging/web 1.3.0-rc1: waiting" in out


def test_the_app_rolls_out_database_then_web_then_load_balancer(site: Site) -> None:
    lb = "lb01.example.com"
    assert "app rgbank-production/web 1.2.0: waiting" in site.run("apply", "web01.example.com")
    assert not (
        site.root("web01.example.com") / "var/www/rgbank/rgbank-production.release"
    ).exists()

    site.run("apply", "db01.example.com")
    for web in ("web01.example.com", "web02.example.com"):
        site.run("apply", web)
        assert site.read(web, "/var/www/rgbank/rgbank-production.release") == "1.2.0\n"
    out = site.run("apply", lb)

    assert "app rgbank-production/lb" in out and "waiting" not in out
    assert site.read(lb, "/etc/haproxy/rgbank-production.release") == "1.2.0\n"
    # The members are data of the environment (what exported resources gave in Puppet).
    haproxy = site.read(lb, "/etc/haproxy/haproxy.cfg")
    assert "    server web01 web01.example.com:8080 check\n" in haproxy
    assert "    server web02 web02.example.com:8080 check\n" in haproxy
    # haproxy.global_options, deep-merged: production's maxconn over common's, common's log.
    assert "global\n    log /dev/log local0\n    maxconn 20000\n\n" in haproxy
    for node in NODES:
        site.run("plan", node, check=0)


def test_explain_shows_the_unique_merge_of_packages(cli: CLI, tmp_path: Path) -> None:
    (tmp_path / "facts.yaml").write_text(FACTS.format(env="production"))
    done = cli(
        "explain", "base.packages", "--node", "lb01.example.com", "--repo", str(FROM_PUPPET),
        "--facts", str(tmp_path / "facts.yaml"), check=0,
    )  # fmt: skip

    first = done.stdout.splitlines()[0]
    assert first.startswith(
        'base.packages = ["apt-transport-https", "curl", "vim-tiny", "chrony"]'
    ), first
    assert "merged (unique) from 2 level(s)" in done.stdout
