"""Inputs the model fuzzer (fuzz/fuzz_model.py) found raising something other than a ModelError.

Each was an exception out of the loader or a compile that is not a ReconcilerError: the CLI
printed a traceback instead of the file and line, and the daemon could not say what was wrong
with the revision. Now each is a ModelError naming where.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ModelError
from reconciler.model.catalog import Compiler
from reconciler.model.yamlload import MAX_INT_DIGITS, load
from reconciler.source import DirectorySnapshot

FACTS: dict[str, Any] = {"os": {"family": "Debian"}}
BASE = {
    "nodes.yaml": "default: web\n",
    "roles/web.yaml": "profiles: [web]\n",
}


def compile_profile(make_repo: Callable[..., Path], profile: str, **files: str) -> Any:
    repo = make_repo({**BASE, "profiles/web.yaml": profile, **files})
    return Compiler(DirectorySnapshot(repo)).compile("web-1", FACTS)


class TestLoader:
    def test_an_undefined_alias_next_to_defined_ones_is_a_parse_error(self) -> None:
        # The alias-expansion check composed the document before the real parse, and let the
        # composer's error out as a yaml.ComposerError.
        with pytest.raises(ModelError, match=r"f.yaml:2: invalid YAML: found undefined alias"):
            load("a: &a [x]\nb: [*a, *c]\n", "f.yaml")

    def test_an_impossible_date_is_a_parse_error_at_its_line(self) -> None:
        # PyYAML's timestamp constructor raises a plain ValueError.
        with pytest.raises(ModelError, match=r"f.yaml:2: .*day is out of range") as err:
            load("a: 1\nwhen: 2001-02-30\n", "f.yaml")
        assert err.value.stage == "parse"

    @pytest.mark.parametrize(
        "text", ["a: &a [1, *a]\n", "a: &a {b: *a}\n", "- &a [x, [y, *a]]\n", "&a {*a : 1}\n"]
    )
    def test_a_collection_that_contains_itself_is_refused(self, text: str) -> None:
        # It loaded, and rendering or checking it recursed until RecursionError.
        with pytest.raises(ModelError, match="an alias refers to a collection that contains it"):
            load(text, "f.yaml")

    def test_aliases_that_do_not_loop_still_share_values(self) -> None:
        data = load("a: &a [1, 2]\nb: [*a, *a]\n", "f.yaml")
        assert data["b"] == [[1, 2], [1, 2]]

    @pytest.mark.parametrize(
        "number",
        ["1" + "0" * MAX_INT_DIGITS, "1" * 5000, "0x" + "f" * 4000, "-0b" + "1" * 400],
    )
    def test_integers_too_long_to_print_are_refused(self, number: str) -> None:
        # A 5000-digit decimal raised ValueError in the loader; a 4000-digit hex one loaded and
        # raised ValueError wherever it was printed (a title, a message).
        with pytest.raises(ModelError, match=f"f.yaml:2: .*more than {MAX_INT_DIGITS} digits"):
            load(f"a: 1\nb: {number}\n", "f.yaml")

    def test_integers_up_to_the_limit_load(self) -> None:
        assert load("n: " + "9" * MAX_INT_DIGITS + "\n", "f.yaml")["n"] == 10**MAX_INT_DIGITS - 1


class TestCompile:
    def test_a_huge_int_title_is_a_model_error(self, make_repo: Callable[..., Path]) -> None:
        profile = "resources:\n  - file: 0x" + "f" * 4000 + "\n"
        with pytest.raises(ModelError, match=r"profiles/web\.yaml:2"):
            compile_profile(make_repo, profile)

    def test_a_computed_huge_int_is_an_expression_error(
        self, make_repo: Callable[..., Path]
    ) -> None:
        profile = """
            params: {n: 2}
            resources:
              - file: "{{ params.n ** 20000 }}"
              - file: /etc/b
                require: "{{ [params.n ** 20000] }}"
            """
        with pytest.raises(ModelError) as err:
            compile_profile(make_repo, profile)
        messages = [str(p) for p in err.value.problems]
        assert len(messages) == 2
        assert all("expression error" in m and "digits" in m for m in messages)

    def test_to_yaml_writes_mappings_and_lists_from_the_repo(
        self, make_repo: Callable[..., Path]
    ) -> None:
        # The safe dumper refused LocMap and LocList (dict and list subclasses), which is what
        # a value from a data file is (data is used as written, never rendered).
        profile = """
            params:
              settings: {}
            resources:
              - file: /etc/settings.yaml
                content: "{{ params.settings | to_yaml }}"
            """
        data = "web:\n  settings: {b: [1, 2], a: x}\n"
        catalog = compile_profile(make_repo, profile, **{"data/common.yaml": data})
        content = catalog.entries["file:/etc/settings.yaml"].resource.attrs["content"]
        assert content == "a: x\nb:\n- 1\n- 2\n"

    @pytest.mark.parametrize("expression", ["missing | to_yaml", "[missing] | to_yaml"])
    def test_to_yaml_of_an_undefined_name_is_a_template_error(
        self, make_repo: Callable[..., Path], expression: str
    ) -> None:
        profile = f'resources:\n  - file: /etc/x\n    content: "a {{{{ {expression} }}}}"\n'
        with pytest.raises(
            ModelError, match=r"web.yaml:3, .*template error: .missing. is undefined"
        ):
            compile_profile(make_repo, profile)

    def test_a_template_nested_past_the_parser_is_a_template_error(
        self, make_repo: Callable[..., Path]
    ) -> None:
        # Jinja2's parser recursed until RecursionError.
        profile = "resources:\n  - file: /etc/x\n    template: deep.j2\n"
        with pytest.raises(ModelError, match=r"templates/deep\.j2: template error"):
            compile_profile(make_repo, profile, **{"templates/deep.j2": "{{" + "[" * 400 + "}}"})
