"""Which resources a sensitive parameter makes sensitive, and compile errors that never quote
a sensitive value."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ModelError
from reconciler.model.catalog import Compiler, params_named
from reconciler.resources.base import Secrets, digest
from reconciler.source import DirectorySnapshot

SECRET = "hunter2-long-enough"
SHORT = "pw1"  # too short to be searched for in text: only naming it taints

BASE = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
}


def compile_profile(
    make_repo: Callable[..., Path], resources: str, files: dict[str, str] | None = None
) -> Any:
    profile = f"""
params:
  password: {SECRET}
  pin: {SHORT}
  user: app
  port: 80
sensitive_params: [password, pin]
resources:
{resources}
"""
    repo = make_repo({**BASE, "profiles/app.yaml": profile, **(files or {})})
    return Compiler(DirectorySnapshot(repo)).compile("n1", {"os": {"family": "Debian"}})


def sensitive(catalog: Any) -> dict[str, bool]:
    return {rid: e.resource.sensitive for rid, e in catalog.entries.items()}


def test_params_named() -> None:
    assert params_named("{{ params.a }} {{ params['b'] }}") == {"a", "b"}
    assert params_named("{% set x = params.a %}{{ x }}") == {"a"}
    assert params_named("{{ facts.params }} {{ node }}") == frozenset()
    assert params_named("{{ params | to_json }}") is None
    assert params_named("{{ params[key] }}") is None
    assert params_named("{% for k, v in params.items() %}{{ v }}{% endfor %}") == {"items"}
    assert params_named("{{ unclosed") is None


def test_a_resource_that_uses_a_sensitive_parameter_is_sensitive(
    make_repo: Callable[..., Path],
) -> None:
    catalog = compile_profile(
        make_repo,
        """
  - file: /etc/by-name
    content: "pin={{ params.pin }}"
  - file: /etc/by-item
    content: "pin={{ params['pin'] }}"
  - file: /etc/all-params
    content: "{{ params | to_json }}"
  - file: /etc/by-method
    content: "{{ params.get('user') }}"
  - exec: nested
    command: ["/bin/echo", "{{ params.pin }}"]
  - file: /etc/by-value
    content: "copied hunter2-long-enough"
  - file: /etc/template
    template: outer.j2
  - file: /etc/other-param
    content: "user={{ params.user }} port={{ params.port }}"
  - file: /etc/literal
    content: "pin"
  - file: /etc/when-only
    content: "x"
    when: "params.pin == 'pw1'"
""",
        {
            "templates/outer.j2": "a\n{% include 'inner.j2' %}",
            "templates/inner.j2": "{{ params.pin }}\n",
        },
    )
    assert sensitive(catalog) == {
        "file:/etc/by-name": True,
        "file:/etc/by-item": True,
        "file:/etc/all-params": True,
        "file:/etc/by-method": True,  # params.get may reach any parameter
        "exec:nested": True,
        "file:/etc/by-value": True,  # holds the value without naming it
        "file:/etc/template": True,  # through the template it includes
        "file:/etc/other-param": False,
        "file:/etc/literal": False,
        "file:/etc/when-only": False,  # when: decides presence, the value is not in it
    }
    # pw1 is too short to be searched for; the sensitive files' lines are searched for too
    assert SECRET in catalog.secrets.values and "pw1" not in catalog.secrets.values
    assert "copied hunter2-long-enough" in catalog.secrets.values
    # a tainted resource shows its values as digests
    nested = catalog.entries["exec:nested"].resource
    assert nested.attrs["command"] == ["/bin/echo", SHORT]
    assert nested.show(SHORT) == digest(SHORT)


def test_what_edits_a_sensitive_file_is_sensitive_and_its_content_is_scrubbed(
    make_repo: Callable[..., Path],
) -> None:
    """A line's diff shows the lines around its change: the lines of a file that holds
    something sensitive are sensitive, and so is every file and line on its path."""
    catalog = compile_profile(
        make_repo,
        """
  - file: /etc/token
    content: "# api access\\ntoken = l1teral-value\\n"
    sensitive: true
    replace: false
  - line: mode = rw
    path: /etc/token
  - file: /etc/shared
    content: "[main]\\n"
    replace: false
  - line: db password
    path: /etc/shared
    text: "password = {{ params.password }}"
  - line: plain = yes
    path: /etc/shared
  - file: /etc/plain
    content: "plain\\n"
  - line: other = no
    path: /etc/plain
  - exec: e
    command: "true"
    environment: {TOKEN: env-token-value}
    sensitive: true
