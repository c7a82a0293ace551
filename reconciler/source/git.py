"""Hardened git: a scrubbed environment, no hooks, no submodules, allowed URL schemes only.

Git runs as a subprocess with argv lists, a timeout, no system or global configuration, hooks
pointed at an empty path, no terminal prompts, and protocol allow-listing, so that nothing in a
repository or its URL can make it run a program.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.errors import ConfigError, SourceError

ALLOWED_SCHEMES = ("https", "ssh", "git", "file")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^-]")

_HARDENING = [
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "protocol.allow=never",
    *[arg for s in ALLOWED_SCHEMES for arg in ("-c", f"protocol.{s}.allow=always")],
    "-c", "submodule.recurse=false",
    "-c", "fetch.recurseSubmodules=false",
    "-c", "core.symlinks=false",
    "-c", "filter.lfs.smudge=",
    "-c", "filter.lfs.process=",
    "-c", "filter.lfs.required=false",
    "-c", "safe.directory=*",
]  # fmt: skip


def check_url(url: str) -> str:
    """Refuse URLs that could make git run something: ext::, fd::, leading '-', odd schemes."""
    if url.startswith("-") or "\0" in url or "\n" in url:
        raise ConfigError(f"source url {url!r} is not allowed")
    if "::" in url.split("/", 1)[0]:
        raise ConfigError(f"source url {url!r}: transport helpers (x::) are not allowed")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ALLOWED_SCHEMES:
            raise ConfigError(
                f"source url {url!r}: scheme {scheme!r} is not allowed "
                f"(allowed: {', '.join(ALLOWED_SCHEMES)})"
            )
    elif not _SCP_LIKE.match(url) and not url.startswith("/"):
        raise ConfigError(f"source url {url!r} is neither an allowed URL nor an absolute path")
    return url


def git_env() -> dict[str, str]:
    """A scrubbed environment for git: nothing from the user's or the system's config."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": "/nonexistent",
        "LANG": "C",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "GIT_LFS_SKIP_SMUDGE": "1",
        "GIT_PROTOCOL_FROM_USER": "0",
    }
    for key in ("SSH_AUTH_SOCK", "GIT_SSH_COMMAND"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def git_process(
    args: list[str],
    git_dir: Path | None,
    timeout: float,
    config: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run hardened git and return it finished, whatever its exit status.

    ``config`` adds ``key=value`` settings after the hardening ones (so they win over the
    repository's own configuration); ``env`` adds variables to the scrubbed environment.
    """
    argv = ["git", *_HARDENING, *[arg for c in config for arg in ("-c", c)]]
    if git_dir is not None:
        argv += ["--git-dir", str(git_dir)]
    argv += args
    name = args[0] if args else "git"
    try:
        return subprocess.run(
            argv,
            env={**git_env(), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise SourceError(f"git {name} timed out after {timeout:g}s") from None
    except FileNotFoundError:
        raise SourceError("git is not installed") from None


def run_git(args: list[str], git_dir: Path | None, timeout: float) -> str:
    done = git_process(args, git_dir, timeout)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise SourceError(f"git {args[0]} failed: {err[-1] if err else done.returncode}")
    return done.stdout.decode(errors="replace")


def is_bare(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def git_dir_of(path: Path) -> Path:
    if is_bare(path):
        return path
    if (path / ".git").is_dir():
        return path / ".git"
    raise SourceError(f"{path}: not a git repository (needed for --ref)")


def resolve_local(git_dir: Path, ref: str | None, timeout: float) -> tuple[str, str | None]:
    """The commit a ref names in a local repository, and the branch if the ref is one."""
    name = ref or "HEAD"
    if name.startswith("-"):
        raise SourceError(f"ref {name!r} is not allowed")
    try:
        commit = run_git(
            ["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], git_dir, timeout
        )
    except SourceError:
        raise SourceError(f"{git_dir}: ref {name!r} not found") from None
    branch: str | None = None
    if ref is None:
        try:
            branch = run_git(["symbolic-ref", "--short", "HEAD"], git_dir, timeout).strip()
        except SourceError:
            branch = None
    elif not re.fullmatch(r"[0-9a-f]{7,40}", ref):
        branch = ref.removeprefix("refs/heads/")
    return commit.strip(), branch


class Mirror:
    """A bare mirror of a remote control repo, under the state directory."""

    def __init__(self, url: str, directory: Path, timeout: float) -> None:
        self.url = check_url(url)
        self.git_dir = directory / "mirror.git"
        self.timeout = timeout

    def ensure(self) -> None:
        if is_bare(self.git_dir):
            return
        if self.git_dir.exists():
            shutil.rmtree(self.git_dir)
        self.git_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        run_git(["init", "--bare", "--quiet", str(self.git_dir)], None, self.timeout)

    def remote_head(self, branch: str | None) -> tuple[str, str]:
        """(commit, branch) of the remote's branch (its default branch when None): ls-remote."""
        if branch is None:
            out = run_git(["ls-remote", "--symref", "--", self.url, "HEAD"], None, self.timeout)
            for line in out.splitlines():
                if line.startswith("ref: ") and line.endswith("\tHEAD"):
                    branch = line[5:].split("\t")[0].removeprefix("refs/heads/")
            if branch is None:
                raise SourceError(f"{self.url}: empty repository or no default branch")
        if branch.startswith("-"):
            raise SourceError(f"branch {branch!r} is not allowed")
        out = run_git(["ls-remote", "--", self.url, f"refs/heads/{branch}"], None, self.timeout)
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name == f"refs/heads/{branch}":
                return sha, branch
        raise SourceError(f"{self.url}: ref not found: branch {branch!r}")

    def fetch(self, ref: str | None) -> tuple[str, str | None]:
        """Fetch the branch (or commit) into the mirror; return (commit, branch)."""
        self.ensure()
        if ref is not None and re.fullmatch(r"[0-9a-f]{40}", ref):
            commit, branch = ref, None
            target = ref
        else:
            commit, branch = self.remote_head(ref.removeprefix("refs/heads/") if ref else None)
            target = f"+refs/heads/{branch}:refs/heads/{branch}"
        run_git(
            ["fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--", self.url, target],
            self.git_dir,
            self.timeout,
        )
        return commit, branch
