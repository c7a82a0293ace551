"""Exported data through the coordination store: read for ``collect()``, published after a run.

The store is opened only when a compile calls ``collect()`` or a node has exports to publish (or
to withdraw), so nodes that use neither never touch it. What a node last published is kept in
``state_dir/exports.json``: a node whose catalog stops exporting withdraws its record.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

from reconciler.apps.store import CoordinationConfig, Store, StoreError, open_store
from reconciler.fs import atomic_write
from reconciler.model import exports as exportsmod
from reconciler.model.catalog import Catalog

LAST = "exports.json"  # under the state directory: what this node last published

Warn = Callable[[str], None]


class Exchange:
    """One run's access to exported data; the store is opened on first use."""

    def __init__(self, store: Store | None, config: CoordinationConfig) -> None:
        self._store = store
        self._opened = False
        self.config = config
        self.records: dict[str, bytes] | None = None  # what the compile read, for the daemon

    def store(self) -> Store:
        if self._store is None:
            self._store, self._opened = open_store(self.config), True
        return self._store

    def read(self) -> Mapping[str, bytes]:
        """Every node's exports, for ``collect()``; an unreachable store fails the compile
        (an empty pool would take every member out of the files built from it)."""
        try:
            self.records = self.store().records("exports")
        except StoreError as exc:
            raise ValueError(f"collect: coordination store: {exc}") from None
        return self.records

    def publish(
        self, catalog: Catalog, healthy: Collection[str], state_dir: Path, warn: Warn
    ) -> None:
        """After a successful run: publish the catalog's exports, with the exports and produced
        values of its components ``healthy`` here ("app/component"); or withdraw the last ones."""
        last = state_dir / LAST
        exports = dict(catalog.exports)
        produces: dict[str, dict[str, dict[str, object]]] = {}
        sensitive: dict[str, dict[str, list[str]]] = {}
        for d in catalog.deployments:
            if d.key not in healthy:
                continue
            exports.update(d.exports)
            if d.produces:
                produces.setdefault(d.app.name, {}).update(d.produces)
            if d.sensitive:
                sensitive.setdefault(d.app.name, {}).update(d.sensitive)
        try:
            if exports or produces:
                components = [d.key for d in catalog.deployments]
                record = exportsmod.encode(
                    catalog.node, catalog.role, components, exports, produces, sensitive
                )
                self.store().publish_record(
                    "exports", catalog.node, record, self.config.exports_ttl
                )
                atomic_write(last, record)
            elif last.exists():
                self.store().withdraw_record("exports", catalog.node)
                last.unlink()
        except (StoreError, OSError, ValueError) as exc:
            warn(f"exports not published: {exc}")

    def close(self) -> None:
        if self._opened and self._store is not None:
            self._store.close()


@contextlib.contextmanager
def exchange(store: Store | None, config: CoordinationConfig) -> Iterator[Exchange]:
    found = Exchange(store, config)
    try:
        yield found
    finally:
        found.close()


def collected_view(records: Mapping[str, bytes], names: frozenset[str]) -> str:
    """What of ``records`` the names a compile collected depend on (compared by the daemon)."""
    view: dict[str, dict[str, object]] = {}
    for node, raw in sorted(records.items()):
        try:
            published = exportsmod.decode(node, raw)
        except (ValueError, RecursionError):
            continue
        picked = {n: v for n, v in published.exports.items() if n in names}
        if picked:
            view[node] = {"role": published.role, "c": published.components, "e": picked}
    return json.dumps(view, sort_keys=True)
