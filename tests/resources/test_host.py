"""host: entries of /etc/hosts under a root, by the real CLI; every other line left alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.errors import ModelError
from reconciler.fs import BackupStore
from reconciler.model.catalog import Compiler
from reconciler.source import DirectorySnapshot
from tests.conftest import CLI, write_tree

HOSTS = (
    "# The following lines are desirable for IPv6 capable hosts\n"
    "127.0.0.1\tlocalhost\n"
    "::1     localhost ip6-localhost ip6-loopback\n"
    "\n"
    "10.0.0.1 db old-db   # moved last week\n"
    "10.0.0.7 cache\n"
    "10.0.0.8 db\n"
)


def repo(base: Path, resources: str) -> Path:
    return write_tree(
        base,
        {
            "nodes.yaml": "default: all\n",
            "roles/all.yaml": "profiles: [case]\n",
            "profiles/case.yaml": "resources:\n" + resources,
        },
    )


def test_an_entry_is_replaced_added_and_removed_by_name(cli: CLI, tmp_path: Path) -> None:
    hosts = cli.root / "etc/hosts"
    hosts.write_text(HOSTS)
    resources = """
  - host: db
    ip: 10.0.0.2
    host_aliases: [database, pg]
  - host: web
    ip: "2001:db8::10"
  - host: cache
    ensure: absent
  - line: "10.0.0.99 extra"
    path: /etc/hosts
"""
    source = repo(tmp_path / "repo", resources)
    plan = cli.run("plan", source, "--node", "n1", check=2).stdout
    assert "-10.0.0.1 db old-db   # moved last week" in plan and "+10.0.0.2\tdb database pg" in plan
    assert hosts.read_text() == HOSTS  # plan changed nothing
    cli.run("apply", source, "--node", "n1", check=2)
    assert hosts.read_text() == (
        "# The following lines are desirable for IPv6 capable hosts\n"
        "127.0.0.1\tlocalhost\n"
        "::1     localhost ip6-localhost ip6-loopback\n"
        "\n"
        "10.0.0.2\tdb database pg\n"  # in place; the stale duplicate for db dropped
        "2001:db8::10\tweb\n"
        "10.0.0.99 extra\n"  # a line of the same file, converged one after another
    )
    assert BackupStore(cli.state).entries("/etc/hosts")
    cli.run("apply", source, "--node", "n1", check=0)  # in sync: nothing rewritten

    # An entry equal but for spacing is in sync: the file is left as it is.
    hosts.write_text(
        hosts.read_text().replace("10.0.0.2\tdb database pg", "10.0.0.2  db  database pg")
    )
    cli.run("apply", source, "--node", "n1", check=0)


def test_a_missing_hosts_file_is_created(cli: CLI, tmp_path: Path) -> None:
    source = repo(tmp_path / "repo", "  - host: db\n    ip: 10.0.0.2\n")
    cli.run("apply", source, "--node", "n1", check=2)
    hosts = cli.root / "etc/hosts"
    assert hosts.read_text() == "10.0.0.2\tdb\n" and hosts.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ("  - host: db\n    ip: 10.0.0.300\n", r"key 'ip': '10.0.0.300' is not an IPv4 or IPv6"),
        ("  - host: db\n", r"key 'ip': a host entry needs its address"),
        ("  - host: -db\n    ip: 10.0.0.1\n", r"'-db' is not a host name"),
        ('  - host: "db x"\n    ip: 10.0.0.1\n', r"'db x' is not a host name"),
        (
            '  - host: db\n    ip: 10.0.0.1\n    host_aliases: ["a\\nb"]\n',
            r"'host_aliases': 'a\\nb' is not a host name",
        ),
        ("  - host: db\n    ip: 10.0.0.1\n    target: hosts\n", r"key 'target': 'hosts' must be"),
    ],
)
def test_bad_input_is_refused_when_compiled(tmp_path: Path, declaration: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        Compiler(DirectorySnapshot(repo(tmp_path, declaration))).compile("n1", {})
