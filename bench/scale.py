"""Benchmark a fleet sharing one etcd: store requests per node, watches, push and exports latency.

Usage: python bench/scale.py [--daemons 10] [--clients 300] [--idle 120] [--warmup 60]
                             [--interval 60] [--rollout-timeout 240] [--quick]

Starts one real etcd on 127.0.0.1, --daemons real `reconciler daemon` processes (half of them
collect what a producer exports) and --clients simulated nodes: threads of this process, each
with its own EtcdStore (the daemon's own store code), doing what a daemon does: a run every
--interval (splayed) that publishes its exports, a watch of the pushed revision, and, on a
new app version, the rollout's calls in the rollout's order (note the version; read states,
failures and versions; take a slot or publish `waiting` and watch its app's keys, the exports
and the pushed revision; publish `deploying`, `healthy`; free the slot). A simulated run lasts --run-seconds, a deploy
--deploy-seconds (wall time, not CPU: what a real run costs is not simulated, only its timing).

Every daemon polls once an hour: only a push through the store can make it fetch sooner. About
four minutes with the defaults, under a minute with --quick.
Reports
  RSS of a daemon, of etcd and of the simulated clients
  store requests per node per minute, idle and during a rollout, for each kind of node, by
  operation, and etcd's own count of watchers
  push -> every daemon applied   a commit and a webhook to one daemon; until /etc/motd changed
                                 on every daemon (vs the poll interval, 1 h)
  export -> every consumer       a simulated producer publishes a new address; until every
                                 consuming daemon's file shows it
  rollout                        a new app version pushed; until every node is healthy at it
"""

from __future__ import annotations

import argparse
import bisect
import collections
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import git

from reconciler.apps.order import Peers
from reconciler.apps.rollout import SLOTS
from reconciler.apps.store import ComponentState, EtcdStore, StoreError, Watched, source_key
from reconciler.model import exports as exportsmod

SECRET = b"bench-secret"
APP = "bench"
PUSH_WAIT = 300.0  # as the daemon's
STORE_WAIT = 30.0
LEASE = 300.0
PUSH_MIN_INTERVAL = 2.0  # the daemons'; the phases are further apart than this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - start


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the control repo

PROFILE = """\
params: {{motd: "{motd}"}}
exports:
  member: {{host: "{{{{ node }}}}"}}
resources:
  - file: /etc/motd
    content: "{{{{ params.motd }}}}\\n"
"""
CONSUMER = """\
resources:
  - file: /etc/database
    content: "{{ collect('database') | map(attribute='address') | join(',') }}\\n"
"""
APP_YAML = """\
version: "{version}"
components:
  - name: api
    nodes: {{match: "node-*"}}
    max_parallel: {parallel}
    resources:
      - directory: /srv/api
      - file: /srv/api/VERSION
        content: "{{{{ app.version }}}}\\n"
    health: {{command: ["/bin/true"], retries: 0}}
"""


def write_repo(repo: Path, motd: str, version: str, parallel: int) -> None:
    files = {
        "nodes.yaml": (
            "nodes:\n  - match: 'node-c*'\n    role: consumer\n"
            "  - match: 'node-*'\n    role: app\ndefault: app\n"
        ),
        "roles/app.yaml": "profiles: [app]\n",
        "roles/consumer.yaml": "profiles: [app, consumer]\n",
        "profiles/app.yaml": PROFILE.format(motd=motd),
        "profiles/consumer.yaml": CONSUMER,
        "apps/bench.yaml": APP_YAML.format(version=version, parallel=parallel),
    }
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


# --------------------------------------------------------------------------- etcd


