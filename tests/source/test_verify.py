"""Signed revisions: real keys, real signed commits, git's own verification.

Keys are made by the tests (``ssh-keygen``, ``gpg --quick-gen-key`` in private GnuPG homes), commits
are signed by git, and tampered commits are written with ``git hash-object -t commit -w``.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reconciler.config import parse_config
from reconciler.errors import ConfigError, SignatureError
from reconciler.source.verify import (
    Verify,
    commit_signature,
    open_verified_snapshot,
    verify_commit,
    verify_tag,
)
from tests.conftest import CLI, GIT_ENV, need, write_tree
from tests.daemon.conftest import REPO, Daemon, GitServer, wait_for

ENV = GIT_ENV


def sh(*argv: str | Path, env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in argv],
        env={**ENV, **(env or {})},
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout.decode().strip()


# -- signers ------------------------------------------------------------------------------------


@dataclass
class Signer:
    """A key that signs commits: ssh (a private key file) or gpg (a GnuPG home and a user id)."""

    format: str
    key: str
    home: Path | None = None
    public: Path | None = None  # ssh: the .pub file
    exported: dict[str, Path] = field(default_factory=dict)  # gpg: binary and armored exports

    def git_args(self) -> list[str]:
        fmt = "ssh" if self.format == "ssh" else "openpgp"
        return ["-c", f"gpg.format={fmt}", "-c", f"user.signingkey={self.key}"]

    def env(self) -> dict[str, str]:
        return {"GNUPGHOME": str(self.home)} if self.home else {}


def ssh_signer(base: Path, name: str) -> Signer:
    key = base / name
    need("ssh-keygen")
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", key)
    return Signer("ssh", str(key), public=key.with_suffix(".pub"))


def gpg_signer(base: Path, name: str) -> Signer:
    home = base / name
    home.mkdir(mode=0o700)
    email = f"{name}@example.com"
    env = {"GNUPGHOME": str(home)}
    for tool in ("gpg", "gpg-agent", "gpgconf"):
        need(tool)
    sh("gpg", "--batch", "--passphrase", "", "--pinentry-mode", "loopback",
       "--quick-gen-key", f"{name} <{email}>", "ed25519", "sign", "never", env=env)  # fmt: skip
    signer = Signer("gpg", email, home=home)
    binary, armored = base / f"{name}.gpg", base / f"{name}.asc"
    export = ["gpg", "--batch", "--export", email]
    binary.write_bytes(subprocess.run(export, env={**ENV, **env}, capture_output=True).stdout)
    armored.write_text(sh("gpg", "--batch", "--armor", "--export", email, env=env) + "\n")
    signer.exported = {"binary": binary, "armored": armored}
    return signer


@dataclass
class SshKeys:
    trusted: Signer
    stranger: Signer
    allowed: Path  # an allowed-signers file naming the trusted key only

    @property
    def verify(self) -> Verify:
        return Verify("ssh", allowed_signers=self.allowed)


@dataclass
class GpgKeys:
    trusted: Signer
    stranger: Signer

    def verify(self, keyring: str = "binary") -> Verify:
        path = self.trusted.home if keyring == "home" else self.trusted.exported[keyring]
        return Verify("gpg", keyring=path)


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    base = tmp_path_factory.mktemp("ssh")
    keys = SshKeys(ssh_signer(base, "trusted"), ssh_signer(base, "stranger"), base / "allowed")
    assert keys.trusted.public is not None
    keys.allowed.write_text(f'ops@example.com namespaces="git" {keys.trusted.public.read_text()}')
    return keys


@pytest.fixture(scope="module")
def gpg_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpgKeys]:
    base = tmp_path_factory.mktemp("gpg")
    keys = GpgKeys(gpg_signer(base, "trusted"), gpg_signer(base, "stranger"))
    yield keys
    for signer in (keys.trusted, keys.stranger):  # the agents key generation and signing started
        subprocess.run(
            ["gpgconf", "--homedir", str(signer.home), "--kill", "gpg-agent"],
            env=ENV,
            capture_output=True,
            check=False,
        )


# -- repositories -----------------------------------------------------------------------------


class Repo:
    def __init__(self, path: Path, init: bool = True) -> None:
        self.path = path
        if init:
            path.mkdir()
            sh("git", "-C", path, "init", "-q", "-b", "main")

    @property
    def git_dir(self) -> Path:
        return self.path / ".git"

    def git(self, *args: str, env: dict[str, str] | None = None) -> str:
        return sh("git", "-C", self.path, *args, env=env)

    def commit(self, files: dict[str, str], signer: Signer | None = None, msg: str = "c") -> str:
        write_tree(self.path, files)
        self.git("add", "-A")
        if signer is None:
            self.git("commit", "-q", "--allow-empty", "-m", msg)
        else:
            args = [*signer.git_args(), "commit", "-q", "-S", "--allow-empty", "-m", msg]
            self.git(*args, env=signer.env())
        return self.git("rev-parse", "HEAD")

    def raw(self, commit: str) -> bytes:
        return subprocess.run(
            ["git", "-C", str(self.path), "cat-file", "commit", commit],
            env=ENV, capture_output=True, check=True,
        ).stdout  # fmt: skip

    def write_commit(self, raw: bytes) -> str:
        return sh("git", "-C", self.path, "hash-object", "-t", "commit", "-w", "--stdin",
                  stdin=raw)  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


def refused(repo: Repo, commit: str, verify: Verify) -> SignatureError:
    with pytest.raises(SignatureError) as err:
        verify_commit(repo.git_dir, commit, verify)
    assert commit in str(err.value)
    return err.value


def garble_signature(raw: bytes) -> bytes:
    """Reverse one base64 line in the middle of the signature: the signature no longer parses."""
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b" ") and b"-----" not in line and len(line) > 20:
            lines[i] = b" " + line[1:][::-1]
            return b"\n".join(lines)
    raise AssertionError("no signature line")


# -- ssh --------------------------------------------------------------------------------------


class TestSsh:
    def test_good_signature_is_accepted(self, repo: Repo, ssh_keys: SshKeys) -> None:
        commit = repo.commit({"a": "1\n"}, ssh_keys.trusted)
        verify_commit(repo.git_dir, commit, ssh_keys.verify)

    def test_unsigned_commit_is_refused(self, repo: Repo, ssh_keys: SshKeys) -> None:
        commit = repo.commit({"a": "1\n"})
        err = refused(repo, commit, ssh_keys.verify)
        assert err.why == "unsigned"
        assert "not signed" in str(err)

    def test_key_not_in_allowed_signers_is_refused(self, repo: Repo, ssh_keys: SshKeys) -> None:
        commit = repo.commit({"a": "1\n"}, ssh_keys.stranger)
        err = refused(repo, commit, ssh_keys.verify)
        assert err.why == "unknown_key"
        assert re.search(r"signed by ED25519 key SHA256:\S+, which is not in the allowed", str(err))

    def test_garbled_signature_is_refused(self, repo: Repo, ssh_keys: SshKeys) -> None:
        good = repo.commit({"a": "1\n"}, ssh_keys.trusted)
        bad = repo.write_commit(garble_signature(repo.raw(good)))
        assert bad != good
        err = refused(repo, bad, ssh_keys.verify)
        assert err.why == "bad_signature"
        assert "bad signature" in str(err)

    def test_signature_moved_onto_other_content_is_refused(
        self, repo: Repo, ssh_keys: SshKeys
    ) -> None:
        good = repo.commit({"a": "1\n"}, ssh_keys.trusted)
        evil = repo.commit({"a": "evil\n"})
        other_tree = repo.git("rev-parse", f"{evil}^{{tree}}")
        raw = re.sub(rb"^tree [0-9a-f]+", b"tree " + other_tree.encode(), repo.raw(good))
        bad = repo.write_commit(raw)
        assert commit_signature(repo.raw(bad)) == commit_signature(repo.raw(good))
        err = refused(repo, bad, ssh_keys.verify)
        assert err.why == "bad_signature"

    def test_gpg_signed_commit_is_refused_when_ssh_is_required(
        self, repo: Repo, ssh_keys: SshKeys, gpg_keys: GpgKeys
    ) -> None:
        commit = repo.commit({"a": "1\n"}, gpg_keys.trusted)
        err = refused(repo, commit, ssh_keys.verify)
        assert err.why == "wrong_format"
        assert "OpenPGP" in str(err) and "format is ssh" in str(err)

    def test_missing_allowed_signers_file_refuses(
        self, repo: Repo, tmp_path: Path, ssh_keys: SshKeys
    ) -> None:
        commit = repo.commit({"a": "1\n"}, ssh_keys.trusted)
        err = refused(repo, commit, Verify("ssh", allowed_signers=tmp_path / "nope"))
        assert err.why == "unverifiable"
        assert f"allowed signers {tmp_path / 'nope'}: No such file" in str(err)

    def test_the_repository_configuration_cannot_replace_the_checker(
        self, repo: Repo, tmp_path: Path, ssh_keys: SshKeys
    ) -> None:
        marker = tmp_path / "ran"
        fake = tmp_path / "fake-ssh-keygen"
        fake.write_text(f"#!/bin/sh\ntouch {marker}\necho 'Good \"git\" signature for x'\n")
        fake.chmod(0o755)
        stranger = ssh_keys.stranger
        assert stranger.public is not None
        everyone = tmp_path / "everyone"
        everyone.write_text(f"x {stranger.public.read_text()}")
        commit = repo.commit({"a": "1\n"}, stranger)
        repo.git("config", "gpg.ssh.program", str(fake))
        repo.git("config", "gpg.ssh.allowedSignersFile", str(everyone))
        repo.git("config", "gpg.program", str(fake))
        repo.git("config", "gpg.minTrustLevel", "ultimate")
        err = refused(repo, commit, ssh_keys.verify)
        assert err.why == "unknown_key"
        assert not marker.exists()


# -- gpg --------------------------------------------------------------------------------------


class TestGpg:
    @pytest.mark.parametrize("keyring", ["binary", "armored", "home"])
    def test_good_signature_is_accepted(self, repo: Repo, gpg_keys: GpgKeys, keyring: str) -> None:
        commit = repo.commit({"a": "1\n"}, gpg_keys.trusted)
        verify_commit(repo.git_dir, commit, gpg_keys.verify(keyring))

    def test_unknown_key_is_refused(self, repo: Repo, gpg_keys: GpgKeys) -> None:
        commit = repo.commit({"a": "1\n"}, gpg_keys.stranger)
        keyring = gpg_keys.trusted.exported["binary"]
        err = refused(repo, commit, Verify("gpg", keyring=keyring))
        assert err.why == "unknown_key"
        assert re.search(
            rf"signed by key [0-9A-F]{{16}}, which is not in the keyring {keyring}", str(err)
        )

    def test_the_hosts_keyring_is_never_used(
        self, repo: Repo, gpg_keys: GpgKeys, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stranger = gpg_keys.stranger
        commit = repo.commit({"a": "1\n"}, stranger)
        # the stranger's key is in "the host's" keyring, and not in the configured one
        monkeypatch.setenv("GNUPGHOME", str(stranger.home))
        err = refused(repo, commit, gpg_keys.verify("armored"))
        assert err.why == "unknown_key"

    def test_tampered_commit_is_refused(self, repo: Repo, gpg_keys: GpgKeys) -> None:
        good = repo.commit({"a": "1\n"}, gpg_keys.trusted, msg="release 1")
        bad = repo.write_commit(repo.raw(good).replace(b"release 1", b"release 2"))
        err = refused(repo, bad, gpg_keys.verify())
        assert err.why == "bad_signature"
        assert "bad signature" in str(err)

    def test_unsigned_and_ssh_signed_are_refused(
        self, repo: Repo, gpg_keys: GpgKeys, ssh_keys: SshKeys
    ) -> None:
        verify = gpg_keys.verify()
        assert refused(repo, repo.commit({"a": "1\n"}), verify).why == "unsigned"
        ssh_signed = repo.commit({"a": "2\n"}, ssh_keys.trusted)
        assert refused(repo, ssh_signed, verify).why == "wrong_format"

    def test_a_keyring_without_keys_refuses(
        self, repo: Repo, tmp_path: Path, gpg_keys: GpgKeys
    ) -> None:
        commit = repo.commit({"a": "1\n"}, gpg_keys.trusted)
        empty = tmp_path / "empty.gpg"
        empty.write_bytes(b"")
        err = refused(repo, commit, Verify("gpg", keyring=empty))
        assert err.why == "unverifiable"
        assert f"keyring {empty}" in str(err)

    def test_the_configured_keyring_is_not_written(
        self, repo: Repo, tmp_path: Path, gpg_keys: GpgKeys
    ) -> None:
        home = gpg_keys.trusted.home
        assert home is not None
        commit = repo.commit({"a": "1\n"}, gpg_keys.trusted)
        before = {p.name: p.stat().st_mtime_ns for p in home.iterdir() if p.is_file()}
        verify_commit(repo.git_dir, commit, Verify("gpg", keyring=home))
        after = {p.name: p.stat().st_mtime_ns for p in home.iterdir() if p.is_file()}
        assert after == before


# -- tags -------------------------------------------------------------------------------------


def make_tag(repo: Repo, name: str, signer: Signer | None, commit: str = "HEAD") -> str:
    """An annotated tag, signed by ``signer`` when given: its tag object's id."""
    sign = [*signer.git_args(), "tag", "-s"] if signer else ["tag", "-a"]
    repo.git(*sign, "-m", f"release {name}", name, commit, env=signer.env() if signer else None)
    return repo.git("rev-parse", f"refs/tags/{name}")


