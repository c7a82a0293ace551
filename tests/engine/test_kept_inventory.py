"""The inventory a daemon keeps between runs: read again only when another process replaced the
file, and not written again unchanged."""

from __future__ import annotations

from pathlib import Path

from reconciler.engine.state import Inventory, InventoryItem, KeptInventory


def inventory(digest: str) -> Inventory:
    return Inventory("abc", {"file:/etc/motd": InventoryItem("file", "/etc/motd", digest)}, {})


def test_an_unchanged_inventory_is_not_written_again(tmp_path: Path) -> None:
    kept = KeptInventory()
    kept.save(inventory("sha256:1"), tmp_path)
    before = (tmp_path / "inventory.json").stat()
    assert kept.load(tmp_path) == inventory("sha256:1")
    kept.save(inventory("sha256:1"), tmp_path)
    after = (tmp_path / "inventory.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    kept.save(inventory("sha256:2"), tmp_path)
    assert Inventory.load(tmp_path) == inventory("sha256:2")


def test_an_inventory_another_process_wrote_is_read_again(tmp_path: Path) -> None:
    kept = KeptInventory()
    kept.save(inventory("sha256:1"), tmp_path)
    assert kept.load(tmp_path) == inventory("sha256:1")
    inventory("sha256:other").save(tmp_path)  # `reconciler apply` on the same state directory
    assert kept.load(tmp_path) == inventory("sha256:other")
    # ... and what it wrote is replaced by the daemon's next run, even if that equals its own.
    kept2 = KeptInventory()
    kept2.save(inventory("sha256:1"), tmp_path)
    inventory("sha256:other").save(tmp_path)
    kept2.save(inventory("sha256:1"), tmp_path)
    assert Inventory.load(tmp_path) == inventory("sha256:1")


def test_a_missing_inventory_reads_empty_and_is_written(tmp_path: Path) -> None:
    kept = KeptInventory()
    assert kept.load(tmp_path) == Inventory()
    kept.save(Inventory(), tmp_path)
    assert (tmp_path / "inventory.json").exists()
