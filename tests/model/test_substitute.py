"""The fast path for values that only look names up renders exactly what Jinja2 renders, and
leaves everything else to Jinja2 (whose errors still name the file and line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import Location, ModelError
from reconciler.model.catalog import Compiler
from reconciler.model.substitute import MISS, Substitutions
from reconciler.model.templates import Renderer
from reconciler.source import DirectorySnapshot

CONTEXT: dict[str, Any] = {
    "item": {"dir": "d1", "port": 8080, "on": True, "none": None, "ratio": 1.5, "items": "key"},
    "key": "shop",
    "params": {"list": ["a", "b"], "nested": {"x": {"y": "deep"}}, "big": 10**50},
    "title": "t",
}
SOURCES = [
    "/srv/{{ item.dir }}/{{ key }}.conf",
    "{{ item.port }}",
    "{{ item.on }}",
    "{{ item.none }}",
    "{{ item.ratio }}",
    "port {{ item.port }}, on {{ item.on }}, none {{ item.none }}\n",
    "{{ params.list[1] }}-{{ params['nested']['x'].y }}",
    "{{params.nested.x.y}}",
    "  {{ title }}  \n\n",
    "{{ params.big }}",
]
JINJA_ONLY = [
    "{{ item.items }}",  # the method of the mapping, as Jinja2 reads an attribute first
    "{{ params.list }}",  # not a scalar: typed values are measured by the renderer
    "{{ key | upper }}",
    "{{ range(3) | list }}",
    "{% if true %}x{% endif %}{{ key }}",
    "{{ key }} }}",
    "{{ missing }}",
    "{{ item.missing }}",
]


@pytest.mark.parametrize("source", SOURCES)
def test_the_fast_path_renders_as_jinja2(source: str) -> None:
    fast = Substitutions().render(source, CONTEXT)
    assert fast is not MISS
    expected = Renderer(lambda name: "").render_string(source, CONTEXT, Location("p.yaml", 1))
    assert fast == expected and type(fast) is type(expected)


@pytest.mark.parametrize("source", JINJA_ONLY)
def test_anything_else_is_left_to_jinja2(source: str) -> None:
    assert Substitutions().render(source, CONTEXT) is MISS


def test_an_undefined_name_is_still_an_error_with_its_place(tmp_path: Path) -> None:
    compiler = Compiler(DirectorySnapshot(tmp_path))
    with pytest.raises(ModelError, match=r"p\.yaml:3.*'dict object' has no attribute 'missing'"):
        compiler.render("{{ item.missing }}", CONTEXT, Location("p.yaml", 3))
