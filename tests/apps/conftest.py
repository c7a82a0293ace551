"""A real etcd on 127.0.0.1 for the coordination store's tests, and one factory per backend."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.apps.store import EtcdStore, LocalStore, Store
from tests.conftest import need


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """One etcd member on free 127.0.0.1 ports with its own data directory.

    ``stop`` and ``start`` keep the ports and the data, so a test can take the store away and
    bring it back as it was.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "data"
        self.log = tmp / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None, "etcd runs already"
        peer = f"http://127.0.0.1:{self.peer_port}"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    "etcd",
                    "--name=test",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=test={peer}",
                    "--log-level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"etcd exited at start:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"etcd not healthy in {timeout}s:\n{self.log.read_text()[-3000:]}"
                )
            time.sleep(0.05)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def running_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real etcd on 127.0.0.1 for one test, its data under ``tmp_path``; stopped after."""
    need("etcd")
    base = tmp_path / "etcd"
    base.mkdir()
    server = EtcdServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    yield from running_etcd(tmp_path)


StoreFactory = Callable[[], Store]


@pytest.fixture(params=["local", "etcd"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of store instances that share one backend: one instance per "node"."""
    made: list[Store] = []

    def make() -> Store:
        store: Store
        if request.param == "local":
            store = LocalStore(tmp_path / "coordination", poll_interval=0.05)
        else:
            store = EtcdStore([server.url], timeout=2.0)
        made.append(store)
        return store

    if request.param == "etcd":
        server = request.getfixturevalue("etcd")
    yield make
    for store in made:
        store.close()
