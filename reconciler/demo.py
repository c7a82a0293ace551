"""``reconciler demo``: the real daemon, on the bundled example control repo.

It copies the example control repo, which ships inside the package (reconciler/examples/), into
a folder of its own, makes it a git repository (branch ``production``), writes a daemon
configuration with a private root and state directory in that folder and a free loopback port,
says what to try, and runs the daemon in the foreground until Ctrl-C. Nothing outside that
folder is touched.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

from reconciler import process
from reconciler.errors import ReconcilerError

EXAMPLE = Path(__file__).resolve().parent / "examples" / "control-repo"
# The modules the example's modules.yaml pins, bundled beside it, each a folder of its files.
MODULES = EXAMPLE.parent / "modules"
# The URL the example's modules.yaml gives a module, for a repository the demo makes.
MODULE_URL = "https://git.example.com/modules/{name}.git"
# A DEMO age identity, readable by anyone who has reconciler: it decrypts the example's
# encrypted value (data/roles/db.yaml) and must never be used for a real secret.
DEMO_AGE_KEY = EXAMPLE.parent / "demo-keys" / "age.key"
# Where the example app's releases are put in each node's root.
RELEASES = "/var/cache/shop-releases"


def _git(repo: Path, *args: str) -> None:
    argv = ["git", "-C", str(repo), "-c", "user.name=reconciler demo",
            "-c", "user.email=demo@localhost", *args]  # fmt: skip
    done = process.run(argv, timeout=60, stderr="merge")
    if not done.ok:
        raise ReconcilerError(f"git {args[0]} failed: {done.text().strip()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_example(repo: Path) -> Path:
    """The example control repo copied to ``repo`` (a working tree, uncommitted), with each
    bundled module made a git repository ``modules/<name>`` beside it (branch main) and pinned
    in its modules.yaml: the URL set to that path, and its commit in place of the example's."""
    shutil.copytree(EXAMPLE, repo)
    pins = (repo / "modules.yaml").read_text()
    for module in sorted(MODULES.iterdir()):
        served = repo.parent / "modules" / module.name
        shutil.copytree(module, served)
        _git(served, "init", "-q", "-b", "main")
        _git(served, "add", "-A")
        _git(served, "commit", "-q", "-m", f"The example module {module.name}")
        head = process.run(["git", "-C", str(served), "rev-parse", "HEAD"], timeout=60)
        url = MODULE_URL.format(name=module.name)
        block = re.search(rf"url: {re.escape(url)}\n\s*commit: ([0-9a-f]{{40}})", pins)
        if not head.ok or block is None:
            raise ReconcilerError(f"cannot pin the example module {module.name}")
        pins = pins.replace(url, str(served)).replace(block.group(1), head.text().strip())
    (repo / "modules.yaml").write_text(pins)
    return repo


def commit_example(repo: Path) -> None:
    """Make the copied example a git repository, branch production."""
    _git(repo, "init", "-q", "-b", "production")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "The example control repo")


