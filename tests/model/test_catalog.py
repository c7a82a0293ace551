from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ModelError
from reconciler.model.catalog import Compiler, validate_repo
from reconciler.source import DirectorySnapshot

FACTS: dict[str, Any] = {"os": {"family": "Debian", "name": "Debian"}, "processors": {"count": 4}}

BASE = {
    "nodes.yaml": """
        nodes:
          - match: "web-*"
            role: web
          - facts: {os.family: RedHat}
            role: rh
        default: base
        """,
    "roles/web.yaml": "profiles: [web]\n",
    "profiles/web.yaml": "resources: []\n",
    "roles/base.yaml": "profiles: []\n",
    "roles/rh.yaml": "profiles: []\n",
}


def compile_repo(
    make_repo: Callable[..., Path], files: dict[str, str], node: str = "web-1", facts: Any = None
) -> Any:
    repo = make_repo({**BASE, **files})
    return Compiler(DirectorySnapshot(repo)).compile(node, facts or FACTS)


def problems(exc: pytest.ExceptionInfo[ModelError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


class TestClassification:
    def test_first_matching_entry_wins_and_default_applies(
        self, make_repo: Callable[..., Path]
    ) -> None:
        repo = make_repo(BASE)
        compiler = Compiler(DirectorySnapshot(repo))
        assert compiler.compile("web-7", FACTS).role == "web"
        assert compiler.compile("other", {"os": {"family": "RedHat"}}).role == "rh"
        assert compiler.compile("other", FACTS).role == "base"

    def test_no_match_and_no_default_is_an_error(self, make_repo: Callable[..., Path]) -> None:
        repo = make_repo({**BASE, "nodes.yaml": "nodes:\n  - match: 'web-*'\n    role: web\n"})
        with pytest.raises(ModelError, match="matches no entry and there is no default"):
            Compiler(DirectorySnapshot(repo)).compile("db-1", FACTS)


class TestParamsAndData:
    PROFILE = {
        "profiles/web.yaml": """
            params:
              port: 80
              workers: "{{ facts.processors.count }}"
              name: "{{ node }}"
            resources:
              - file: /etc/site.conf
                content: "port={{ params.port }} workers={{ params.workers }} name={{ params.name }}\\n"
            """,
    }

    def test_defaults_render_with_native_types(self, make_repo: Callable[..., Path]) -> None:
        catalog = compile_repo(make_repo, self.PROFILE)
        assert catalog.params["web"] == {"port": 80, "workers": 4, "name": "web-1"}
        assert catalog.entries["file:/etc/site.conf"].resource.attrs["content"] == (
            "port=80 workers=4 name=web-1\n"
        )

    def test_first_level_that_defines_a_key_wins(self, make_repo: Callable[..., Path]) -> None:
        catalog = compile_repo(
            make_repo,
            {
                **self.PROFILE,
                "data/common.yaml": "web: {port: 81, name: common}\n",
                "data/roles/web.yaml": "web: {port: 82}\n",
                "data/nodes/web-1.yaml": "web: {port: 83}\n",
            },
        )
        assert catalog.params["web"]["port"] == 83
        assert catalog.params["web"]["name"] == "common"

    def test_data_values_are_never_rendered(self, make_repo: Callable[..., Path]) -> None:
        catalog = compile_repo(
            make_repo, {**self.PROFILE, "data/common.yaml": "web: {name: '{{ 7 * 7 }}'}\n"}
        )
        content = catalog.entries["file:/etc/site.conf"].resource.attrs["content"]
        assert "name={{ 7 * 7 }}" in content

    def test_fact_with_template_syntax_stays_text(self, make_repo: Callable[..., Path]) -> None:
        facts = {**FACTS, "processors": {"count": "{{ 6 * 7 }}"}}
        catalog = compile_repo(make_repo, self.PROFILE, facts=facts)
        assert (
            "workers={{ 6 * 7 }}"
            in catalog.entries["file:/etc/site.conf"].resource.attrs["content"]
        )

    def test_unknown_data_key_names_file_line_and_key(self, make_repo: Callable[..., Path]) -> None:
        with pytest.raises(ModelError) as exc:
            compile_repo(
                make_repo, {**self.PROFILE, "data/common.yaml": "web:\n  port: 81\n  prot: 8\n"}
            )
        assert problems(exc) == [
            "data/common.yaml:3, key 'web.prot': profile 'web' has no parameter 'prot' (profiles/web.yaml)"
            " (did you mean 'port'?)"
        ]

    def test_data_type_mismatch_is_named(self, make_repo: Callable[..., Path]) -> None:
        with pytest.raises(ModelError) as exc:
            compile_repo(
                make_repo, {**self.PROFILE, "data/roles/web.yaml": "web:\n  port: eighty\n"}
            )
        assert "data/roles/web.yaml:2, key 'web.port': expected an integer" in problems(exc)[0]
        assert "got a string" in problems(exc)[0]

    def test_level_naming_a_missing_fact_is_skipped(self, make_repo: Callable[..., Path]) -> None:
        repo = make_repo({**BASE, **self.PROFILE, "data/os/Debian.yaml": "web: {port: 90}\n"})
        catalog = Compiler(DirectorySnapshot(repo)).compile("web-1", {"processors": {"count": 1}})
        assert catalog.params["web"]["port"] == 80


class TestResources:
    def test_all_problems_are_reported_together(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "profiles/web.yaml": """
                resources:
                  - file: /etc/a
                    colour: blue
                  - widget: x
                  - file: /etc/b
                    mode: 644
                  - file: /etc/c
                    require: file:/etc/nowhere
                """,
        }
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, files)
        found = problems(exc)
        assert any(
            p.startswith(
                "profiles/web.yaml:3, key 'colour': unknown attribute 'colour' for file "
                "(its attributes: backup, content, ensure, force, group, mode, owner, replace, "
                "source, template, validate_cmd; and those of every type: before, "
            )
            for p in found
        )
        assert any(
            p.startswith("profiles/web.yaml:4: no resource type among the keys ['widget']")
            for p in found
        )
        assert any(p.startswith("profiles/web.yaml:6, key 'mode'") for p in found)
        assert len(found) >= 3

    def test_missing_relationship_target(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "profiles/web.yaml": "resources:\n  - file: /etc/c\n    require: file:/etc/nowhere\n"
        }
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, files)
        assert problems(exc) == [
            "profiles/web.yaml:2, key 'require': file:/etc/c: require file:/etc/nowhere, "
            "which is not in this node's catalog"
        ]

    def test_duplicate_ids_name_both_declarations(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "roles/web.yaml": "profiles: [web, other]\n",
            "profiles/web.yaml": "resources:\n  - file: /etc/motd\n    content: a\n",
            "profiles/other.yaml": "resources:\n  - file: /etc/motd\n    content: b\n",
        }
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, files)
        assert problems(exc) == [
            "profiles/other.yaml:2: duplicate resource file:/etc/motd "
            "(also declared at profiles/web.yaml:2)"
        ]

    def test_cycle_names_its_members(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "profiles/web.yaml": """
                resources:
                  - file: /etc/a
                    require: file:/etc/b
                  - file: /etc/b
                    require: file:/etc/c
                  - file: /etc/c
                    require: file:/etc/a
                """,
        }
        with pytest.raises(
            ModelError,
            match=r"dependency cycle: file:/etc/a -> file:/etc/b -> file:/etc/c -> file:/etc/a",
        ):
            compile_repo(make_repo, files)

    def test_when_false_leaves_the_resource_out(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "profiles/web.yaml": """
                resources:
                  - file: /etc/debian-only
                    when: "facts.os.family == 'Debian'"
                  - file: /etc/redhat-only
                    when: "facts.os.family == 'RedHat'"
                """,
        }
        catalog = compile_repo(make_repo, files)
        assert sorted(catalog.entries) == ["file:/etc/debian-only"]

    def test_undefined_name_is_an_error_with_line(self, make_repo: Callable[..., Path]) -> None:
        files = {"profiles/web.yaml": "resources:\n  - file: /etc/a\n    content: '{{ nope }}'\n"}
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, files)
        assert problems(exc) == [
            "profiles/web.yaml:3, key 'content': expression error: 'nope' is undefined"
        ]

    def test_sandbox_refuses_python_internals(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "profiles/web.yaml": "resources:\n  - file: /etc/a\n"
            "    content: \"{{ ''.__class__.__mro__[1].__subclasses__() }}\"\n"
        }
        with pytest.raises(ModelError, match=r"unsafe|__class__"):
            compile_repo(make_repo, files)

    def test_source_and_template_become_content(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "profiles/web.yaml": """
                params: {greeting: hello}
                resources:
                  - file: /etc/a
                    source: a.txt
                  - file: /etc/b
                    template: b.j2
                """,
            "files/a.txt": "static\n",
            "templates/b.j2": "{{ params.greeting }} {{ node }}\n",
        }
        catalog = compile_repo(make_repo, files)
        assert catalog.entries["file:/etc/a"].resource.attrs["content"] == b"static\n"
        assert catalog.entries["file:/etc/b"].resource.attrs["content"] == "hello web-1\n"

    def test_template_error_names_the_template_line(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "profiles/web.yaml": "resources:\n  - file: /etc/b\n    template: b.j2\n",
            "templates/b.j2": "line one\n{{ params.missing.deeper }}\n",
        }
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, files)
        assert problems(exc)[0].startswith("templates/b.j2:2: template error:")

    def test_source_outside_the_repo_is_refused(self, make_repo: Callable[..., Path]) -> None:
        files = {
            "profiles/web.yaml": "resources:\n  - file: /etc/a\n    source: ../../etc/shadow\n"
        }
        with pytest.raises(ModelError) as exc:
            compile_repo(make_repo, files)
        assert problems(exc) == [
            "profiles/web.yaml:3, key 'source': path '../../etc/shadow' must stay inside the control repo"
        ]

    def test_source_symlink_out_of_the_repo_is_not_read(
        self, make_repo: Callable[..., Path], tmp_path: Path
    ) -> None:
        secret = tmp_path / "secret"
        secret.write_text("TOP SECRET\n")
        repo = make_repo(
            {**BASE, "profiles/web.yaml": "resources:\n  - file: /etc/a\n    source: link\n"}
        )
        (repo / "files").mkdir()
        (repo / "files" / "link").symlink_to(secret)
        with pytest.raises(ModelError) as exc:
            Compiler(DirectorySnapshot(repo)).compile("web-1", FACTS)
        assert "leaves the control repo" in str(exc.value)
        assert "TOP SECRET" not in str(exc.value)


class TestValidateRepo:
    def test_checks_every_role_and_data_file(self, make_repo: Callable[..., Path]) -> None:
        repo = make_repo(
            {
                **BASE,
                "roles/web.yaml": "profiles: [web]\n",
                "roles/broken.yaml": "profiles: [nothere]\n",
                "profiles/web.yaml": "params: {port: 80}\n",
                "data/common.yaml": "webb: {x: 1}\n",
            }
        )
        found = [str(p) for p in validate_repo(DirectorySnapshot(repo), FACTS, "here")]
        assert (
            "roles/broken.yaml:1: profile 'nothere' not found (no profiles/nothere.yaml)" in found
        )
        assert (
            "data/common.yaml:1, key 'webb': no profile named 'webb' (did you mean 'web'?)" in found
        )