def tag_refused(repo: Repo, tag_object: str, name: str, verify: Verify) -> SignatureError:
    with pytest.raises(SignatureError) as err:
        verify_tag(repo.git_dir, tag_object, name, verify)
    assert str(err.value).startswith(f"tag {name!r} ({tag_object}): ")
    return err.value


class TestTags:
    """A signed tag stands for the commit it names: the tag's signature is checked, by the same
    keys and the same means as a commit's, and the commit's own is not."""

    def test_a_signed_tag_of_an_unsigned_commit_is_accepted(
        self, repo: Repo, ssh_keys: SshKeys, gpg_keys: GpgKeys
    ) -> None:
        commit = repo.commit({"a": "1\n"})
        verify_tag(repo.git_dir, make_tag(repo, "v1", ssh_keys.trusted), "v1", ssh_keys.verify)
        gpg_tag = make_tag(repo, "v1-gpg", gpg_keys.trusted, commit)
        for keyring in ("binary", "armored", "home"):
            verify_tag(repo.git_dir, gpg_tag, "v1-gpg", gpg_keys.verify(keyring))
        assert refused(repo, commit, ssh_keys.verify).why == "unsigned"

    def test_unsigned_lightweight_and_untrusted_tags_are_refused(
        self, repo: Repo, ssh_keys: SshKeys, gpg_keys: GpgKeys
    ) -> None:
        commit = repo.commit({"a": "1\n"}, ssh_keys.trusted)
        err = tag_refused(repo, make_tag(repo, "plain", None), "plain", ssh_keys.verify)
        assert (err.why, "not signed" in str(err)) == ("unsigned", True)
        repo.git("tag", "light")
        err = tag_refused(repo, commit, "light", ssh_keys.verify)
        assert err.why == "unsigned"
        assert "a lightweight tag (it names a commit, with no tag object)" in str(err)
        err = tag_refused(repo, make_tag(repo, "s", ssh_keys.stranger), "s", ssh_keys.verify)
        assert err.why == "unknown_key"
        assert "which is not in the allowed signers" in str(err)
        err = tag_refused(repo, make_tag(repo, "g", gpg_keys.stranger), "g", gpg_keys.verify())
        assert err.why == "unknown_key"
        assert re.search(r"signed by key [0-9A-F]{16}, which is not in the keyring", str(err))
        gpg_tag = make_tag(repo, "g2", gpg_keys.trusted)
        err = tag_refused(repo, gpg_tag, "g2", ssh_keys.verify)
        assert err.why == "wrong_format"

    @pytest.mark.parametrize("kind", ["ssh", "gpg"])
    def test_a_tag_whose_content_changed_under_its_signature_is_refused(
        self, repo: Repo, ssh_keys: SshKeys, gpg_keys: GpgKeys, kind: str
    ) -> None:
        first = repo.commit({"a": "1\n"})
        repo.commit({"a": "evil\n"})
        evil = repo.git("rev-parse", "HEAD")
        signer, verify = (
            (ssh_keys.trusted, ssh_keys.verify)
            if kind == "ssh"
            else (gpg_keys.trusted, gpg_keys.verify())
        )
        good = make_tag(repo, "v1", signer, first)
        raw = sh("git", "-C", repo.path, "cat-file", "tag", good) + "\n"
        moved = raw.replace(f"object {first}", f"object {evil}")
        bad = sh("git", "-C", repo.path, "hash-object", "-t", "tag", "-w", "--stdin",
                 stdin=moved.encode())  # fmt: skip
        err = tag_refused(repo, bad, "v1", verify)
        assert err.why == "bad_signature"
        assert "bad signature: it does not match the tag" in str(err)

    def test_a_signed_tag_published_under_another_name_is_refused(
        self, repo: Repo, ssh_keys: SshKeys
    ) -> None:
        repo.commit({"a": "1\n"})
        old = make_tag(repo, "v1.0", ssh_keys.trusted)
        repo.git("update-ref", "refs/tags/v2.0", old)
        err = tag_refused(repo, old, "v2.0", ssh_keys.verify)
        assert err.why == "bad_signature"
        assert "the tag object names itself 'v1.0', not 'v2.0'" in str(err)