def prepare(base: Path, port: int) -> Path:
    """Lay out the demo folder; return the configuration file."""
    repo, root, state = copy_example(base / "control-repo"), base / "root", base / "state"
    others = ("db-1", "web-2", "lb-1")  # applied by hand with the CLI
    for node_root in (root, *(base / n / "root" for n in others)):
        for name in ("etc", "srv", "var/log", "var/lib", "opt", "usr/local/bin", "tmp"):
            (node_root / name).mkdir(parents=True)
    commit_example(repo)
    # The example app reads its releases through this fact: the example's files/releases/,
    # copied into each node's root (a file:// URL names a file inside the root).
    for node_root in (root, *(base / n / "root" for n in others)):
        shutil.copytree(repo / "files" / "releases", node_root / RELEASES.lstrip("/"))
    facts = base / "facts.d"
    facts.mkdir()
    (facts / "shop.yaml").write_text(f"shop_releases: file://{RELEASES}\n")
    # The db role reads an encrypted value: db-1 gets the demo identity, in a file of mode 0600
    # as a key file must be.
    age_key = base / "demo-age.key"
    age_key.touch(mode=0o600)
    age_key.write_bytes(DEMO_AGE_KEY.read_bytes())
    secrets = {"db-1": f"secrets:\n  age_identity: {age_key}\n"}
    # Other nodes, applied by hand with the CLI, share the coordination store: db-1 runs the
    # app's database, web-2 a second api, lb-1 the load balancer that collects the api nodes.
    for node in others:
        (base / f"{node}.yaml").write_text(
            f"""# {node}: a node of the example app, applied with `reconciler apply --config`.
node: {node}
root: {base / node / "root"}
state_dir: {base / node / "state"}
facts_dirs: [{facts}]
source:
  url: {repo}
  branch: production
coordination:
  path: {state}/coordination
{secrets.get(node, "")}"""
        )
    config = base / "config.yaml"
    config.write_text(
        f"""# The demo's daemon configuration; see config.example.yaml for every key.
node: web-1
root: {root}
state_dir: {state}
facts_dirs: [{facts}]
source:
  url: {repo}
  branch: production
  poll_interval: 5s
reconcile:
  interval: 10m
  splay: 0s
  mode: enforce
  watch: true
listen: 127.0.0.1:{port}
coordination:
  path: {state}/coordination
log:
  format: console
  level: info
"""
    )
    return config


def main(exit_after: float | None = None) -> int:
    if not EXAMPLE.is_dir():
        raise ReconcilerError(
            f"the example control repo is not at {EXAMPLE}: this installation of reconciler "
            "is incomplete; reinstall it"
        )
    base = Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    port = free_port()
    config = prepare(base, port)
    repo, root = base / "control-repo", base / "root"
    print(
        f"""reconciler demo: the daemon runs as node web-1 (role web) in {base}
  control repo  {repo}  (branch production, polled every 5 s)
  managed root  {root}
  status page   http://127.0.0.1:{port}/     metrics: http://127.0.0.1:{port}/metrics

Try, in another terminal:
  - tamper with a managed file and watch it healed at once:
      echo tampered > {root}/etc/motd; sleep 1; cat {root}/etc/motd
  - commit a change and watch it applied on the next poll (port 8081 -> 9000):
      sed -i 's/8081/9000/' {repo}/data/nodes/web-1.yaml
      git -C {repo} commit -qam 'Move web-1 to port 9000'
      sleep 6; grep listen {root}/etc/nginx/sites-available/site.conf
  - read the metrics:  curl -s http://127.0.0.1:{port}/metrics | grep ^reconciler_
  - where a value comes from:  {sys.argv[0]} explain nginx.port --node web-1 --repo {repo} \\
        --state-dir {base}/state
  - roll out the example app (apps/shop.yaml): its api, on web-1, waits for its database;
    deploy the database on a second node, db-1, and watch web-1 deploy the api at once:
      {sys.argv[0]} apply --config {base}/db-1.yaml
      sleep 3; {sys.argv[0]} status --state-dir {base}/state
    web-1's api reads the database's address (SHOP_DB in {root}/etc/shop-api.env); the load
    balancer, lb-1, collects the api nodes; a second api node, web-2, joins its pool:
      {sys.argv[0]} apply --config {base}/lb-1.yaml; cat {base}/lb-1/root/etc/shop-lb.conf
      {sys.argv[0]} apply --config {base}/web-2.yaml
      {sys.argv[0]} apply --config {base}/lb-1.yaml; cat {base}/lb-1/root/etc/shop-lb.conf
Ctrl-C stops the daemon; remove {base} when done.
""",
        flush=True,
    )
    from reconciler.daemon.agent import Agent

    agent = Agent(config)
    if exit_after is not None:
        timer = threading.Timer(exit_after, agent.stop)
        timer.daemon = True
        timer.start()
    return agent.serve()
