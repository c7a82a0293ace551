"""git: a checkout of a repository at a branch, a tag or a commit (Puppet's vcsrepo).

git runs through the control repo's hardened runner (``reconciler.source.git``): no hooks, no
configuration but the pinned settings, allowed URL schemes only, a timeout that ends its group.
Every command names the checkout's ``.git`` and its work tree explicitly, so nothing in the
checkout's own configuration (``core.worktree``, hooks, fsmonitor) can send git elsewhere or
make it run a program. Tracked files changed by hand are drift: they are put back.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from reconciler import fs as _fs
from reconciler.errors import ConfigError, ResourceError, SourceError
from reconciler.resources._path import PathResource
from reconciler.resources.base import Attr, Change, Context, register
from reconciler.source.git import FetchTimeout, check_url, git_process, redact, shown_url

TIMEOUT = 600.0  # one git command, a fetch included
SHA = re.compile(r"[0-9a-f]{40}\Z")
REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+-]*\Z")
MAX_LISTED = 10  # files with local changes a report names
Kind = Literal["branch", "tag", "commit"]


class Target:
    """What a revision names: a commit, and the branch or tag it was found as."""

    def __init__(self, commit: str, kind: Kind, name: str) -> None:
        self.commit, self.kind, self.name = commit, kind, name


@register
class Git(PathResource):
    type = "git"
    inline = False  # network and git processes: the engine's pool, not its loop
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", choices=("present", "latest", "absent")),
        "source": Attr("str", doc="the repository's URL (https, ssh, git, file)"),
        "revision": Attr("str", doc="a branch, a tag or a full commit id; default: the remote's"),
        "user": Attr("str", doc="the owner of the checkout (its files are chowned to it)"),
        "submodules": Attr("bool", default=False, doc="check out submodules too"),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems = super().validate(title, attrs)
        if attrs.get("ensure", "present") != "absent":
            source = attrs.get("source")
            if not isinstance(source, str) or not source:
                problems.append(("source", "required unless ensure is absent"))
            else:
                try:
                    check_url(source)
                except ConfigError as exc:
                    problems.append(("source", str(exc)))
        revision = attrs.get("revision")
        if revision is not None:
            text = str(revision)
            if not REVISION.match(text) or ".." in text or text.endswith((".lock", "/", ".")):
                problems.append(
                    ("revision", f"{text!r} is not a branch, a tag or a full commit id")
                )
        user = attrs.get("user")
        if user is not None and not re.fullmatch(r"[a-z_][a-z0-9_.-]*\$?|[0-9]+", str(user)):
            problems.append(("user", f"{user!r} is not a user name"))
        return problems

    @property
    def source(self) -> str:
        return str(self.attrs.get("source") or "")

    def autorequire(self) -> list[str]:
        user = self.attrs.get("user")
        return [*super().autorequire(), *([f"user:{user}"] if user else [])]

    def managed_paths(self) -> list[str]:
        return []  # the checkout's files change by git itself; not watched one by one

    # -- git ---------------------------------------------------------------------------------

    def _git(self, args: list[str], host: Path | None, config: list[str] | None = None) -> str:
        """Hardened git on the checkout at ``host`` (its .git and work tree named), or none."""
        git_dir = host / ".git" if host is not None else None
        sub = args[0]
        if host is not None:
            # In the work tree (git submodule needs it), with the work tree named: a
            # core.worktree in the checkout's configuration cannot move it.
            # --no-optional-locks: a check (git status) rewrites no index, which would then be
            # root's in a checkout given to a user.
            args = ["-C", str(host), f"--work-tree={host}", "--no-optional-locks", *args]
            # Our own checkout, whoever owns it (user:): git may run in it, hardened. Its links
            # are links: git never writes through a link inside its work tree.
            config = [f"safe.directory={host}", "core.symlinks=true", *(config or [])]
        try:
            done = git_process(args, git_dir, TIMEOUT, config or ())
        except FetchTimeout:
            raise ResourceError(f"{self.title}: git timed out after {TIMEOUT:g}s") from None
        except SourceError as exc:
            raise ResourceError(f"{self.title}: {exc}") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise ResourceError(
                f"{self.title}: git {sub} failed: {redact(err[-1]) if err else done.returncode}"
            )
        return done.stdout.decode(errors="replace")

    def _remote(self, revision: str | None) -> Target:
        """What the revision names on the remote now: ls-remote, nothing fetched."""
        url = self.source
        if revision is not None and SHA.match(revision):
            return Target(revision, "commit", revision)
        if revision is None:
            out = self._git(["ls-remote", "--symref", "--", url, "HEAD"], None)
            for line in out.splitlines():
                if line.startswith("ref: ") and line.endswith("\tHEAD"):
                    revision = line[5:].split("\t")[0].removeprefix("refs/heads/")
            if revision is None:
                raise ResourceError(f"{self.title}: {shown_url(url)} has no default branch")
        refs: dict[str, str] = {}
        wanted = [f"refs/heads/{revision}", f"refs/tags/{revision}", f"refs/tags/{revision}^{{}}"]
        for line in self._git(["ls-remote", "--", url, *wanted], None).splitlines():
            sha, _, name = line.partition("\t")
            refs[name] = sha
        if wanted[0] in refs:
            return Target(refs[wanted[0]], "branch", revision)
        tag = refs.get(wanted[2]) or refs.get(wanted[1])
        if tag is not None:
            return Target(tag, "tag", revision)
        raise ResourceError(
            f"{self.title}: {shown_url(url)} has no branch or tag named {revision!r}"
        )

    # -- check and apply ---------------------------------------------------------------------

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        place, st = self.place(ctx)
        host = place.host
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise ResourceError(f"{self.title} exists and is not a directory")
        checkout = st is not None and self._is_checkout(place)
        if self.attrs.get("ensure") == "absent":
            if st is None:
                return []
            if not checkout:
                raise ResourceError(f"{self.title} is not a git checkout; not removed")
            if apply:
                place.rmtree()
                ctx.sync_dir(host.parent)
            return [Change("ensure", "present", "absent")]
        if st is not None and not checkout and place.listdir():
            raise ResourceError(f"{self.title} exists, is not empty and is not a git checkout")
        revision = self.attrs.get("revision")
        revision = str(revision) if revision is not None else None
        changes: list[Change] = []
        current = self._head(host) if checkout else None
        branch = self._branch(host) if checkout else None
        if (
            checkout
            and current is not None
            and self.attrs.get("ensure") == "present"
            and revision is not None
            and not SHA.match(revision)
            and branch == revision
        ):
            target = Target(current, "branch", revision)  # present: a branch is not followed
        elif current is not None and revision is not None and current == revision:
            target = Target(current, "commit", revision)
        else:
            target = self._remote(revision)
        if current != target.commit:
            changes.append(Change("revision", current or "absent", target.commit))
        elif target.kind == "branch" and branch != target.name:
            changes.append(Change("branch", branch or "(detached)", target.name))
        if checkout:
            url = self._git(["config", "--get", "remote.origin.url"], host).strip() or None
            if url != self.source:
                changes.append(Change("source", shown_url(url or "none"), shown_url(self.source)))
            modified = self._modified(host)
            if modified:
                shown = ", ".join(modified[:MAX_LISTED])
                more = (
                    f" and {len(modified) - MAX_LISTED} more" if len(modified) > MAX_LISTED else ""
                )
                changes.append(
                    Change("local changes", f"{len(modified)} modified: {shown}{more}", "reset")
                )
            if self.attrs.get("submodules") and current == target.commit:
                stale = self._stale_submodules(host)
                if stale:
                    changes.append(Change("submodules", ", ".join(stale), "checked out"))
        uid = _fs.resolve_uid(ctx.root, str(self.attrs["user"])) if self.attrs.get("user") else None
        if uid is not None and st is not None and st.st_uid != uid:
            changes.append(Change("owner", str(st.st_uid), str(self.attrs["user"])))
        if not apply or not changes:
            return changes
        if st is None:
            try:
                place.mkdir(0o755)
            except FileNotFoundError:
                raise ResourceError(f"{self.title}: the parent directory does not exist") from None
            ctx.sync_dir(host.parent)
        if not checkout:
            self._git(["init", "--quiet", "--", str(host)], None)
            self._git(["config", "remote.origin.url", self.source], host)
        elif any(c.property == "source" for c in changes):
            self._git(["config", "remote.origin.url", self.source], host)
        self._move(host, target)
        if self.attrs.get("submodules"):
            self._git(["submodule", "update", "--init", "--recursive", "--force"], host)
        if uid is not None:
            _chown_tree(host, uid)
        return changes

    def _move(self, host: Path, target: Target) -> None:
        """Fetch the commit when it is not here, and check it out over any local change."""
        try:
            self._git(["cat-file", "-e", f"{target.commit}^{{commit}}"], host)
        except ResourceError:
            refspec = {
                "branch": f"+refs/heads/{target.name}:refs/remotes/origin/{target.name}",
                "tag": f"+refs/tags/{target.name}:refs/tags/{target.name}",
                "commit": target.commit,
            }[target.kind]
            self._git(
                ["fetch", "--quiet", "--no-tags", "--no-recurse-submodules", "--", self.source,
                 refspec],
                host,
            )  # fmt: skip
        if target.kind == "branch":
            self._git(["checkout", "--quiet", "--force", "-B", target.name, target.commit], host)
        else:
            self._git(["checkout", "--quiet", "--force", "--detach", target.commit], host)

    def _is_checkout(self, place: _fs.Place) -> bool:
        try:
            inner = place.child(".git").lstat()
        except OSError:
            return False
        return inner is not None and stat.S_ISDIR(inner.st_mode)

    def _head(self, host: Path) -> str | None:
        try:
            return self._git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], host).strip()
        except ResourceError:
            return None  # a repository without a commit yet

    def _branch(self, host: Path) -> str | None:
        try:
            return self._git(["symbolic-ref", "--quiet", "--short", "HEAD"], host).strip()
        except ResourceError:
            return None  # detached

    def _stale_submodules(self, host: Path) -> list[str]:
        """Submodules not checked out, or not at the commit the checkout records."""
        out = self._git(["submodule", "status", "--recursive"], host)
        return [line[1:].split()[1] for line in out.splitlines() if line[:1] in ("-", "+", "U")]

    def _modified(self, host: Path) -> list[str]:
        out = self._git(["status", "--porcelain", "--untracked-files=no", "-z"], host)
        return [entry[3:] for entry in out.split("\0") if len(entry) > 3]


def _chown_tree(host: Path, uid: int) -> None:
    """Give the checkout to ``uid`` (and its primary group left as git made it), never
    following a symlink."""
    for dirpath, dirnames, filenames in os.walk(host):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), uid, -1)
    os.lchown(host, uid, -1)
