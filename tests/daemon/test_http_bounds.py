"""The HTTP endpoint is bounded: a whole request has a deadline, and only so many connections
are open at once. Slow clients cannot exhaust the agent's descriptors or keep it from answering."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.daemon.conftest import Daemon, GitServer

DEADLINE = 2.0
CAP = 8


@pytest.fixture
def d(tmp_path: Path, server: GitServer) -> Iterator[Daemon]:
    daemon = Daemon(tmp_path, server.url)
    daemon.write_config(f"http:\n  request_timeout: {DEADLINE:g}s\n  max_connections: {CAP}\n")
    daemon.start()
    wait_for(lambda: daemon.get("/healthz")[0] == 200, 30, "the daemon answers")
    yield daemon
    daemon.stop()


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def dribble(port: int, started: float, cut_at: list[float]) -> None:
    """Send a request line one byte every 0.25 s, until the daemon closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for byte in b"GET /healthz HTTP/1.1\r\n" * 4:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            sock.setblocking(False)
            if closed_by_server(sock):
                break
            sock.setblocking(True)
            time.sleep(0.25)
        else:
            return
        cut_at.append(time.monotonic() - started)


def closed_by_server(sock: socket.socket) -> bool:
    """The daemon has closed this connection (whatever it said first)."""
    try:
        while data := sock.recv(4096):
            if not data:
                break
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.slow
def test_fifty_slow_clients_are_capped_then_cut_and_the_agent_answers(d: Daemon) -> None:
    assert d.proc is not None
    pid = d.proc.pid
    before = descriptors(pid)
    cut_at: list[float] = []
    started = time.monotonic()
    dribbling = threading.Thread(target=dribble, args=(d.port, started, cut_at))
    dribbling.start()
    time.sleep(0.3)  # the dribbler is in before the cap is reached
    slow = []
    for _ in range(50):  # connect and send nothing
        sock = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        slow.append(sock)
    # Past the cap, connections are refused at once: a 503, then closed, with no thread.
    time.sleep(0.5)
    refused = 0
    for sock in slow:
        sock.setblocking(False)
        try:
            head = sock.recv(64)
        except BlockingIOError:
            continue
        refused += head.startswith(b"HTTP/1.1 503 ") or head == b""
    assert refused >= 50 - CAP
    peak = descriptors(pid)
    assert peak <= before + CAP + 4, (before, peak)
    # One byte at a time, never finishing its request line: cut at the deadline all the same.
    dribbling.join(30)
    assert cut_at and cut_at[0] < DEADLINE + 2, cut_at
    # Every slow connection is closed by the deadline; then a normal client is answered.
    wait_for(lambda: all(closed_by_server(s) for s in slow), DEADLINE + 3, "slow ones cut")
    assert time.monotonic() - started < DEADLINE + 4
    assert d.get("/healthz") == (200, b"ok\n")
    assert peak <= before + CAP + 4, (before, peak)
    for sock in slow:
        sock.close()
    wait_for(lambda: descriptors(pid) <= before + 1, 10, "descriptors given back")
    assert "Traceback" not in d.logs()


@pytest.mark.slow
def test_a_request_within_the_deadline_on_a_kept_alive_connection_is_answered(d: Daemon) -> None:
    """The deadline is per request: a kept-alive connection may ask again later."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=5) as sock:
        reader = sock.makefile("rb")
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reader.readline().startswith(b"HTTP/1.1 200 ")
            while reader.readline() not in (b"\r\n", b""):
                pass
            assert reader.read(3) == b"ok\n"
            time.sleep(DEADLINE * 0.6)


@pytest.mark.slow
def test_sighup_changes_the_cap(d: Daemon) -> None:
    d.write_config("http:\n  request_timeout: 5s\n  max_connections: 2\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in d.logs(), 10, "the reload")
    held = [socket.create_connection(("127.0.0.1", d.port), timeout=5) for _ in range(2)]
    try:
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as third:
            assert third.recv(64).startswith(b"HTTP/1.1 503 ")
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: d.get("/healthz")[0] == 200, 10, "answers again")
