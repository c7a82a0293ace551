"""Apps with parameters read from data, and several instances of one app definition, through
the real CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CLI

RGBANK = """
    version: "2.0"
    params:
      port: 8080
      db: rgbank
    instances:
      staging:
        version: "2.1"
        params: {db: rgbank_staging}
        nodes: {facts: {env: staging}}
      production:
        nodes: {facts: {env: production}}
    components:
      - name: web
        nodes: {role: app}
        resources:
          - file: "/etc/{{ app.name }}.conf"
            content: "{{ app.definition }} {{ app.instance }} {{ app.version }} {{ params.db }}:{{ params.port }}\\n"
"""
REPO = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: []\n",
    "apps/rgbank.yaml": RGBANK,
}


def facts(make_repo: Callable[..., Path], env: str) -> str:
    return str(make_repo({"f.yaml": f"env: {env}\n"}, name=f"facts-{env}") / "f.yaml")


class TestAppInstances:
    def test_each_instance_runs_where_it_is_meant_to_with_its_own_params_and_keys(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **REPO,
                "data/common.yaml": "app:rgbank: {port: 9000}\napp:rgbank-staging: {port: 9001}\n",
            }
        )
        done = cli.run(
            "apply",
            repo,
            "--node",
            "s1",
            "--facts",
            facts(make_repo, "staging"),
            "--format",
            "json",
        )
        assert done.returncode == 2, done.stderr
        assert (cli.root / "etc/rgbank-staging.conf").read_text() == (
            "rgbank staging 2.1 rgbank_staging:9001\n"
        )
        assert not (cli.root / "etc/rgbank-production.conf").exists()
        apps = json.loads(done.stdout)["apps"]
        assert [(a["app"], a["component"]) for a in apps] == [("rgbank-staging", "web")]
        store = cli.state / "coordination" / "apps"
        assert sorted(p.name for p in store.iterdir()) == ["rgbank-staging"]

        cli.run("apply", repo, "--node", "p1", "--facts", facts(make_repo, "production"), check=2)
        assert (cli.root / "etc/rgbank-production.conf").read_text() == (
            "rgbank production 2.0 rgbank:9000\n"
        )
        assert sorted(p.name for p in store.iterdir()) == ["rgbank-production", "rgbank-staging"]

    def test_app_data_and_instance_params_are_checked(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **REPO,
                "apps/rgbank.yaml": RGBANK.replace("{db: rgbank_staging}", "{dbb: x}"),
                "data/common.yaml": "app:rgbank: {port: high}\napp:rgbnk: {}\n",
            }
        )
        done = cli.run("apply", repo, "--node", "s1", "--facts", facts(make_repo, "staging"))
        assert done.returncode == 1
        assert (
            "apps/rgbank.yaml:8, key 'instances.staging.params.dbb': app 'rgbank' has no "
            "parameter 'dbb' (did you mean 'db'?)" in done.stderr
        )
        repo = make_repo(
            {**REPO, "data/common.yaml": "app:rgbank: {port: high}\napp:rgbnk: {}\n"}, name="r2"
        )
        done = cli.run("apply", repo, "--node", "s1", "--facts", facts(make_repo, "staging"))
        assert done.returncode == 1
        assert (
            "data/common.yaml:1, key 'app:rgbank.port': expected an integer like the default at "
            "apps/rgbank.yaml:3, got a string" in done.stderr
        )
        assert "data/common.yaml:2, key 'app:rgbnk': no app named 'rgbnk' (did you mean " in (
            done.stderr
        )

    def test_instances_by_trusted_facts_and_a_name_clash(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        app = """
            version: "1"
            instances:
              linux: {nodes: {trusted: {kernel.name: Linux}}}
              plan9: {nodes: {trusted: {kernel.name: Plan9}}}
            components:
              - name: c
                nodes: {role: app}
                resources:
                  - file: "/etc/{{ app.name }}"
        """
        repo = make_repo({**REPO, "apps/rgbank.yaml": app})
        spoof = make_repo({"f.yaml": "kernel: {name: Plan9}\n"}, name="spoof")
        cli.run("apply", repo, "--node", "n1", "--facts", str(spoof / "f.yaml"), check=2)
        assert (cli.root / "etc/rgbank-linux").exists()
        assert not (cli.root / "etc/rgbank-plan9").exists()
        plain = 'version: "1"\ncomponents:\n  - name: c\n    nodes: {role: app}\n'
        clash = make_repo(
            {**REPO, "apps/rgbank.yaml": app, "apps/rgbank-linux.yaml": plain},
            name="clash",
        )
        done = cli.run("apply", clash, "--node", "n1", check=1)
        assert (
            "two apps are named 'rgbank-linux' (instance 'linux' of apps/rgbank.yaml and "
            "apps/rgbank-linux.yaml): rename one" in done.stderr
        )
