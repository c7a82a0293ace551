"""`reconciler demo`: the real daemon on the bundled example, as a new user runs it."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

from tests.conftest import running_demo, wait_for


def test_demo_runs_the_daemon_on_the_example() -> None:
    argv = [sys.executable, "-m", "reconciler.cli", "demo", "--exit-after", "60"]
    with running_demo(argv) as demo:
        base, port = demo.base, demo.port
        site = base / "root/etc/nginx/sites-available/site.conf"
        assert "listen 8081;" in site.read_text()
        motd = base / "root/etc/motd"
        motd.write_text("tampered\n")
        wait_for(lambda: "web-1 (web" in motd.read_text(), 15, "the watcher to heal the motd")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert b"reconciler_revision_info" in r.read()
        # The example app: web-1 waits for the database until db-1 is applied, then deploys.
        assert not (base / "root/srv/shop/api").exists()
        db = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "apply", "--config", str(base / "db-1.yaml")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert db.returncode == 2, db.stdout + db.stderr
        # db-1 decrypts the example's encrypted value with the demo identity its config names.
        password = base / "db-1/root/etc/postgresql/shop.password"
        assert password.read_text() == "shop-demo-password\n"
        assert "shop-demo-password" not in db.stdout + db.stderr
        api = base / "root/srv/shop/api/VERSION"
        wait_for(api.exists, 30, "web-1 to deploy the api once the database is healthy")
        assert api.read_text() == "1.4.2\n"
        assert "SHOP_DB=db-1:5432" in (base / "root/etc/shop-api.env").read_text()

        def apply(node: str) -> subprocess.CompletedProcess[str]:
            config = str(base / f"{node}.yaml")
            return subprocess.run(
                [sys.executable, "-m", "reconciler.cli", "apply", "--config", config],
                capture_output=True,
                text=True,
                timeout=120,
            )

        # The load balancer collects the api nodes; a second one joins its pool.
        assert apply("lb-1").returncode == 2
        conf = base / "lb-1/root/etc/shop-lb.conf"
        assert "server web-1:8080;" in conf.read_text()
        assert "server web-2" not in conf.read_text()
        assert apply("web-2").returncode == 2
        assert apply("lb-1").returncode == 2
        assert "server web-1:8080;\n  server web-2:8080;" in conf.read_text()
