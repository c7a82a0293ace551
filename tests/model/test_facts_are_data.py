"""Facts are data: text with template syntax in a fact stays text wherever the repo inserts it,
and a fact named like a desired-state key (node, role, params, settings) changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.model.catalog import Compiler
from reconciler.source import DirectorySnapshot

INJECTIONS = {
    "expr": "{{ 7 * 7 }}",
    "block": "{% for i in range(3) %}loop{% endfor %}",
    "comment": "{# hidden #}",
    "escape": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "raw": "{% raw %}{{ x }}{% endraw %}",
}

REPO = {
    "nodes.yaml": """
        nodes:
          - match: "n1"
            role: app
        default: other
        """,
    "roles/app.yaml": "profiles: [app]\n",
    "roles/other.yaml": "profiles: []\n",
    "reconciler.yaml": "hierarchy:\n  - nodes/{node}.yaml\n  - common.yaml\n",
    "data/nodes/evil.yaml": "app: {motd: from the wrong node}\n",
    "profiles/app.yaml": """
        params:
          motd: from the repo
          expr: "{{ facts.expr }}"
          listed: "{{ [facts.block, facts.comment] }}"
        resources:
          - file: /etc/motd
            content: "{{ params.motd }} node={{ node }} role={{ role }}\\n"
          - file: "/etc/{{ facts.expr }}"
            content: "expr={{ facts.expr }} block={{ facts.block }} comment={{ facts.comment }}"
          - file: /etc/escape
            content: "{{ facts.escape }} {{ facts.raw }}"
          - file: /etc/params
            content: "{{ params.expr }} {{ params.listed | join(',') }}"
          - file: /etc/json
            content: "{{ facts | to_json }}"
          - file: /etc/template
            template: t.j2
          - file: /etc/when
            content: "x"
            when: "facts.expr == '{{ 7 * 7 }}'"
        """,
    "templates/t.j2": "{{ facts.expr }}|{{ facts.block }}|{{ facts.raw }}\n",
}


def catalog(make_repo: Callable[..., Path], facts: dict[str, Any]) -> Any:
    repo = make_repo(REPO)
    return Compiler(DirectorySnapshot(repo)).compile("n1", {"os": {"family": "Debian"}, **facts})


def content(cat: Any, path: str) -> Any:
    return cat.entries[f"file:{path}"].resource.attrs["content"]


def test_a_fact_with_template_syntax_stays_text(make_repo: Callable[..., Path]) -> None:
    cat = catalog(make_repo, INJECTIONS)
    assert content(cat, "/etc/{{ 7 * 7 }}") == (
        "expr={{ 7 * 7 }} block={% for i in range(3) %}loop{% endfor %} comment={# hidden #}"
    )
    assert content(cat, "/etc/escape") == INJECTIONS["escape"] + " " + INJECTIONS["raw"]
    # a parameter whose default is a fact: the fact's text, not rendered again
    assert cat.params["app"]["expr"] == "{{ 7 * 7 }}"
    assert content(cat, "/etc/params") == (
        "{{ 7 * 7 }} {% for i in range(3) %}loop{% endfor %},{# hidden #}"
    )
    assert '"expr": "{{ 7 * 7 }}"' in content(cat, "/etc/json")
    assert content(cat, "/etc/template") == (
        "{{ 7 * 7 }}|{% for i in range(3) %}loop{% endfor %}|{% raw %}{{ x }}{% endraw %}\n"
    )
    assert "file:/etc/when" in cat.entries  # compared as text: equal to the literal
    everything = "".join(str(e.resource.attrs.get("content")) for e in cat.entries.values())
    assert "49" not in everything and "looploop" not in everything


def test_facts_named_like_desired_state_change_nothing(make_repo: Callable[..., Path]) -> None:
    hostile = {
        **INJECTIONS,
        "node": "evil",
        "role": "other",
        "params": {"motd": "from facts"},
        "app": {"motd": "from facts"},
        "prune": True,
        "allow_mass_prune": True,
        "hierarchy": ["nodes/evil.yaml"],
        "settings": {"prune": True},
        "resources": [{"file": "/etc/injected", "content": "x"}],
        "root": "/",
        "state_dir": "/tmp/elsewhere",
    }
    plain = catalog(make_repo, INJECTIONS)
    cat = catalog(make_repo, hostile)
    assert cat.node == "n1" and cat.role == "app"
    assert cat.params["app"]["motd"] == "from the repo"
    assert content(cat, "/etc/motd") == "from the repo node=n1 role=app\n"
    assert not cat.settings.prune and not cat.settings.allow_mass_prune
    assert cat.settings == plain.settings
    assert set(cat.entries) == set(plain.entries)  # no resource from a fact
    for rid, entry in cat.entries.items():
        if rid != "file:/etc/json":  # the one resource that prints every fact
            assert entry.resource.attrs == plain.entries[rid].resource.attrs
