"""apt_repository: a signed flat repository served on 127.0.0.1, added under a root with its own
apt and dpkg state, and a package installed from it in the same run.

The repository's Release is signed by a key the test makes (``gpg --clearsign`` for InRelease);
apt checks it against the key the resource writes, so an install proves the source, the key
and ``Signed-By`` are right, and that the lists were fetched again after the source was added.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.resources.apt_repository import AptRepository
from tests.conftest import CLI, need, wait_for, write_tree
from tests.daemon.conftest import free_port
from tests.resources.test_package import AptRepo, dpkg_version, make_apt_root, transactions

ARCH = subprocess.run(
    ["dpkg", "--print-architecture"], capture_output=True, text=True, check=False
).stdout.strip()


class SignedRepo:
    """A flat apt repository signed with a fresh key, served over HTTP on 127.0.0.1."""

    def __init__(self, base: Path) -> None:
        need("gpg")
        need("gpg-agent")
        self.home = base / "gnupg"
        self.home.mkdir(mode=0o700, parents=True)
        self.env = {**os.environ, "GNUPGHOME": str(self.home)}
        self.gpg("--quick-gen-key", "Repo Test <repo@example.invalid>", "ed25519", "sign", "never")
        self.armored = self.gpg("--armor", "--export")
        self.binary = self.gpg("--export")
        self.apt = AptRepo(base / "repo")
        self.dists: dict[str, list[str]] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server: subprocess.Popen[bytes] | None = None

    def gpg(self, *args: str) -> bytes:
        argv = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
        return subprocess.run([*argv, *args], env=self.env, check=True, capture_output=True).stdout

    def add(self, name: str, version: str, suite: str = "./") -> None:
        """A package in the flat repository (suite ``./``) or in ``dists/<suite>/main`` for
        this machine's architecture; then its index, Release and InRelease signed again."""
        self.apt.add(name, version)
        if suite == "./":
            self.sign(self.apt.path, "Packages")
            return
        entry = self.apt.entries.pop()
        self.apt.write_index()
        self.dists.setdefault(suite, []).append(entry)
        index = f"main/binary-{ARCH}/Packages"
        top = self.apt.path / "dists" / suite
        write_tree(top, {index: "\n".join(self.dists[suite])})
        self.sign(top, index, f"Suite: {suite}\nComponents: main\nArchitectures: {ARCH}\n")

    def sign(self, top: Path, index: str, more: str = "") -> None:
        packages = (top / index).read_bytes()
        release = (
            f"Origin: rtest\nLabel: rtest\n{more}Date: Tue, 01 Dec 2026 00:00:00 UTC\nSHA256:\n"
            f" {hashlib.sha256(packages).hexdigest()} {len(packages)} {index}\n"
        )
        (top / "Release").write_text(release)
        self.gpg("--yes", "--clearsign", "-o", str(top / "InRelease"), str(top / "Release"))
        # The HTTP server answers If-Modified-Since by whole seconds: a repository signed again
        # within the second apt last fetched it would look unchanged (304). Each signing is
        # dated ten seconds after the one before, as a real mirror's would be.
        self.signed_at = getattr(self, "signed_at", time.time() - 3600) + 10
        for path in top.rglob("*"):
            if path.is_file():
                os.utime(path, (self.signed_at, self.signed_at))

    def start(self) -> None:
        self.server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", str(self.apt.path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for(lambda: _answers(self.url), 10, "the repository's HTTP server")

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"],
                       env=self.env, check=False)  # fmt: skip


def _answers(url: str) -> bool:
    import urllib.request

    with contextlib.suppress(OSError), urllib.request.urlopen(url + "Packages", timeout=1):
        return True
    return False


@pytest.fixture
def signed(tmp_path: Path) -> Iterator[SignedRepo]:
    need("apt-get")
    need("dpkg-deb")
    repo = SignedRepo(tmp_path)
    repo.add("rtest-signed", "1.0")
    repo.start()
    yield repo
    repo.stop()


