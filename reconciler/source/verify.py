"""Signed revisions (``source.verify``): a commit is applied only when a trusted key signed it.

The trusted keys come only from the node's own configuration: an SSH allowed-signers file
(``format: ssh``) or a GnuPG keyring (``format: gpg``). git checks the signature itself
(``git verify-commit --raw``, through the hardened runner), with every setting that decides how
it checks pinned on its command line, so that the repository's configuration takes no part:

- ssh: ``gpg.ssh.allowedSignersFile`` is the configured file and ``gpg.ssh.program`` is
  ``ssh-keygen``, which git runs with the namespace ``git`` and the commit's own time (so the
  ``valid-after``/``valid-before`` options of the file apply);
- gpg: a private, temporary GnuPG home holds the configured keyring's public keys and nothing
  else, with ``trust-model always`` (every key in it is trusted, no other key is known), no agent
  and no key retrieval. The host's keyring (``~/.gnupg``, ``$GNUPGHOME``) is never read, and
  the configured keyring is only read, never used as a home nor written.

The signature's kind is read from the commit object first, so that an unsigned commit, or one
signed the other way, is refused with a clear message before any tool runs. Only the commit to
apply is verified, and before any of its files is read.

A module pinned by a tag is verified by the tag's signature instead (``verify_tag``, ``git
verify-tag --raw``): the same keys, the same pinned settings, the same private GnuPG home.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reconciler import process
from reconciler.errors import SignatureError, SourceError
from reconciler.source import GitSnapshot, is_git_url
from reconciler.source import git as gitsource


@dataclass(frozen=True)
class Verify:
    """source.verify: the keys a commit must be signed by, from local configuration only.

    ``format: ssh`` takes ``allowed_signers`` (an SSH allowed-signers file); ``format: gpg``
    takes ``keyring`` (a file of exported public keys, binary or armored, a pubring.kbx or
    pubring.gpg, or a GnuPG home directory whose public keyring is read).
    """

    format: Literal["ssh", "gpg"]
    allowed_signers: Path | None = None
    keyring: Path | None = None

    @property
    def keys(self) -> Path:
        """The file (or directory) the trusted keys are read from."""
        path = self.allowed_signers if self.format == "ssh" else self.keyring
        assert path is not None
        return path


MAX_KEYRING_BYTES = 16 * 1024 * 1024
# What is read of one gpg command's output (each stream), at most: the keys of a keyring exported,
# or listed, come to less than twice the keyring.
MAX_GPG_OUTPUT = 2 * MAX_KEYRING_BYTES

_BEGIN = {
    b"-----BEGIN SSH SIGNATURE-----": "ssh",
    b"-----BEGIN PGP SIGNATURE-----": "gpg",
    b"-----BEGIN SIGNED MESSAGE-----": "x509",
}
_KIND_NAMES = {
    "ssh": "an SSH signature",
    "gpg": "an OpenPGP (gpg) signature",
    "x509": "an X.509 (gpgsm) signature",
}

# Programs and trust settings a repository's own configuration could otherwise change.
_PINNED = (
    "gpg.program=gpg",
    "gpg.openpgp.program=gpg",
    "gpg.x509.program=gpgsm",
    "gpg.ssh.program=ssh-keygen",
    "gpg.minTrustLevel=undefined",
)

_GPG_CONF = "trust-model always\nno-autostart\nno-auto-key-retrieve\n"


def commit_signature(raw: bytes, header: str = "gpgsig") -> bytes | None:
    """The signature a commit object carries in ``header`` (continuation lines joined)."""
    head = raw.split(b"\n\n", 1)[0]
    lines = head.split(b"\n")
    found: list[bytes] | None = None
    for line in lines:
        if found is not None:
            if line.startswith(b" "):
                found.append(line[1:])
                continue
            break
        if line.startswith(header.encode() + b" "):
            found = [line[len(header) + 1 :]]
    return b"\n".join(found) + b"\n" if found is not None else None


def signature_kind(signature: bytes) -> str:
    first = signature.lstrip().split(b"\n", 1)[0].strip()
    return _BEGIN.get(first, "unknown")


def tag_signature(raw: bytes) -> bytes | None:
    """The signature a tag object carries: appended to its message, from its first line on."""
    _, _, body = raw.partition(b"\n\n")
    lines = body.split(b"\n")
    for i, line in enumerate(lines):
        if line.strip() in _BEGIN:
            return b"\n".join(lines[i:])
    return None


def tag_header(raw: bytes, name: str) -> str | None:
    """The value of one header line of a tag object (``object``, ``type``, ``tag``)."""
    for line in raw.split(b"\n\n", 1)[0].split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == name.encode():
            return value.decode(errors="replace")
    return None


@dataclass(frozen=True)
class _Signed:
    """The git object being verified: a commit, or a tag object. ``refuse`` makes the error,
    naming it."""

    kind: Literal["commit", "tag"]
    oid: str
    subject: str | None = None  # how errors name it; None: ``commit <oid>``

    def refuse(self, message: str, why: str) -> SignatureError:
        return SignatureError(self.oid, message, why, self.subject)


def verify_commit(git_dir: Path, commit: str, verify: Verify, timeout: float = 60.0) -> None:
    """Return when ``commit`` is signed by a key ``verify`` trusts; raise SignatureError if not."""
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise SignatureError(commit, "not a full commit id; cannot verify it", "unverifiable")
    signed = _Signed("commit", commit)
    done = _git(["cat-file", "commit", commit], git_dir, signed, timeout)
    if done.returncode != 0:
        raise signed.refuse(f"cannot read the commit: {_last(done)}", "unverifiable")
    header = "gpgsig-sha256" if len(commit) == 64 else "gpgsig"
    _verify_signed(git_dir, signed, commit_signature(done.stdout, header), verify, timeout)


def verify_tag(
    git_dir: Path, tag_object: str, name: str, verify: Verify, timeout: float = 60.0
) -> None:
    """Return when the tag object ``tag_object`` is an annotated tag named ``name`` and signed
    by a key ``verify`` trusts; raise SignatureError if not. A lightweight tag (a ref straight
    to a commit) carries no signature and is refused. The commit the tag names is not checked
    here: its own signature does not matter."""
    signed = _Signed("tag", tag_object, f"tag {name!r} ({tag_object})")
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", tag_object):
        raise signed.refuse("not a full object id; cannot verify it", "unverifiable")
    done = _git(["cat-file", "-t", tag_object], git_dir, signed, timeout)
    if done.returncode != 0:
        raise signed.refuse(f"cannot read the tag: {_last(done)}", "unverifiable")
    kind = done.stdout.decode(errors="replace").strip()
    if kind != "tag":
        raise signed.refuse(
            f"a lightweight tag (it names a {kind}, with no tag object): it carries no "
            f"signature (source.verify requires an annotated tag with "
            f"{_KIND_NAMES[verify.format]} by a trusted key)",
            "unsigned",
        )
    done = _git(["cat-file", "tag", tag_object], git_dir, signed, timeout)
    if done.returncode != 0:
        raise signed.refuse(f"cannot read the tag: {_last(done)}", "unverifiable")
    own = tag_header(done.stdout, "tag")
    if own != name:
        # a signed tag of another release, published under this name
        raise signed.refuse(
            f"the tag object names itself {own!r}, not {name!r}: refused", "bad_signature"
        )
    _verify_signed(git_dir, signed, tag_signature(done.stdout), verify, timeout)


def _verify_signed(
    git_dir: Path, signed: _Signed, signature: bytes | None, verify: Verify, timeout: float
) -> None:
    if signature is None:
        raise signed.refuse(
            f"not signed (source.verify requires {_KIND_NAMES[verify.format]} by a trusted key)",
            "unsigned",
        )
    kind = signature_kind(signature)
    if kind != verify.format:
        raise signed.refuse(
            f"signed with {_KIND_NAMES.get(kind, 'an unknown kind of signature')}, but "
            f"source.verify.format is {verify.format}",
            "wrong_format",
        )
    if verify.format == "ssh":
        _verify_ssh(git_dir, signed, verify.keys, timeout)
    else:
        _verify_gpg(git_dir, signed, verify.keys, timeout)


def open_verified_snapshot(
    repo: str, ref: str | None, state_dir: Path, timeout: float, verify: Verify
) -> GitSnapshot:
    """What ``open_snapshot`` opens, for a node that applies only signed commits.

    The commit is verified before the snapshot is built, so before any of its files is read. A
    working tree is not a commit and cannot be verified: it is refused.
    """
    path = Path(repo)
    if not is_git_url(repo):
        if not path.exists():
            raise SourceError(f"{repo}: no such directory")
        if ref is None and not gitsource.is_bare(path):
            raise SourceError(
                f"{repo}: source.verify is set and a working tree cannot be verified; "
                "give --ref (a branch, tag or commit) to read a signed commit"
            )
        git_dir = gitsource.git_dir_of(path)
        commit, branch = gitsource.resolve_local(git_dir, ref, timeout)
        description = f"{repo}@{ref or 'HEAD'}"
    else:
        mirror = gitsource.Mirror(repo, state_dir / "source", timeout)
        commit, branch = mirror.fetch(ref)
        git_dir = mirror.git_dir
        description = f"{gitsource.shown_url(repo)}@{branch or commit}"
    verify_commit(git_dir, commit, verify, timeout)
    return GitSnapshot(git_dir, commit, branch, description, timeout)


# -- ssh --------------------------------------------------------------------------------------


def _verify_ssh(git_dir: Path, signed: _Signed, signers: Path, timeout: float) -> None:
    try:
        with open(signers, "rb"):
            pass
    except OSError as exc:
        raise signed.refuse(
            f"cannot verify: allowed signers {signers}: {exc.strerror}", "unverifiable"
        ) from None
    if not signers.is_file():
        raise signed.refuse(
            f"cannot verify: allowed signers {signers} is not a file", "unverifiable"
        )
    config = ["gpg.format=ssh", f"gpg.ssh.allowedSignersFile={signers}"]
    done = _git([f"verify-{signed.kind}", "--raw", signed.oid], git_dir, signed, timeout, config)
    out = _text(done)
    if done.returncode == 0 and re.search(r'^Good "git" signature for ', out, re.M):
        return
    key = re.search(r"with (\S+) key (SHA256:\S+)", out)
    if "incorrect signature" in out or "invalid format" in out or "Could not verify" in out:
        raise signed.refuse(f"bad signature: it does not match the {signed.kind}", "bad_signature")
    if "No principal matched" in out:
        by = f"{key.group(1)} key {key.group(2)}" if key else "a key"
        raise signed.refuse(
            f"signed by {by}, which is not in the allowed signers {signers}", "unknown_key"
        )
    raise signed.refuse(f"signature refused: {_last(done)}", "bad_signature")


# -- gpg --------------------------------------------------------------------------------------


def _verify_gpg(git_dir: Path, signed: _Signed, keyring: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="reconciler-gnupg-") as tmp:
        home = Path(tmp)
        (home / "gpg.conf").write_text(_GPG_CONF)
        _load_keyring(home, keyring, signed, timeout)
        done = _git(
            [f"verify-{signed.kind}", "--raw", signed.oid],
            git_dir,
            signed,
            timeout,
            ["gpg.format=openpgp"],
            {"GNUPGHOME": str(home)},
        )
    out = _text(done)
    status: dict[str, list[str]] = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "[GNUPG:]":
            status.setdefault(words[1], words[2:])
    if done.returncode == 0 and "GOODSIG" in status and "VALIDSIG" in status:
        return
    if "BADSIG" in status:
        raise signed.refuse(f"bad signature: it does not match the {signed.kind}", "bad_signature")
    if "NO_PUBKEY" in status:
        keyid = (status["NO_PUBKEY"] or ["?"])[0]
        raise signed.refuse(
            f"signed by key {keyid}, which is not in the keyring {keyring}", "unknown_key"
        )
    for word, why in (
        ("EXPKEYSIG", "signed by an expired key"),
        ("REVKEYSIG", "signed by a revoked key"),
        ("EXPSIG", "the signature has expired"),
    ):
        if word in status:
            raise signed.refuse(why, "bad_signature")
    if "ERRSIG" in status:
        raise signed.refuse("bad signature: gpg cannot check it", "bad_signature")
    raise signed.refuse(f"signature refused: {_last(done)}", "bad_signature")


def _load_keyring(home: Path, source: Path, signed: _Signed, timeout: float) -> None:
    """Import the public keys of ``source`` into the private home ``home``.

    ``source`` is a file of exported keys (armored or binary), a keybox (pubring.kbx) or a
    legacy keyring (pubring.gpg), or a GnuPG home directory whose public keyring is read.
    """

    def refuse(message: str) -> SignatureError:
        return signed.refuse(f"cannot verify: keyring {source}: {message}", "unverifiable")

    path = source
    if source.is_dir():
        found = [source / n for n in ("pubring.kbx", "pubring.gpg") if (source / n).is_file()]
        if not found:
            raise refuse("a directory without pubring.kbx or pubring.gpg")
        path = found[0]
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEYRING_BYTES + 1)
    except OSError as exc:
        raise refuse(str(exc.strerror)) from None
    if len(data) > MAX_KEYRING_BYTES:
        raise refuse(f"larger than {MAX_KEYRING_BYTES} bytes")
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        # A keybox, a legacy keyring or binary exported keys: gpg reads any of them as a
        # keyring. It reads a private copy, so that the configured file is never written.
        copy = home / "configured.keyring"
        copy.write_bytes(data)
        done = _gpg(
            home,
            ["--no-default-keyring", "--keyring", str(copy), "--lock-never", "--export"],
            b"",
            timeout,
            refuse,
        )
        copy.unlink()
        data = done.stdout
    _gpg(home, ["--import"], data, timeout, refuse)
    listed = _gpg(home, ["--with-colons", "--list-keys"], b"", timeout, refuse)
    if not any(line.startswith(b"pub:") for line in listed.stdout.splitlines()):
        raise refuse("no public key in it")


def _gpg(
    home: Path,
    args: list[str],
    data: bytes,
    timeout: float,
    refuse: Callable[[str], SignatureError],
) -> process.Completed:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": "/nonexistent",
        "LANG": "C",
        "GNUPGHOME": str(home),
    }
    argv = ["gpg", "--homedir", str(home), "--batch", "--no-tty", "--no-autostart", *args]
    try:
        done = process.run(
            argv,
            timeout=timeout,
            env=env,
            input=data,
            output_cap=MAX_GPG_OUTPUT,
            keep="head",
            kill_on_overflow=True,
        )
    except FileNotFoundError:
        raise refuse("gpg is not installed") from None
    if done.timed_out:
        raise refuse(f"gpg timed out after {timeout:g}s")
    if done.overflowed:
        raise refuse(f"gpg printed more than {MAX_GPG_OUTPUT} bytes of output; stopped")
    if done.returncode != 0 and "--list-keys" not in args:
        raise refuse(f"gpg cannot read it: {_last(done)}")
    return done


# -- helpers ----------------------------------------------------------------------------------


def _git(
    args: list[str],
    git_dir: Path,
    signed: _Signed,
    timeout: float,
    config: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> process.Completed:
    try:
        return gitsource.git_process(args, git_dir, timeout, [*_PINNED, *(config or [])], env=env)
    except SourceError as exc:
        raise signed.refuse(f"cannot verify: {exc}", "unverifiable") from None


def _text(done: process.Completed) -> str:
    return (done.stdout + b"\n" + done.stderr).decode(errors="replace")


def _last(done: process.Completed) -> str:
    lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {done.returncode}"
