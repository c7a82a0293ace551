"""Data read by key: lookup_options, free keys, lookup() and %{...}, through the model API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ModelError
from reconciler.model.catalog import Compiler, validate_repo
from reconciler.source import DirectorySnapshot

FACTS: dict[str, Any] = {"os": {"family": "Debian"}, "datacenter": "ams1", "cpus": 4}

BASE = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": """
        params:
          opts: {}
          ports: []
          name: ""
        resources:
          - file: /etc/app
            content: "{{ params | to_json }}"
        """,
}


def compile_params(make_repo: Callable[..., Path], files: dict[str, str]) -> Any:
    repo = make_repo({**BASE, **files})
    return Compiler(DirectorySnapshot(repo)).compile("n1", FACTS).params["app"]


def problems(make_repo: Callable[..., Path], files: dict[str, str]) -> list[str]:
    repo = make_repo({**BASE, **files})
    with pytest.raises(ModelError) as exc:
        Compiler(DirectorySnapshot(repo)).compile("n1", FACTS)
    return [str(p) for p in exc.value.problems]


def content(make_repo: Callable[..., Path], files: dict[str, str], path: str) -> Any:
    repo = make_repo({**BASE, **files})
    catalog = Compiler(DirectorySnapshot(repo)).compile("n1", FACTS)
    return catalog.entries[f"file:{path}"].resource.attrs["content"]


NODE_AND_COMMON = {
    "data/nodes/n1.yaml": "app: {opts: {b: 2, c: {y: 2}}, ports: [443, 80]}\n",
    "data/common.yaml": "app: {opts: {a: 1, c: {x: 1}}, ports: [80, 8080]}\n",
}


class TestLookupOptions:
    def test_first_is_the_default(self, make_repo: Callable[..., Path]) -> None:
        params = compile_params(make_repo, NODE_AND_COMMON)
        assert params["opts"] == {"b": 2, "c": {"y": 2}}
        assert params["ports"] == [443, 80]

    @pytest.mark.parametrize(
        ("mode", "opts", "ports"),
        [
            ("hash", {"a": 1, "c": {"y": 2}, "b": 2}, None),
            ("deep", {"a": 1, "c": {"x": 1, "y": 2}, "b": 2}, [443, 80, 8080]),
            ("unique", None, [443, 80, 8080]),
        ],
    )
    def test_modes_in_reconciler_yaml(
        self, make_repo: Callable[..., Path], mode: str, opts: Any, ports: Any
    ) -> None:
        keys = [k for k, v in (("app.opts", opts), ("app.ports", ports)) if v is not None]
        settings = "lookup_options:\n" + "".join(f"  {k}: {{merge: {mode}}}\n" for k in keys)
        params = compile_params(make_repo, {**NODE_AND_COMMON, "reconciler.yaml": settings})
        if opts is not None:
            assert params["opts"] == opts
        if ports is not None:
            assert params["ports"] == ports

    def test_a_regex_key_and_an_exact_key_that_beats_it(
        self, make_repo: Callable[..., Path]
    ) -> None:
        settings = """
            lookup_options:
              "/^app\\\\./": {merge: deep}
              app.ports: {merge: first}
            """
        params = compile_params(make_repo, {**NODE_AND_COMMON, "reconciler.yaml": settings})
        assert params["opts"] == {"a": 1, "c": {"x": 1, "y": 2}, "b": 2}
        assert params["ports"] == [443, 80]

    def test_a_data_file_declares_options_over_reconciler_yaml(
        self, make_repo: Callable[..., Path]
    ) -> None:
        files = {
            **NODE_AND_COMMON,
            "reconciler.yaml": "lookup_options:\n  app.ports: {merge: unique}\n",
            "data/common.yaml": "lookup_options:\n  app.opts: {merge: hash}\n"
            + NODE_AND_COMMON["data/common.yaml"],
            "data/nodes/n1.yaml": "lookup_options:\n  app.ports: {merge: first}\n"
            + NODE_AND_COMMON["data/nodes/n1.yaml"],
        }
        params = compile_params(make_repo, files)
        assert params["opts"] == {"a": 1, "c": {"y": 2}, "b": 2}
        assert params["ports"] == [443, 80]  # the node's file over reconciler.yaml

    def test_knockout_removes_numbers_keys_and_is_dropped(
        self, make_repo: Callable[..., Path]
    ) -> None:
        files = {
            "reconciler.yaml": """
                lookup_options:
                  /^app/: {merge: deep, knockout_prefix: "--"}
                """,
            "data/nodes/n1.yaml": "app: {opts: {--a: ~, c: {--x: ~}}, ports: [--80, 9000]}\n",
            "data/common.yaml": NODE_AND_COMMON["data/common.yaml"],
        }
        params = compile_params(make_repo, files)
        assert params["opts"] == {"c": {}}
        assert params["ports"] == [9000, 8080]

    @pytest.mark.parametrize(
        ("settings", "expected"),
        [
            (
                "lookup_options:\n  app.opts: {merge: deeep}\n",
                "reconciler.yaml:2, key 'lookup_options.app.opts.merge': merge must be one of "
                "first, hash, deep, unique, not 'deeep'",
            ),
            (
                "lookup_options:\n  app.opts: {merge: hash, knockout_prefix: '--'}\n",
                "reconciler.yaml:2, key 'lookup_options.app.opts.knockout_prefix': "
                "knockout_prefix is only for merge: deep",
            ),
            (
                "lookup_options:\n  app.opts:\n    merge: hash\n    strategy: deep\n",
                "reconciler.yaml:4, key 'lookup_options.app.opts.strategy': unknown key "
                "'strategy' in lookup options",
            ),
            (
                "lookup_options:\n  /app(/: {merge: hash}\n",
                "reconciler.yaml:2, key 'lookup_options./app(/': not a valid regular "
                "expression: missing ), unterminated subpattern at position 3",
            ),
            (
                "lookup_options: [app.opts]\n",
                "reconciler.yaml:1, key 'lookup_options': lookup_options must be a mapping "
                "from keys to options",
            ),
        ],
    )
    def test_bad_options_name_file_line_and_key(
        self, make_repo: Callable[..., Path], settings: str, expected: str
    ) -> None:
        assert expected in problems(make_repo, {"reconciler.yaml": settings})

    def test_bad_options_in_a_data_file_are_found_by_validate(
        self, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(
            {**BASE, "data/os/RedHat.yaml": "lookup_options:\n  app.opts: {merge: all}\n"}
        )
        found = [str(p) for p in validate_repo(DirectorySnapshot(repo), FACTS, "n1")]
        assert found == [
            "data/os/RedHat.yaml:2, key 'lookup_options.app.opts.merge': merge must be one of "
            "first, hash, deep, unique, not 'all'"
        ]

    def test_values_that_cannot_be_merged_are_named(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "reconciler.yaml": "lookup_options:\n  /^app/: {merge: deep}\n  ntp: {merge: hash}\n",
            "data/nodes/n1.yaml": "app:\n  opts: {c: [1]}\nntp: [a]\n",
            "data/common.yaml": "app:\n  opts: {c: {x: 1}}\nntp: {a: 1}\n",
            "profiles/app.yaml": """
                params: {opts: {}, ntp: "{{ lookup('ntp') }}"}
                """,
        }
        found = problems(make_repo, files)
        assert (
            "data/nodes/n1.yaml:2, key 'app.opts': 'app.opts' (merge: deep): a deep merge cannot "
            "combine a list (data/nodes/n1.yaml:2) with a mapping (data/common.yaml:2) at 'c'"
        ) in found
        assert (
            "data/nodes/n1.yaml:3, key 'ntp': 'ntp' (merge: hash): a hash merge needs a mapping "
            "at every level; data/nodes/n1.yaml:3 has a list"
        ) in found


class TestFreeKeysAndLookup:
    def test_lookup_in_values_keeps_types_and_merge_overrides_options(
        self, make_repo: Callable[..., Path]
    ) -> None:
        files = {
            "data/nodes/n1.yaml": "ntp_servers: [ntp1]\n'rgbank::build_path': /opt/rgbank\n",
            "data/common.yaml": "ntp_servers: [ntp0, ntp1]\n",
            "profiles/app.yaml": """
                params:
                  servers: "{{ lookup('ntp_servers', merge='unique') }}"
                  first: "{{ lookup('ntp_servers') }}"
                  path: "{{ lookup('rgbank::build_path') }}/current"
                  size: "{{ lookup('size', default=3) }}"
                """,
        }
        params = compile_params(make_repo, files)
        assert params == {
            "servers": ["ntp1", "ntp0"],
            "first": ["ntp1"],
            "path": "/opt/rgbank/current",
            "size": 3,
        }

    def test_looked_up_data_is_never_rendered(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "data/common.yaml": "motd: '{{ 7 * 7 }}'\n",
            "profiles/app.yaml": """
                resources:
                  - file: /etc/motd
                    content: "{{ lookup('motd') }}!"
                """,
        }
        assert content(make_repo, files, "/etc/motd") == "{{ 7 * 7 }}!"

    @pytest.mark.parametrize(
        ("call", "message"),
        [
            ("lookup('app')", "'app' is a profile; look up one of its parameters as 'app.<name>'"),
            ("lookup('a.b.c')", "'a.b.c' has more than one '.'"),
            ("lookup('x', merge='deepest')", "merge must be one of first, hash, deep, unique"),
            ("lookup('nothere')", "no data level has 'nothere' (searched: data/common.yaml)"),
        ],
    )
    def test_bad_lookups_name_the_key(
        self, make_repo: Callable[..., Path], call: str, message: str
    ) -> None:
        files = {
            "data/common.yaml": "x: 1\n",
            "profiles/app.yaml": f'params:\n  v: "{{{{ {call} }}}}"\n',
        }
        found = problems(make_repo, files)
        assert len(found) == 1
        assert found[0].startswith("profiles/app.yaml:2, key 'params.v': expression error:")
        assert message in found[0]

    def test_free_keys_beside_profile_sections(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "data/common.yaml": """
                ap: {port: 1}
                app::extra: {x: 1}
                settings.x: 1
                ntp: {servers: [a]}
                """,
            "profiles/app.yaml": """
                params:
                  servers: "{{ lookup('ntp.servers') }}"
                  extra: "{{ lookup('app::extra') }}"
                """,
        }
        found = problems(make_repo, files)
        assert found == [
            "data/common.yaml:1, key 'ap': no profile named 'ap' (did you mean 'app'?)",
            "data/common.yaml:3, key 'settings.x': a free data key must be a name without '.', "
            "not 'settings.x'",
        ]
        files["data/common.yaml"] = "app::extra: {x: 1}\nntp: {servers: [a]}\n"
        assert compile_params(make_repo, files) == {"servers": ["a"], "extra": {"x": 1}}


class TestInterpolation:
    PROFILE = {"profiles/app.yaml": "params:\n  name: ''\n  ports: []\n  opts: {}\n"}

    def test_substitution_in_text_lists_and_mappings(self, make_repo: Callable[..., Path]) -> None:
        files = {
            **self.PROFILE,
            "data/common.yaml": """
                port: 8080
                app:
                  name: "%{facts.os.family}-%{lookup('port')} 100%{literal('%')} %{lookup('flag')}%{lookup('nil')}"
                  ports: ["%{lookup('port')}", "x%{lookup('port')}"]
                  opts: {dc: "%{facts.datacenter}", enabled: "%{lookup('flag')}", n: "%{facts.cpus}"}
                flag: true
                nil: ~
                """,
        }
        assert compile_params(make_repo, files) == {
            "name": "Debian-8080 100% true",
            "ports": [8080, "x8080"],
            "opts": {"dc": "ams1", "enabled": True, "n": 4},
        }

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (
                "'%{facts.os.release}'",
                "data/common.yaml:2, key 'app.name': %{facts.os.release}: this node has no "
                "fact 'os.release'",
            ),
            (
                "'%{node}'",
                "data/common.yaml:2, key 'app.name': %{node}: write %{facts.<path>}, "
                "%{lookup('<key>')} or %{literal('%')}",
            ),
            (
                "'at %{lookup(\"pool\")}'",
                "data/common.yaml:2, key 'app.name': %{lookup(\"pool\")} is a list, which cannot "
                "be put inside text (a value that is only %{...} keeps its type)",
            ),
            (
                "'%{lookup(\"pool\")}'",
                "data/common.yaml:2, key 'app.name': expected a string like the default at "
                "profiles/app.yaml:2, got a list from its %{...}",
            ),
            (
                "'%{lookup(\"app.name\")}'",
                "data/common.yaml:2, key 'app.name': interpolation cycle: "
                "app.name (data/common.yaml:2) -> app.name",
            ),
        ],
    )
    def test_errors_name_file_line_and_key(
        self, make_repo: Callable[..., Path], value: str, expected: str
    ) -> None:
        files = {**self.PROFILE, "data/common.yaml": f"app:\n  name: {value}\npool: [a]\n"}
        assert problems(make_repo, files) == [expected]


class TestHieraFormAndBounds:
    def test_merge_written_as_hiera_writes_it(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "reconciler.yaml": """
                lookup_options:
                  app.opts:
                    merge: {strategy: deep, knockout_prefix: "--"}
                """,
            "data/nodes/n1.yaml": "app: {opts: {--a: ~, c: {y: 2}}}\n",
            "data/common.yaml": NODE_AND_COMMON["data/common.yaml"],
        }
        assert compile_params(make_repo, files)["opts"] == {"c": {"x": 1, "y": 2}}
        files["reconciler.yaml"] = (
            "lookup_options:\n  app.opts:\n    merge: {strategy: deep, sort: 1}\n"
        )
        assert problems(make_repo, files) == [
            "reconciler.yaml:3, key 'lookup_options.app.opts.merge.sort': unknown key 'sort' in "
            "merge"
        ]

    def test_interpolation_that_grows_without_bound_is_refused(
        self, make_repo: Callable[..., Path]
    ) -> None:
        doubling = "".join(
            f"k{i}: \"%{{lookup('k{i + 1}')}}%{{lookup('k{i + 1}')}}\"\n" for i in range(30)
        )
        files = {
            "data/common.yaml": doubling + "k30: xxxxxxxxxxxxxxxx\n",
            "profiles/app.yaml": "params:\n  v: \"{{ lookup('k0') | length }}\"\n",
        }
        found = problems(make_repo, files)
        assert len(found) == 1
        assert "key 'k" in found[0]
        assert "larger than 4194304 bytes written out once its %{...} are substituted" in found[0]

    def test_interpolation_that_nests_past_the_yaml_bound_is_refused(
        self, make_repo: Callable[..., Path]
    ) -> None:
        wrapped = "".join(
            f"k{i}: " + "[" * 40 + f"\"%{{lookup('k{i + 1}')}}\"" + "]" * 40 + "\n"
            for i in range(2)
        )
        files = {
            "data/common.yaml": wrapped + "k2: [1]\n",
            "profiles/app.yaml": "params:\n  v: \"{{ lookup('k0') | length }}\"\n",
        }
        assert problems(make_repo, files) == [
            "data/common.yaml:1, key 'k0': the value nests more than 64 levels deep once its "
            "%{...} are substituted"
        ]


class TestSensitive:
    FILES = {
        "roles/app.yaml": "profiles: [app, db]\n",
        "profiles/db.yaml": "params:\n  passwords: []\nsensitive_params: [passwords]\n",
        "profiles/app.yaml": """
            resources:
              - file: /etc/app.conf
                content: "{{ lookup('db.passwords') | join(',') }}"
            """,
        "reconciler.yaml": "lookup_options:\n  db.passwords: {merge: unique}\n",
        "data/nodes/n1.yaml": "db: {passwords: [node-secret-1]}\n",
        "data/common.yaml": "db: {passwords: [common-secret-2]}\n",
    }

    def test_a_resource_that_looks_up_a_sensitive_parameter_is_sensitive(
        self, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo({**BASE, **self.FILES})
        catalog = Compiler(DirectorySnapshot(repo)).compile("n1", FACTS)
        resource = catalog.entries["file:/etc/app.conf"].resource
        assert resource.attrs["content"] == "node-secret-1,common-secret-2"
        assert resource.sensitive


class TestEncrypted:
    """Values encrypted by the real age tool, decrypted by the data layer as they are read."""

    @staticmethod
    def compiler(
        make_repo: Callable[..., Path], tmp_path: Path, files: Callable[[str], dict[str, str]]
    ) -> Compiler:
        import base64
        import shutil
        import subprocess

        from reconciler.model.secrets import Keyring, SecretsConfig

        age, keygen = shutil.which("age"), shutil.which("age-keygen")
        if age is None or keygen is None:
            pytest.fail("age is not installed: apt-get install age")
        identity = tmp_path / "node.agekey"
        subprocess.run([keygen, "-o", str(identity)], check=True, capture_output=True)
        recipient = identity.read_text().split("# public key: ", 1)[1].split()[0]

        def encrypt(value: str) -> str:
            blob = subprocess.run(
                [age, "-r", recipient], input=value.encode(), check=True, capture_output=True
            ).stdout
            return "ENC[AGE," + base64.b64encode(blob).decode() + "]"

        repo = make_repo({**BASE, **files(encrypt)})
        return Compiler(
            DirectorySnapshot(repo), keyring=Keyring(SecretsConfig(age_identity=identity))
        )

    def test_a_plaintext_is_never_substituted_into(
        self, make_repo: Callable[..., Path], tmp_path: Path
    ) -> None:
        literal = "p%{facts.datacenter}w"

        def files(encrypt: Callable[[str], str]) -> dict[str, str]:
            return {
                "data/common.yaml": f"secret: '{encrypt(literal)}'\n"
                f'mixed: "at-%{{facts.datacenter}}-{encrypt("tok-1")}-end"\n'
                "app:\n  name: \"%{lookup('secret')}\"\n",
                "profiles/app.yaml": """
                    params:
                      name: ""
                    resources:
                      - file: /etc/secret
                        content: "{{ lookup('secret') }}|{{ lookup('mixed') }}|{{ params.name }}"
                    """,
            }

        compiler = self.compiler(make_repo, tmp_path, files)
        catalog = compiler.compile("n1", FACTS)

        entry = catalog.entries["file:/etc/secret"]
        assert entry.resource.attrs["content"] == "p%{facts.datacenter}w|at-ams1-tok-1-end|" + (
            "p%{facts.datacenter}w"
        )
        assert entry.resource.sensitive
        assert catalog.secrets.found_in("p%{facts.datacenter}w")

    def test_only_what_is_read_is_decrypted(
        self, make_repo: Callable[..., Path], tmp_path: Path
    ) -> None:
        def files(encrypt: Callable[[str], str]) -> dict[str, str]:
            return {
                "data/nodes/n1.yaml": f"used:\n  - {encrypt('first-level')}\n",
                "data/common.yaml": f"used:\n  - {encrypt('second-level')}\n"
                f"unused: {encrypt('never-read')}\n"
                "lookup_options:\n  used: {merge: unique}\n",
                "profiles/app.yaml": """
                    resources:
                      - file: /etc/used
                        content: "{{ lookup('used') | join(',') }}"
                    """,
            }

        compiler = self.compiler(make_repo, tmp_path, files)
        catalog = compiler.compile("n1", FACTS)

        assert catalog.entries["file:/etc/used"].resource.attrs["content"] == (
            "first-level,second-level"
        )
        assert sorted(compiler.keyring.revealed) == ["first-level", "second-level"]
