"""Hardened git: a scrubbed environment, no hooks, no submodules, allowed URL schemes only.

Git runs as a subprocess, through ``reconciler.process.run`` (bounded output, a timeout that ends
its whole process group), with argv lists, no system or global configuration, hooks pointed at an
empty path, no terminal prompts, and protocol allow-listing, so that nothing in a repository or
its URL can make it run a program.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from reconciler import process
from reconciler.errors import ConfigError, SourceError
from reconciler.fs import fsync_dir

ALLOWED_SCHEMES = ("https", "ssh", "git", "file")
MAX_BRANCHES_SHOWN = 5  # branch names an error about a missing branch lists
MAX_MIRROR_BYTES = 2 * 1024**3  # packed objects a mirror may hold; a fetch stops beyond
WATCH_EVERY = 0.2  # seconds between two looks at a running fetch
# What reconciler reads of one git command's output (each stream), at most: ls-remote of a
# remote with a few hundred thousand branches, or a commit object (verify) of that size.
MAX_GIT_OUTPUT = 32 * 1024 * 1024
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^-]")

# Every setting that can make git run a program, pinned on the command line (which wins over
# the repository's own configuration) to a value that runs nothing of the repository's.
_PINNED = [
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.alternateRefsCommand=true",  # an empty value would run the alternate's path
    "core.alternateRefsPrefixes=",
    "core.askPass=/bin/false",
    "core.pager=cat",
    "core.editor=/bin/false",
    "sequence.editor=/bin/false",
    "credential.helper=",
    "diff.external=",
    "uploadpack.packObjectsHook=",
    "receive.procReceiveRefs=",
    "gc.auto=0",
    "maintenance.auto=false",
    "protocol.allow=never",
    *[f"protocol.{s}.allow=always" for s in ALLOWED_SCHEMES],
    "protocol.ext.allow=never",
    "protocol.fd.allow=never",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "core.symlinks=false",
    "filter.lfs.smudge=",
    "filter.lfs.process=",
    "filter.lfs.required=false",
]
_HARDENING = [arg for setting in _PINNED for arg in ("-c", setting)]


class FetchTimeout(SourceError):
    """git did not finish in time: a remote that stalls, or one too slow for source.timeout."""


class TooLarge(SourceError):
    """The repository is larger than a mirror may hold."""


def check_url(url: str) -> str:
    """Refuse URLs that could make git run something: ext::, fd::, leading '-', odd schemes."""
    shown = redact(url)
    if url.startswith("-") or "\0" in url or "\n" in url:
        raise ConfigError(f"source url {shown!r} is not allowed")
    if "::" in url.split("/", 1)[0]:
        raise ConfigError(f"source url {shown!r}: transport helpers (x::) are not allowed")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ALLOWED_SCHEMES:
            raise ConfigError(
                f"source url {shown!r}: scheme {scheme!r} is not allowed "
                f"(allowed: {', '.join(ALLOWED_SCHEMES)})"
            )
    elif not _SCP_LIKE.match(url) and not url.startswith("/"):
        raise ConfigError(f"source url {shown!r} is neither an allowed URL nor an absolute path")
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
    # The user's ssh command, else plain ssh: never a core.sshCommand from a repository (the
    # variable wins over any configuration). Likewise no proxy command (core.gitProxy).
    env.setdefault("GIT_SSH_COMMAND", "ssh")
    env["GIT_PROXY_COMMAND"] = ""
    return env


def git_process(
    args: list[str],
    git_dir: Path | None,
    timeout: float,
    config: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    watch: Callable[[], None] | None = None,
    output_cap: int = MAX_GIT_OUTPUT,
) -> process.Completed:
    """Run hardened git and return it finished, whatever its exit status.

    ``config`` adds ``key=value`` settings after the hardening ones (so they win over the
    repository's own configuration); ``env`` adds variables to the scrubbed environment.
    ``watch`` is called every WATCH_EVERY seconds while git runs; what it raises stops git.
    git runs through ``process.run``: on a timeout, an error, or when it exits, git and every
    process it started in its group are ended, and nothing that left the group is waited for.
    Its output is needed whole: a stream passing ``output_cap`` stops git, and is an error.
    """
    argv = ["git", *_HARDENING, *[arg for c in config for arg in ("-c", c)]]
    if git_dir is not None:
        argv += ["--git-dir", os.path.abspath(git_dir)]
    argv += args
    name = args[0] if args else "git"
    try:
        done = process.run(
            argv,
            timeout=timeout,
            cwd="/",  # no repository found from wherever reconciler was started
            env={**git_env(), **(env or {})},
            output_cap=output_cap,
            keep="head",
            kill_on_overflow=True,
            watch=watch,
            watch_every=WATCH_EVERY,
        )
    except FileNotFoundError:
        raise SourceError("git is not installed") from None
    if done.timed_out:
        raise FetchTimeout(f"git {name} timed out after {timeout:g}s")
    if done.overflowed:
        raise SourceError(
            f"git {name} printed more than {output_cap} bytes of output, more than reconciler "
            "reads; stopped"
        )
    return done


def run_git(
    args: list[str],
    git_dir: Path | None,
    timeout: float,
    config: Sequence[str] = (),
    watch: Callable[[], None] | None = None,
) -> str:
    done = git_process(args, git_dir, timeout, config, watch=watch)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        last = redact(err[-1]) if err else done.returncode
        raise SourceError(f"git {args[0]} failed: {last}")
    return done.stdout.decode(errors="replace")


# A tag name as modules.yaml may give it: what git accepts as a ref name, less anything a command
# line or a refspec could read otherwise (a leading '-', ':', '^', '~', '*', '?', '[', '\\').
TAG_NAME = re.compile(
    r"(?!.*\.\.)(?!.*//)(?!.*@\{)(?!.*\.lock(?:/|\Z))(?!.*/\.)"
    r"[A-Za-z0-9_+][A-Za-z0-9._+/@-]*(?<![./])\Z"
)


def check_tag_name(tag: str) -> str:
    if not TAG_NAME.match(tag):
        raise SourceError(f"{tag!r} is not a tag name git accepts")
    return tag


def remote_tag(url: str, tag: str, timeout: float) -> tuple[str, str] | None:
    """(object, commit) of the remote's tag ``tag`` by ``git ls-remote``: the tag object and
    the commit it leads to (both the commit for a lightweight tag); None when there is none."""
    check_url(url)
    ref = f"refs/tags/{check_tag_name(tag)}"
    out = run_git(["ls-remote", "--", url, ref, f"{ref}^{{}}"], None, timeout)
    found: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    if ref not in found:
        return None
    return found[ref], found.get(f"{ref}^{{}}", found[ref])


def is_bare(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def git_dir_of(path: Path) -> Path:
    if is_bare(path):
        return path
    if (path / ".git").is_dir():
        return path / ".git"
    raise SourceError(f"{path}: not a git repository (needed for --ref)")


def check_local_repo(git_dir: Path) -> None:
    """Refuse a local repository git must not run in: one that belongs to another user (its
    configuration is theirs; git refuses it too) or whose HEAD or ``.git`` leads elsewhere."""
    from reconciler.source import check_inside

    st = os.stat(git_dir)
    if st.st_uid != os.geteuid():
        raise SourceError(
            f"{git_dir}: the repository belongs to uid {st.st_uid}, not to uid {os.geteuid()} "
            "that runs reconciler; refused (its configuration could run programs): use a clone "
            "of your own, or a URL"
        )
    if git_dir.name == ".git" and os.path.islink(git_dir):
        raise SourceError(f"{git_dir}: a symbolic link to another directory; refused")
    check_inside(git_dir, "HEAD")
    try:
        head = (git_dir / "HEAD").read_text(errors="replace").strip()
    except OSError:
        return
    if head.startswith("ref: "):
        check_inside(git_dir, head[5:])


def resolve_local(git_dir: Path, ref: str | None, timeout: float) -> tuple[str, str | None]:
    """The commit a ref names in a local repository, and the branch if the ref is one.

    The repository is checked first (``check_local_repo``): git runs in it then."""
    check_local_repo(git_dir)
    name = ref or "HEAD"
    if name.startswith("-"):
        raise SourceError(f"ref {name!r} is not allowed")
    try:
        commit = run_git(
            ["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"], git_dir, timeout
        )
    except FetchTimeout:
        raise
    except SourceError:
        if not run_git(["for-each-ref", "--count=1"], git_dir, timeout).strip():
            raise SourceError(f"{git_dir}: empty repository (no commits)") from None
        raise SourceError(f"{git_dir}: ref not found: {name!r}") from None
    branch: str | None = None
    if ref is None:
        try:
            branch = run_git(["symbolic-ref", "--short", "HEAD"], git_dir, timeout).strip()
        except SourceError:
            branch = None
    elif not re.fullmatch(r"[0-9a-f]{7,40}", ref):
        branch = ref.removeprefix("refs/heads/")
    return commit.strip(), branch


def check_commit(git_dir: Path, commit: str, timeout: float) -> None:
    """The commit, its tree and every object below it are in ``git_dir``, git found nothing
    wrong on the way, and every pack still ends as its index says (a truncated pack is set aside
    by git, which then reads around it). One ``rev-list`` over the commit's tree, not its
    history, and the last bytes of each pack and index."""
    if commit.startswith("-"):
        raise SourceError(f"commit {commit!r} is not allowed")
    broken = _broken_pack(git_dir)
    if broken is not None:
        raise SourceError(f"{git_dir}: the pack {broken} does not match its index")
    if timeout <= 0:
        raise FetchTimeout("no time left to check the commit")
    args = ["rev-list", "--objects", "--no-walk", "--quiet", f"{commit}^{{commit}}", "--"]
    done = git_process(args, git_dir, timeout)
    problems = [
        line.strip()
        for line in done.stderr.decode(errors="replace").splitlines()
        if line.startswith(("error:", "fatal:"))
    ]
    if done.returncode != 0 or problems:
        why = problems[-1] if problems else f"git rev-list exited {done.returncode}"
        raise SourceError(f"commit {commit[:12]} cannot be read whole from {git_dir}: {why}")


_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^/@\s'\"]*?):([^/@\s'\"]*)@")


def shown_url(url: str) -> str:
    """The URL for messages: a password or token in it is hidden."""
    return redact(url)


def redact(text: str) -> str:
    """``text`` with the password or token of every URL in it hidden (``user:***@``): for
    URLs shown in logs, reports and /status, and git's messages, which echo the URL."""
    return _USERINFO.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", text)


class Mirror:
    """A bare mirror of a remote control repo, under the state directory.

    A fetch as a whole (``ls-remote``, ``fetch`` and the check of what arrived) ends at
    ``timeout``; git and everything it started are killed then, and what they left in the mirror
    is removed. After each fetch, every object of the wanted commit must be there. A mirror that
    git cannot use, or that fails that check, is replaced: a fresh clone goes into a temporary
    directory beside it, is checked the same way, and only then takes its place. When the
    fresh clone fails too, it is removed and the old mirror stays as it was.

    Fetched objects are always kept as packs, whose size is watched while git writes them: a
    fetch stops when the mirror would hold more than ``max_bytes``.

    A lock file beside the mirror keeps the daemon and a command run by hand from fetching into
    it at the same time.
    """

    def __init__(
        self, url: str, directory: Path, timeout: float, max_bytes: int = MAX_MIRROR_BYTES
    ) -> None:
        self.url = check_url(url)
        # absolute: git runs in "/", and a relative --state-dir means the caller's directory
        self.directory = Path(os.path.abspath(directory))
        self.git_dir = directory / "mirror.git"
        self.timeout = timeout
        self.max_bytes = max_bytes

    # -- public ------------------------------------------------------------------------------

    def ensure(self) -> None:
        """The mirror's directory, without the temporary clones a killed fetch left in it.

        The mirror itself is made by the next fetch, as a checked fresh clone.
        """
        with self._locked(time.monotonic() + self.timeout):
            pass

    def remote_head(self, branch: str | None) -> tuple[str, str]:
        """(commit, branch) of the remote's branch (its default branch when None): ls-remote."""
        return self._remote_head(branch, time.monotonic() + self.timeout)

    def fetch(self, ref: str | None) -> tuple[str, str | None]:
        """Fetch the branch (or commit) into the mirror; return (commit, branch)."""
        deadline = time.monotonic() + self.timeout
        if ref is not None and re.fullmatch(r"[0-9a-f]{40}", ref):
            commit, branch = ref, None
            target = ref
        else:
            commit, found = self._remote_head(
                ref.removeprefix("refs/heads/") if ref else None, deadline
            )
            branch = found
            target = f"+refs/heads/{branch}:refs/heads/{branch}"
        with self._locked(deadline):
            self._fetch_target(target, commit, deadline)
        return commit, branch

    def fetch_tag(self, tag: str, commit: str) -> tuple[str, str] | None:
        """Fetch the remote's tag, with every object of ``commit`` (the commit ``remote_tag``
        found the tag leading to), and return (object, commit) of the tag as it arrived. The
        mirror's ``refs/tags/TAG`` is set only when the tag leads to ``commit``: a tag that moved
        in between leaves the tag the mirror held as it was."""
        ref = f"refs/tags/{check_tag_name(tag)}"
        incoming = f"refs/incoming/tags/{tag}"
        deadline = time.monotonic() + self.timeout
        with self._locked(deadline):
            self._fetch_target(f"+{ref}:{incoming}", commit, deadline)
            found = self._peel(incoming, deadline)
            if found is not None and found[1] == commit:
                self._git(["update-ref", "--no-deref", ref, found[0]], self.git_dir, deadline)
            self._git(["update-ref", "--no-deref", "-d", incoming], self.git_dir, deadline)
        return found

    def local_tag(self, tag: str) -> tuple[str, str] | None:
        """(object, commit) of the mirror's tag: the tag object (the commit itself for a
        lightweight tag) and the commit it leads to; None when the mirror has no such tag."""
        ref = f"refs/tags/{check_tag_name(tag)}"
        if not is_bare(self.git_dir):
            return None
        return self._peel(ref, time.monotonic() + self.timeout)

    def has_commit(self, commit: str) -> bool:
        """Whether the commit and every object of its tree are in the mirror."""
        try:
            self._check(self.git_dir, commit, time.monotonic() + self.timeout)
        except SourceError:
            return False
        return True

    # -- inside --------------------------------------------------------------------------------

    def _git(
        self,
        args: list[str],
        git_dir: Path | None,
        deadline: float,
        config: Sequence[str] = (),
        watch: Callable[[], None] | None = None,
    ) -> str:
        left = deadline - time.monotonic()
        try:
            if left <= 0:
                raise FetchTimeout("no time left")
            return run_git(args, git_dir, left, config, watch)
        except FetchTimeout:
            raise FetchTimeout(
                f"{shown_url(self.url)}: git {args[0]} did not finish within source.timeout "
                f"({self.timeout:g}s); aborted"
            ) from None

    def _fetch_target(self, target: str, commit: str, deadline: float) -> None:
        """Fetch ``target`` (a refspec or a commit id) and check that ``commit`` arrived whole;
        a mirror git cannot use is replaced by a fresh clone. The caller holds the lock."""
        damage = None
        if is_bare(self.git_dir):
            try:
                self._fetch_into(self.git_dir, target, commit, deadline)
                return
            except (FetchTimeout, TooLarge):
                self._remove_leftovers(self.git_dir)
                raise
            except SourceError as exc:
                damage = str(exc)
        elif os.path.lexists(self.git_dir):
            damage = "it is not a git repository"
        self._replace(target, commit, deadline, damage)

    def _peel(self, ref: str, deadline: float) -> tuple[str, str] | None:
        """(object, commit) of a ref of the mirror: what it names, and the commit it leads to."""
        out = self._git(
            ["for-each-ref", "--format=%(objectname) %(refname)", ref], self.git_dir, deadline
        )
        found = [line.split(" ", 1)[0] for line in out.splitlines() if line.endswith(f" {ref}")]
        if not found:
            return None
        done = git_process(
            ["rev-parse", "--verify", "--quiet", f"{found[0]}^{{commit}}"],
            self.git_dir,
            max(deadline - time.monotonic(), 0.1),
        )
        if done.returncode != 0:
            return None
        return found[0], done.stdout.decode().strip()

    def _remote_head(self, branch: str | None, deadline: float) -> tuple[str, str]:
        url = shown_url(self.url)
        if branch is None:
            out = self._git(["ls-remote", "--symref", "--", self.url, "HEAD"], None, deadline)
            for line in out.splitlines():
                if line.startswith("ref: ") and line.endswith("\tHEAD"):
                    branch = line[5:].split("\t")[0].removeprefix("refs/heads/")
            if branch is None:
                if not self._branches(deadline):
                    raise SourceError(f"{url}: empty repository (no branch to fetch)")
                raise SourceError(f"{url}: ref not found: the remote has no default branch (HEAD)")
        if branch.startswith("-"):
            raise SourceError(f"branch {branch!r} is not allowed")
        out = self._git(["ls-remote", "--", self.url, f"refs/heads/{branch}"], None, deadline)
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            if name == f"refs/heads/{branch}":
                return sha, branch
        others = self._branches(deadline)
        if not others:
            raise SourceError(f"{url}: empty repository (no branch {branch!r})")
        listed = ", ".join(repr(b) for b in others[:MAX_BRANCHES_SHOWN])
        more = ", ..." if len(others) > MAX_BRANCHES_SHOWN else ""
        raise SourceError(
            f"{url}: ref not found: branch {branch!r} (the remote has {listed}{more})"
        )

    def _branches(self, deadline: float) -> list[str]:
        out = self._git(["ls-remote", "--heads", "--", self.url], None, deadline)
        return [
            line.partition("\t")[2].removeprefix("refs/heads/")
            for line in out.splitlines()
            if "\t" in line
        ]

    def _fetch_into(self, git_dir: Path, target: str, commit: str, deadline: float) -> None:
        def watch() -> None:
            held = _pack_bytes(git_dir)
            if held > self.max_bytes:
                raise TooLarge(
                    f"{shown_url(self.url)}: the repository is larger than a mirror may hold "
                    f"({self.max_bytes} bytes of packed objects); fetch stopped at {held}"
                )

        self._git(
            ["fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--", self.url, target],
            git_dir,
            deadline,
            config=[
                "fetch.unpackLimit=1",  # a pack, which watch() can measure as it grows
                "gc.autoDetach=false",  # gc in the foreground: not outliving the lock
            ],
            watch=watch,
        )
        watch()
        self._check(git_dir, commit, deadline)

    def _check(self, git_dir: Path, commit: str, deadline: float) -> None:
        try:
            check_commit(git_dir, commit, deadline - time.monotonic())
        except FetchTimeout:
            raise FetchTimeout(
                f"{shown_url(self.url)}: checking the mirror did not finish within "
                f"source.timeout ({self.timeout:g}s); aborted"
            ) from None

    def _replace(self, target: str, commit: str, deadline: float, damage: str | None) -> None:
        """A fresh clone, checked, in place of the mirror; the mirror untouched if it fails."""
        fresh = Path(tempfile.mkdtemp(prefix="clone-", suffix=".tmp", dir=self.directory))
        try:
            self._git(["init", "--bare", "--quiet", str(fresh)], None, deadline)
            self._fetch_into(fresh, target, commit, deadline)
        except SourceError as exc:
            shutil.rmtree(fresh, ignore_errors=True)
            if damage is None or isinstance(exc, TooLarge):
                raise
            raise type(exc)(
                f"fetching into the mirror {self.git_dir} failed ({damage}), and a fresh "
                f"clone failed too: {exc}"
            ) from None
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        old: Path | None = None
        if os.path.lexists(self.git_dir):
            old = self.directory / f"old-{secrets.token_hex(6)}.tmp"
            os.rename(self.git_dir, old)
        os.rename(fresh, self.git_dir)
        fsync_dir(self.directory)
        if old is not None:
            _remove(old)

    @contextlib.contextmanager
    def _locked(self, deadline: float) -> Iterator[None]:
        """Hold the mirror's lock (waiting until the deadline), and clear what killed fetches
        left beside the mirror: only a fetch holding the lock makes temporary clones."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / "mirror.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise FetchTimeout(
                            f"{self.directory / 'mirror.lock'}: another fetch held it for "
                            f"longer than source.timeout ({self.timeout:g}s)"
                        ) from None
                    time.sleep(0.1)
            for leftover in self.directory.glob("*.tmp"):
                _remove(leftover)
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _remove_leftovers(git_dir: Path) -> None:
        """What a killed fetch leaves in a mirror: partial packs and objects, stale locks.

        Only called with the mirror's lock held and git's process group killed, so nothing
        else is writing there.
        """
        objects = git_dir / "objects"
        for pattern in ("pack/tmp_*", "pack/.tmp-*", "??/tmp_obj_*", "incoming-*"):
            for path in objects.glob(pattern):
                _remove(path)
        for dirpath, _, filenames in os.walk(git_dir):
            if dirpath.startswith(str(objects)):
                continue
            for name in filenames:
                if name.endswith(".lock"):
                    _remove(Path(dirpath) / name)


def _broken_pack(git_dir: Path) -> str | None:
    """The name of a pack whose trailing checksum is not the one its index records, if any."""
    for pack in sorted((git_dir / "objects" / "pack").glob("pack-*.pack")):
        try:
            with open(pack, "rb") as f, open(pack.with_suffix(".idx"), "rb") as g:
                f.seek(0, os.SEEK_END)
                g.seek(0, os.SEEK_END)
                if f.tell() < 32 or g.tell() < 64:
                    return pack.name
                f.seek(-32, os.SEEK_END)
                g.seek(-64, os.SEEK_END)
                tail, recorded = f.read(32), g.read(64)
        except FileNotFoundError:
            continue  # a pack without its index is not used by git
        # The index ends with the pack's checksum then its own: 20 bytes each (SHA-1) or 32.
        if tail[-20:] != recorded[-40:-20] and tail != recorded[:32]:
            return pack.name
    return None


def _pack_bytes(git_dir: Path) -> int:
    """Bytes of the packs (and packs being written) of a repository."""
    total = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(git_dir / "objects" / "pack") as it:
        for entry in it:
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
