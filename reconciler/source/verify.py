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


def verify_commit(git_dir: Path, commit: str, verify: Verify, timeout: float = 60.0) -> None:
    """Return when ``commit`` is signed by a key ``verify`` trusts; raise SignatureError if not."""
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise SignatureError(commit, "not a full commit id; cannot verify it", "unverifiable")
    done = _git(["cat-file", "commit", commit], git_dir, commit, timeout)
    if done.returncode != 0:
        raise SignatureError(commit, f"cannot read the commit: {_last(done)}", "unverifiable")
    header = "gpgsig-sha256" if len(commit) == 64 else "gpgsig"
    signature = commit_signature(done.stdout, header)
    if signature is None:
        raise SignatureError(
            commit,
            f"not signed (source.verify requires {_KIND_NAMES[verify.format]} by a trusted key)",
            "unsigned",
        )
    kind = signature_kind(signature)
    if kind != verify.format:
        raise SignatureError(
            commit,
            f"signed with {_KIND_NAMES.get(kind, 'an unknown kind of signature')}, but "
            f"source.verify.format is {verify.format}",
            "wrong_format",
        )
    if verify.format == "ssh":
        _verify_ssh(git_dir, commit, verify.keys, timeout)
    else:
        _verify_gpg(git_dir, commit, verify.keys, timeout)


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


def _verify_ssh(git_dir: Path, commit: str, signers: Path, timeout: float) -> None:
    try:
        with open(signers, "rb"):
            pass
    except OSError as exc:
        raise SignatureError(
            commit, f"cannot verify: allowed signers {signers}: {exc.strerror}", "unverifiable"
        ) from None
    if not signers.is_file():
        raise SignatureError(
            commit, f"cannot verify: allowed signers {signers} is not a file", "unverifiable"
        )
    config = ["gpg.format=ssh", f"gpg.ssh.allowedSignersFile={signers}"]
    done = _git(["verify-commit", "--raw", commit], git_dir, commit, timeout, config)
    out = _text(done)
    if done.returncode == 0 and re.search(r'^Good "git" signature for ', out, re.M):
        return
    key = re.search(r"with (\S+) key (SHA256:\S+)", out)
    if "incorrect signature" in out or "invalid format" in out or "Could not verify" in out:
        raise SignatureError(commit, "bad signature: it does not match the commit", "bad_signature")
    if "No principal matched" in out:
        by = f"{key.group(1)} key {key.group(2)}" if key else "a key"
        raise SignatureError(
            commit, f"signed by {by}, which is not in the allowed signers {signers}", "unknown_key"
        )
    raise SignatureError(commit, f"signature refused: {_last(done)}", "bad_signature")


# -- gpg --------------------------------------------------------------------------------------


def _verify_gpg(git_dir: Path, commit: str, keyring: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="reconciler-gnupg-") as tmp:
        home = Path(tmp)
        (home / "gpg.conf").write_text(_GPG_CONF)
        _load_keyring(home, keyring, commit, timeout)
        done = _git(
            ["verify-commit", "--raw", commit],
            git_dir,
            commit,
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
        raise SignatureError(commit, "bad signature: it does not match the commit", "bad_signature")
    if "NO_PUBKEY" in status:
        keyid = (status["NO_PUBKEY"] or ["?"])[0]
        raise SignatureError(
            commit, f"signed by key {keyid}, which is not in the keyring {keyring}", "unknown_key"
        )
    for word, why in (
        ("EXPKEYSIG", "signed by an expired key"),
        ("REVKEYSIG", "signed by a revoked key"),
        ("EXPSIG", "the signature has expired"),
    ):
        if word in status:
            raise SignatureError(commit, why, "bad_signature")
    if "ERRSIG" in status:
        raise SignatureError(commit, "bad signature: gpg cannot check it", "bad_signature")
    raise SignatureError(commit, f"signature refused: {_last(done)}", "bad_signature")


def _load_keyring(home: Path, source: Path, commit: str, timeout: float) -> None:
    """Import the public keys of ``source`` into the private home ``home``.

    ``source`` is a file of exported keys (armored or binary), a keybox (pubring.kbx) or a
    legacy keyring (pubring.gpg), or a GnuPG home directory whose public keyring is read.
    """

    def refuse(message: str) -> SignatureError:
        return SignatureError(commit, f"cannot verify: keyring {source}: {message}", "unverifiable")

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
    commit: str,
    timeout: float,
    config: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> process.Completed:
    try:
        return gitsource.git_process(args, git_dir, timeout, [*_PINNED, *(config or [])], env=env)
    except SourceError as exc:
        raise SignatureError(commit, f"cannot verify: {exc}", "unverifiable") from None


def _text(done: process.Completed) -> str:
    return (done.stdout + b"\n" + done.stderr).decode(errors="replace")


def _last(done: process.Completed) -> str:
    lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {done.returncode}"
