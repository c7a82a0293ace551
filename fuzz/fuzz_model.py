"""Fuzz the control-repo model: the YAML loader, then whole compiles of a tiny in-memory repo.

Each input is parsed by ``reconciler.model.yamlload.load``, then put in the place of a file of a
small repo: the files its top-level keys belong in (``nodes`` to nodes.yaml, ``profiles`` to a
role, ``params`` or ``resources`` to a profile, ``components`` to an app, ``hierarchy`` to
reconciler.yaml, other keys to a data file), or a template when it is not a YAML mapping. With
it, one node is classified and the repo validated as a whole, which compiles every role. The
only exceptions allowed out of any of it are ``ReconcilerError``s: anything else is a finding.

    python fuzz/fuzz_model.py -max_total_time=60 fuzz/corpus/model
    python fuzz/fuzz_model.py -max_total_time=600 fuzz/work/model fuzz/corpus/model

libFuzzer writes new inputs into the first corpus directory and a failing input to
``crash-<sha1>`` (or ``timeout-``, ``oom-``) in the working directory or ``-artifact_prefix``.
Run one input again with ``python fuzz/fuzz_model.py <file>``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from typing import Any

import atheris

# Coverage comes from the code under test and the parsers it drives, not the rest of stdlib.
with atheris.instrument_imports(include=["reconciler", "yaml", "jinja2", "markupsafe"]):
    from reconciler.errors import ReconcilerError
    from reconciler.model import yamlload
    from reconciler.model.catalog import Compiler, validate_repo
    from reconciler.model.repo import classify
    from reconciler.model.yamlload import LocMap
    from reconciler.source import clean_relpath

NODE = "web-1"
FACTS: Mapping[str, Any] = {
    "hostname": NODE,
    "os": {"family": "Debian", "name": "Debian GNU/Linux", "release": "12"},
    "processors": {"count": 2},
}

# A small repo that compiles: every kind of file the model reads, so that a fuzzed file in any
# one place is checked against real neighbours. Few templates: compiling them is most of the cost.
BASE: dict[str, bytes] = {
    "reconciler.yaml": b"hierarchy:\n  - nodes/{node}.yaml\n  - roles/{role}.yaml\n  - common.yaml\n",
    "nodes.yaml": b"""\
nodes:
  - match: "web-*"
    role: web
  - facts: {os.family: Debian}
    role: base
default: base
""",
    "roles/web.yaml": b"profiles: [motd, fuzz]\n",
    "roles/base.yaml": b"description: every node\nprofiles: [motd]\n",
    "profiles/motd.yaml": b"""\
params:
  message: Managed by reconciler.
  contact: ops@example.com
resources:
  - file: /etc/motd
    mode: "0644"
    content: "{{ params.message }}\\n"
    notify: exec:reload
  - exec: reload
    command: [systemctl, reload, motd]
    refreshonly: true
""",
    "profiles/fuzz.yaml": b"""\
params:
  port: 8080
  names: [a, b]
resources:
  - directory: /srv/fuzz
  - file: /srv/fuzz/index.html
    source: index.html
    require: directory:/srv/fuzz
  - file: /etc/site.conf
    template: fuzz.j2
""",
    "data/common.yaml": b"motd:\n  contact: platform@example.com\n",
    "data/nodes/web-1.yaml": b"fuzz:\n  port: 9000\n",
    "apps/fuzz.yaml": b"""\
version: "1.0"
components:
  - name: api
    nodes: {role: web}
    resources:
      - file: /etc/api.env
        content: "VERSION=1.0\\n"
    health:
      command: "true"
      timeout: 5
""",
    "templates/fuzz.j2": b"listen {{ params.port }};\n",
    "files/index.html": b"<h1>hello</h1>\n",
}

# Where an input goes, by the top-level keys it has; a mapping with none of these is data.
SLOTS_BY_KEY = {
    "nodes": "nodes.yaml",
    "default": "nodes.yaml",
    "profiles": "roles/web.yaml",
    "params": "profiles/fuzz.yaml",
    "resources": "profiles/fuzz.yaml",
    "sensitive_params": "profiles/fuzz.yaml",
    "version": "apps/fuzz.yaml",
    "components": "apps/fuzz.yaml",
    "hierarchy": "reconciler.yaml",
    "prune": "reconciler.yaml",
    "allow_mass_prune": "reconciler.yaml",
}
DATA_SLOT = "data/common.yaml"
PROFILE_SLOT = "profiles/fuzz.yaml"
TEMPLATE_SLOT = "templates/fuzz.j2"


class MemorySnapshot:
    """A revision of the control repo held in a dict: path -> bytes."""

    revision: str | None = "0" * 40
    branch: str | None = "main"
    description = "fuzz"

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self._files = dict(files)

    def read(self, path: str) -> bytes:
        rel = clean_relpath(path)
        try:
            return self._files[rel]
        except KeyError:
            raise FileNotFoundError(rel) from None

    def exists(self, path: str) -> bool:
        return clean_relpath(path) in self._files

    def files(self, directory: str = "") -> list[str]:
        prefix = clean_relpath(directory) + "/" if directory else ""
        return sorted(p for p in self._files if p.startswith(prefix))


def slots(value: Any, parsed: bool) -> set[str]:
    """The files of the repo an input is tried as: by its keys, or as a template."""
    if not parsed or value is None or isinstance(value, str):
        return {TEMPLATE_SLOT}
    if not isinstance(value, LocMap):
        return {PROFILE_SLOT}
    found = {SLOTS_BY_KEY[key] for key in value if isinstance(key, str) and key in SLOTS_BY_KEY}
    return found or {DATA_SLOT}


def compile_with(slot: str, data: bytes) -> None:
    """Classify the node and validate the repo (every role compiled) with ``data`` at ``slot``."""
    snapshot = MemorySnapshot({**BASE, slot: data})
    with contextlib.suppress(ReconcilerError):
        classify(snapshot, NODE, FACTS)
    with contextlib.suppress(ReconcilerError):
        validate_repo(snapshot, FACTS, NODE)


def test_one_input(data: bytes) -> None:
    try:
        value = yamlload.load(data, "fuzz.yaml")
        parsed = True
    except ReconcilerError:
        value, parsed = None, False
    for slot in sorted(slots(value, parsed)):
        compile_with(slot, data)


def check_base() -> None:
    """The repo the inputs are put into must compile cleanly, or every input only fails."""
    snapshot = MemorySnapshot(BASE)
    Compiler(snapshot).compile(NODE, FACTS)
    problems = validate_repo(snapshot, FACTS, NODE)
    if problems:
        raise SystemExit("the fuzz repo itself is invalid: " + "; ".join(map(str, problems)))


def main() -> None:
    check_base()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
