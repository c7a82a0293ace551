"""The state directory: the run lock, the inventory of managed resources, and run reports.

Every file here is written atomically; a file that cannot be read back (truncated by a crash,
corrupted) is set aside with a warning and treated as missing, never a reason to stop.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.errors import LockHeld, StateDirUnsafe
from reconciler.fs import atomic_write
from reconciler.resources.base import Fingerprint

KEEP_REPORTS = 50
INVENTORY_VERSION = 1
# Temporaries of write_json and the parse cache (".tmp-<pid>") and of stage_write
# (".reconciler-tmp-<pid>-<n>"), with the pid of the process that wrote them.
_TEMPORARY = re.compile(r"\.(?:tmp|reconciler-tmp)-(\d+)(?:-\d+)?$")
_swept: set[Path] = set()


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, with the one atomic writer (reconciler.fs.atomic_write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, separators=(",", ":")).encode(), mode=0o600)


def read_json(path: Path, warn: Any = None) -> Any:
    """Read a JSON state file; a corrupted one is renamed ``*.corrupt`` and None returned."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        if warn is not None:
            warn(f"{path}: unreadable ({exc}); set aside as {aside.name}, starting afresh")
        return None


# What git and the parse cache read from the state directory: checked to the last file.
_CHECKED_DEEP = ("source", "cache")


def prepare_state_dir(state_dir: Path, create: bool = True) -> None:
    """Create the state directory, or refuse one that someone else could have written into.

    It holds the mirror git runs in, backups and caches: a directory owned by another user, or
    writable by group or others, could have been prepared by an attacker (CVE-2022-24765), and
    so could anything in it: the directory itself, every entry at its top, and everything below
    the mirror and the caches must belong to this user and be writable by nobody else. Nothing
    in it is used before this check. With ``create`` false, a missing directory is left missing.
    """
    if not create and not os.path.lexists(state_dir):
        return
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_owned(state_dir, os.stat(state_dir))
    with os.scandir(state_dir) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            _check_owned(Path(entry.path), st)
            if entry.name in _CHECKED_DEEP and entry.is_dir(follow_symlinks=False):
                _check_tree(Path(entry.path))


