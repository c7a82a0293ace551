"""A context on a temporary root, and resources built with their schema defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from reconciler.fs import BackupStore, Root
from reconciler.resources.base import Context, Resource
from reconciler.resources.runner import Runner
from tests.conftest import seed_root


def make(cls: type[Resource], title: str, sensitive: bool = False, **attrs: Any) -> Resource:
    """A resource as the compiler builds it: every attribute not given takes its default."""
    values = {key: spec.default for key, spec in cls.attributes.items()}
    values.update(attrs)
    return cls(title, values, sensitive=sensitive)


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    root = seed_root(tmp_path / "root")
    state = tmp_path / "state"
    return Context(
        root=Root(root),
        state_dir=state,
        backups=BackupStore(state),
        runner=Runner(base_env={"RECONCILER_ROOT": str(root)}),
    )