class Etcd:
    def __init__(self, base: Path) -> None:
        self.data = base / "etcd"
        self.port, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (base / "etcd.log").open("ab")
        peer = f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            ["etcd", "--name=bench", f"--data-dir={self.data}",
             f"--listen-client-urls={self.url}", f"--advertise-client-urls={self.url}",
             f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
             f"--initial-cluster=bench={peer}", "--log-level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        until(self.healthy, 60, "etcd")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                return bool(json.load(r).get("health") == "true")
        except (OSError, ValueError):
            return False

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# --------------------------------------------------------------------------- real daemons


class Daemon:
    def __init__(self, base: Path, name: str, repo: Path, etcd: Etcd, interval: float) -> None:
        self.name = name
        self.dir = base / name
        self.root = self.dir / "root"
        (self.root / "etc").mkdir(parents=True)
        (self.root / "srv").mkdir()
        self.port = free_port()
        config = self.dir / "config.yaml"
        config.write_text(
            f"node: {name}\nroot: {self.root}\nstate_dir: {self.dir / 'state'}\nfacts_dirs: []\n"
            f"source: {{url: {repo}, branch: production, poll_interval: 1h, timeout: 60s}}\n"
            f"reconcile: {{interval: {interval:g}s, splay: {interval:g}s, watch: false}}\n"
            f"listen: 127.0.0.1:{self.port}\nwebhook: {{secret_file: {base / 'secret'}}}\n"
            f"coordination: {{backend: etcd, endpoints: [{etcd.url}], lease: 5m, "
            f"push_min_interval: {PUSH_MIN_INTERVAL:g}s}}\n"
            "log: {format: json, level: info}\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "daemon", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=(self.dir / "daemon.log").open("ab"),
        )  # fmt: skip

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return bytes(r.read())

    def ready(self) -> bool:
        try:
            return self.get("/readyz") == b"ready\n"
        except OSError:
            return False

    def requests(self) -> collections.Counter[str]:
        found: collections.Counter[str] = collections.Counter()
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith("reconciler_store_requests_total{"):
                op = line.split('op="', 1)[1].split('"', 1)[0]
                found[op] = int(float(line.rsplit(" ", 1)[1]))
        return found

    def app_version(self) -> str | None:
        """The version of the api component this daemon is healthy at."""
        for app in json.loads(self.get("/status")).get("apps", []):
            if app.get("component") == "api" and app.get("state") == "healthy":
                return str(app.get("version"))
        return None

    def read(self, path: str) -> str:
        try:
            return (self.root / path).read_text()
        except OSError:
            return ""

    def webhook(self, body: bytes) -> None:
        digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/webhook", data=body, method="POST",
            headers={"X-Reconciler-Signature": f"sha256={digest}"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 202, r.status

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------- simulated nodes


class Fleet:
    """What simulated nodes read from "their" repository: the app version at each revision."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.versions: dict[str, str] = {}
        self.stop = threading.Event()


class SimNode(threading.Thread):
    """One simulated node: the store calls a daemon makes, with the daemon's store code."""

    def __init__(self, name: str, fleet: Fleet, url: str, args: argparse.Namespace) -> None:
        super().__init__(name=name, daemon=True)
        self.node, self.fleet, self.args = name, fleet, args
        self.store = EtcdStore([url], timeout=10.0)
        self.wanted: str | None = None  # the app version its repo asks for
        self.deployed: str | None = None
        self.published: tuple[str, str, str] | None = None
        self.errors = 0
        self.rng = random.Random(name)

    def record(self) -> bytes:
        exports = {"member": {"host": f"{self.node}.example.net", "port": 8080}}
        return exportsmod.encode(self.node, "app", [f"{APP}/worker"], exports)

    def run(self) -> None:
        """The daemon's watch thread (and the runs a push or a waiting rollout asks for)."""
        try:  # deployed at version 1 already, as a fleet that has been running
            self.wanted = "1"
            self.store.note_version(APP, "worker", "1")
            self.publish("healthy", "healthy")
            self.publish_exports()
            self.deployed = "1"
        except StoreError:
            self.errors += 1
        while not self.fleet.stop.is_set():
            try:
                if self.wanted is None:
                    pushed = self.store.pushed_revision(self.fleet.source)
                    self.wanted = self.fleet.versions.get(pushed or "", "1")
                if self.wanted != self.deployed:
                    if self.deploy_step():
                        continue
                    # Waiting: the daemon watches its app's keys, the exports records and the
                    # pushed revision, runs again on a change of the first two, and reads the
                    # pushed revision when that changed (or the wait ran out).
                    watched = Watched(
                        apps=frozenset({APP}), exports=True, revision=self.fleet.source
                    )
                    woke = self.store.wait(STORE_WAIT, watched)
                    causes = self.store.woke_for if woke else None
                    if woke and (causes is None or causes & {"apps", "exports"}):
                        self.fleet.stop.wait(self.args.run_seconds)
                    if causes is None or "revision" in causes:
                        self.follow(self.store.pushed_revision(self.fleet.source))
                    continue
                pushed = self.store.watch_revision(self.fleet.source, PUSH_WAIT)
                if pushed:
                    self.fleet.stop.wait(self.args.run_seconds)  # the fetch and run it asks for
                    self.follow(pushed)
                    self.periodic_run()
            except StoreError:
                self.errors += 1
                self.fleet.stop.wait(5.0)

    def periodic_run(self) -> None:
        """What a run of a deployed node does with the store: publish its exports."""
        try:
            self.publish_exports()
        except StoreError:
            self.errors += 1

    def follow(self, pushed: str | None) -> None:
        if pushed and pushed in self.fleet.versions:
            self.wanted = self.fleet.versions[pushed]

    def publish_exports(self) -> None:
        self.store.publish_record("exports", self.node, self.record(), 3600.0)

    def publish(self, state: str, message: str) -> None:
        assert self.wanted is not None
        said = (self.wanted, state, message)
        if said != self.published:  # as a run does: only what differs from what it said
            self.store.publish(
                APP,
                "worker",
                ComponentState(self.node, self.wanted, state, "sim", time.time(), message),
            )
            self.published = said

    def deploy_step(self) -> bool:
        """One run's decision for the worker component (the rollout's calls in its order);
        True once deployed."""
        version = self.wanted
        assert version is not None
        store = self.store
        store.note_version(APP, "worker", version)
        peers = Peers.read(store, APP, "worker", self.node, version)
        for past in peers.passed():
            store.forget_version(APP, "worker", past)
        if peers.failed_at(version) or peers.ahead_of(version):
            self.publish("waiting", "halted or superseded")
            return False
        parallel = self.args.sim_parallel
        if not store.acquire_slot(APP, "worker", SLOTS, self.node, parallel, LEASE):
            holders = store.holders(APP, "worker", SLOTS)
            self.publish("waiting", f"all {parallel} slot(s) are taken ({', '.join(holders)})")
            return False
        self.publish("deploying", f"deploying {version}")
        self.fleet.stop.wait(self.args.deploy_seconds)
        self.publish("healthy", "healthy")
        store.release_slot(APP, "worker", SLOTS, self.node)
        self.publish_exports()
        self.deployed = version
        return True


class Runner(threading.Thread):
    """The simulated nodes' run timers: every --interval, splayed, as the daemon's."""

    def __init__(self, sims: list[SimNode], fleet: Fleet, interval: float) -> None:
        super().__init__(name="runner", daemon=True)
        self.sims, self.fleet, self.interval = sims, fleet, interval

    def run(self) -> None:
        rng = random.Random(0)
        now = time.monotonic()
        due = sorted((now + rng.uniform(0, self.interval), n) for n in range(len(self.sims)))
        while not self.fleet.stop.is_set():
            at, n = due.pop(0)
            if self.fleet.stop.wait(max(0.0, at - time.monotonic())):
                return
            self.sims[n].periodic_run()
            bisect.insort(due, (at + self.interval + rng.uniform(0, self.interval), n))


class Producer:
    """A simulated node that exports the database address the consuming daemons collect."""

    def __init__(self, url: str) -> None:
        self.store = EtcdStore([url], timeout=10.0)

    def publish(self, address: str) -> None:
        record = exportsmod.encode("db-1", "db", [], {"database": {"address": address}})
        self.store.publish_record("exports", "db-1", record, 3600.0)


# --------------------------------------------------------------------------- counting


class Counts:
    """Store requests of every node at one moment: daemons from /metrics, clients directly."""

    def __init__(self, daemons: list[Daemon], sims: list[SimNode], producer: Producer) -> None:
        self.at = time.monotonic()
        self.daemons = {d.name: d.requests() for d in daemons}
        self.sims = {s.node: collections.Counter(s.store.requests.snapshot()) for s in sims}
        self.producer = collections.Counter(producer.store.requests.snapshot())


def report_rates(before: Counts, after: Counts, title: str) -> dict[str, float]:
    minutes = (after.at - before.at) / 60
    groups: dict[str, list[collections.Counter[str]]] = {
        "daemon, consumer": [], "daemon": [], "simulated": []
    }  # fmt: skip
    for name, counts in after.daemons.items():
        kind = "daemon, consumer" if name.startswith("node-c") else "daemon"
        groups[kind].append(counts - before.daemons[name])
    for name, counts in after.sims.items():
        groups["simulated"].append(counts - before.sims[name])
    print(f"  {title} ({minutes * 60:.0f} s): store requests per node per minute")
    rates: dict[str, float] = {}
    for kind, deltas in groups.items():
        if not deltas:
            continue
        total = collections.Counter[str]()
        for d in deltas:
            total.update(d)
        per = {op: n / len(deltas) / minutes for op, n in sorted(total.items()) if n}
        rate = sum(per.values())
        rates[kind] = rate
        ops = ", ".join(f"{op} {v:.2f}" for op, v in per.items())
        whole = sum(total.values()) / len(deltas)
        print(
            f"    {kind:<17} ({len(deltas):>4} nodes)  {rate:7.2f}/min ({whole:.0f} in all)  {ops}"
        )
    nodes = sum(len(v) for v in groups.values())
    all_requests = sum(sum(d.values()) for v in groups.values() for d in v)
    print(
        f"    whole fleet: {all_requests / (minutes * 60):.1f} requests/s on etcd ({nodes} nodes)"
    )
    return rates


# --------------------------------------------------------------------------- the benchmark


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--daemons", type=int, default=10)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--idle", type=float, default=120, help="seconds of the idle window")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before it")
    parser.add_argument("--interval", type=float, default=60, help="run interval (and splay)")
    parser.add_argument("--run-seconds", type=float, default=0.2)
    parser.add_argument("--deploy-seconds", type=float, default=0.5)
    parser.add_argument("--parallel", type=int, default=3, help="max_parallel of the daemons")
    parser.add_argument("--sim-parallel", type=int, default=30, help="max_parallel, simulated")
    parser.add_argument("--rollout-timeout", type=float, default=240)
    parser.add_argument("--quick", action="store_true", help="3 daemons, 50 clients, 20 s idle")
    args = parser.parse_args()
    if args.quick:
        args.daemons, args.clients, args.idle, args.warmup = 3, 50, 20, 2
    if not shutil.which("etcd"):
        raise SystemExit("etcd is missing: apt-get install etcd-server")
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what it started
    with tempfile.TemporaryDirectory(prefix="reconciler-bench-scale-") as tmp:
        base = Path(tmp)
        (base / "secret").write_bytes(SECRET)
        repo = base / "repo"
        write_repo(repo, "revision 1", "1", args.parallel)
        git(repo, "init", "-q", "-b", "production")
        first = commit(repo, "first")
        etcd = Etcd(base)
        fleet = Fleet(source_key(str(repo), "production"))
        fleet.versions[first] = "1"
        daemons: list[Daemon] = []
        sims: list[SimNode] = []
        try:
            consumers = args.daemons // 2
            for n in range(args.daemons):
                name = f"node-c{n + 1}" if n < consumers else f"node-{n + 1}"
                daemons.append(Daemon(base, name, repo, etcd, args.interval))
            producer = Producer(etcd.url)
            producer.publish("10.0.0.1")
            for d in daemons:
                until(d.ready, 180, f"{d.name} ready")
            print(
                f"{args.daemons} daemons ({consumers} consume an export), {args.clients} "
                f"simulated nodes, one etcd {etcd.url}; {os.cpu_count()} cores; "
                f"run interval {args.interval:g} s, poll interval 1 h"
            )
            for i in range(args.clients):
                sims.append(SimNode(f"sim-{i + 1:04d}", fleet, etcd.url, args))
                sims[-1].start()
            Runner(sims, fleet, args.interval).start()
            try:
                until(
                    lambda: (
                        all(d.app_version() == "1" for d in daemons)
                        and all(s.deployed == "1" for s in sims)
                    ),
                    args.rollout_timeout,
                    "the first rollout",
                )
            except SystemExit:
                print({d.name: d.app_version() for d in daemons})
                print(collections.Counter((s.wanted, s.deployed, s.errors) for s in sims))
                print(json.loads(daemons[0].get("/status")).get("apps"))
                raise
            print(f"  every node healthy at version 1 after {time.monotonic() - started:.0f} s")
            # Idle, once every daemon's timer has started (its first run after --interval).
            time.sleep(args.warmup)
            before = Counts(daemons, sims, producer)
            etcd_cpu = cpu_seconds(etcd.proc.pid)
            peak = dict.fromkeys([d.name for d in daemons], 0.0)
            end = time.monotonic() + args.idle
            while time.monotonic() < end:
                for d in daemons:
                    peak[d.name] = max(peak[d.name], rss_mb(d.proc.pid))
                time.sleep(1)
            after = Counts(daemons, sims, producer)
            etcd_cpu = (cpu_seconds(etcd.proc.pid) - etcd_cpu) / (after.at - before.at) * 100
            report_rates(before, after, "idle")
            watchers = etcd.metric("etcd_debugging_mvcc_watcher_total")
            streams = etcd.metric("etcd_debugging_mvcc_watch_stream_total")
            print(f"    etcd: {watchers:.0f} watchers on {streams:.0f} watch streams, "
                  f"CPU {etcd_cpu:.1f} % of a core, RSS {rss_mb(etcd.proc.pid):.0f} MB, "
                  f"db {etcd.metric('etcd_mvcc_db_total_size_in_bytes') / 1e6:.1f} MB")  # fmt: skip
            rss = list(peak.values())
            print(f"  RSS per daemon: median {statistics.median(rss):.0f} MB, "
                  f"max {max(rss):.0f} MB; simulated clients (one process) "
                  f"{rss_mb(os.getpid()):.0f} MB")  # fmt: skip
            # Push: a commit, a webhook to one daemon; every daemon polls once an hour.
            write_repo(repo, "revision 2", "1", args.parallel)
            sha = commit(repo, "motd")
            fleet.versions[sha] = "1"
            t0 = time.monotonic()
            daemons[0].webhook(json.dumps({"after": sha}).encode())
            times = {}
            for d in daemons:
                until(lambda d=d: d.read("etc/motd") == "revision 2\n", 120, f"{d.name} motd")
                times[d.name] = time.monotonic() - t0
            print(f"  push -> every daemon applied: {max(times.values()):.2f} s "
                  f"(median {statistics.median(times.values()):.2f} s; poll interval 3600 s)")  # fmt: skip
            # Exports: the producer changes its address.
            time.sleep(PUSH_MIN_INTERVAL + 1)
            t0 = time.monotonic()
            producer.publish("10.0.0.2")
            lags = []
            for d in daemons[:consumers]:
                until(lambda d=d: d.read("etc/database") == "10.0.0.2\n", 120, f"{d.name} db")
                lags.append(time.monotonic() - t0)
            if lags:
                print(f"  export -> every consumer applied: {max(lags):.2f} s "
                      f"(median {statistics.median(lags):.2f} s, {len(lags)} consumers)")  # fmt: skip
            # Rollout: version 2 of the app, pushed like any commit.
            time.sleep(PUSH_MIN_INTERVAL + 1)
            write_repo(repo, "revision 2", "2", args.parallel)
            sha = commit(repo, "app 2")
            fleet.versions[sha] = "2"
            before = Counts(daemons, sims, producer)
            etcd_cpu = cpu_seconds(etcd.proc.pid)
            t0 = time.monotonic()
            daemons[0].webhook(json.dumps({"after": sha}).encode())
            done_daemons = until(
                lambda: all(d.app_version() == "2" for d in daemons), args.rollout_timeout,
                "the daemons' rollout",
            )  # fmt: skip
            deadline = t0 + args.rollout_timeout
            while time.monotonic() < deadline and not all(s.deployed == "2" for s in sims):
                time.sleep(0.05)
            done_all = time.monotonic() - t0
            after = Counts(daemons, sims, producer)
            etcd_cpu = (cpu_seconds(etcd.proc.pid) - etcd_cpu) / (after.at - before.at) * 100
            finished = sum(s.deployed == "2" for s in sims)
            print(f"  rollout of a new app version: daemons ({args.daemons}, max_parallel "
                  f"{args.parallel}) healthy in {done_daemons:.1f} s; simulated "
                  f"(max_parallel {args.sim_parallel}, {args.deploy_seconds:g} s a deploy): "
                  f"{finished} of {args.clients} in {done_all:.1f} s")  # fmt: skip
            report_rates(before, after, "rollout")
            print(f"    etcd CPU {etcd_cpu:.1f} % of a core")
            errors = sum(s.errors for s in sims)
            if errors:
                print(f"  simulated nodes: {errors} store errors (retried)")
            print(f"  total {time.monotonic() - started:.0f} s")
        finally:
            fleet.stop.set()
            for s in sims:
                s.store.close()
            for d in daemons:
                d.stop()
            etcd.stop()


if __name__ == "__main__":
    main()
