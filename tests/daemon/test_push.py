"""A push reaches every daemon through the coordination store: one daemon that sees a new
revision writes it there, the others poll at once, and each applies only what it fetched."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.apps.store import ComponentState, EtcdStore, LocalStore, Store, source_key
from tests.apps.conftest import EtcdServer, running_etcd
from tests.conftest import need, wait_for
from tests.daemon.conftest import REPO, Daemon, GitServer


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    yield from running_etcd(tmp_path)


@pytest.fixture(params=["local", "etcd"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Store]:
    """The ``coordination:`` section the daemons share, and a client of the same store."""
    if request.param == "local":
        path = tmp_path / "coordination"
        return f"coordination:\n  backend: local\n  path: {path}\n", LocalStore(path)
    server: EtcdServer = request.getfixturevalue("etcd")
    section = f"coordination:\n  backend: etcd\n  endpoints: [{server.url}]\n"
    return section, EtcdStore([server.url], timeout=2.0)


def motd(d: Daemon) -> str:
    path = d.root / "etc/motd"
    return path.read_text() if path.exists() else ""


def fetches(d: Daemon) -> float:
    return sum(
        d.metric("reconciler_source_fetches_total", result=r)
        for r in ("success", "unchanged", "error")
    )


@contextlib.contextmanager
def fleet(
    tmp: Path, server: GitServer, section: str, count: int, **overrides: str
) -> Iterator[list[Daemon]]:
    """``count`` daemons sharing one store; each ready before the next starts."""
    daemons: list[Daemon] = []
    try:
        for n in range(1, count + 1):
            (tmp / f"node-{n}").mkdir()
            d = Daemon(
                tmp / f"node-{n}",
                server.url,
                node=f"node-{n}",
                poll_interval="1h",  # only a push can explain a fetch
                interval="1h",
                **overrides,
            )
            d.write_config(section)
            daemons.append(d)
            d.start()
            wait_for(d.ready, timeout=60, what=f"node-{n} /readyz")
        yield daemons
    finally:
        for d in daemons:
            d.stop()
            d.notify.close()


def test_a_webhook_to_one_daemon_brings_every_daemon_to_the_new_revision(
    tmp_path: Path, server: GitServer, backend: tuple[str, Store]
) -> None:
    section, _ = backend
    with fleet(tmp_path, server, section, 3) as (first, *others):
        sha = server.push({"profiles/app.yaml": REPO["profiles/app.yaml"].replace("1", "2")})
        body = f'{{"after": "{sha}"}}'.encode()
        assert first.post("/webhook", body, first.signed(body, "delivery-1")) == 202
        for d in (first, *others):
            wait_for(lambda d=d: motd(d) == "version 2\n", timeout=60, what="the new revision")
        assert '"new revision pushed to the store"' in first.logs()
        for d in others:
            assert d.metric("reconciler_pushed_revisions_total", action="poll") >= 1
            assert "another node pushed a revision; polling now" in d.logs()
            # the file is written before the run ends and /status says so
            wait_for(lambda d=d: sha.encode() in d.get("/status")[1], 30, "the run in /status")


def test_a_bogus_revision_in_the_store_costs_one_poll_and_changes_nothing(
    tmp_path: Path, server: GitServer, backend: tuple[str, Store]
) -> None:
    section, store = backend
    section += "  push_min_interval: 1h\n"
    with fleet(tmp_path, server, section, 1) as (d,):
        applied = server.head
        before = fetches(d)
        source = source_key(server.url, "production")

        def pushes(action: str) -> float:
            return d.metric("reconciler_pushed_revisions_total", action=action)

        # A compromised node writes a commit id the remote does not have: the daemon polls its
        # own remote, finds the head it applied, and fetches nothing.
        store.push_revision(source, "b" * 40)
        wait_for(lambda: pushes("poll") == 1, timeout=30, what="the poll the push asked for")
        wait_for(lambda: fetches(d) == before + 1, timeout=30, what="that poll")
        assert d.metric("reconciler_source_fetches_total", result="unchanged") == 1
        # More of them within push_min_interval: one poll put off, the rest merged into it.
        for n in range(5):
            store.push_revision(source, f"{n}" * 40)
            wait_for(
                lambda n=n: pushes("delayed") + pushes("merged") == n + 1,
                timeout=30,
                what=f"push {n} seen",
            )
        assert pushes("delayed") == 1
        # What is no commit id is not even a poll.
        if isinstance(store, EtcdStore):
            store._call(  # a write no reconciler would make
                "kv/put",
                {"key": _b64(f"/reconciler/revisions/{source}"), "value": _b64("$(reboot)")},
            )
        else:
            (store.path / "revisions" / source).write_text("$(reboot)")
        wait_for(lambda: pushes("invalid") == 1, timeout=30, what="the value seen")
        assert fetches(d) == before + 1
        assert d.proc is not None and d.proc.poll() is None
        assert d.get("/healthz")[0] == 200
        assert applied.encode() in d.get("/status")[1]
        assert motd(d) == "version 1\n"
        store.close()


def test_a_push_reaches_a_daemon_that_watches_the_whole_store(
    tmp_path: Path, server: GitServer, backend: tuple[str, Store]
) -> None:
    """A daemon whose catalog collects exports watches every change in the store; a push is
    one of them."""
    section, store = backend
    collecting = """\
