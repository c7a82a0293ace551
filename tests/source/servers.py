"""Misbehaving remotes on 127.0.0.1, and repositories crafted with git's plumbing."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from pathlib import Path

from tests.conftest import git


class StallProxy:
    """A TCP server in front of a git daemon that passes the conversation through or stalls it.

    ``mode`` is read at each new connection:

    - ``pass``: every byte forwarded both ways;
    - ``silent``: the connection is accepted and nothing is ever answered;
    - ``mid-pack``: forwarded until the pack data starts; the first packet of it (the pack's
      header and its first objects) reaches the client and nothing more (``stalled`` is set
      then). The refs advertisement and ``ls-remote`` carry no pack, so they still work.
    """

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.mode = "pass"
        self.accepted = 0
        self.stalled = threading.Event()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"git://127.0.0.1:{self.port}/{path}"

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._keep(client)
            mode = self.mode
            if mode == "silent":
                threading.Thread(target=self._drain, args=(client,), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.backend_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._keep(upstream)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, mode == "mid-pack"), daemon=True
            ).start()

    def _drain(self, client: socket.socket) -> None:
        """Read what the client sends and never answer, until it hangs up."""
        with contextlib.suppress(OSError):
            while client.recv(65536):
                pass

    def _pump(self, src: socket.socket, dst: socket.socket, stall_in_pack: bool) -> None:
        try:
            if stall_in_pack:
                self._pump_until_pack(src, dst)
            else:
                while data := src.recv(65536):
                    dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _pump_until_pack(self, src: socket.socket, dst: socket.socket) -> None:
        """Forward whole pkt-lines until the first one of pack data (side band 1, starting
        with the pack's header), then stall: git has started writing the pack by then."""
        buf = b""
        while data := src.recv(65536):
            buf += data
            while len(buf) >= 4:
                size = int(buf[:4], 16)
                end = size if size > 4 else 4  # flush, delimiter and response-end are 4 bytes
                if len(buf) < end:
                    break
                packet, buf = buf[:end], buf[end:]
                dst.sendall(packet)
                if packet[4:9] == b"\x01PACK":
                    self.stalled.set()
                    self._closing.wait()
                    raise OSError("stalled")

    def close(self) -> None:
        self._closing.set()
        _close_listener(self._listener)
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        self._thread.join(5)


class Recorder:
    """A TCP listener on 127.0.0.1 that counts connections and answers none: anything that
    contacts it was sent somewhere it should not have been."""

    def __init__(self) -> None:
        self.accepted = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        _close_listener(self._listener)
        self._thread.join(5)


def _close_listener(listener: socket.socket) -> None:
    """Close a listening socket so that a thread blocked in accept() returns at once."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


def processes_mentioning(path: Path) -> list[str]:
    """Running processes (not zombies) whose command line or working directory names ``path``."""
    found = []
    needle = str(path)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone, a zombie, or not ours to read
        if needle in cmdline or cwd.startswith(needle):
            found.append(f"{entry.name}: {cmdline.strip()} (cwd {cwd})")
    return found


# -- repositories made with plumbing ------------------------------------------------------------


def git_in(repo: Path, stdin: bytes, *args: str) -> str:
    """git with bytes on its standard input."""
    return git(repo, *args, input=stdin)


def blob(repo: Path, content: bytes) -> str:
    return git_in(repo, content, "hash-object", "-w", "--stdin")


def mktree(repo: Path, entries: list[tuple[str, str, str]]) -> str:
    """A tree from (mode, sha, name) entries, written with ``git mktree``, which (unlike the
    index) takes any name, ``.git`` included."""
    types = {"100644": "blob", "100755": "blob", "120000": "blob", "040000": "tree"}
    lines = "".join(
        f"{mode} {types.get(mode, 'commit')} {sha}\t{name}\n" for mode, sha, name in entries
    )
    return git_in(repo, lines.encode(), "mktree", "--missing")


def tree_of(repo: Path, files: dict[str, tuple[str, bytes]]) -> str:
    """A tree holding ``{path: (mode, content)}``; paths may name any directory, ``.git`` too.
    A mode of ``160000`` makes a submodule entry whose content is the commit it points to, a
    mode of ``040000`` a directory whose content is an existing tree."""
    here: list[tuple[str, str, str]] = []
    below: dict[str, dict[str, tuple[str, bytes]]] = {}
    for path, (mode, content) in files.items():
        head, _, rest = path.partition("/")
        if rest:
            below.setdefault(head, {})[rest] = (mode, content)
        elif mode in ("160000", "040000"):
            here.append((mode, content.decode(), head))
        else:
            here.append((mode, blob(repo, content), head))
    here += [("040000", tree_of(repo, sub), name) for name, sub in below.items()]
    return mktree(repo, here)


def commit_tree(repo: Path, tree: str, branch: str = "main", message: str = "crafted") -> str:
    """A commit of ``tree`` on top of the branch (if it exists), and the branch moved to it."""
    parent = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    args = ["commit-tree", tree, "-m", message, *(["-p", parent] if parent else [])]
    sha = git_in(repo, b"", *args)
    git(repo, "update-ref", f"refs/heads/{branch}", sha)
    return sha