def apt_root(cli: CLI, signed: SignedRepo) -> None:
    """A root with apt and dpkg state and no source at all (an empty sources.list)."""
    make_apt_root(cli.root, signed.apt)
    (cli.root / "etc/apt/sources.list").write_text("")


PROFILE = """
resources:
  - apt_repository: rtest
    uris: @URL@
    suites: ./
    key_source: rtest.asc
  - package: rtest-signed
"""


def test_a_repository_added_in_a_run_serves_that_runs_package(
    signed: SignedRepo, cli: CLI, tmp_path: Path
) -> None:
    apt_root(cli, signed)
    repo = write_tree(
        tmp_path / "control",
        {
            "nodes.yaml": "default: all\n",
            "roles/all.yaml": "profiles: [case]\n",
            "profiles/case.yaml": PROFILE.replace("@URL@", signed.url),
            "files/rtest.asc": signed.armored,
        },
    )
    plan = cli.run("plan", repo, "--node", "n1", check=2)
    assert "apt_repository:rtest" in plan.stdout and "install rtest-signed" in plan.stdout
    assert not (cli.root / "etc/apt/sources.list.d/rtest.sources").exists()  # plan wrote nothing
    assert not (cli.root / "etc/apt/keyrings").exists()

    cli.run("apply", repo, "--node", "n1", check=2)
    # The node's paths in the files, as apt on the node reads them:
    assert (cli.root / "etc/apt/sources.list.d/rtest.sources").read_text() == (
        "# Managed by reconciler (apt_repository:rtest)\n"
        f"Types: deb\nURIs: {signed.url}\nSuites: ./\n"
        "Signed-By: /etc/apt/keyrings/rtest.asc\n"
    )
    assert (cli.root / "etc/apt/keyrings/rtest.asc").read_bytes() == signed.armored
    assert (cli.root / "etc/apt/keyrings/rtest.asc").stat().st_mode & 0o777 == 0o644
    # The package came from it: apt fetched the new lists and checked the signature first.
    assert dpkg_version(cli.root, "rtest-signed") == "1.0"
    assert len(transactions(cli.root)) == 1
    cli.run("apply", repo, "--node", "n1", check=0)  # converged


def test_a_changed_source_refreshes_the_lists_before_the_next_install(
    signed: SignedRepo, cli: CLI, tmp_path: Path
) -> None:
    """A new version published, the lists fresh (under an hour): only a change to the source
    (here its architectures) makes the next install see it; removal takes key and source away."""
    apt_root(cli, signed)
    files = {
        "nodes.yaml": "default: all\n",
        "roles/all.yaml": "profiles: [case]\n",
        "files/rtest.gpg": signed.binary,
    }
    first = f"""
        resources:
          - apt_repository: rtest
            uris: {signed.url}
            suites: ./
            key_source: rtest.gpg@ARCH@
          - package: rtest-signed
            ensure: latest
        """
    repo = write_tree(
        tmp_path / "control", {**files, "profiles/case.yaml": first.replace("@ARCH@", "")}
    )
    cli.run("apply", repo, "--node", "n1", check=2)
    assert dpkg_version(cli.root, "rtest-signed") == "1.0"
    sources = (cli.root / "etc/apt/sources.list.d/rtest.sources").read_text()
    assert "Signed-By: /etc/apt/keyrings/rtest.gpg\n" in sources  # a binary key: .gpg
    assert (cli.root / "etc/apt/keyrings/rtest.gpg").read_bytes() == signed.binary

    signed.add("rtest-signed", "2.0")
    cli.run("apply", repo, "--node", "n1", check=0)  # lists an hour fresh: 2.0 not seen yet
    assert dpkg_version(cli.root, "rtest-signed") == "1.0"

    architectures = f"\n            architectures: [{ARCH}, all]"
    write_tree(repo, {"profiles/case.yaml": first.replace("@ARCH@", architectures)})
    done = cli.run("apply", repo, "--node", "n1", check=2)
    assert "refreshed before the next install" in done.stdout
    assert dpkg_version(cli.root, "rtest-signed") == "2.0"
    assert (
        f"Architectures: {ARCH} all\n"
        in (cli.root / "etc/apt/sources.list.d/rtest.sources").read_text()
    )

    write_tree(repo, {"profiles/case.yaml": "resources:\n  - apt_repository: rtest\n"
                                            "    ensure: absent\n"})  # fmt: skip
    cli.run("apply", repo, "--node", "n1", check=2)
    assert not (cli.root / "etc/apt/sources.list.d/rtest.sources").exists()
    assert not (cli.root / "etc/apt/keyrings/rtest.gpg").exists()