# -- configuration ----------------------------------------------------------------------------


class TestConfig:
    def test_ssh(self) -> None:
        text = "source:\n  verify:\n    format: ssh\n    allowed_signers: /etc/r/allowed\n"
        verify = parse_config(text, "c.yaml").source.verify
        assert verify == Verify("ssh", allowed_signers=Path("/etc/r/allowed"))
        assert verify.keys == Path("/etc/r/allowed")

    def test_gpg_keyring_and_the_spec_spelling(self) -> None:
        for key in ("keyring", "allowed_signers"):
            text = f"source:\n  verify:\n    format: gpg\n    {key}: /etc/r/trusted.gpg\n"
            verify = parse_config(text, "c.yaml").source.verify
            assert verify == Verify("gpg", keyring=Path("/etc/r/trusted.gpg"))

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            ("  verify:\n    format: ssh\n", "c.yaml:2, key 'source.verify': format ssh needs allowed_signers"),
            ("  verify:\n    format: gpg\n", "c.yaml:2, key 'source.verify': format gpg needs keyring"),
            ("  verify:\n    format: ssh\n    keyring: /k\n", "c.yaml:4, key 'source.verify.keyring': is for format gpg"),
            ("  verify:\n    format: gpg\n    keyring: /k\n    allowed_signers: /a\n", "c.yaml:5, key 'source.verify.allowed_signers': format gpg takes one keyring"),
            ("  verify:\n    format: x509\n    keyring: /k\n", "c.yaml:3, key 'source.verify.format': must be one of ssh, gpg"),
            ("  verify:\n    format: ssh\n    allowed_signers: etc/a\n", "c.yaml:4, key 'source.verify.allowed_signers': must be an absolute path"),
            ("  verify:\n    format: ssh\n    allowed_signers: /a\n    strict: yes\n", "c.yaml:5, key 'source.verify.strict': unknown key"),
            ("  verify:\n", "c.yaml:2, key 'source.verify': must be a mapping"),
            ("  verify: true\n", "c.yaml:2, key 'source.verify': must be a mapping"),
        ],
    )  # fmt: skip
    def test_problems_are_named_with_their_line(self, body: str, expected: str) -> None:
        with pytest.raises(ConfigError) as err:
            parse_config("source:\n" + body, "c.yaml")
        assert expected in str(err.value)
        assert str(err.value).count("\n") == 0  # one problem, said once


