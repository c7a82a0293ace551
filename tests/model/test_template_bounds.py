"""Templates that would build a huge value at once are refused before they build it."""

from __future__ import annotations

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
