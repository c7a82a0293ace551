from __future__ import annotations

import pytest

from reconciler.errors import ModelError
from reconciler.model.yamlload import MAX_DEPTH, LocList, LocMap, load


class TestLoad:
    def test_keeps_lines_of_keys_and_items(self) -> None:
        data = load("a: 1\nb:\n  - x\n  - {c: d}\n", "f.yaml")
        assert isinstance(data, LocMap)
        assert data == {"a": 1, "b": ["x", {"c": "d"}]}
        assert data.line_of("a") == 1
        assert data.line_of("b") == 2
        assert isinstance(data["b"], LocList)
        assert data["b"].line_of(1) == 4

    def test_python_tags_are_refused(self) -> None:
        with pytest.raises(ModelError) as err:
            load('a: !!python/object/apply:os.system ["touch /tmp/pwned"]\n', "evil.yaml")
        assert "evil.yaml:1" in str(err.value)
        assert "python/object/apply" in str(err.value)

    def test_duplicate_keys_name_both_lines(self) -> None:
        with pytest.raises(
            ModelError, match=r"dup.yaml:3: invalid YAML: duplicate key 'a' \(first at line 1\)"
        ):
            load("a: 1\nb: 2\na: 3\n", "dup.yaml")

    def test_syntax_error_names_file_and_line(self) -> None:
        with pytest.raises(ModelError) as err:
            load("ok: 1\nbad: [1, 2\nnext: 3\n", "roles/web.yaml")
        problem = err.value.problems[0]
        assert problem.where.file == "roles/web.yaml"
        assert problem.where.line is not None and problem.where.line >= 2
        assert err.value.stage == "parse"

    def test_alias_bomb_is_refused_before_expansion(self) -> None:
        levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
        for i, name in enumerate("bcdefghi"):
            prev = "abcdefghi"[i]
            levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        with pytest.raises(ModelError, match="aliases expand to more than"):
            load("\n".join(levels) + "\n", "bomb.yaml")

    def test_deep_nesting_is_refused(self) -> None:
        text = "a: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
        with pytest.raises(ModelError, match="nesting deeper than"):
            load(text, "deep.yaml")

    @pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 3000])
    def test_deep_block_sequences_are_refused_with_a_line(self, depth: int) -> None:
        text = "ok: 1\nitems:\n" + "- " * depth + "x\n"
        with pytest.raises(ModelError, match=r"deep.yaml:3: nesting deeper than"):
            load(text, "deep.yaml")

    @pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 3000])
    def test_deep_block_mappings_are_refused_with_a_line(self, depth: int) -> None:
        # One space more per level: the least indentation YAML allows.
        text = "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "x\n"
        with pytest.raises(ModelError, match=rf"deep.yaml:{MAX_DEPTH + 1}: nesting deeper than"):
            load(text, "deep.yaml")

    def test_deep_mixed_block_nesting_is_refused(self) -> None:
        # A sequence may sit at its key's column: two levels per column of indentation.
        text = "".join(" " * i + f"k{i}:\n" + " " * i + "-\n" for i in range(MAX_DEPTH))
        with pytest.raises(ModelError, match="nesting deeper than"):
            load(text + " " * MAX_DEPTH + "x\n", "deep.yaml")

    def test_moderate_block_nesting_is_fine(self) -> None:
        assert load("- " * 20 + "x\n", "ok.yaml") == [[[[[[[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]]]]]]

    def test_a_few_aliases_are_fine(self) -> None:
        data = load("base: &b {port: 80}\nweb: *b\n", "ok.yaml")
        assert data["web"] == {"port": 80}

    def test_oversized_file_is_refused(self) -> None:
        with pytest.raises(ModelError, match="larger than"):
            load(b"a: " + b"x" * (17 * 1024 * 1024), "big.yaml")

    def test_not_utf8(self) -> None:
        with pytest.raises(ModelError, match="not UTF-8"):
            load(b"a: \xff\xfe\n", "bin.yaml")
