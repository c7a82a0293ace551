"""App capabilities: a component produces named values, another consumes them.

Nodes share one local coordination directory and run the one-shot CLI in turn, as in
test_rollout_local.py. db produces ``database`` (host, port and a sensitive password); api
consumes it into its configuration file.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from reconciler.engine.state import last_report
from tests.apps.test_exports import Fleet, ok
from tests.conftest import write_tree

PASSWORD = "s3cret-db-pass-42"

APP = """\
version: "{version}"
params:
  port: 5432
components:
  - name: db
    nodes: {{match: "db-*"}}
    produces:
      database:
        host: "{{{{ node }}}}.internal"
        port: "{{{{ params.port }}}}"
        password: "{{{{ lookup('db.password') }}}}"
    resources:
      - directory: /srv/db
      - file: /srv/db/VERSION
        content: "{{{{ app.version }}}}\\n"
    health: {{command: "test -s $RECONCILER_ROOT/srv/db/VERSION", retries: 0}}
  - name: api
    nodes: {{match: "api-*"}}
    consumes: [database]
    resources:
      - file: /etc/api.conf
        content: "db={{{{ app.consumes.database.host }}}}:{{{{ app.consumes.database.port }}}} password={{{{ app.consumes.database.password }}}} from={{{{ app.consumes.database.node }}}} v={{{{ app.version }}}}\\n"
"""


def files(version: str = "1.0") -> dict[str, str]:
    return {
        "nodes.yaml": "nodes:\n  - match: 'db-*'\n    role: db\ndefault: base\n",
        "roles/db.yaml": "profiles: [db]\n",
        "roles/base.yaml": "profiles: []\n",
        "profiles/db.yaml": "params: {password: ''}\nsensitive_params: [password]\n",
        "data/common.yaml": f"db:\n  password: {PASSWORD}\n",
        "apps/shop.yaml": APP.format(version=version),
    }


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    fleet = Fleet(tmp_path)
    write_tree(fleet.repo, files())
    return fleet


def test_the_consumer_waits_for_the_producer_then_reads_its_values(fleet: Fleet) -> None:
    done = fleet.apply("api-1")
    ok(done)
    assert "waiting for db to be healthy at 1.0" in done.stdout, done.stdout
    assert not (fleet.tmp / "api-1" / "root" / "etc/api.conf").exists()
    ok(fleet.apply("db-1"))
    done = fleet.apply("api-1")
    ok(done)
    assert fleet.read("api-1", "etc/api.conf") == (
        f"db=db-1.internal:5432 password={PASSWORD} from=db-1 v=1.0\n"
    )
    # The password is in the file that uses it, and a digest everywhere else.
    shown = done.stdout + done.stderr + str(last_report(fleet.tmp / "api-1" / "state"))
    assert PASSWORD not in shown


def test_a_healthy_producer_whose_values_are_gone_keeps_the_consumer_waiting(
    tmp_path: Path,
) -> None:
    short = Fleet(tmp_path, exports_ttl="1s")  # db-1's values drop out a second after its run
    write_tree(short.repo, files())
    ok(short.apply("db-1"))
    time.sleep(1.5)
    done = Fleet(tmp_path).apply("api-1")
    ok(done)
    assert "waiting for db to publish database" in done.stdout, done.stdout
    assert not (tmp_path / "api-1" / "root" / "etc/api.conf").exists()


def test_a_new_producer_value_reaches_the_consumer(fleet: Fleet) -> None:
    ok(fleet.apply("db-1"))
    ok(fleet.apply("api-1"))
    write_tree(fleet.repo, {"apps/shop.yaml": APP.format(version="1.0").replace("5432", "6432")})
    ok(fleet.apply("db-1"))
    done = fleet.apply("api-1")
    assert done.returncode == 2, done.stdout
    assert "db=db-1.internal:6432 " in fleet.read("api-1", "etc/api.conf")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("consumes: [database]", "consumes: [datbase]"),
            "shop.yaml:19, key 'consumes': no component of app 'shop' produces 'datbase'",
        ),
        (
            ("consumes: [database]", "consumes: database"),
            "shop.yaml:19, key 'consumes': must be a list of produced names",
        ),
        (
            ("    produces:\n      database:\n", "    produces:\n      database: 3\n      x:\n"),
            "shop.yaml:8, key 'produces.database': must be a mapping of keys to values",
        ),
    ],
)
def test_bad_capabilities_are_errors_naming_file_line_and_key(
    fleet: Fleet, change: tuple[str, str], message: str
) -> None:
    write_tree(fleet.repo, {"apps/shop.yaml": APP.format(version="1.0").replace(*change)})
    done = fleet.apply("api-1", "validate")
    assert done.returncode != 0
    assert message in done.stdout + done.stderr, done.stdout + done.stderr
