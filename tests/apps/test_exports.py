"""Exported data between nodes, through the one-shot CLI and a shared local store.

Each node is its own root, state directory and node name; they share one coordination
directory. web nodes export ``haproxy_member``; the lb node collects them into a file.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from reconciler.apps.store import LocalStore
from tests.apps.test_rollout_local import Fleet
from tests.conftest import write_tree

LB_TEMPLATE = """\
{% for m in collect('haproxy_member', role='web') %}server {{ m.node }} {{ m.host }}:{{ m.port }} {{ m.note }}
{% endfor %}"""

FILES = {
    "nodes.yaml": textwrap.dedent(
        """\
        nodes:
          - match: "web-*"
            role: web
          - match: "lb-*"
            role: lb
        default: base
        """
    ),
    "roles/web.yaml": "profiles: [web]\n",
    "roles/lb.yaml": "profiles: [lb]\n",
    "roles/base.yaml": "profiles: []\n",
    "profiles/web.yaml": textwrap.dedent(
        """\
        params:
          port: 8080
          dc: east
        exports:
          haproxy_member:
            host: "{{ node }}.example.net"
            port: "{{ params.port }}"
            dc: "{{ params.dc }}"
            note: "{{ '{{ 7 * 7 }}' }}"
        resources:
          - directory: /srv/web
        """
    ),
    "profiles/lb.yaml": textwrap.dedent(
        """\
        params:
          dc: ""
          pool: "{{ collect('haproxy_member') | map(attribute='node') | list }}"
        resources:
          - file: /etc/haproxy.cfg
            template: haproxy.cfg.j2
          - file: /etc/east.txt
            content: "{{ collect('haproxy_member', where={'dc': 'east'}) | map(attribute='node') | join(',') }}"
        """
    ),
    "templates/haproxy.cfg.j2": LB_TEMPLATE,
}


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    fleet = Fleet(tmp_path)
    write_tree(fleet.repo, FILES)
    return fleet


def ok(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode in (0, 2), (done.returncode, done.stdout, done.stderr)


def test_lb_collects_the_web_nodes_sorted_by_name(fleet: Fleet) -> None:
    ok(fleet.apply("lb-1"))
    assert fleet.read("lb-1", "etc/haproxy.cfg") == ""  # nobody exports yet
    ok(fleet.apply("web-2"))
    ok(fleet.apply("web-1"))
    ok(fleet.apply("lb-1"))
    # Sorted by node whatever the order they published in; the port keeps its type; a value
    # that looks like a template is data, never rendered on the node that collects it.
    assert fleet.read("lb-1", "etc/haproxy.cfg") == (
        "server web-1 web-1.example.net:8080 {{ 7 * 7 }}\n"
        "server web-2 web-2.example.net:8080 {{ 7 * 7 }}\n"
    )
    assert fleet.read("lb-1", "etc/east.txt") == "web-1,web-2"


def test_a_web_node_joining_changes_the_lb_catalog(fleet: Fleet) -> None:
    ok(fleet.apply("web-1"))
    ok(fleet.apply("lb-1"))
    assert fleet.apply("lb-1").returncode == 0  # nothing new: nothing to change
    ok(fleet.apply("web-3"))
    done = fleet.apply("lb-1")
    assert done.returncode == 2, done.stdout
    assert "web-3" in fleet.read("lb-1", "etc/haproxy.cfg")


def test_where_filters_on_the_exported_values(fleet: Fleet) -> None:
    data = "web:\n  dc: west\n"
    write_tree(fleet.repo, {"hiera.yaml": "hierarchy: [nodes/%{node}, common]\n"})
    write_tree(fleet.repo, {"data/nodes/web-2.yaml": data})
    ok(fleet.apply("web-1"))
    ok(fleet.apply("web-2"))
    ok(fleet.apply("lb-1"))
    assert fleet.read("lb-1", "etc/east.txt") == "web-1"
    assert fleet.read("lb-1", "etc/haproxy.cfg").count("server ") == 2


def test_plan_and_noop_publish_nothing(fleet: Fleet) -> None:
    ok(fleet.apply("web-1", "plan"))
    ok(fleet.apply("web-1", "apply", "--noop"))
    assert LocalStore(fleet.coordination).records("exports") == {}
    ok(fleet.apply("web-1"))
    assert list(LocalStore(fleet.coordination).records("exports")) == ["web-1"]


def test_a_node_that_stops_exporting_withdraws(fleet: Fleet) -> None:
    ok(fleet.apply("web-1"))
    ok(fleet.apply("web-2"))
    write_tree(fleet.repo, {"nodes.yaml": FILES["nodes.yaml"].replace("web-*", "web-2")})
    ok(fleet.apply("web-1"))  # now classified to the default role: no exports
    ok(fleet.apply("lb-1"))
    assert "web-1" not in fleet.read("lb-1", "etc/haproxy.cfg")
    assert "web-2" in fleet.read("lb-1", "etc/haproxy.cfg")


def test_a_node_that_stops_running_drops_out_after_the_ttl(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, exports_ttl="1s")
    write_tree(fleet.repo, FILES)
    ok(fleet.apply("web-1"))
    # the nodes configured from here on keep theirs an hour: only web-1's runs out, however
    # slowly the applies below run
    fleet.exports_ttl = "1h"
    time.sleep(1.5)
    ok(fleet.apply("web-2"))
    ok(fleet.apply("lb-1"))
    assert fleet.read("lb-1", "etc/haproxy.cfg").startswith("server web-2 ")
    assert "web-1" not in fleet.read("lb-1", "etc/haproxy.cfg")


def test_a_malformed_record_is_left_out_with_a_warning(fleet: Fleet) -> None:
    ok(fleet.apply("web-1"))
    store = LocalStore(fleet.coordination)
    store.publish_record("exports", "web-9", b'{"node": "web-9", "role": "web"}', ttl=60)
    store.publish_record(
        "exports",
        "web-8",
        b'{"node": "web-1", "role": "web", "components": [],'
        b' "exports": {"haproxy_member": {"host": "evil"}}}',
        ttl=60,
    )
    done = fleet.apply("lb-1")
    ok(done)
    assert "exports of 'web-9' left out: components is not a list of strings" in done.stderr
    assert "exports of 'web-8' left out: published under 'web-8' but names 'web-1'" in done.stderr
    assert fleet.read("lb-1", "etc/haproxy.cfg").count("server ") == 1


@pytest.mark.parametrize(
    ("exports", "message"),
    [
        ("exports: [a]", "web.yaml:1, key 'exports': must be a mapping {NAME: {key: value, ...}}"),
        ("exports:\n  Bad: {a: 1}", "web.yaml:2, key 'exports.Bad': the name 'Bad' must match"),
        (
            "exports:\n  member: 3",
            "web.yaml:2, key 'exports.member': must be a mapping of keys to values",
        ),
        (
            "params: {password: hunter2secret}\nsensitive_params: [password]\n"
            "exports:\n  member: {password: '{{ params.password }}'}",
            "web.yaml:4, key 'exports.member': a sensitive value cannot be exported",
        ),
    ],
)
def test_bad_exports_are_errors_naming_file_line_and_key(
    fleet: Fleet, exports: str, message: str
) -> None:
    write_tree(fleet.repo, {"profiles/web.yaml": exports + "\n"})
    done = fleet.apply("web-1")
    assert done.returncode not in (0, 2)
    assert "profiles/web.yaml:" in done.stderr + done.stdout
    assert message in done.stderr + done.stdout
    assert "hunter2secret" not in done.stderr + done.stdout
    assert LocalStore(fleet.coordination).records("exports") == {}


def test_collect_with_the_store_away_fails_the_compile(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    write_tree(fleet.repo, FILES)
    config = fleet.config("lb-1")
    text = config.read_text().replace(
        "backend: local", "backend: etcd\n  endpoints: [http://127.0.0.1:9]"
    )
    config.write_text(text)
    done = fleet.apply("lb-1")
    assert done.returncode not in (0, 2)
    assert "collect: coordination store: etcd unreachable" in done.stderr + done.stdout
    assert not (tmp_path / "lb-1" / "root" / "etc/haproxy.cfg").exists()


def test_explain_shows_what_each_node_published(fleet: Fleet) -> None:
    ok(fleet.apply("web-2"))
    ok(fleet.apply("web-1"))
    done = fleet.apply("lb-1", "explain", "collect:haproxy_member")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "collect('haproxy_member') = 2 mapping(s)   (read by node lb-1)",
        '  published by web-1: {"dc": "east", "host": "web-1.example.net", "note": "{{ 7 * 7 }}",'
        ' "port": 8080}',
        '  published by web-2: {"dc": "east", "host": "web-2.example.net", "note": "{{ 7 * 7 }}",'
        ' "port": 8080}',
    ]
    # A parameter whose value collects: its value names the nodes.
    done = fleet.apply("lb-1", "explain", "lb.pool")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('lb.pool = ["web-1", "web-2"]   (node lb-1)')


def test_a_name_exported_by_two_profiles_is_an_error(fleet: Fleet) -> None:
    write_tree(
        fleet.repo,
        {
            "roles/web.yaml": "profiles: [web, extra]\n",
            "profiles/extra.yaml": "exports:\n  haproxy_member: {host: other}\n",
        },
    )
    done = fleet.apply("web-1")
    assert done.returncode not in (0, 2)
    assert (
        "profiles/extra.yaml:2, key 'exports.haproxy_member': 'haproxy_member' is exported by "
        "another profile too" in done.stderr
    )


def test_a_failed_run_publishes_nothing_new(fleet: Fleet) -> None:
    ok(fleet.apply("web-1"))
    before = LocalStore(fleet.coordination).records("exports")
    broken = (
        FILES["profiles/web.yaml"]
        .replace("  - directory: /srv/web", "  - directory: /srv/web\n  - file: /nowhere/at/all/x")
        .replace("port: 8080", "port: 9090")
    )
    write_tree(fleet.repo, {"profiles/web.yaml": broken})
    done = fleet.apply("web-1")
    assert done.returncode & 4, done.stdout  # the file's parent is missing: a failed resource
    assert LocalStore(fleet.coordination).records("exports") == before


def test_exports_are_bounded_in_size(fleet: Fleet) -> None:
    big = "exports:\n  blob: {data: \"{{ 'x' * 70000 }}\"}\n"
    write_tree(fleet.repo, {"profiles/web.yaml": big})
    done = fleet.apply("web-1")
    assert done.returncode not in (0, 2)
    assert "profiles/web.yaml:2, key 'exports': the node's exports are" in done.stderr
    assert "more than 61440" in done.stderr
