"""nftables with the real ``nft``.

Under a root only the file is managed. The live part (no --root: the kernel's ruleset) runs the
real CLI inside a network namespace the test creates (``ip netns exec``), so the host's firewall
is never touched; its ruleset file goes to the test's temporary directory through ``path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.resources.base import Context
from reconciler.resources.nftables import Nftables, declared_tables
from tests.conftest import need, write_tree
from tests.resources.conftest import make

RULES = """\
table inet rtest {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 22 counter accept
  }
}
"""


def test_under_a_root_only_the_file_is_written(ctx: Context) -> None:
    need("nft")
    web = make(Nftables, "web", content=RULES)
    planned = web.check_apply(ctx, False)
    assert [(c.property, c.after) for c in planned][2] == (
        "loaded",
        "not under --root: only the file is managed",
    )
    target = ctx.root.prefix / "etc/nftables.d/web.nft"
    assert not target.exists()  # plan changes nothing
    web.check_apply(ctx, True)
    assert target.read_text() == RULES  # /etc/nftables.d made for it
    assert web.check_apply(ctx, False) == []
    assert not (ctx.state_dir / "nftables").exists()  # nothing loaded, nothing recorded
    host = subprocess.run(["nft", "list", "table", "inet", "rtest"], capture_output=True)
    assert host.returncode != 0  # the host's kernel has no such table


def test_a_ruleset_nft_refuses_is_not_written(ctx: Context) -> None:
    need("nft")
    target = ctx.root.prefix / "etc/nftables.d/web.nft"
    write_tree(ctx.root.prefix, {"etc/nftables.d/web.nft": RULES})
    bad = make(Nftables, "web", content=RULES.replace("tcp dport 22", "tcp dport twenty-two"))
    with pytest.raises(ResourceError, match=r"nft -c \(check\) exited 1; not written:\n.*Error"):
        bad.check_apply(ctx, True)
    assert target.read_text() == RULES


def test_the_tables_a_ruleset_declares() -> None:
    text = "table inet filter\nflush table inet filter\ntable inet filter {\n}\nadd table nat\n"
    assert declared_tables(text) == [("inet", "filter"), ("ip", "nat")]


@pytest.mark.parametrize(
    ("title", "attrs", "key"),
    [
        ("-f", {}, None),
        ("a/b", {}, None),
        ("web\n", {}, None),
        ("web", {"path": "rules.nft"}, "path"),
        ("web", {"path": "/etc/../tmp/x.nft"}, "path"),
        ("web", {"path": "/etc/x\n.nft"}, "path"),
        ("web", {"content": "flush ruleset\n"}, "content"),
        ("web", {"content": None}, None),
    ],
)
def test_bad_input_is_refused_naming_the_attribute(
    title: str, attrs: dict[str, object], key: str | None
) -> None:
    problems = Nftables.validate(title, {"content": RULES, **attrs})
    assert problems and problems[0][0] == key


# -- live, in a network namespace -----------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    need("ip")
    need("nft")
    name = f"rtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)


def test_live_load_drift_and_removal_in_a_namespace(netns: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.nft"
    profile = f"""
        resources:
          - nftables: web
            path: {rules}
            template: web.nft.j2
        """
    template = RULES.replace("22", "{{ port }}")
    repo = write_tree(
        tmp_path / "repo",
        {
            "nodes.yaml": "default: all\n",
            "roles/all.yaml": "profiles: [case]\n",
            "profiles/case.yaml": profile,
            "templates/web.nft.j2": "{% set port = 22 %}" + template,
        },
    )
    state = tmp_path / "state"

    def cli(command: str, check: int) -> str:
        done = in_ns(
            netns,
            sys.executable,
            "-m",
            "reconciler.cli",
            command,
            f"--repo={repo}",
            "--state-dir",
            str(state),
            "--node",
            "n1",
        )
        assert done.returncode == check, (done.stdout, done.stderr)
        return done.stdout

    def table() -> str:
        return in_ns(netns, "nft", "-s", "list", "table", "inet", "rtest").stdout

    planned = cli("plan", 2)
    assert "loaded" in planned
    assert table() == "" and not rules.exists()  # plan loads and writes nothing

    cli("apply", 2)
    assert rules.read_text() == RULES
    assert "tcp dport 22 counter accept" in table()
    host = subprocess.run(["nft", "list", "table", "inet", "rtest"], capture_output=True)
    assert host.returncode != 0  # loaded in the namespace only
    cli("apply", 0)  # in sync: counters moving are not drift

    in_ns(netns, "nft", "add", "rule", "inet", "rtest", "input", "tcp", "dport", "23", "accept")
    assert "dport 23" in table()
    assert "changed since loaded" in cli("plan", 2)  # a rule added by hand is drift
    cli("apply", 2)
    assert "dport 23" not in table() and "dport 22" in table()

    (repo / "templates/web.nft.j2").write_text("{% set port = 2222 %}" + template)
    cli("apply", 2)
    assert "dport 2222" in table() and "dport 22 " not in table()  # replaced, not appended
    assert table().count("counter accept") == 1

    profile_absent = f"resources:\n  - nftables: web\n    path: {rules}\n    ensure: absent\n"
    (repo / "profiles/case.yaml").write_text(profile_absent)
    cli("apply", 2)
    assert table() == "" and not rules.exists()
    assert os.listdir(state / "backups")  # the old file was backed up
