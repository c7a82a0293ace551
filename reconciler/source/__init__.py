"""Snapshots of the control repo: one revision's files, read without running anything.

A ``Snapshot`` is either a directory's working tree (for authors trying a change) or a commit of
a git repository, read straight from its objects: no checkout, no hooks, no submodules, and no
symlink followed out of the tree. Nothing under a directory named ``.git`` (in any case) is read:
in a working tree it is git's own directory, and a commit whose tree holds such a path (which
git's index refuses, but plumbing can write) is refused as a whole, as git refuses to check it
out. Reading is bounded: a file of at most MAX_FILE_BYTES, a tree of at most MAX_FILES entries.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, Protocol

from reconciler.errors import Location, ModelError, SourceError

MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_FILES = 100_000  # files and directories of one commit's tree
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


def in_git_dir(path: str) -> bool:
    """Whether a repo-relative path has a ``.git`` component, in any case (as git refuses to
    check out: on a case-insensitive file system ``.GIT`` is ``.git``)."""
    return any(part.casefold() == ".git" for part in path.split("/"))


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
        if in_git_dir(rel):
            raise ModelError.one("is inside a .git directory; not read", Location(rel))
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
            raise ModelError.one(
                f"file is larger than {MAX_FILE_BYTES} bytes; not read", Location(path), "parse"
            )
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
            dirnames[:] = [d for d in dirnames if d.casefold() != ".git"]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            found.extend(n if rel == "." else f"{rel}/{n}" for n in filenames)
        return sorted(found)


def _work_tree_head(root: Path) -> tuple[str | None, str | None]:
    """The commit and branch a work tree's HEAD names, read from .git without running git.

    A HEAD (or the ref it names) that points outside the repository is refused, not followed.
    """
    git_dir = root / ".git"
    if not git_dir.is_dir():
        return None, None
    check_inside(git_dir, "HEAD")
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None, None
    if not head.startswith("ref: "):
        return head or None, None
    ref = head[5:]
    branch = ref.removeprefix("refs/heads/")
    check_inside(git_dir, ref)
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


def check_inside(git_dir: Path, name: str) -> None:
    """Refuse a ref (``HEAD``, or what a symbolic ref names) that is not a plain name under
    ``refs/``, or whose file is a link out of the repository: git would follow it there."""
    plain = name == "HEAD" or (
        name.startswith("refs/")
        and "\0" not in name
        and all(part not in ("", ".", "..") for part in name.split("/"))
    )
    path = git_dir / name
    top = Path(os.path.realpath(git_dir))
    real = Path(os.path.realpath(path))
    if not plain or (os.path.lexists(path) and top not in real.parents):
        raise SourceError(
            f"{path}: {'HEAD' if name == 'HEAD' else f'the ref {name!r}'} points outside the "
            f"repository {git_dir}; refused"
        )


class GitSnapshot:
    """A commit of a git repository, read from its objects.

    Every object of the commit's tree must be in the repository (``check_commit``): a damaged
    repository fails here, as a SourceError, rather than halfway through a run.
    """

    def __init__(
        self,
        git_dir: Path,
        commit: str,
        branch: str | None,
        description: str,
        timeout: float = 60.0,
    ) -> None:
        import git

        from reconciler.source.git import check_commit

        self.branch = branch
        self.description = description
        self.git_dir = git_dir
        try:
            check_commit(git_dir, commit, timeout)
        except SourceError as exc:
            raise SourceError(f"{description}: {exc}") from None
        try:
            self._repo = git.Repo(git_dir)
        except (git.exc.GitError, git.exc.ODBError, ValueError, OSError):
            raise SourceError(f"{description}: cannot read the repository {git_dir}") from None
        self._entries: dict[str, tuple[int, Any]] = {}
        try:
            self._commit = self._repo.commit(commit)
            self.revision: str | None = str(self._commit.hexsha)
            for seen, item in enumerate(self._commit.tree.traverse(), start=1):
                if seen > MAX_FILES:
                    raise _refused(f"it has more than {MAX_FILES} files and directories")
                blob: Any = item
                path = str(blob.path)
                if in_git_dir(path):
                    raise _refused(f"{path!r} is inside a .git directory")
                if getattr(blob, "type", None) == "blob":
                    self._entries[path] = (int(blob.mode), blob)
        except ValueError as exc:
            # Every object is there (checked above): GitPython refused what a tree holds, such
            # as a name that git would take for its own directory on some file system.
            self._repo.close()
            raise _refused(str(exc)) from None
        except (git.exc.GitError, git.exc.ODBError, OSError):
            self._repo.close()
            raise SourceError(f"{description}: cannot read commit {commit!r}") from None
        except ModelError:
            self._repo.close()
            raise

    def close(self) -> None:
        self._repo.close()

    def read(self, path: str) -> bytes:
        rel = clean_relpath(path)
        for _ in range(MAX_LINK_HOPS):
            entry = self._entries.get(rel)
            if entry is None:
                raise FileNotFoundError(rel)
            mode, blob = entry
            data = self._blob_data(rel, blob)
            if mode & 0o170000 != 0o120000:
                return data
            link = data.decode(errors="replace")
            target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
            if target.startswith("../") or target == ".." or data.startswith(b"/"):
                raise ModelError.one(
                    "is a symlink that leaves the control repo; not read", Location(rel)
                )
            rel = target
        raise ModelError.one("too many levels of symlinks", Location(path))

    def _blob_data(self, rel: str, blob: Any) -> bytes:
        """A blob's bytes, its size checked before any is read."""
        import git

        try:
            size = int(blob.size)
            if size > MAX_FILE_BYTES:
                raise ModelError.one(
                    f"file is larger than {MAX_FILE_BYTES} bytes ({size} bytes); not read",
                    Location(rel),
                    "parse",
                )
            data: bytes = blob.data_stream.read()
        except (git.exc.GitError, git.exc.ODBError, ValueError, OSError):
            raise SourceError(f"{self.description}: cannot read {rel}") from None
        return data

    def exists(self, path: str) -> bool:
        return clean_relpath(path) in self._entries

    def files(self, directory: str = "") -> list[str]:
        prefix = clean_relpath(directory) + "/" if directory else ""
        return sorted(p for p in self._entries if p.startswith(prefix))


def _refused(why: str) -> ModelError:
    return ModelError.one(f"the commit's tree is refused: {why}", Location(), "parse")


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
        return GitSnapshot(git_dir, commit, branch, f"{repo}@{ref or 'HEAD'}", timeout)
    mirror = gitsource.Mirror(repo, state_dir / "source", timeout)
    commit, branch = mirror.fetch(ref)
    shown = gitsource.shown_url(repo)
    return GitSnapshot(mirror.git_dir, commit, branch, f"{shown}@{branch or commit}", timeout)