# -- the command line -------------------------------------------------------------------------


def cli_config(tmp_path: Path, cli: CLI, url: Path, verify: str, branch: str | None) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"node: node-1\nroot: {cli.root}\nstate_dir: {cli.state}\nfacts_dirs: []\n"
        f"source:\n  url: {url}\n" + (f"  branch: {branch}\n" if branch else "") + verify
    )
    return config


class TestCli:
    def test_apply_refuses_an_unsigned_commit_before_reading_it(
        self, cli: CLI, repo: Repo, tmp_path: Path, ssh_keys: SshKeys
    ) -> None:
        verify = f"  verify:\n    format: ssh\n    allowed_signers: {ssh_keys.allowed}\n"
        config = cli_config(tmp_path, cli, repo.path, verify, "main")
        signed = repo.commit(REPO, ssh_keys.trusted)
        done = cli("apply", "--config", str(config), "--format", "json", check=2)
        assert json.loads(done.stdout)["revision"] == signed
        assert (cli.root / "etc/motd").read_text() == "version 1\n"

        # an unsigned commit, whose YAML is broken as well: refused for its signature, unread
        unsigned = repo.commit({"profiles/app.yaml": "resources: [\n"})
        done = cli("apply", "--config", str(config), check=1)
        assert f"commit {unsigned}: not signed" in done.stderr
        assert "YAML" not in done.stderr
        done = cli("plan", "--config", str(config), check=1)
        assert f"commit {unsigned}: not signed" in done.stderr

        stranger = repo.commit({"profiles/app.yaml": REPO["profiles/app.yaml"].replace(
            "version 1", "stranger")}, ssh_keys.stranger)  # fmt: skip
        done = cli("apply", "--config", str(config), check=1)
        assert f"commit {stranger}: signed by ED25519 key" in done.stderr
        assert (cli.root / "etc/motd").read_text() == "version 1\n"

        # validate and explain read the revision only once it is verified, too
        done = cli("validate", "--config", str(config), check=1)
        assert f"commit {stranger}: signed by" in done.stderr
        done = cli("explain", "app.motd", "--config", str(config), check=1)
        assert f"commit {stranger}: signed by" in done.stderr

        good = repo.commit({"profiles/app.yaml": REPO["profiles/app.yaml"].replace(
            "version 1", "version 2")}, ssh_keys.trusted)  # fmt: skip
        done = cli("apply", "--config", str(config), "--format", "json", check=2)
        assert json.loads(done.stdout)["revision"] == good
        assert (cli.root / "etc/motd").read_text() == "version 2\n"

    def test_a_working_tree_cannot_be_verified(
        self, cli: CLI, repo: Repo, tmp_path: Path, ssh_keys: SshKeys
    ) -> None:
        verify = f"  verify:\n    format: ssh\n    allowed_signers: {ssh_keys.allowed}\n"
        config = cli_config(tmp_path, cli, repo.path, verify, None)
        repo.commit(REPO, ssh_keys.trusted)
        done = cli("apply", "--config", str(config), check=1)
        assert "a working tree cannot be verified" in done.stderr
        assert not (cli.root / "etc/motd").exists()
        cli("apply", "--config", str(config), "--ref", "main", check=2)

    def test_a_signed_tag_on_an_unsigned_commit_is_refused(
        self, repo: Repo, tmp_path: Path, ssh_keys: SshKeys
    ) -> None:
        """the commit itself must be signed; a trusted tag does not vouch for it."""
        commit = repo.commit(REPO)
        signer = ssh_keys.trusted
        repo.git(*signer.git_args(), "tag", "-s", "-m", "release", "v1", env=signer.env())
        assert "SSH SIGNATURE" in repo.git("cat-file", "tag", "v1")
        with pytest.raises(SignatureError) as err:
            open_verified_snapshot(str(repo.path), "v1", tmp_path / "state", 30, ssh_keys.verify)
        assert commit in str(err.value) and err.value.why == "unsigned"

    def test_open_verified_snapshot_reads_a_signed_commit(
        self, repo: Repo, tmp_path: Path, gpg_keys: GpgKeys
    ) -> None:
        commit = repo.commit(REPO, gpg_keys.trusted)
        verify = gpg_keys.verify("armored")
        snapshot = open_verified_snapshot(str(repo.path), "main", tmp_path / "state", 30, verify)
        try:
            assert snapshot.revision == commit
            assert snapshot.read("nodes.yaml") == b"default: app\n"
        finally:
            snapshot.close()


