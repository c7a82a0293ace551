"""Shared fixtures: control repos written to disk, and the real CLI run as a subprocess."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.daemon.conftest import GitServer

# The Debian packages the tests need, and a command that shows each is installed: the one list
# that `make test` installs from (deploy/test-deps.sh).
TEST_PACKAGES = Path(__file__).resolve().parents[1] / "deploy" / "test-packages.txt"
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"  # useradd and friends, off a user's PATH


def debian_package(tool: str) -> str:
    """The Debian package that deploy/test-packages.txt lists for a command."""
    for line in TEST_PACKAGES.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and not line.startswith("#") and fields[0] == tool:
            return fields[1]
    raise LookupError(f"{tool} is not in {TEST_PACKAGES}: add it with its Debian package")


def need(tool: str) -> str:
    """The path of a command a test needs. When it is missing the test fails, naming the Debian
    package to install: a missing tool is never a silent skip."""
    package = debian_package(tool)
    path = shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{_SBIN}")
    if path is None:
        pytest.fail(
            f"{tool} is missing: install the Debian package {package} "
            f"(`sudo apt-get install {package}`; `make test` installs what the tests need)",
            pytrace=False,
        )
    return path


EXAMPLE = Path(__file__).resolve().parents[1] / "reconciler" / "examples" / "control-repo"
# Where the example app's releases are put in a node's root: a file:// URL reads inside it.
RELEASES = "/var/cache/shop-releases"


def place_releases(root: Path) -> str:
    """Copy the example app's release tarballs into ``root``; the URL that reads them there."""
    shutil.copytree(EXAMPLE / "files" / "releases", root / RELEASES.lstrip("/"), dirs_exist_ok=True)
    return f"file://{RELEASES}"


def write_tree(base: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``{relative path: content}`` under base; str content is dedented."""
    for rel, content in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(textwrap.dedent(content).lstrip("\n"))
        else:
            path.write_bytes(content)
    return base


# git as the tests run it: a fixed identity and no configuration but the repository's own.
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=GIT_ENV, input=input, capture_output=True, check=True
    )
    return done.stdout.decode().strip()


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll a predicate until it is truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def commit_all(repo: Path, message: str = "change") -> str:
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def tree_hash(root: Path) -> str:
    """A digest of every path, type, mode and content below root."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            h.update(f"{path.relative_to(root)}\0{st.st_mode}\0{st.st_uid}\0".encode())
            if path.is_symlink():
                h.update(os.readlink(path).encode())
            elif path.is_file():
                h.update(path.read_bytes())
    return h.hexdigest()


FHS = ("etc", "srv", "var/log", "var/lib", "opt", "usr/local/bin", "tmp")


def seed_root(root: Path) -> Path:
    """A private root that looks like a fresh machine: the usual top directories, empty."""
    for name in FHS:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


class CLI:
    """Runs ``python -m reconciler.cli`` as a user would, in a subprocess."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        self.state = tmp / "state"
        seed_root(self.root)

    def __call__(
        self, *args: str, check: int | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
            env={**os.environ, "NO_COLOR": "1"},
        )
        if check is not None:
            assert done.returncode == check, (done.returncode, done.stdout, done.stderr)
        return done

    def run(
        self, command: str, repo: Path | str, *args: str, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return self(
            command,
            f"--repo={repo}",
            "--root",
            str(self.root),
            "--state-dir",
            str(self.state),
            *args,
            **kw,  # type: ignore[arg-type]
        )


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., Path]:
    def make(files: Mapping[str, str | bytes], name: str = "repo") -> Path:
        return write_tree(tmp_path / name, files)

    return make


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    """The control repo served by a real ``git daemon`` on 127.0.0.1."""
    from tests.daemon.conftest import GitServer  # it builds on this module's helpers

    s = GitServer(tmp_path)
    s.start()
    yield s
    s.stop()


@dataclasses.dataclass
class Demo:
    """A running `reconciler demo`: the folder it works in and its status page's port."""

    proc: subprocess.Popen[str]
    base: Path
    port: int

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def repo(self) -> Path:
        return self.base / "control-repo"


@contextlib.contextmanager
def running_demo(argv: list[str], **popen: Any) -> Iterator[Demo]:
    """Start the demo with ``argv``, wait until its daemon applied the example (``/readyz``),
    and stop it at the end (SIGTERM, which it must answer with exit 0), removing its folder."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **popen
    )
    base: Path | None = None
    try:
        assert proc.stdout is not None
        head = "".join(proc.stdout.readline() for _ in range(4))
        found = re.search(r"in (/\S+)", head)
        port = re.search(r"127\.0\.0\.1:(\d+)/", head)
        assert found is not None and port is not None, head
        base = Path(found.group(1))
        demo = Demo(proc, base, int(port.group(1)))

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{demo.port}/readyz", timeout=2) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(ready, 30, "the demo daemon to apply the example")
        yield demo
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)
