"""A real `git daemon` on 127.0.0.1 and the reconciler daemon as a subprocess, as systemd runs it."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import commit_all, git, need, seed_root, wait_for, write_tree

REPO = {
    "nodes.yaml": "default: app\n",
    "roles/app.yaml": "profiles: [app]\n",
    "profiles/app.yaml": """
        params: {motd: "version 1"}
        resources:
          - file: /etc/motd
            content: "{{ params.motd }}\\n"
          - directory: /srv/app
          - file: /srv/app/config
            content: "threads=4\\n"
        """,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class GitServer:
    """A bare repository served by `git daemon` on 127.0.0.1, and a work tree to push from."""

    def __init__(self, tmp: Path) -> None:
        need("git")
        self.base = tmp / "served"
        self.base.mkdir()
        self.bare = self.base / "control.git"
        self.work = tmp / "work"
        write_tree(self.work, REPO)
        commit_all(self.work, "first")
        git(self.work, "branch", "-M", "production")
        git(tmp, "clone", "-q", "--bare", str(self.work), str(self.bare))
        self.port = free_port()
        self.url = f"git://127.0.0.1:{self.port}/control.git"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={self.base}",
             "--listen=127.0.0.1", f"--port={self.port}", str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(up, 10, "git daemon")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def push(self, files: dict[str, str], message: str = "change") -> str:
        write_tree(self.work, files)
        sha = commit_all(self.work, message)
        git(self.work, "push", "-q", "-f", str(self.bare), "HEAD:production")
        return sha

    @property
    def head(self) -> str:
        return git(self.bare, "rev-parse", "production")


class Daemon:
    """`reconciler daemon --config` as a subprocess, with a real NOTIFY_SOCKET."""

    def __init__(self, tmp: Path, url: str, **overrides: str) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.state = tmp / "state"
        seed_root(self.root)
        self.port = free_port()
        self.secret = b"s3cret-for-tests"
        (tmp / "webhook.secret").write_bytes(self.secret + b"\n")
        self.settings = {
            "node": "node-1",
            "poll_interval": "1s",
            "interval": "10m",
            "watch": "true",
            "url": url,
            **overrides,
        }
        self.config = tmp / "config.yaml"
        self.write_config()
        self.notify_path = tmp / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.settimeout(0.1)
        self.messages: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.log = tmp / "daemon.log"

    def write_config(self, extra: str = "") -> None:
        s = self.settings
        self.config.write_text(
            f"""node: {s["node"]}
root: {self.root}
state_dir: {self.state}
facts_dirs: []
source:
  url: {s["url"]}
  branch: production
  poll_interval: {s["poll_interval"]}
  timeout: 5s
reconcile:
  interval: {s["interval"]}
  splay: 0s
  watch: {s["watch"]}
listen: 127.0.0.1:{self.port}
webhook:
  secret_file: {self.tmp / "webhook.secret"}
log:
  format: json
  level: info
{extra}"""
        )

    def start(self) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "WATCHDOG_USEC": "3000000"}
        env.pop("WATCHDOG_PID", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "daemon", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "a"),  # noqa: SIM115
            text=True,
            env=env,
        )

    def read_notify(self) -> list[str]:
        while True:
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append(data)
        return self.messages

    def saw(self, field: str) -> bool:
        return any(field in m.split("\n") for m in self.read_notify())

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def post_declaring(self, length: int, headers: dict[str, str]) -> int:
        """Send only the headers of a POST /webhook that declares ``length`` bytes of body."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            head = f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
            sock.sendall(head.encode())
            status_line = sock.makefile("rb").readline().decode()
        return int(status_line.split()[1])

    def signed(self, body: bytes, delivery: str) -> dict[str, str]:
        digest = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery,
                "Content-Type": "application/json"}  # fmt: skip

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        code, body = self.get("/metrics")
        assert code == 200
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def ready(self) -> bool:
        return self.get("/readyz")[0] == 200

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code


@contextlib.contextmanager
def running_daemon(tmp: Path, url: str, **overrides: str) -> Iterator[Daemon]:
    """A daemon started and ready (``/readyz``), stopped at the end."""
    d = Daemon(tmp, url, **overrides)
    try:
        d.start()
        wait_for(d.ready, what="/readyz")
        yield d
    finally:
        d.stop()
        d.notify.close()


@pytest.fixture
def daemon(tmp_path: Path, server: GitServer) -> Iterator[Daemon]:
    d = Daemon(tmp_path, server.url)
    yield d
    d.stop()
    d.notify.close()
