from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ModelError
from reconciler.model import yamlload
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


def _shape(value: object) -> object:
    """A value with every line the loader recorded, to compare two loads exactly."""
    if isinstance(value, LocMap):
        return (
            "map",
            value.line,
            getattr(value, "first", None),
            [(_shape(k), value.lines[k], _shape(v)) for k, v in value.items()],
        )
    if isinstance(value, LocList):
        return ("seq", value.line, list(value.lines), [_shape(v) for v in value])
    return (type(value).__name__, value)


PARITY = [
    "",
    "# only a comment\n",
    "plain\n",
    "a: 1\nb:\n  - x\n  - {c: d}\n",
    "resources:\n  - file: /etc/motd\n    content: \"hi\\n\"\n    mode: '0644'\n",
    "n: ~\nt: true\nf: 1.5\nz: 0\nneg: -12\noct: 0o17\nhex: 0x1f\nlead: 012\nbig: 1_000\n",
    "when: 2001-12-14\nstamp: 2001-12-14t21:59:43.10-05:00\n",
    "quoted: '12'\ndq: \"true\"\nempty:\nnull_key_value: null\n",
    "? complex\n: value\n~: null key\n1: int key\n",
    "text: |\n  line one\n  line two\nfolded: >\n  a\n  b\n",
    "[1, [2, [3, {a: [4]}]], {}, []]\n",
    "outer:\n  inner:\n    - - deep\n      - er\n    - k: v\n      k2: v2\n",
    "first: 1\nsecond: 2\n",
    # what only the composed path builds: the two must agree all the same
    "base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n",
    "a: &x [1, 2]\nb: *x\n",
    "s: !!str 12\ni: !!int '7'\n",
    "= : value key\n",
]

BROKEN = [
    "a: 1\nb: 2\na: 3\n",
    "ok: 1\nbad: [1, 2\nnext: 3\n",
    "---\na: 1\n---\nb: 2\n",
    "a: 2001-02-30\n",
    "a: !!python/object/apply:os.system [x]\n",
    "a: 1\na: 2\nbad: [\n",
    "? {a: 1}\n: mapping key\n",
    "a: *nowhere\n",
    "? [a, b]\n: list key\n",
]


def composed(text: str, name: str) -> object:
    """What the loader gave before it built documents from events: the bounds, then the
    composed tree."""
    yamlload._check_bounds(text, name)
    return yamlload._composed(text, name)


class TestEventsAndComposedAgree:
    """Documents are built from the parser's events when they can be; anything else goes
    through the composed tree. Both must give the same values, lines and errors."""

    @pytest.mark.parametrize("text", PARITY)
    def test_the_same_document(self, text: str) -> None:
        assert _shape(load(text, "f.yaml")) == _shape(composed(text, "f.yaml"))

    @pytest.mark.parametrize("text", BROKEN)
    def test_the_same_error(self, text: str) -> None:
        with pytest.raises(ModelError) as expected:
            composed(text, "f.yaml")
        with pytest.raises(ModelError) as loaded:
            load(text, "f.yaml")
        assert str(loaded.value) == str(expected.value)

    def test_plain_documents_never_build_a_node_tree(self) -> None:
        """What keeps a large profile's parse small: its documents come from events."""
        for text in PARITY[:13]:
            loader = yamlload._Loader(text)
            try:
                yamlload._from_events(loader)  # raises _Composed for the others
            finally:
                loader.dispose()

    def test_every_seed_of_the_model_fuzzer(self) -> None:
        corpus = sorted((Path(__file__).parents[2] / "fuzz/corpus/model").iterdir())
        assert corpus
        for path in corpus:
            data = path.read_bytes()
            try:
                expected = _shape(composed(data.decode(), path.name))
            except (ModelError, UnicodeDecodeError):
                with pytest.raises((ModelError, UnicodeDecodeError)):
                    load(data, path.name)
                continue
            assert _shape(load(data, path.name)) == expected, path.name