""",
    )
    assert sensitive(catalog) == {
        "file:/etc/token": True,
        "line:mode = rw": True,  # edits a file marked sensitive
        "file:/etc/shared": True,  # a sensitive line is in it
        "line:db password": True,
        "line:plain = yes": True,
        "file:/etc/plain": False,
        "line:other = no": False,
        "exec:e": True,
    }
    values = catalog.secrets.values
    assert {"token = l1teral-value", "l1teral-value", "env-token-value", SECRET} <= values
    assert f"password = {SECRET}" in values
    assert catalog.secrets.scrub("got l1teral-value") == f"got {digest('l1teral-value')}"


def test_a_title_that_holds_a_sensitive_value_is_an_error(
    make_repo: Callable[..., Path],
) -> None:
    with pytest.raises(ModelError) as exc:
        compile_profile(
            make_repo,
            """
  - exec: "set {{ params.pin }}"
    command: "true"
  - line: "password={{ params.password }}"
    path: /etc/app.ini
  - file: /etc/hunter2-long-enough
""",
        )
    messages = [str(p) for p in exc.value.problems]
    assert len(messages) == 3
    assert all("the title holds the value of a sensitive parameter" in m for m in messages)
    assert not any(SECRET in m or "set pw1" in m for m in messages)


def test_a_sensitive_line_needs_text(make_repo: Callable[..., Path]) -> None:
    with pytest.raises(ModelError, match="a sensitive line needs its line in 'text'"):
        compile_profile(
            make_repo,
            """
  - line: "token = abc"
    path: /etc/app.ini
    sensitive: true
""",
        )


def test_sensitive_params_must_be_parameters(make_repo: Callable[..., Path]) -> None:
    repo = make_repo(
        {**BASE, "profiles/app.yaml": "params: {a: 1}\nsensitive_params: [a, b]\nresources: []\n"}
    )
    with pytest.raises(ModelError, match="'b' is not a parameter of this profile"):
        Compiler(DirectorySnapshot(repo)).compile("n1", {})


def test_errors_show_digests_not_values(make_repo: Callable[..., Path]) -> None:
    with pytest.raises(ModelError) as exc:
        compile_profile(
            make_repo,
            """
  - file: /etc/a
    ensure: "{{ params.password }}"
  - file: /etc/b
    ensure: "{{ params.pin }}"
  - exec: c
    command: "true"
    creates: "{{ params.pin }}"
  - file: /etc/d
    content: "{{ facts[params.password] }}"
""",
        )
    text = str(exc.value)
    assert SECRET not in text and "'pw1'" not in text
    assert f"must be one of present, absent, not {digest(SECRET)}" in text
    assert f"must be one of present, absent, not {digest(SHORT)}" in text
    assert f"{digest(SHORT)} must be an absolute path" in text
    assert f"has no attribute '{digest(SECRET)}'" in text
    # relationships are checked once every resource compiled
    with pytest.raises(ModelError) as exc:
        compile_profile(
            make_repo,
            """
  - exec: e
    command: "true"
    require: "exec:{{ params.password }}"
""",
        )
    assert SECRET not in str(exc.value)
    assert f"exec:{digest(SECRET)}, which is not in this node's catalog" in str(exc.value)


def test_secrets_scrub() -> None:
    secrets = Secrets(["abcdef", "abcdefgh", "x"])
    assert secrets.values == {"abcdef", "abcdefgh"}
    assert secrets.scrub("1 abcdefgh 2 abcdef") == f"1 {digest('abcdefgh')} 2 {digest('abcdef')}"
    # a digest already in a text is left whole, even if a value could be read inside it
    hexy = Secrets(["0123ab"])
    text = "sha256:" + "0123ab" * 10 + "0123"
    assert hexy.scrub(text) == text
    assert not hexy.found_in(text)
    assert Secrets().scrub("anything") == "anything"
