"""Reuse and generation through the real CLI: defined types, for_each, included profiles,
defaults per profile and assertions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import CLI

VHOST = """\
params:
  port: {type: integer, default: 80}
  docroot: "/srv/www/{{ title }}"
  aliases: {type: list, default: []}
resources:
  - directory: "{{ params.docroot }}"
  - file: "/etc/nginx/sites/{{ title }}.conf"
    content: |
      server {{ title }} {{ params.aliases | join(' ') }}
      listen {{ params.port }}
      root {{ params.docroot }}
    notify: exec:reload-nginx
"""

WEB = {
    "nodes.yaml": "default: web\n",
    "roles/web.yaml": "profiles: [web]\n",
    "types/vhost.yaml": VHOST,
}


def ids(done: Any) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in json.loads(done.stdout)["resources"]}


class TestDefinedTypes:
    def test_a_type_used_twice_makes_two_sets_of_resources(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **WEB,
                "profiles/web.yaml": """
                    resources:
                      - directory: /etc/nginx
                      - directory: /etc/nginx/sites
                      - directory: /srv/www
                      - vhost: shop
                        port: 8080
                        aliases: [www.shop.test]
                      - vhost: blog
                      - exec: reload-nginx
                        command: "echo reloaded >> $RECONCILER_ROOT/var/log/reloads"
                        refreshonly: true
                """,
            }
        )
        done = cli.run("apply", repo, "--node", "w1", "--format", "json", check=2)
        assert {
            "vhost[shop]/file:/etc/nginx/sites/shop.conf",
            "vhost[blog]/file:/etc/nginx/sites/blog.conf",
            "vhost[blog]/directory:/srv/www/blog",
        } <= set(ids(done))
        assert (cli.root / "etc/nginx/sites/shop.conf").read_text() == (
            "server shop www.shop.test\nlisten 8080\nroot /srv/www/shop\n"
        )
        assert (cli.root / "etc/nginx/sites/blog.conf").read_text() == (
            "server blog \nlisten 80\nroot /srv/www/blog\n"
        )
        assert (cli.root / "srv/www/shop").is_dir() and (cli.root / "srv/www/blog").is_dir()
        assert (cli.root / "var/log/reloads").read_text() == "reloaded\n"
        cli.run("apply", repo, "--node", "w1", check=0)

    def test_a_relationship_to_an_instance_reaches_each_of_its_resources(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **WEB,
                "types/vhost.yaml": VHOST.replace("    notify: exec:reload-nginx\n", ""),
                "profiles/web.yaml": """
                    resources:
                      - exec: check-sites
                        command: "ls $RECONCILER_ROOT/etc/nginx/sites > $RECONCILER_ROOT/var/log/sites"
                        creates: /var/log/sites
                        require: vhost:shop
                      - directory: /etc/nginx
                      - directory: /etc/nginx/sites
                      - directory: /srv/www
                      - vhost: shop
                        before: file:/etc/motd
                      - file: /etc/motd
                        content: "after shop\\n"
                """,
            }
        )
        done = cli.run("apply", repo, "--node", "w1", "--format", "json", check=2)
        order = [r["id"] for r in json.loads(done.stdout)["resources"]]
        for member in (
            "vhost[shop]/directory:/srv/www/shop",
            "vhost[shop]/file:/etc/nginx/sites/shop.conf",
        ):
            assert order.index(member) < order.index("exec:check-sites")
            assert order.index(member) < order.index("file:/etc/motd")
        assert (cli.root / "var/log/sites").read_text() == "shop.conf\n"

    def test_errors_in_an_instance_name_the_use_and_the_definition(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **WEB,
                "types/vhost.yaml": VHOST + "  - file: /etc/x\n    content: '{{ params.nope }}'\n",
                "profiles/web.yaml": """
                    resources:
                      - vhost: shop
                        port: "eighty"
                      - vhost: blog
                        prot: 81
                """,
            }
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert (
            "profiles/web.yaml:3, key 'port': vhost[shop]: parameter 'port' must be an integer, "
            "not a string (declared at types/vhost.yaml:2, key 'params.port')" in done.stderr
        )
        assert (
            "profiles/web.yaml:5, key 'prot': unknown parameter 'prot' for vhost "
            "(types/vhost.yaml) (did you mean 'port'?)" in done.stderr
        )
        repo = make_repo(
            {
                **WEB,
                "types/vhost.yaml": VHOST + "  - file: /etc/x\n    content: '{{ params.nope }}'\n",
                "profiles/web.yaml": "resources:\n  - vhost: shop\n",
            },
            name="repo2",
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert "types/vhost.yaml:14, key 'content': expression error:" in done.stderr
        assert "(in vhost[shop], used at profiles/web.yaml:2)" in done.stderr

    def test_a_type_named_like_a_builtin_and_types_using_each_other_are_errors(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **WEB,
                "types/file.yaml": "resources: []\n",
                "types/a.yaml": "resources:\n  - b: '{{ title }}'\n",
                "types/b.yaml": "resources:\n  - a: '{{ title }}'\n",
                "profiles/web.yaml": "resources:\n  - a: one\n",
            }
        )
        done = cli("validate", "--repo", str(repo), "--node", "w1", check=1)
        assert "types/file.yaml: a defined type may not be named like the built-in type 'file'" in (
            done.stdout + done.stderr
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert "defined types use each other: a -> b -> a" in done.stderr

    def test_two_instances_declaring_one_file_is_an_error_naming_both(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **WEB,
                "types/motd.yaml": "resources:\n  - file: /etc/motd\n    content: '{{ title }}'\n",
                "profiles/web.yaml": "resources:\n  - motd: one\n  - motd: two\n  - motd: one\n",
            }
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert (
            "types/motd.yaml:2: motd[two]/file:/etc/motd and motd[one]/file:/etc/motd both manage "
            "file:/etc/motd (motd[two] used at profiles/web.yaml:3; motd[one] used at "
            "profiles/web.yaml:2)" in done.stderr
        )
        assert "profiles/web.yaml:4: duplicate motd:one (also declared at profiles/web.yaml:2)" in (
            done.stderr
        )


class TestForEach:
    REPO = {
        "nodes.yaml": "default: web\n",
        "roles/web.yaml": "profiles: [users]\n",
        "types/site.yaml": "params:\n  port: 80\nresources:\n"
        "  - file: '/etc/sites/{{ title }}'\n    content: '{{ params.port }}'\n",
    }

    def test_resources_from_a_list_and_a_mapping_in_data(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **self.REPO,
                "profiles/users.yaml": """
                    params:
                      motd_lines: []
                      sites: {}
                    resources:
                      - directory: /etc/sites
                      - file: "/etc/motd.d/{{ item }}"
                        for_each: params.motd_lines
                        content: "{{ item | upper }}\\n"
                        when: "item != 'skip'"
                      - directory: /etc/motd.d
                      - site: "{{ key }}"
                        for_each: "{{ params.sites }}"
                        port: "{{ item.port }}"
                """,
                "data/common.yaml": """
                    users:
                      motd_lines: [hello, world, skip]
                      sites: {shop: {port: 8080}, blog: {port: 8081}}
                """,
            }
        )
        cli.run("apply", repo, "--node", "w1", check=2)
        assert sorted(p.name for p in (cli.root / "etc/motd.d").iterdir()) == ["hello", "world"]
        assert (cli.root / "etc/motd.d/world").read_text() == "WORLD\n"
        assert (cli.root / "etc/sites/shop").read_text() == "8080"
        assert (cli.root / "etc/sites/blog").read_text() == "8081"
        cli.run("apply", repo, "--node", "w1", check=0)

    def test_resources_from_facts(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = make_repo(
            {
                **self.REPO,
                "profiles/users.yaml": """
                    resources:
                      - directory: "/srv/{{ item.name }}"
                        for_each: facts.volumes
                        mode: "{{ item.mode }}"
                """,
            }
        )
        facts = make_repo(
            {"f.yaml": "volumes: [{name: data, mode: '0700'}, {name: logs, mode: '0755'}]\n"},
            name="facts",
        )
        cli.run("apply", repo, "--node", "w1", "--facts", str(facts / "f.yaml"), check=2)
        assert (cli.root / "srv/data").stat().st_mode & 0o777 == 0o700
        assert (cli.root / "srv/logs").stat().st_mode & 0o777 == 0o755

    def test_titles_must_stay_unique_and_the_value_must_be_a_list_or_mapping(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **self.REPO,
                "profiles/users.yaml": """
                    resources:
                      - file: "/etc/{{ item | lower }}"
                        for_each: [a, B, b]
                      - file: /etc/x
                        for_each: "facts.processors"
                """,
            }
        )
        facts = make_repo({"facts.yaml": "processors: 4\n"}, name="facts")
        done = cli.run("apply", repo, "--node", "w1", "--facts", str(facts / "facts.yaml"), check=1)
        assert (
            "profiles/users.yaml:3, key 'for_each': for_each gives file:/etc/b twice "
            "(items 1 and 2): titles must be unique" in done.stderr
        )
        assert (
            "profiles/users.yaml:5, key 'for_each': for_each must give a list or a mapping, "
            "not an integer" in done.stderr
        )

    def test_a_huge_for_each_is_refused(self, cli: CLI, make_repo: Callable[..., Path]) -> None:
        repo = make_repo(
            {
                **self.REPO,
                "profiles/users.yaml": """
                    resources:
                      - file: "/etc/f{{ item }}"
                        for_each: "(range(60000) | list) + (range(40001) | list)"
                """,
            }
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert (
            "profiles/users.yaml:3, key 'for_each': for_each gives 100001 items; at most 100000 "
            "are allowed" in done.stderr
        )


class TestProfiles:
    def test_included_profiles_join_once_and_defaults_apply_to_the_profile(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: web\n",
                "roles/web.yaml": "profiles: [web, base]\n",
                "profiles/base.yaml": """
                    include: [motd]
                    resources:
                      - file: /etc/base
                        content: "base\\n"
                """,
                "profiles/motd.yaml": """
                    params:
                      text: hello
                    resources:
                      - file: /etc/motd
                        content: "{{ params.text }}\\n"
                """,
                "profiles/web.yaml": """
                    include: [base, motd]
                    defaults:
                      file: {mode: "0600"}
                    resources:
                      - file: /etc/web
                        content: "web\\n"
                      - file: /etc/web-public
                        content: "public\\n"
                        mode: "0644"
                """,
                "data/common.yaml": "motd: {text: from data}\n",
            }
        )
        done = cli.run("apply", repo, "--node", "w1", "--format", "json", check=2)
        order = [r["id"] for r in json.loads(done.stdout)["resources"]]
        assert order == [
            "file:/etc/motd",
            "file:/etc/base",
            "file:/etc/web",
            "file:/etc/web-public",
        ]
        assert (cli.root / "etc/motd").read_text() == "from data\n"
        assert (cli.root / "etc/web").stat().st_mode & 0o777 == 0o600
        assert (cli.root / "etc/web-public").stat().st_mode & 0o777 == 0o644
        assert (cli.root / "etc/base").stat().st_mode & 0o777 != 0o600  # not web's defaults

    def test_include_cycles_and_bad_defaults_are_named(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: web\n",
                "roles/web.yaml": "profiles: [a]\n",
                "profiles/a.yaml": "include: [b]\n",
                "profiles/b.yaml": "include: [c]\n",
                "profiles/c.yaml": "include: [a]\ndefaults:\n  file: {ownr: root}\n  fiel: {}\n",
            }
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert (
            "profiles/c.yaml:1, key 'include': profiles include each other: a -> b -> c -> a"
            in done.stderr
        )
        assert (
            "profiles/c.yaml:3, key 'ownr': unknown attribute 'ownr' for file "
            "(did you mean 'owner'?)" in done.stderr
        )
        assert "profiles/c.yaml:4, key 'defaults.fiel': no type named 'fiel' (did you mean " in (
            done.stderr
        )


class TestAssertions:
    def test_a_failing_assertion_stops_the_compile_with_its_message(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: web\n",
                "roles/web.yaml": """
                    profiles: [web]
                    assert:
                      - that: "node.startswith('w')"
                        message: "web nodes are named w*, not {{ node }}"
                """,
                "profiles/web.yaml": """
                    params:
                      port: 80
                    assert:
                      - that: "params.port > 1024"
                        message: "port {{ params.port }} needs root; use one above 1024"
                    resources:
                      - file: /etc/web
                        content: "{{ params.port }}"
                """,
            }
        )
        done = cli.run("apply", repo, "--node", "x1", check=1)
        assert (
            "profiles/web.yaml:4, key 'assert': assertion failed: port 80 needs root; "
            "use one above 1024" in done.stderr
        )
        assert (
            "roles/web.yaml:3, key 'assert': assertion failed: web nodes are named w*, not x1"
            in done.stderr
        )
        assert not (cli.root / "etc/web").exists()
        data = make_repo({"data/common.yaml": "web: {port: 8080}\n"}, name="repo")
        cli.run("apply", data, "--node", "w1", check=2)
        assert (cli.root / "etc/web").read_text() == "8080"


class TestInstanceOptions:
    def test_when_noop_required_parameters_and_defaults_for_a_defined_type(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        files = {
            "nodes.yaml": "default: web\n",
            "roles/web.yaml": "profiles: [web]\n",
            "types/conf.yaml": """
                params:
                  text: {type: string}
                  mode: {type: string, default: "0644"}
                resources:
                  - file: "/etc/{{ title }}"
                    content: "{{ params.text }}"
                    mode: "{{ params.mode }}"
            """,
            "profiles/web.yaml": """
                defaults:
                  conf: {mode: "0600"}
                resources:
                  - conf: applied
                    text: a
                  - conf: skipped
                    text: b
                    when: "node == 'other'"
                  - conf: dry
                    text: c
                    noop: true
            """,
        }
        repo = make_repo(files)
        cli.run("apply", repo, "--node", "w1", check=2)
        assert (cli.root / "etc/applied").read_text() == "a"
        assert (cli.root / "etc/applied").stat().st_mode & 0o777 == 0o600  # from defaults
        assert not (cli.root / "etc/skipped").exists()
        assert not (cli.root / "etc/dry").exists()  # noop: reported, not applied
        repo = make_repo(
            {
                **files,
                "profiles/web.yaml": """
                    defaults:
                      conf: {for_each: [a]}
                    resources:
                      - conf: applied
                """,
            },
            name="broken",
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert (
            "profiles/web.yaml:4: conf[applied] needs the parameter 'text' "
            "(types/conf.yaml:2, key 'params.text')" in done.stderr
        )
        assert (
            "profiles/web.yaml:2, key 'defaults.conf.for_each': 'for_each' cannot have a default"
            in (done.stderr)
        )

    def test_templates_see_the_trusted_facts(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: web\n",
                "roles/web.yaml": "profiles: [web]\n",
                "profiles/web.yaml": """
                    resources:
                      - file: /etc/kernel
                        content: "{{ facts.trusted.kernel.name }} {{ facts.kernel.name }}"
                """,
            }
        )
        facts = make_repo({"f.yaml": "kernel: {name: Plan9}\n"}, name="facts")
        cli.run("apply", repo, "--node", "w1", "--facts", str(facts / "f.yaml"), check=2)
        assert (cli.root / "etc/kernel").read_text() == "Linux Plan9"


class TestSensitiveInstances:
    def test_an_instance_given_a_sensitive_value_hides_it_everywhere(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                "nodes.yaml": "default: web\n",
                "roles/web.yaml": "profiles: [web]\n",
                "types/secret_file.yaml": """
                    params:
                      text: {type: string}
                    resources:
                      - file: "/etc/{{ title }}"
                        content: "{{ params.text }}\\n"
                """,
                "profiles/web.yaml": """
                    params:
                      password: hunter2-very-secret
                      token: tok-123456-secret
                    sensitive_params: [password]
                    resources:
                      - secret_file: db-password
                        text: "{{ params.password }}"
                      - secret_file: api-token
                        text: "{{ params.token }}"
                        sensitive: true
                      - secret_file: public
                        text: plain-visible-text
                """,
            }
        )
        cli.run("apply", repo, "--node", "w1", check=2)
        assert (cli.root / "etc/db-password").read_text() == "hunter2-very-secret\n"
        assert (cli.root / "etc/api-token").read_text() == "tok-123456-secret\n"
        for name in ("db-password", "api-token", "public"):
            (cli.root / "etc" / name).write_text("drifted\n")
        done = cli.run("plan", repo, "--node", "w1", "--format", "json", check=2)
        assert "plain-visible-text" in done.stdout  # what is not sensitive shows in the diff
        assert "hunter2" not in done.stdout and "tok-123456" not in done.stdout


class TestScopedIds:
    SVC = {
        "nodes.yaml": "default: web\n",
        "roles/web.yaml": "profiles: [web]\n",
        "types/svc.yaml": """
            resources:
              - file: "/srv/{{ title }}/conf"
                content: "{{ title }}\\n"
                notify: exec:reload
              - directory: "/srv/{{ title }}"
              - exec: reload
                command: "echo {{ title }} >> $RECONCILER_ROOT/var/log/reloads"
                refreshonly: true
        """,
    }

    def test_each_instance_has_its_own_exec_and_reaches_its_siblings(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **self.SVC,
                "profiles/web.yaml": """
                    resources:
                      - svc: a
                      - svc: b
                      - file: /etc/after-a
                        content: "x\\n"
                        require: [file:/srv/a/conf, "svc[b]/exec:reload"]
                """,
            }
        )
        done = cli.run("apply", repo, "--node", "w1", "--format", "json", check=2)
        order = [r["id"] for r in json.loads(done.stdout)["resources"]]
        assert {"svc[a]/exec:reload", "svc[b]/exec:reload"} <= set(order)
        # a file's directory comes first though declared after it, inside the instance
        assert order.index("svc[a]/directory:/srv/a") < order.index("svc[a]/file:/srv/a/conf")
        assert order.index("svc[a]/file:/srv/a/conf") < order.index("file:/etc/after-a")
        assert order.index("svc[b]/exec:reload") < order.index("file:/etc/after-a")
        reloads = (cli.root / "var/log/reloads").read_text().split()
        assert sorted(reloads) == ["a", "b"]  # each notify reached its own instance's exec

    def test_a_name_two_instances_declare_is_ambiguous(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **self.SVC,
                "profiles/web.yaml": """
                    resources:
                      - svc: a
                      - svc: b
                      - file: /etc/x
                        require: exec:reload
                """,
            }
        )
        done = cli.run("apply", repo, "--node", "w1", check=1)
        assert (
            "profiles/web.yaml:4, key 'require': file:/etc/x: require exec:reload, which several "
            "instances declare: name one of svc[a]/exec:reload, svc[b]/exec:reload" in done.stderr
        )

    def test_moving_a_resource_into_an_instance_prunes_nothing(
        self, cli: CLI, make_repo: Callable[..., Path]
    ) -> None:
        files = {
            "nodes.yaml": "default: web\n",
            "roles/web.yaml": "profiles: [web]\n",
            "reconciler.yaml": "prune: true\nallow_mass_prune: true\n",
            "types/conf.yaml": "resources:\n  - file: '/etc/{{ title }}'\n    content: kept\n",
        }
        before = make_repo(
            {**files, "profiles/web.yaml": "resources:\n  - file: /etc/kept\n    content: kept\n"}
        )
        cli.run("apply", before, "--node", "w1", check=2)
        after = make_repo({**files, "profiles/web.yaml": "resources:\n  - conf: kept\n"}, "after")
        done = cli.run("apply", after, "--node", "w1", "--format", "json")
        assert done.returncode in (0, 2), done.stderr
        assert (cli.root / "etc/kept").read_text() == "kept"
        assert set(ids(done)) == {"conf[kept]/file:/etc/kept"}  # file:/etc/kept: not pruned
