"""Snapshots of the control repo: one revision's files, read without running anything.

A ``Snapshot`` is either a directory's working tree (for authors trying a change) or a commit of
a git repository, read straight from its objects: no checkout, no hooks, no submodules, and no
symlink followed out of the tree.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Protocol

from reconciler.errors import Location, ModelError, SourceError

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_LINK_HOPS = 8


class Snapshot(Protocol):
    """One revision of the control repo."""

    revision: str | None  # the commit, or None for a working tree with no commit
    branch: str | None
    description: str  # where it came from, for messages

    def read(self, path: str) -> bytes:
        """A file's bytes. FileNotFoundError when absent; ModelError when refused."""
        ...

    def exists(self, path: str) -> bool: ...

    def files(self, directory: str = "") -> list[str]:
        """Every file below ``directory`` (repo-relative, '/'-separated), sorted."""
        ...


def clean_relpath(path: str, where: Location | None = None) -> str:
    """A repo-relative path with no ``..``, no absolute start and no empty parts."""
    norm = posixpath.normpath(path) if path else ""
    if (
        not path
        or "\0" in path
        or path.startswith("/")
        or norm == ".."
        or norm.startswith("../")
        or norm == "."
    ):
        raise ModelError.one(
            f"path {path!r} must stay inside the control repo", where or Location()
        )
    return norm


class DirectorySnapshot:
    """The files of a directory as they are now, committed or not."""

    branch: str | None = None

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise SourceError(f"{root}: not a directory")
        self.root = root.resolve()
        self.description = str(root)
        self.revision, self.branch = _work_tree_head(self.root)

    def _host_path(self, path: str) -> Path:
        rel = clean_relpath(path)
        host = self.root / rel
        real = Path(os.path.realpath(host))
        if real != self.root and self.root not in real.parents:
            raise ModelError.one(
                "is a symlink that leaves the control repo; not read", Location(rel)
            )
        return real

    def read(self, path: str) -> bytes:
        host = self._host_path(path)
        with open(host, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ModelError.one(f"file is larger than {MAX_FILE_BYTES} bytes", Location(path))
        return data

    def exists(self, path: str) -> bool:
        try:
            return self._host_path(path).is_file()
        except ModelError:
            return True  # present, and reading it will say why it is refused

    def files(self, directory: str = "") -> list[str]:
        base = self.root / clean_relpath(directory) if directory else self.root
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            found.extend(n if rel == "." else f"{rel}/{n}" for n in filenames)
        return sorted(found)


def _work_tree_head(root: Path) -> tuple[str | None, str | None]:
    """The commit and branch a work tree's HEAD names, read from .git without running git."""
    git_dir = root / ".git"
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None, None
    if not head.startswith("ref: "):
        return head or None, None
    ref = head[5:]
    branch = ref.removeprefix("refs/heads/")
    try:
        return (git_dir / ref).read_text().strip(), branch
    except OSError:
        pass
    try:
        for line in (git_dir / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha, branch
    except OSError:
        pass
    return None, branch


class GitSnapshot:
    """A commit of a git repository, read from its objects."""

    def __init__(self, git_dir: Path, commit: str, branch: str | None, description: str) -> None:
        import git

        self.branch = branch
        self.description = description
        try:
            self._repo = git.Repo(git_dir)
            self._commit = self._repo.commit(commit)
        except (git.exc.GitError, ValueError, OSError) as exc:  # noqa: F841
            raise SourceError(f"{description}: cannot read commit {commit!r}") from None
        self.revision: str | None = str(self._commit.hexsha)
        self._entries: dict[str, tuple[int, Any]] = {}
        for item in self._commit.tree.traverse():
            blob: Any = item
            if getattr(blob, "type", None) == "blob":
                self._entries[str(blob.path)] = (int(blob.mode), blob)

    def close(self) -> None:
        self._repo.close()

    def read(self, path: str) -> bytes:
        rel = clean_relpath(path)
        for _ in range(MAX_LINK_HOPS):
            entry = self._entries.get(rel)
            if entry is None:
                raise FileNotFoundError(rel)
            mode, blob = entry
            size = blob.size
            if size > MAX_FILE_BYTES:
                raise ModelError.one(f"file is larger than {MAX_FILE_BYTES} bytes", Location(rel))
            data: bytes = blob.data_stream.read()
            if mode & 0o170000 != 0o120000:
                return data
            target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), data.decode()))
            if target.startswith("../") or target == ".." or data.startswith(b"/"):
                raise ModelError.one(
                    "is a symlink that leaves the control repo; not read", Location(rel)
                )
            rel = target
        raise ModelError.one("too many levels of symlinks", Location(path))

    def exists(self, path: str) -> bool:
        return clean_relpath(path) in self._entries

    def files(self, directory: str = "") -> list[str]:
        prefix = clean_relpath(directory) + "/" if directory else ""
        return sorted(p for p in self._entries if p.startswith(prefix))


def is_git_url(repo: str) -> bool:
    """Whether ``--repo`` names a remote (or something that pretends to be one)."""
    return (
        "://" in repo
        or "::" in repo
        or repo.startswith("-")
        or (":" in repo and "@" in repo.split(":", 1)[0])
    )


def open_snapshot(repo: str, ref: str | None, state_dir: Path, timeout: float = 60.0) -> Snapshot:
    """The snapshot ``--repo``/``--ref`` name.

    A local directory without ``--ref`` is read as its working tree. A URL, a bare repository,
    or a directory with ``--ref`` is read from git at that commit (a URL is fetched first into a
    mirror under the state directory).
    """
    from reconciler.source import git as gitsource

    path = Path(repo)
    if not is_git_url(repo):
        if not path.exists():
            raise SourceError(f"{repo}: no such directory")
        if ref is None and not gitsource.is_bare(path):
            return DirectorySnapshot(path)
        git_dir = gitsource.git_dir_of(path)
        commit, branch = gitsource.resolve_local(git_dir, ref, timeout)
        return GitSnapshot(git_dir, commit, branch, f"{repo}@{ref or 'HEAD'}")
    mirror = gitsource.Mirror(repo, state_dir / "source", timeout)
    commit, branch = mirror.fetch(ref)
    return GitSnapshot(mirror.git_dir, commit, branch, f"{repo}@{branch or commit}")