def test_a_key_that_did_not_sign_the_repository_fails_the_install(
    signed: SignedRepo, cli: CLI, tmp_path: Path
) -> None:
    apt_root(cli, signed)
    other = SignedRepo(tmp_path / "other-key")
    try:
        profile = PROFILE.replace("@URL@", signed.url)
        repo = write_tree(
            tmp_path / "control",
            {
                "nodes.yaml": "default: all\n",
                "roles/all.yaml": "profiles: [case]\n",
                "profiles/case.yaml": profile,
                "files/rtest.asc": other.armored,
            },
        )
        done = cli.run("apply", repo, "--node", "n1")
        assert done.returncode not in (0, 2), done.stdout
        assert "apt-get update failed" in done.stdout + done.stderr
        assert "NO_PUBKEY" in done.stdout + done.stderr
        assert dpkg_version(cli.root, "rtest-signed") is None
    finally:
        other.stop()


@pytest.mark.parametrize(
    ("title", "attrs", "key", "message"),
    [
        ("../evil", {"uris": "http://x/", "suites": "./"}, None, "not a repository name"),
        ("ok", {"uris": "http://x/ -oAPT::X=1", "suites": "./"}, "uris", "without spaces"),
        ("ok", {"uris": "http://x/\nSigned-By: /x", "suites": "./"}, "uris", "without spaces"),
        ("ok", {"uris": "ftp://x/", "suites": "./"}, "uris", "not an http, https or file URL"),
        ("ok", {"suites": "./"}, "uris", "required"),
        ("ok", {"uris": "http://x/", "suites": "-x"}, "suites", "not a suite"),
        ("ok", {"uris": "http://x/", "suites": "bookworm"}, "components", "required unless"),
        ("ok", {"uris": "http://x/", "suites": "./", "components": "main"}, "components", "flat"),
        ("ok", {"uris": "http://x/", "suites": "./", "architectures": "am d64"}, "architectures",
         "not an architecture"),
        ("ok", {"uris": "http://x/", "suites": "./", "key": "-----BEGIN PGP PRIVATE KEY BLOCK"},
         "key", "must start with -----BEGIN PGP PUBLIC KEY BLOCK-----"),
        ("ok", {"uris": "http://x/", "suites": "./", "key": "hello"}, "key", "neither"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_attribute(
    title: str, attrs: dict[str, object], key: str | None, message: str
) -> None:
    problems = AptRepository.validate(title, attrs)
    assert any(k == key and message in m for k, m in problems), problems


def test_packages_come_after_repositories_except_those_a_repository_requires(
    tmp_path: Path,
) -> None:
    from reconciler.model.catalog import Compiler
    from reconciler.source import DirectorySnapshot

    profile = """
        resources:
          - package: rtest-from-repo
          - apt_repository: rtest
            uris: http://127.0.0.1:9/
            suites: ./
            require: package:gnupg
          - package: gnupg
        """
    repo = write_tree(
        tmp_path / "control",
        {
            "nodes.yaml": "default: all\n",
            "roles/all.yaml": "profiles: [case]\n",
            "profiles/case.yaml": profile,
        },
    )
    order = Compiler(DirectorySnapshot(repo)).compile("n1", {"os": {"family": "Debian"}}).order()
    assert order.index("package:gnupg") < order.index("apt_repository:rtest")
    assert order.index("apt_repository:rtest") < order.index("package:rtest-from-repo")