# -- the daemon -------------------------------------------------------------------------------


@pytest.mark.slow
class TestDaemon:
    def test_unsigned_push_is_rejected_and_the_last_good_revision_kept(
        self, tmp_path: Path, ssh_keys: SshKeys
    ) -> None:
        trusted = ssh_keys.trusted
        server = GitServer(tmp_path)
        work = Repo(server.work, init=False)
        signed = work.commit({}, trusted, "signed release")
        work.git("push", "-q", "-f", str(server.bare), "HEAD:production")
        server.start()
        daemon = Daemon(tmp_path, server.url)
        daemon.config.write_text(
            daemon.config.read_text().replace(
                "  timeout: 5s\n",
                f"  timeout: 5s\n  verify:\n    format: ssh\n"
                f"    allowed_signers: {ssh_keys.allowed}\n",
            )
        )
        # Read the notify socket all along: a full datagram queue would block the daemon's sends.
        done = threading.Event()

        def drain_notify() -> None:
            while not done.is_set():
                daemon.read_notify()

        drain = threading.Thread(target=drain_notify)
        drain.start()
        try:
            daemon.start()
            wait_for(daemon.ready, what="/readyz")
            assert (daemon.root / "etc/motd").read_text() == "version 1\n"
            info = "reconciler_revision_info"
            assert daemon.metric(info, revision=signed, branch="production") == 1

            motd = REPO["profiles/app.yaml"]
            unsigned = server.push({"profiles/app.yaml": motd.replace("version 1", "unsigned")})
            wait_for(
                lambda: (
                    daemon.metric("reconciler_revisions_rejected_total", reason="signature") == 1
                ),
                what="signature rejection",
            )
            assert (daemon.root / "etc/motd").read_text() == "version 1\n"
            assert daemon.metric(info, revision=signed, branch="production") == 1
            status = json.loads(daemon.get("/status")[1])
            assert status["revision"] == signed
            assert f"commit {unsigned}: not signed" in status["rejected"][unsigned]
            events = [
                json.loads(line) for line in daemon.logs().splitlines() if line.startswith("{")
            ]
            assert any(
                e.get("reason") == "signature" and e.get("rejected") == unsigned for e in events
            )
            # not retried on every poll, and the last good revision is still enforced
            time.sleep(2)
            assert daemon.metric("reconciler_revisions_rejected_total", reason="signature") == 1
            (daemon.root / "etc/motd").write_text("tampered\n")
            wait_for(
                lambda: (daemon.root / "etc/motd").read_text() == "version 1\n",
                what="heal with the last good revision",
            )
            # a signed commit on top is applied
            good = work.commit(
                {"profiles/app.yaml": motd.replace("version 1", "signed 2")}, trusted, "signed 2"
            )
            work.git("push", "-q", "-f", str(server.bare), "HEAD:production")
            wait_for(
                lambda: (daemon.root / "etc/motd").read_text() == "signed 2\n",
                what="signed revision applied",
            )
            wait_for(
                lambda: daemon.metric(info, revision=good, branch="production") == 1,
                what="revision info",
            )
        finally:
            daemon.stop()
            done.set()
            drain.join()
            daemon.notify.close()
            server.stop()
