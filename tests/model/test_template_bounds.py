"""Templates that would build a huge value at once are refused before they build it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reconciler.errors import Location, ModelError
from reconciler.model.templates import Renderer


def render(source: str) -> object:
    return Renderer(lambda name: "").render_string(source, {"x": "x"}, Location("p.yaml", 3))


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' * 1000000000 }}",
        "{{ [1] * 1000000000 }}",
        "{{ 10 ** 1000000000 }}",
        "{{ x | center(1000000000) }}",
        "{{ x.center(1000000000) }}",
        "{{ x.ljust(1000000000) }}",
        "{{ '%1000000000s' % x }}",
        "{{ '{:>1000000000}'.format(x) }}",
        "{{ x | indent(1000000000) }}",
        "{{ lipsum(100000) }}",
    ],
)
def test_a_huge_value_is_an_error_naming_the_file_and_line(source: str) -> None:
    with pytest.raises(ModelError) as exc:
        render(source)
    assert str(exc.value.problems[0]).startswith("p.yaml:3")


def test_ordinary_uses_still_work() -> None:
    assert render("{{ '-' * 20 }}") == "-" * 20
    assert render("{{ 2 ** 64 }}") == 2**64
    assert render("{{ x | center(9) }}") == "    x    "
    assert render("{{ '%5s|' % x }}") == "    x|"
    assert render("{{ '{:>3}'.format(x) }}") == "  x"


# Each builds a value far past the output bound in one step, from a few bytes of source.
BUILDERS = [
    "{{ (['x' * 4000000] * 50) | join }}",
    "{{ (['x' * 4000000] * 50) | join('-') }}",
    "{{ ['x' * 4000000] * 50 }}",
    "{{ ('x' * 4000000) | replace('x', 'x' * 100) }}",
    "{{ ('x\\n' * 2000000) | indent('y' * 100) }}",
    "{{ ('x ' * 2000000) | wordwrap(1, wrapstring='y' * 100) }}",
    "{{ ('%s' * 1000) | format(*(['x' * 4000000] * 1000)) }}",
    "{{ ('%s' * 100) % (('x' * 4000000,) * 100) }}",
    "{{ ('{0}' * 1000).format('x' * 4000000) }}",
    "{{ ''.join(['x' * 4000000] * 50) }}",
    "{{ ('x' * 4000000).replace('x', 'x' * 100) }}",
    "{{ ('\\t' * 4000000).expandtabs(100) }}",
    "{{ ('x' * 4000000).translate({120: 'y' * 100}) }}",
    "{{ ('ab ' * 1300000).split() }}",
    "{{ (['x' * 4000000] * 50) | tojson }}",
    "{{ (['x' * 4000000] * 50) | to_yaml }}",
    "{{ (['x' * 4000000] * 50) | string }}",
    "{{ (['x' * 4000000] * 50) ~ '' }}",
    "{{ ([[1] * 200000] * 50) | sum(start=[]) }}",
    "{{ [1] * 4000000 }}",
    "{{ ('x' * 4000000) | batch(1) | list }}",
    "{{ ('xy' * 2000000) | list }}",
    "{{ (range(100000) | list) * 40 }}",
    "{{ (range(100000) | list + range(100000) | list + range(100000) | list) | map('string') | list }}",
    "{{ ('x ' * 2000000).split(' ') | map('upper') | list }}",
    "{{ [1] | slice(4000000) | list }}",
    "{{ [1] | batch(4000000, 0) | list }}",
    "{% for i in range(100) %}{{ 'x' * 4000000 }}{% endfor %}",
    "{% set b %}{% for i in range(100) %}{{ 'x' * 4000000 }}{% endfor %}{% endset %}{{ b }}",
    "{{ ['x' * 4000000] * 50 }}\n",
]

_MEASURE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from reconciler.errors import Location, ModelError
from reconciler.model.templates import Renderer

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

renderer = Renderer(lambda name: "")
renderer.render_string("{{ 'x' * 10 }} {{ [1, 2] | join }}", {}, Location("p.yaml", 1))
before = peak()
try:
    renderer.render_string(sys.argv[1], {}, Location("p.yaml", 3))
    print("rendered")
except ModelError as exc:
    print(exc.problems[0])
except MemoryError:
    print("MemoryError")
print(peak() - before, file=sys.stderr)
print(peak() - before)
"""


@pytest.mark.parametrize("source", BUILDERS)
def test_a_value_built_past_the_bound_is_refused_in_bounded_memory(source: str) -> None:
    """Measured in a fresh process: the render fails naming the file and line, and its peak
    memory stays within a few times the 4 MiB bound (today: hundreds of MB, or MemoryError)."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, source],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    outcome, grown = done.stdout.splitlines()
    assert outcome.startswith("p.yaml:3: "), outcome
    assert any(why in outcome for why in ("larger than", "more than", "too large")), outcome
    assert int(grown) < 64 * 1024 * 1024, (outcome, int(grown) >> 20)


def test_counting_words_of_a_big_text_builds_no_list() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, "{{ ('ab ' * 1300000) | wordcount }}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcome, grown = done.stdout.splitlines()
    assert outcome == "rendered"
    assert int(grown) < 64 * 1024 * 1024, int(grown) >> 20


def test_bounded_filters_still_do_their_work() -> None:
    assert render("{{ ['a', 'b'] | join('-') }}") == "a-b"
    assert render("{{ 'a.b' | replace('.', '::') }}") == "a::b"
    assert render("{{ 'a\nb' | indent(2) }}") == "a\n  b"
    assert render("{{ 'aaa bbb' | wordwrap(3) }}") == "aaa\nbbb"
    assert render("{{ '%s=%d' | format('a', 1) }}") == "a=1"
    assert render("{{ '{}-{}'.format(x, 2) }}") == "x-2"
    assert render("{{ ','.join(['a', 'b']) }}") == "a,b"
    assert render("{{ [[1], [2]] | sum(start=[]) }}") == [1, 2]
    assert render("{{ [1, 2, 3] | batch(2) | list }}") == [[1, 2], [3]]
    assert render("{{ 'a b c' | wordcount }}") == 3
    assert render("{{ {'a': [1]} | tojson }}") == '{"a": [1]}'
    assert render("{{ ['x'] * 3 }}") == ["x", "x", "x"]
    assert render("{% for i in range(3) %}{{ i }}{% endfor %}") == "012"
    assert render("{{ x ~ 1 ~ [2] }}") == "x1[2]"
