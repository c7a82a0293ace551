"""Data merged per key, free keys, lookup() and %{...}, through the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from reconciler.resources.base import digest
from tests.conftest import CLI

REPO = {
    "reconciler.yaml": """
        hierarchy:
          - nodes/{node}.yaml
          - roles/{role}.yaml
          - common.yaml
        lookup_options:
          app.override_options: {merge: hash}
          app.settings: {merge: deep, knockout_prefix: "--"}
          /^app\\.pack/: {merge: unique}
        """,
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": """
        params:
          override_options: {}
          settings: {}
          packages: []
        resources:
          - file: /etc/app.json
            content: "{{ params | to_json }}\\n"
          - file: /etc/ntp.conf
            template: ntp.conf.j2
          - file: /etc/motd
            content: "{{ lookup('motd_text', default='no motd today') }}\\n"
        """,
    "templates/ntp.conf.j2": """
        {% for server in lookup('ntp_servers') %}
        server {{ server }} iburst
        {% endfor %}
        """,
    "data/common.yaml": """
        lookup_options:
          ntp_servers: {merge: unique}
        app:
          override_options: {max_conn: 10, timeout: 30}
          settings:
            log: {level: info, format: json}
            users: [alice, bob]
          packages: [curl, vim]
        ntp_servers: [0.pool.ntp.org, 1.pool.ntp.org]
        """,
    "data/nodes/n1.yaml": """
        app:
          override_options: {timeout: 5}
          settings:
            log: {level: debug, --format: ~}
            users: [carol, --bob]
          packages: [htop, curl]
        ntp_servers: [ntp.internal, 0.pool.ntp.org]
        """,
}


def written(cli: CLI, path: str) -> str:
    return (cli.root / path.lstrip("/")).read_text()


class TestMergedData:
    def test_hash_deep_knockout_and_unique_reach_the_files(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(REPO)
        cli.run("apply", repo, "--node", "n1", check=2)
        params = json.loads(written(cli, "/etc/app.json"))
        # hash: the node's timeout over the common mapping, whose max_conn stays
        assert params["override_options"] == {"max_conn": 10, "timeout": 5}
        # deep: nested keys merged; --format removes a key, --bob a list item set below
        assert params["settings"] == {"log": {"level": "debug"}, "users": ["carol", "alice"]}
        # unique (by a /regex/ key): the node's items first, then common's, once each
        assert params["packages"] == ["htop", "curl", "vim"]
        # a free key merged as a data file's lookup_options say, read by lookup() in a template
        assert written(cli, "/etc/ntp.conf") == (
            "server ntp.internal iburst\nserver 0.pool.ntp.org iburst\n"
            "server 1.pool.ntp.org iburst\n"
        )
        # lookup() of a key no level has gives its default
        assert written(cli, "/etc/motd") == "no motd today\n"

    def test_without_lookup_options_the_first_level_wins(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        files = {
            **REPO,
            "reconciler.yaml": "hierarchy: ['nodes/{node}.yaml', common.yaml]\n",
            "data/common.yaml": "\n".join(REPO["data/common.yaml"].splitlines()[3:]),
        }
        repo = make_repo(files)
        cli.run("apply", repo, "--node", "n1", check=2)
        params = json.loads(written(cli, "/etc/app.json"))
        assert params["override_options"] == {"timeout": 5}
        assert params["packages"] == ["htop", "curl"]
        assert written(cli, "/etc/ntp.conf") == (
            "server ntp.internal iburst\nserver 0.pool.ntp.org iburst\n"
        )

    def test_explain_names_the_level_file_and_line_of_each_piece(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(REPO)
        done = cli("explain", "app.settings", "--node", "n1", "--repo", str(repo), check=0)
        out = done.stdout
        assert 'app.settings = {"log": {"level": "debug"}, "users": ["carol", "alice"]}' in out
        assert "merged (deep) from 2 level(s), first level first:" in out
        assert "data level 'nodes/{node}.yaml': data/nodes/n1.yaml:3 at working tree" in out
        assert "data level 'common.yaml': data/common.yaml:5 at working tree" in out
        assert "log: from data/nodes/n1.yaml:4, data/common.yaml:6" in out
        assert "users: from data/nodes/n1.yaml:5, data/common.yaml:7" in out
        done = cli("explain", "ntp_servers", "--node", "n1", "--repo", str(repo), check=0)
        out = done.stdout
        assert 'ntp_servers = ["ntp.internal", "0.pool.ntp.org", "1.pool.ntp.org"]' in out
        assert "merged (unique) from 2 level(s)" in out
        assert '"ntp.internal": from data/nodes/n1.yaml:7' in out
        assert '"1.pool.ntp.org": from data/common.yaml:9' in out

    def test_explain_of_a_merged_sensitive_parameter_shows_digests(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        profile = REPO["profiles/app.yaml"].replace(
            "        resources:", "        sensitive_params: [packages]\n        resources:"
        )
        repo = make_repo({**REPO, "profiles/app.yaml": profile})
        done = cli("explain", "app.packages", "--node", "n1", "--repo", str(repo), check=0)
        assert "merged (unique) from 2 level(s)" in done.stdout
        assert f"{digest(json.dumps('vim'))}: from data/common.yaml:8" in done.stdout
        for name in ("htop", "curl", "vim"):
            assert name not in done.stdout

    def test_a_lookup_without_default_of_a_missing_key_is_an_error(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {**REPO, "templates/ntp.conf.j2": "{{ lookup('ntp_pool') }}\n"}, name="missing"
        )
        done = cli.run("apply", repo, "--node", "n1", check=1)
        assert (
            "templates/ntp.conf.j2:1: template error: lookup('ntp_pool'): no data level has "
            "'ntp_pool' (searched: data/nodes/n1.yaml, data/common.yaml), and no default= was "
            "given" in done.stderr
        )
        assert not (cli.root / "etc/app.json").exists()


class TestInterpolation:
    FILES = {
        "nodes.yaml": "default: app\n",
        "roles/app.yaml": "profiles: [app]\n",
        "profiles/app.yaml": """
            params:
              banner: ""
              servers: []
            resources:
              - file: /etc/banner
                content: "{{ params.banner }} {{ params.servers | join(',') }}\\n"
            """,
        "data/common.yaml": """
            db_host: "db.%{facts.datacenter}.example.com"
            pool: [a.example.com, b.example.com]
            app:
              banner: "%{facts.networking.fqdn} uses %{lookup('db_host')}; {{ not rendered }}"
              servers: "%{lookup('pool')}"
            """,
    }

    def facts(self, tmp_path: Path) -> str:
        path = tmp_path / "facts.json"
        path.write_text(json.dumps({"datacenter": "ams1", "networking": {"fqdn": "n1.lan"}}))
        return str(path)

    def test_facts_and_keys_are_substituted(
        self, cli: CLI, make_repo: Callable[..., Path], tmp_path: Path
    ) -> None:
        repo = make_repo(self.FILES)
        cli.run("apply", repo, "--node", "n1", "--facts", self.facts(tmp_path), check=2)
        assert written(cli, "/etc/banner") == (
            "n1.lan uses db.ams1.example.com; {{ not rendered }} a.example.com,b.example.com\n"
        )

    def test_a_cycle_is_an_error_naming_the_chain(
        self, cli: CLI, make_repo: Callable[..., Path], tmp_path: Path
    ) -> None:
        files = {
            **self.FILES,
            "data/common.yaml": """
                db_host: "%{lookup('db_alias')}"
                db_alias: "primary-%{lookup('db_host')}"
                app:
                  banner: "uses %{lookup('db_host')}"
                """,
        }
        repo = make_repo(files)
        done = cli.run("apply", repo, "--node", "n1", "--facts", self.facts(tmp_path), check=1)
        assert (
            "data/common.yaml:2, key 'db_alias': interpolation cycle: "
            "db_host (data/common.yaml:1) -> db_alias (data/common.yaml:2) -> db_host"
            in done.stderr
        )
        assert not (cli.root / "etc/banner").exists()
