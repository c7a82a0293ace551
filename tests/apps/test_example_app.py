"""The bundled example's app (reconciler/examples/control-repo/apps/shop.yaml) rolled out on three nodes.

The releases are the tarballs in the example's files/releases/, copied into each node's root
and read through the artifact resource from a file:// URL that a facts file gives (as
`reconciler demo` does).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from reconciler.demo import DEMO_AGE_KEY, copy_example
from tests.apps.test_rollout_local import Fleet
from tests.conftest import place_releases

SHA_141 = "08947d9eb5518a143eed67d74fc79e9a1402ffd6a10caf7835492732e9e55103"
SHA_142 = "a6bbeadfb2b1c2a7635db18d5d8e0cb04e7ca5c45a18288f9d98f83fa42596e6"


def test_the_example_shop_rolls_out_and_back(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    copy_example(fleet.repo)  # its module a git repository beside it, pinned
    facts = tmp_path / "facts.d"
    facts.mkdir()
    for node in ("db-1", "web-1", "web-2", "lb-1"):
        config = fleet.config(node)
        releases = place_releases(config.parent / "root")  # the same URL in every root
        config.write_text(config.read_text().replace("facts_dirs: []", f"facts_dirs: [{facts}]"))
    # The db role reads an encrypted value (data/roles/db.yaml): db-1 gets the demo identity.
    key = tmp_path / "demo-age.key"
    key.touch(mode=0o600)
    key.write_bytes(DEMO_AGE_KEY.read_bytes())
    db = fleet.config("db-1")
    db.write_text(db.read_text() + f"secrets:\n  age_identity: {key}\n")
    (facts / "shop.json").write_text(
        json.dumps({"shop_releases": releases, "os": {"family": "Debian", "name": "Debian"}})
    )

    assert "waiting for database" in fleet.apply("web-1").stdout
    assert fleet.apply("db-1").returncode == 2
    assert "healthy" in fleet.apply("web-1").stdout
    api = tmp_path / "web-1" / "root" / "srv/shop/api/bin/shop-api"
    version = subprocess.run([api], capture_output=True, text=True, check=True).stdout
    assert version == "1.4.2\n"
    # The api reads the address the database produced.
    env = (tmp_path / "web-1" / "root" / "etc/shop-api.env").read_text()
    assert "SHOP_DB=db-1:5432\n" in env
    # The app's parameter: data/roles/web.yaml overrides the default of 2.
    assert "SHOP_WORKERS=4\n" in env
    fleet.apply("lb-1")
    conf = tmp_path / "lb-1" / "root" / "etc/shop-lb.conf"
    assert conf.read_text().startswith("# shop 1.4.2:")
    assert conf.read_text().count("server ") == 1 and "server web-1:8080;" in conf.read_text()
    # A second api node joins the pool the load balancer collects.
    assert "healthy" in fleet.apply("web-2").stdout
    assert fleet.apply("lb-1").returncode == 2
    assert "  server web-1:8080;\n  server web-2:8080;\n}" in conf.read_text()

    # Back to 1.4.1: version and checksum change together, and the rollout runs again.
    app = fleet.repo / "apps" / "shop.yaml"
    app.write_text(
        app.read_text().replace('version: "1.4.2"', 'version: "1.4.1"').replace(SHA_142, SHA_141)
    )
    assert "waiting for database" in fleet.apply("web-1").stdout
    fleet.apply("db-1")
    fleet.apply("web-1")
    assert subprocess.run([api], capture_output=True, text=True).stdout == "1.4.1\n"