params: {motd: "version 1"}
resources:
  - file: /etc/motd
    content: "{{ params.motd }}\\n"
  - file: /etc/pool
    content: "{{ collect('member') | length }} members\\n"
"""
    server.push({"profiles/app.yaml": collecting})
    with fleet(tmp_path, server, section, 1) as (d,):
        assert (d.root / "etc/pool").read_text() == "0 members\n"
        source = source_key(server.url, "production")
        store.publish_record("exports", "web-9", b"{}", ttl=60)  # a change the daemon wakes for
        sha = server.push({"profiles/app.yaml": collecting.replace("version 1", "version 4")})
        store.push_revision(source, sha)
        wait_for(lambda: motd(d) == "version 4\n", timeout=60, what="the pushed revision")
        assert "another node pushed a revision; polling now" in d.logs()
    store.close()


def test_a_collecting_daemon_is_not_woken_by_the_rest_of_the_fleet(
    tmp_path: Path, server: GitServer, etcd: EtcdServer
) -> None:
    """A daemon whose catalog collects watches the exports records and the pushed revision:
    the states, run summaries and facts other nodes write, and their unchanged exports
    published again, cost it no request."""
    section = f"coordination:\n  backend: etcd\n  endpoints: [{etcd.url}]\n"
    store = EtcdStore([etcd.url], timeout=2.0)
    collecting = """\
resources:
  - file: /etc/pool
    content: "{{ collect('member') | length }} members\\n"
"""
    server.push({"profiles/app.yaml": collecting})
    member = b'{"components":[],"exports":{"member":{}},"node":"web-1","produces":{},"role":"web",'
    member += b'"sensitive":{}}'
    with fleet(tmp_path, server, section, 1) as (d,):
        store.publish_record("exports", "web-1", member, ttl=600)
        pool = d.root / "etc/pool"
        wait_for(lambda: pool.read_text() == "1 members\n", timeout=60, what="web-1 in the pool")
        wait_for(lambda: "collected exports changed; checking" in d.logs(), what="the watch's wake")
        before = {op: d.metric("reconciler_store_requests_total", op=op) for op in OPS}
        for n in range(20):
            store.publish("shop", "api", ComponentState(f"api-{n}", "1", "healthy", "x", 1.0))
            store.publish_record("summary", f"api-{n}", b"{}", ttl=600)
            store.publish_record("facts", f"api-{n}", b"{}", ttl=600)
            store.publish_record("exports", "web-1", member, ttl=600)  # the same: renewed
            time.sleep(0.05)  # a wake (with the watch opened again) would fall between
        after = {op: d.metric("reconciler_store_requests_total", op=op) for op in OPS}
        # At most one wait that ran out (STORE_WAIT) fell in the window: one watch opened
        # again and its reads of the exports and the pushed revision.
        assert after["watch"] - before["watch"] <= 1
        assert after["range"] - before["range"] <= 2
        assert after["put"] == before["put"] and after["txn"] == before["txn"]
        assert pool.read_text() == "1 members\n"
    store.close()


OPS = ("watch", "range", "put", "txn")


def test_without_push_a_daemon_neither_writes_nor_follows_the_key(
    tmp_path: Path, server: GitServer, etcd: EtcdServer
) -> None:
    section = f"coordination:\n  backend: etcd\n  endpoints: [{etcd.url}]\n  push: false\n"
    store = EtcdStore([etcd.url], timeout=2.0)
    source = source_key(server.url, "production")
    with fleet(tmp_path, server, section, 1) as (d,):
        assert store.pushed_revision(source) is None  # its first revision was not pushed
        store.push_revision(source, "c" * 40)
        sha = server.push({"profiles/app.yaml": REPO["profiles/app.yaml"].replace("1", "3")})
        body = f'{{"after": "{sha}"}}'.encode()
        assert d.post("/webhook", body, d.signed(body, "delivery-1")) == 202
        wait_for(lambda: motd(d) == "version 3\n", timeout=60, what="the webhook's revision")
        assert store.pushed_revision(source) == "c" * 40
        assert d.metric("reconciler_pushed_revisions_total", action="poll") == 0
    store.close()


def test_store_requests_are_on_metrics_and_pass_promtool(
    tmp_path: Path, server: GitServer, etcd: EtcdServer
) -> None:
    section = f"coordination:\n  backend: etcd\n  endpoints: [{etcd.url}]\n"
    with fleet(tmp_path, server, section, 1) as (d,):
        # The first poll pushed the head (a txn) and the watch read the key, then watches it.
        wait_for(
            lambda: d.metric("reconciler_store_requests_total", op="watch") >= 1,
            timeout=30,
            what="the watch of the pushed revision",
        )
        assert d.metric("reconciler_store_requests_total", op="txn") >= 1
        assert d.metric("reconciler_store_requests_total", op="range") >= 1
        # The run's summary is a record on a lease of its own.
        assert d.metric("reconciler_store_requests_total", op="lease_grant") >= 1
        code, text = d.get("/metrics")
        assert code == 200
        checked = subprocess.run(
            [need("promtool"), "check", "metrics"],
            input=text,
            capture_output=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert b"reconciler_store_requests_total" in text


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
