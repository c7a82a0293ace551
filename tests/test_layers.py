"""The package's layers: each may import only the layers below it, and no module imports another
package's private (``_name``) module. docs/development.md draws the same table; a change that
breaks it fails here, naming the import."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reconciler"

BASE = {"errors", "units", "__version__"}  # anyone may use these
# Each layer and the layers it may import besides itself and BASE, lowest first.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "process": set(),
    "fs": set(),
    "source": {"fs", "process"},
    "resources": {"fs", "process", "source"},  # source: hardened git, for the git type
    "model": {"fs", "source", "resources"},
    "facts": {"process", "model"},
    "engine": {"fs", "model", "resources"},
    "apps": {"fs", "process", "model", "resources", "engine"},
    "config": {"fs", "source", "model", "apps"},
    "reconcile": {"fs", "process", "source", "resources", "model", "facts", "engine", "apps"},
    "review": {"fs", "process", "source", "resources", "model", "facts", "engine", "apps"},
    "daemon": {
        *("fs", "process", "source", "resources", "model", "facts", "engine", "apps"),
        *("config", "reconcile"),
    },
    "init": {"fs", "source", "config"},
    "demo": {"process", "daemon"},
    "cli": {
        *("fs", "process", "source", "resources", "model", "facts", "engine", "apps"),
        *("config", "reconcile", "review", "daemon", "init", "demo"),
    },
}


def _layer(module: str) -> str:
    """``reconciler.engine.run`` -> ``engine``; ``reconciler.fs`` -> ``fs``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__version__"


def _imports() -> list[tuple[str, int, str]]:
    """(module, line, imported module) for every import of reconciler, at any depth (an
    import inside a function counts: it is a dependency all the same)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "examples" in path.relative_to(PACKAGE).parts:
            continue
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "reconciler":
                    found += [(module, node.lineno, f"reconciler.{a.name}") for a in node.names]
                elif node.module.startswith("reconciler."):
                    found.append((module, node.lineno, node.module))
            elif isinstance(node, ast.Import):
                found += [
                    (module, node.lineno, a.name)
                    for a in node.names
                    if a.name.startswith("reconciler.")
                ]
    return found


def test_every_layer_is_in_the_table() -> None:
    layers = (
        {_layer(m) for m, _, _ in _imports()}
        | {
            _layer(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts))
            for p in PACKAGE.glob("*.py")
            if p.name != "__init__.py"
        }
        | {
            p.name
            for p in PACKAGE.iterdir()
            if (p / "__init__.py").exists() and p.name != "examples"
        }
    )
    assert layers - BASE <= set(ALLOWED), sorted(layers - BASE - set(ALLOWED))


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = [
        f"{module}:{line} imports {target} ({_layer(module)} may not use {_layer(target)})"
        for module, line, target in _imports()
        if _layer(target) != _layer(module)
        and _layer(target) not in BASE
        and _layer(target) not in ALLOWED.get(_layer(module), set())
    ]
    assert not wrong, "\n".join(wrong)


def test_the_table_has_no_cycle() -> None:
    done: set[str] = set()

    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, " -> ".join((*path, layer))
        if layer in done:
            return
        for below in ALLOWED.get(layer, set()):
            visit(below, (*path, layer))
        done.add(layer)

    for layer in ALLOWED:
        visit(layer, ())


def test_no_module_imports_another_packages_private_module() -> None:
    wrong = [
        f"{module}:{line} imports {target}"
        for module, line, target in _imports()
        if any(part.startswith("_") and not part.startswith("__") for part in target.split("."))
        and _layer(target) != _layer(module)
    ]
    assert not wrong, "\n".join(wrong)