def _check_tree(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            _check_owned(path, st)
            if stat.S_ISLNK(st.st_mode):
                raise StateDirUnsafe(
                    f"{path}: refusing a symbolic link in the state directory's {top.name}/"
                )


def _check_owned(path: Path, st: os.stat_result) -> None:
    writable = 0 if stat.S_ISLNK(st.st_mode) else st.st_mode & 0o022
    if st.st_uid != os.geteuid() or writable:
        what = "a state directory" if stat.S_ISDIR(st.st_mode) else "a file in the state directory"
        raise StateDirUnsafe(
            f"{path}: refusing {what} owned by uid {st.st_uid} with mode "
            f"{st.st_mode & 0o7777:04o}; it must belong to uid {os.geteuid()} and not be "
            "writable by group or others"
        )


@contextlib.contextmanager
def run_lock(state_dir: Path) -> Iterator[None]:
    """Hold the state directory's lock for one run; LockHeld names the holder when taken."""
    prepare_state_dir(state_dir)
    path = state_dir / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockHeld(f"another run holds the lock {path} (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if state_dir not in _swept:  # what a killed run left can only predate this process
            remove_stray_temporaries(state_dir)
            _swept.add(state_dir)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def remove_stray_temporaries(state_dir: Path) -> int:
    """Remove the temporaries that processes killed while writing left in the state directory.

    Those of a live process (a daemon writing beside a one-off run) are left alone.
    """
    directories = [state_dir, state_dir / "reports", state_dir / "cache" / "yaml"]
    directories.append(state_dir / "backups" / "objects")  # a backup copied in, not yet named
    with contextlib.suppress(OSError):
        directories += sorted(p for p in (state_dir / "backups" / "objects").iterdir())
    removed = 0
    for directory in directories:
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                found = _TEMPORARY.search(entry.name)
                if found is None or not entry.is_file(follow_symlinks=False):
                    continue
                pid = int(found.group(1))
                if pid == os.getpid() or _alive(pid):
                    continue
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True


@dataclass
class InventoryItem:
    type: str
    title: str
    digest: str


@dataclass
class Inventory:
    """What the last good applied revision managed, and what the last run saw of its files."""

    revision: str | None = None
    resources: dict[str, InventoryItem] = field(default_factory=dict)
    fingerprints: dict[str, Fingerprint] = field(default_factory=dict)

    @classmethod
    def load(cls, state_dir: Path, warn: Any = None) -> Inventory:
        raw = read_json(state_dir / "inventory.json", warn)
        try:
            if not isinstance(raw, dict) or raw.get("version") != INVENTORY_VERSION:
                return cls()
            return cls(
                raw.get("revision"),
                {
                    rid: InventoryItem(item["type"], item["title"], item["digest"])
                    for rid, item in raw["resources"].items()
                },
                {p: Fingerprint.from_list(v) for p, v in raw.get("fingerprints", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            if warn is not None:
                warn(f"{state_dir / 'inventory.json'}: unreadable ({exc}); starting afresh")
            return cls()

    def save(self, state_dir: Path) -> None:
        write_json(
            state_dir / "inventory.json",
            {
                "version": INVENTORY_VERSION,
                "revision": self.revision,
                "resources": {
                    rid: {"type": i.type, "title": i.title, "digest": i.digest}
                    for rid, i in self.resources.items()
                },
                "fingerprints": {p: f.to_list() for p, f in self.fingerprints.items()},
            },
        )


class KeptInventory:
    """The inventory as this process last read or wrote it, with the file's identity then (a
    long-running agent's): read again only when another process replaced the file, and not
    written again when a run would write the same inventory (a run that changed nothing)."""

    def __init__(self) -> None:
        self._kept: tuple[tuple[int, int, int, int], Inventory] | None = None

    @staticmethod
    def _identity(state_dir: Path) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(state_dir / "inventory.json")
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def load(self, state_dir: Path, warn: Any = None) -> Inventory:
        identity = self._identity(state_dir)  # before the read: a write after it is seen next
        kept = self._kept
        if kept is not None and identity is not None and kept[0] == identity:
            return kept[1]
        inventory = Inventory.load(state_dir, warn)
        self._kept = (identity, inventory) if identity is not None else None
        return inventory

    def save(self, inventory: Inventory, state_dir: Path) -> None:
        kept = self._kept
        if (
            kept is not None
            and kept[0] == self._identity(state_dir)
            and kept[1].revision == inventory.revision
            and kept[1].resources == inventory.resources
            and kept[1].fingerprints == inventory.fingerprints
        ):
            return
        inventory.save(state_dir)
        identity = self._identity(state_dir)
        self._kept = (identity, inventory) if identity is not None else None


@dataclass(frozen=True)
class Applied:
    """The last revision a run applied (or checked, in noop), from a source: the point a
    branch must keep descending from. The CLI and the daemon keep it here, in one file."""

    revision: str
    branch: str | None
    source: str | None  # the repository, as shown (credentials hidden); None: unknown


# The name it had when only the daemon kept it: state directories keep working.
APPLIED_FILE = "daemon.json"


def load_applied(state_dir: Path, warn: Any = None) -> Applied | None:
    raw = read_json(state_dir / APPLIED_FILE, warn)
    if not isinstance(raw, dict) or not isinstance(raw.get("revision"), str):
        return None
    branch, source = raw.get("branch"), raw.get("source")
    return Applied(
        raw["revision"],
        branch if isinstance(branch, str) else None,
        source if isinstance(source, str) else None,
    )


def save_applied(state_dir: Path, applied: Applied) -> None:
    write_json(
        state_dir / APPLIED_FILE,
        {"revision": applied.revision, "branch": applied.branch, "source": applied.source},
    )


def save_report(state_dir: Path, report: dict[str, Any]) -> Path:
    """Keep the report and the newest KEEP_REPORTS before it."""
    reports = state_dir / "reports"
    # Nanoseconds in the name: reports of runs within one second still sort in run order.
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 10**9)) + f".{now % 10**9:09d}Z"
    path = reports / f"{stamp}-{report.get('run_id', 'run')}.json"
    write_json(path, report)
    old = sorted(p for p in reports.glob("*.json"))
    for stale in old[:-KEEP_REPORTS]:
        with contextlib.suppress(OSError):
            stale.unlink()
    return path


def last_report(
    state_dir: Path, warn: Any = None, converged: bool = False
) -> dict[str, Any] | None:
    """The newest readable report, or None. ``converged``: the newest of a run that got as far
    as checking resources (not one that stopped at the fetch, the signature or the compile)."""
    for path in sorted((state_dir / "reports").glob("*.json"), reverse=True):
        data = read_json(path, warn)
        if isinstance(data, dict) and (not converged or stopped_early(data) is False):
            return data
    return None


def stopped_early(report: dict[str, Any]) -> bool:
    """A report of a run that did not get to its resources: a fetch, a signature, a rewind or a
    compile refused it, and its only content is why."""
    return not report.get("resources") and not report.get("role") and bool(report.get("errors"))
