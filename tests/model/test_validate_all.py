"""validate reports every problem of a revision in one run, and a node's compile reports the
same ones for the files it uses; unknown names come with the closest known one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ModelError
from reconciler.model.catalog import Compiler, validate_repo
from reconciler.source import DirectorySnapshot

FACTS: dict[str, Any] = {"os": {"family": "Debian"}}

BASE = {
    "nodes.yaml": 'nodes:\n  - match: "web-*"\n    role: web\ndefault: base\n',
    "roles/web.yaml": "profiles: [nginx]\n",
    "roles/base.yaml": "profiles: []\n",
    "profiles/nginx.yaml": """
        params:
          port: 80
        resources:
          - file: /etc/nginx.conf
            content: "listen {{ params.port }}"
        """,
}


def validate(make_repo: Callable[..., Path], files: dict[str, str]) -> list[str]:
    repo = make_repo({**BASE, **files})
    return [str(p) for p in validate_repo(DirectorySnapshot(repo), FACTS, "web-1")]


class TestEveryFileOnItsOwn:
    def test_a_misspelt_profiles_key_hides_nothing_else(
        self, make_repo: Callable[..., Path]
    ) -> None:
        found = validate(
            make_repo,
            {
                "roles/web.yaml": "profils: [nginx]\n",
                "profiles/nginx.yaml": "resources:\n  - file: /etc/a\n    tempalte: a.j2\n",
                "data/common.yaml": "nginx:\n  prot: 81\n",
            },
        )
        assert found == [
            "data/common.yaml:2, key 'nginx.prot': profile 'nginx' has no parameter 'prot' "
            "(profiles/nginx.yaml)",
            "profiles/nginx.yaml:3, key 'tempalte': unknown attribute 'tempalte' for file "
            "(did you mean 'template'?)",
            "roles/web.yaml:1, key 'profils': unknown key 'profils' in a role "
            "(did you mean 'profiles'?)",
        ]

    def test_a_role_with_an_unknown_key_still_has_its_profiles_compiled(
        self, make_repo: Callable[..., Path]
    ) -> None:
        found = validate(
            make_repo,
            {
                "roles/web.yaml": "descripton: front\nprofiles: [nginx]\n",
                "profiles/nginx.yaml": "resources:\n  - file: /etc/a\n    mode: 644\n",
            },
        )
        assert found == [
            "profiles/nginx.yaml:3, key 'mode': must be a quoted octal string like \"0644\", "
            "not an integer",
            "roles/web.yaml:1, key 'descripton': unknown key 'descripton' in a role "
            "(did you mean 'description'?)",
        ]

    def test_a_profile_no_role_uses_is_checked(self, make_repo: Callable[..., Path]) -> None:
        found = validate(
            make_repo, {"profiles/spare.yaml": "resources:\n  - package: htop\n    ensur: x\n"}
        )
        assert found == [
            "profiles/spare.yaml:3, key 'ensur': unknown attribute 'ensur' for package "
            "(did you mean 'ensure'?)"
        ]

    def test_a_profile_with_an_unknown_key_still_has_its_resources_checked(
        self, make_repo: Callable[..., Path]
    ) -> None:
        found = validate(
            make_repo,
            {"profiles/nginx.yaml": "parms: {}\nresources:\n  - fiel: /etc/a\n"},
        )
        assert found == [
            "profiles/nginx.yaml:1, key 'parms': unknown key 'parms' in a profile "
            "(did you mean 'params'?)",
            "profiles/nginx.yaml:3: no resource type among the keys ['fiel'] "
            "(did you mean 'file'?)",
        ]

    def test_a_resource_this_node_leaves_out_is_still_checked(
        self, make_repo: Callable[..., Path]
    ) -> None:
        files = {
            "profiles/nginx.yaml": """
                resources:
                  - file: /etc/a
                    when: "facts.os.family == 'RedHat'"
                    ownr: root
                """
        }
        expected = [
            "profiles/nginx.yaml:4, key 'ownr': unknown attribute 'ownr' for file "
            "(did you mean 'owner'?)"
        ]
        assert validate(make_repo, files) == expected
        repo = make_repo({**BASE, **files}, name="again")
        with pytest.raises(ModelError) as exc:
            Compiler(DirectorySnapshot(repo)).compile("web-1", FACTS)
        assert [str(p) for p in exc.value.problems] == expected

    def test_a_nodes_entry_naming_no_role_is_reported(self, make_repo: Callable[..., Path]) -> None:
        found = validate(
            make_repo, {"nodes.yaml": 'nodes:\n  - match: "web-*"\n    role: wbe\ndefault: base\n'}
        )
        assert found == [
            "nodes.yaml:2: role 'wbe' not found (no roles/wbe.yaml) (did you mean 'web'?)"
        ]

    def test_an_app_with_an_unknown_key_still_has_its_resources_checked(
        self, make_repo: Callable[..., Path]
    ) -> None:
        app = """
            version: "1.0"
            componets: []
            components:
              - name: api
                nodes: {role: web}
                resources:
                  - file: /srv/api.conf
                    contnet: x
            """
        assert validate(make_repo, {"apps/shop.yaml": app}) == [
            "apps/shop.yaml:2, key 'componets': unknown key 'componets' in an app "
            "(did you mean 'components'?)",
            "apps/shop.yaml:8, key 'contnet': unknown attribute 'contnet' for file "
            "(did you mean 'content'?)",
        ]

    def test_a_bad_settings_file_hides_nothing_else(self, make_repo: Callable[..., Path]) -> None:
        found = validate(
            make_repo,
            {
                "reconciler.yaml": "prun: true\n",
                "profiles/nginx.yaml": "resources:\n  - file: /etc/a\n    grop: adm\n",
            },
        )
        assert found == [
            "profiles/nginx.yaml:3, key 'grop': unknown attribute 'grop' for file "
            "(did you mean 'group'?)",
            "reconciler.yaml:1, key 'prun': unknown key 'prun' in reconciler.yaml "
            "(did you mean 'prune'?)",
        ]

    def test_data_for_a_broken_profile_is_not_called_unknown(
        self, make_repo: Callable[..., Path]
    ) -> None:
        found = validate(
            make_repo,
            {
                "profiles/nginx.yaml": "params: {port: 80}\nresorces: []\n",
                "data/common.yaml": "nginx:\n  port: 81\n",
            },
        )
        assert found == [
            "profiles/nginx.yaml:2, key 'resorces': unknown key 'resorces' in a profile "
            "(did you mean 'resources'?)"
        ]

    def test_a_role_without_profiles_is_valid(self, make_repo: Callable[..., Path]) -> None:
        assert validate(make_repo, {"roles/base.yaml": "description: every other node\n"}) == []

    def test_a_problem_found_many_ways_is_listed_once_in_file_order(
        self, make_repo: Callable[..., Path]
    ) -> None:
        found = validate(
            make_repo,
            {
                "roles/web.yaml": "profiles: [nginx, zz]\n",
                "roles/api.yaml": "profiles: [nginx]\n",
                "profiles/zz.yaml": "resources:\n  - file: /etc/b\n    tempalte: b\n",
                "profiles/nginx.yaml": "resources:\n  - file: /etc/a\n    mode: 644\n",
            },
        )
        assert found == [
            "profiles/nginx.yaml:3, key 'mode': must be a quoted octal string like \"0644\", "
            "not an integer",
            "profiles/zz.yaml:3, key 'tempalte': unknown attribute 'tempalte' for file "
            "(did you mean 'template'?)",
        ]


class TestANodeSeesWhatValidateSees:
    def test_a_compile_reports_validate_s_problems_of_the_node_s_files(
        self, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **BASE,
                "roles/web.yaml": "descripton: front\nprofiles: [nginx, php]\n",
                "profiles/nginx.yaml": """
                    params:
                      port: 80
                    resources:
                      - file: /etc/nginx.conf
                        tempalte: nginx.j2
                      - file: /etc/other
                        mode: 644
                    """,
                "profiles/php.yaml": "parms: {}\nresources:\n  - package: php\n    ensur: x\n",
                "profiles/spare.yaml": "resources:\n  - servce: x\n",
                "data/common.yaml": "nginx:\n  prot: 81\n",
            }
        )
        snapshot = DirectorySnapshot(repo)
        everything = [str(p) for p in validate_repo(snapshot, FACTS, "web-1")]
        with pytest.raises(ModelError) as exc:
            Compiler(snapshot).compile("web-1", FACTS)
        used = ("nodes.yaml", "roles/web.yaml", "profiles/nginx", "profiles/php", "data/")
        assert [str(p) for p in exc.value.problems] == [p for p in everything if p.startswith(used)]
        assert len(exc.value.problems) == 6
        assert any(p.startswith("profiles/spare.yaml:2") for p in everything)

    def test_a_data_file_that_does_not_parse_hides_nothing_from_a_compile(
        self, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {
                **BASE,
                "profiles/nginx.yaml": "resources:\n  - file: /etc/a\n    tempalte: a\n",
                "data/common.yaml": "nginx: [\n",
            }
        )
        with pytest.raises(ModelError) as exc:
            Compiler(DirectorySnapshot(repo)).compile("web-1", FACTS)
        found = [str(p) for p in exc.value.problems]
        assert [p.split(":")[0] for p in found] == ["data/common.yaml", "profiles/nginx.yaml"]
        assert exc.value.stage == "parse"


class TestDidYouMean:
    @pytest.mark.parametrize(
        ("files", "expected"),
        [
            (
                {"nodes.yaml": 'nodes:\n  - match: "web-*"\n    rol: web\n    role: web\n'},
                "nodes.yaml:3, key 'rol': unknown key 'rol' in a nodes entry "
                "(did you mean 'role'?)",
            ),
            (
                {"roles/web.yaml": "profiles: [ngnix]\n"},
                "roles/web.yaml:1: profile 'ngnix' not found (no profiles/ngnix.yaml) "
                "(did you mean 'nginx'?)",
            ),
            (
                {"data/common.yaml": "ngnix:\n  port: 81\n"},
                "data/common.yaml:1, key 'ngnix': no profile named 'ngnix' (did you mean 'nginx'?)",
            ),
            (
                {
                    "profiles/nginx.yaml": (
                        "resources:\n  - service: nginx\n    subscribe: file:/etc/ngnix.conf\n"
                        "  - file: /etc/nginx.conf\n"
                    )
                },
                "profiles/nginx.yaml:2, key 'subscribe': service:nginx: subscribe "
                "file:/etc/ngnix.conf, which is not in this node's catalog "
                "(did you mean 'file:/etc/nginx.conf'?)",
            ),
            (
                {
                    "apps/shop.yaml": (
                        'version: "1"\ncomponents:\n  - name: db\n    nodes: {role: web}\n'
                        "  - name: api\n    nodes: {role: web}\n    requires: [dbb]\n"
                    )
                },
                "apps/shop.yaml:7, key 'requires': component 'api' requires 'dbb', which is "
                "not a component of app 'shop' (did you mean 'db'?)",
            ),
        ],
    )
    def test_an_unknown_name_comes_with_the_closest_known_one(
        self, make_repo: Callable[..., Path], files: dict[str, str], expected: str
    ) -> None:
        assert expected in validate(make_repo, files)

    def test_only_a_close_name_is_suggested(self, make_repo: Callable[..., Path]) -> None:
        found = validate(
            make_repo,
            {
                "profiles/nginx.yaml": (
                    "resources:\n  - file: /etc/a\n    colour: x\n    sorce: a\n"
                )
            },
        )
        assert found[0].startswith(
            "profiles/nginx.yaml:3, key 'colour': unknown attribute 'colour' for file "
            "(its attributes: backup, content,"
        )
        assert found[1] == (
            "profiles/nginx.yaml:4, key 'sorce': unknown attribute 'sorce' for file "
            "(did you mean 'source'?)"
        )
