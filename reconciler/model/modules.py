"""Modules: other git repositories the control repo names in ``modules.yaml``, each pinned.

``modules.yaml`` is ``modules: {NAME: {url: URL, commit: SHA, ref: BRANCH_OR_TAG}}``, or
``{url: URL, tag: TAG, commit: SHA}`` for a module pinned by a (signed) tag, the commit being the
tag's lock. A module is fetched through the same hardened ``Mirror`` as the control repo (under
``<state_dir>/modules/<NAME>``), verified with the same rules when ``source.verify`` is on (the
tag's signature for a tag pin, else the commit's), and read from git objects at its pinned
commit only: it runs nothing, and it changes only with a commit to ``modules.yaml``.

The run reads one ``ModularSnapshot``: the control repo, with each module's tree seen under
``modules/<NAME>/``. ``NAME/PROFILE`` is ``modules/NAME/profiles/PROFILE.yaml``, ``NAME/TYPE``
is ``modules/NAME/types/TYPE.yaml``; a module's profiles and types read its own ``files/`` and
``templates/`` and name its own types and profiles without the prefix.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.errors import (
    ConfigError,
    Location,
    ModelError,
    Problem,
    SignatureError,
    SourceError,
)
from reconciler.model.repo import NAME, expect_map, read_yaml, unknown_keys
from reconciler.model.yamlload import LocMap
from reconciler.source import GitSnapshot, Snapshot, clean_relpath
from reconciler.source.git import TAG_NAME, Mirror, check_url

MODULES_FILE = "modules.yaml"
MOUNT = "modules"  # where a module's tree is seen in the run's snapshot
SHA = re.compile(r"[0-9a-f]{40}\Z")
MODULE_KEYS = frozenset({"url", "commit", "ref", "tag"})


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    url: str
    commit: str
    ref: str | None  # what ``modules update`` follows; None: the remote's default branch
    where: Location
    tag: str | None = None  # the tag the module is pinned by; ``commit`` is its lock
    tag_where: Location | None = None  # the line of ``tag:``

    @property
    def pin_where(self) -> Location:
        """Where errors about fetching the pin point: the ``tag:`` line, else the entry."""
        return self.tag_where or self.where


def read_modules(snapshot: Snapshot) -> tuple[list[ModuleSpec], list[Problem]]:
    """The modules ``modules.yaml`` pins (none without the file) and what is wrong with it."""
    if not snapshot.exists(MODULES_FILE):
        return [], []
    try:
        raw = expect_map(read_yaml(snapshot, MODULES_FILE), Location(MODULES_FILE), "modules.yaml")
    except ModelError as exc:
        return [], exc.problems
    problems = unknown_keys(raw, {"modules"}, MODULES_FILE, "modules.yaml")
    given = raw.get("modules")
    if given is None:
        return [], problems
    if not isinstance(given, LocMap):
        where = Location(MODULES_FILE, raw.line_of("modules"), "modules")
        return [], [*problems, Problem("must be a mapping of module names to {url, commit}", where)]
    specs: list[ModuleSpec] = []
    for name, entry in given.items():
        where = Location(MODULES_FILE, given.line_of(name), f"modules.{name}")
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(Problem(f"{name!r} is not a module name ([a-z0-9][a-z0-9_-]*)", where))
            continue
        if not isinstance(entry, LocMap):
            problems.append(Problem("must be a mapping {url: URL, commit: SHA}", where))
            continue
        problems += unknown_keys(entry, MODULE_KEYS, MODULES_FILE, f"module {name!r}")

        def at(key: str, name: str = name, entry: LocMap = entry) -> Location:
            return Location(MODULES_FILE, entry.line_of(key), f"modules.{name}.{key}")

        url, commit, ref = entry.get("url"), entry.get("commit"), entry.get("ref")
        tag = entry.get("tag")
        bad = len(problems)
        if not isinstance(url, str) or not url:
            problems.append(Problem("must be the module's git URL", at("url")))
        else:
            try:  # the URL is checked before anything fetches it: a helper (ext::) runs nothing
                check_url(url)
            except ConfigError as exc:
                problems.append(Problem(str(exc).replace("source url", "url", 1), at("url")))
        if not isinstance(commit, str) or not SHA.match(commit):
            problems.append(
                Problem(
                    "must be a full commit id (40 hex digits); `reconciler modules update` "
                    "writes it",
                    at("commit"),
                )
            )
        if ref is not None and (not isinstance(ref, str) or not ref or ref.startswith("-")):
            problems.append(Problem("must be a branch or tag name", at("ref")))
        if tag is not None and (not isinstance(tag, str) or not TAG_NAME.match(tag)):
            problems.append(Problem("must be a tag name (v1.2.0)", at("tag")))
        if tag is not None and "ref" in entry:
            problems.append(
                Problem(
                    "a module pinned by `tag:` follows that tag: give `tag:` or `ref:`, not both",
                    at("tag"),
                )
            )
        if len(problems) == bad:
            assert isinstance(url, str) and isinstance(commit, str)
            specs.append(
                ModuleSpec(
                    name,
                    url,
                    commit,
                    ref if isinstance(ref, str) else None,
                    where,
                    tag if isinstance(tag, str) else None,
                    at("tag") if tag is not None else None,
                )
            )
    return specs, [Problem(p.message, p.where, "validate") for p in problems]


def load_modules(snapshot: Snapshot) -> list[ModuleSpec]:
    specs, problems = read_modules(snapshot)
    if problems:
        raise ModelError(problems, "validate")
    return specs


def fetch_module(
    spec: ModuleSpec, state_dir: Path, timeout: float, verify: object | None = None
) -> GitSnapshot:
    """The module at its pinned commit, fetched into its mirror (unless already there) and,
    with ``verify`` (a ``source.verify.Verify``), verified before any of its files is read:
    the tag's signature for a module pinned by a tag, else the commit's."""
    from reconciler.source import git as gitsource
    from reconciler.source.verify import Verify, verify_commit, verify_tag

    tag_object: str | None = None
    try:
        mirror = gitsource.Mirror(spec.url, state_dir / MOUNT / spec.name, timeout)
        try:
            mirror.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SourceError(
                f"cannot make the module's mirror {mirror.directory}: {exc.strerror} "
                "(give --state-dir)"
            ) from None
        if spec.tag is not None:
            tag_object = _fetch_tag(spec, mirror, timeout)
        elif not (gitsource.is_bare(mirror.git_dir) and mirror.has_commit(spec.commit)):
            mirror.fetch(spec.commit)
    except SourceError as exc:
        why = str(exc)
        if "not our ref" in why:  # upload-pack's word for a commit no ref of it reaches
            why = (
                f"the pinned commit {spec.commit} is not in {gitsource.shown_url(spec.url)}: "
                "no branch or tag there leads to it"
            )
        raise SourceError(f"module {spec.name!r} ({spec.pin_where}): {why}") from None
    if isinstance(verify, Verify):
        try:
            if spec.tag is not None and tag_object is not None:
                verify_tag(mirror.git_dir, tag_object, spec.tag, verify, timeout)
            else:
                verify_commit(mirror.git_dir, spec.commit, verify, timeout)
        except SignatureError as exc:
            message = str(exc).removeprefix(f"commit {spec.commit}: ")
            raise SignatureError(
                spec.commit, f"module {spec.name!r} ({spec.pin_where}): {message}", exc.why
            ) from None
    shown = gitsource.shown_url(spec.url)
    at = f"{spec.tag} ({spec.commit})" if spec.tag is not None else spec.commit
    return GitSnapshot(
        mirror.git_dir, spec.commit, None, f"module {spec.name} {shown}@{at}", timeout
    )


def _fetch_tag(spec: ModuleSpec, mirror: Mirror, timeout: float) -> str:
    """The object of the tag ``spec`` is pinned by, in the module's mirror and leading to the
    locked commit. The remote is asked only when the mirror lacks that: a tag moved on the remote
    afterwards changes nothing here, and one found moved is refused, not fetched over the tag
    the mirror holds, so that the last good pin still reads."""
    from reconciler.source import git as gitsource

    assert spec.tag is not None
    have = mirror.local_tag(spec.tag)
    if have is not None and have[1] == spec.commit and mirror.has_commit(spec.commit):
        return have[0]
    shown = gitsource.shown_url(spec.url)
    remote = gitsource.remote_tag(spec.url, spec.tag, timeout)
    if remote is None:
        raise SourceError(f"{shown} has no tag {spec.tag!r}")
    if remote[1] != spec.commit:
        raise SourceError(_moved(spec, shown, remote[1]))
    have = mirror.fetch_tag(spec.tag, spec.commit)
    if have is None or have[1] != spec.commit:  # it moved while it was fetched
        raise SourceError(_moved(spec, shown, have[1] if have else "nothing"))
    return have[0]


def _moved(spec: ModuleSpec, shown: str, now: str) -> str:
    return (
        f"the tag {spec.tag!r} of {shown} now leads to {now}, not to the locked commit "
        f"{spec.commit}: refused (a moved tag changes nothing until `reconciler modules update "
        f"{spec.name}` rewrites the lock and modules.yaml is committed)"
    )


@contextlib.contextmanager
def modules_for_run(
    snapshot: Snapshot,
    state_dir: Path,
    timeout: float,
    verify: object | None = None,
    scratch: bool = False,
) -> Iterator[Snapshot]:
    """``with_modules`` for one compile, the modules' repositories closed after it. ``scratch``
    (a plan on a node without a state directory): the mirrors go to a temporary directory,
    removed after, so that a plan writes nothing."""
    temp = Path(tempfile.mkdtemp(prefix="reconciler-modules-")) if scratch else None
    try:
        modular = with_modules(snapshot, temp or state_dir, timeout, verify)
        try:
            yield modular
        finally:
            if modular is not snapshot and isinstance(modular, ModularSnapshot):
                modular.close()
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


def with_modules(
    snapshot: Snapshot, state_dir: Path, timeout: float, verify: object | None = None
) -> Snapshot:
    """The run's snapshot: ``snapshot`` itself without ``modules.yaml``, else every module
    fetched, verified and seen under ``modules/<NAME>/``."""
    if isinstance(snapshot, ModularSnapshot):
        return snapshot
    specs = load_modules(snapshot)
    if not specs:
        return snapshot
    return ModularSnapshot(
        snapshot, {spec.name: fetch_module(spec, state_dir, timeout, verify) for spec in specs}
    )


class ModularSnapshot:
    """The control repo with each module's tree under ``modules/<NAME>/``.

    A path under ``modules/<NAME>/`` is read from that module's commit and from nothing else,
    so a module cannot reach the control repo or another module (its own snapshot refuses a
    symlink that leaves its tree)."""

    def __init__(self, control: Snapshot, modules: dict[str, GitSnapshot]) -> None:
        self.control = control
        self.modules = modules
        self.revision = control.revision
        self.branch = control.branch
        self.description = control.description

    def _route(self, path: str) -> tuple[Snapshot, str, str]:
        rel = clean_relpath(path)
        parts = rel.split("/", 2)
        if len(parts) == 3 and parts[0] == MOUNT and parts[1] in self.modules:
            return self.modules[parts[1]], parts[2], f"{MOUNT}/{parts[1]}/"
        return self.control, rel, ""

    def read(self, path: str) -> bytes:
        snapshot, rel, prefix = self._route(path)
        try:
            return snapshot.read(rel)
        except ModelError as exc:
            if not prefix:
                raise
            raise ModelError(
                [
                    Problem(
                        p.message, Location(prefix + (p.where.file or rel), p.where.line), p.stage
                    )
                    for p in exc.problems
                ]
            ) from None

    def exists(self, path: str) -> bool:
        snapshot, rel, _ = self._route(path)
        return snapshot.exists(rel)

    def files(self, directory: str = "") -> list[str]:
        rel = clean_relpath(directory) if directory else ""
        if rel in ("", MOUNT):
            mounted = [
                f"{MOUNT}/{name}/{path}"
                for name, module in sorted(self.modules.items())
                for path in module.files()
            ]
            own = [p for p in self.control.files(rel) if not p.startswith(f"{MOUNT}/")]
            return sorted(own + mounted)
        snapshot, inner, prefix = self._route(rel + "/x")
        if not prefix:
            return self.control.files(rel)
        inner = inner.removesuffix("x").rstrip("/")
        return [prefix + p for p in snapshot.files(inner)]

    def close(self) -> None:
        for module in self.modules.values():
            module.close()


def module_of(file: str | None) -> str | None:
    """The module a file of the run's snapshot belongs to (None: the control repo's)."""
    if file is None or not file.startswith(f"{MOUNT}/"):
        return None
    parts = file.split("/", 2)
    return parts[1] if len(parts) == 3 else None


def localized(declaration: Any, file: str | None, types: Mapping[str, object]) -> Any:
    """A declaration of a module's file whose type is one of the module's own, written without
    the prefix (``- vhost: shop`` in module apache), with its type as ``apache/vhost``."""
    module = module_of(file)
    if module is None or not isinstance(declaration, LocMap):
        return declaration
    first = declaration.first
    own = f"{module}/{first}"
    if not isinstance(first, str) or "/" in first or own not in types:
        return declaration
    renamed = LocMap.empty(declaration.line)
    for key, value in declaration.items():
        renamed[own if key == first else key] = value
        renamed.lines[own if key == first else key] = declaration.line_of(key)
    renamed.first = own
    return renamed


# -- reconciler modules update ------------------------------------------------------------------


@dataclass(frozen=True)
class Updated:
    name: str
    old: str | None
    new: str
    ref: str  # what was resolved, as ls-remote named it
    moved: bool = False  # the module's tag led to another commit than its lock


def resolve_ref(url: str, ref: str | None, timeout: float) -> tuple[str, str]:
    """(commit, full ref name) of a branch or tag of the remote (its HEAD when None); a tag
    is resolved to the commit it points at."""
    from reconciler.source import git as gitsource

    gitsource.check_url(url)
    if ref is not None and SHA.match(ref):
        return ref, ref
    wanted = ["HEAD"] if ref is None else [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    if ref is not None:
        wanted.append(f"refs/tags/{ref}^{{}}")
    out = gitsource.run_git(["ls-remote", "--", url, *wanted], None, timeout)
    found: dict[str, str] = {}
    for line in out.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    for name in (wanted[0], *wanted[2:], *wanted[1:2]):  # a branch, else the tag's commit
        if name in found:
            return found[name], name.removesuffix("^{}")
    shown = gitsource.shown_url(url)
    raise SourceError(f"{shown}: no branch or tag {ref or 'HEAD'!r}")


def update_pins(
    repo: Path, names: list[str], timeout: float, tag: str | None = None
) -> list[Updated]:
    """Resolve each module's ``tag`` or ``ref`` (every module's when ``names`` is empty) and
    write the commits into ``repo``'s modules.yaml, editing only the ``commit:`` values, so
    comments and layout stay as they were. A module without ``commit:`` gets one after its
    ``url:`` line. ``tag`` pins the one module named to that tag: its ``tag:`` is written (in
    place of a ``ref:``), then its commit."""
    from reconciler.fs import atomic_write
    from reconciler.source import DirectorySnapshot
    from reconciler.source import git as gitsource

    snapshot = DirectorySnapshot(repo)
    if not snapshot.exists(MODULES_FILE):
        raise ModelError.one(f"no {MODULES_FILE} in {repo}", Location(MODULES_FILE))
    raw = expect_map(read_yaml(snapshot, MODULES_FILE), Location(MODULES_FILE), "modules.yaml")
    given = raw.get("modules")
    if not isinstance(given, LocMap):
        raise ModelError.one(
            "must be a mapping of module names to {url, commit}",
            Location(MODULES_FILE, raw.line_of("modules"), "modules"),
        )
    unknown = [n for n in names if n not in given]
    if unknown:
        raise ModelError.one(
            f"no module {unknown[0]!r} in {MODULES_FILE} (it has {', '.join(map(str, given))})",
            Location(MODULES_FILE, raw.line_of("modules"), "modules"),
        )
    if tag is not None and (len(names) != 1 or not TAG_NAME.match(tag)):
        raise ModelError.one(
            "--tag pins one module: name it (modules update NAME --tag v1.2.0)"
            if len(names) != 1
            else f"{tag!r} is not a tag name",
            Location(MODULES_FILE, raw.line_of("modules"), "modules"),
        )
    lines = snapshot.read(MODULES_FILE).decode("utf-8").splitlines(keepends=True)
    inserted: list[tuple[int, int, str]] = []  # (after line, order, text)
    done: list[Updated] = []
    for name, entry in given.items():
        if names and name not in names:
            continue
        where = Location(MODULES_FILE, given.line_of(name), f"modules.{name}")
        if not isinstance(entry, LocMap) or not isinstance(entry.get("url"), str):
            raise ModelError.one("must be a mapping {url: URL, commit: SHA}", where)

        def at(key: str, name: str = name, entry: LocMap = entry) -> Location:
            return Location(MODULES_FILE, entry.line_of(key), f"modules.{name}.{key}")

        ref, written = entry.get("ref"), entry.get("tag")
        if ref is not None and not isinstance(ref, str):
            raise ModelError.one("must be a branch or tag name", at("ref"))
        if written is not None and (not isinstance(written, str) or not TAG_NAME.match(written)):
            raise ModelError.one("must be a tag name (v1.2.0)", at("tag"))
        if written is not None and "ref" in entry:
            raise ModelError.one(
                "a module pinned by `tag:` follows that tag: give `tag:` or `ref:`, not both",
                at("tag"),
            )
        old = entry.get("commit")
        pinned = tag if tag is not None else written
        moved = False
        if pinned is not None:
            found = gitsource.remote_tag(entry["url"], pinned, timeout)
            if found is None:
                shown = gitsource.shown_url(entry["url"])
                raise SourceError(f"module {name!r} ({where}): {shown} has no tag {pinned!r}")
            commit, resolved = found[1], f"refs/tags/{pinned}"
            moved = pinned == written and isinstance(old, str) and old != commit
        else:
            commit, resolved = resolve_ref(entry["url"], ref, timeout)
        if tag is not None and tag != written:
            key = "tag" if "tag" in entry.lines else "ref" if "ref" in entry.lines else None
            if key is None:
                after = entry.line_of("url")
                indent = re.match(r"\s*", lines[after - 1])
                inserted.append((after, 0, f"{indent.group(0) if indent else ''}tag: {tag}\n"))
            else:
                index = entry.line_of(key) - 1
                pattern = re.compile(
                    rf"\b{key}(\s*:\s*)(['\"]?)" + re.escape(str(entry[key])) + r"\2"
                )
                if not pattern.search(lines[index]):
                    raise ModelError.one(
                        f"cannot find this {key}: to rewrite (write it on a line of its own)",
                        at(key),
                    )
                lines[index] = pattern.sub(lambda m: f"tag{m.group(1)}{tag}", lines[index], count=1)
        if isinstance(old, str) and "commit" in entry.lines:
            index = entry.line_of("commit") - 1
            value = re.compile(r"(\bcommit\s*:\s*)(['\"]?)" + re.escape(old) + r"\2")
            if not value.search(lines[index]):
                raise ModelError.one(
                    "cannot find this commit: to rewrite (write it on a line of its own)",
                    at("commit"),
                )
            lines[index] = value.sub(rf"\g<1>{commit}", lines[index], count=1)
        else:
            after = entry.line_of("url")
            indent = re.match(r"\s*", lines[after - 1])
            inserted.append((after, 1, f"{indent.group(0) if indent else ''}commit: {commit}\n"))
        done.append(
            Updated(str(name), old if isinstance(old, str) else None, commit, resolved, moved)
        )
    for after, _, line in sorted(inserted, reverse=True):
        lines.insert(after, line)
    text = "".join(lines)
    _check_rewritten(text, given, done, tag)
    atomic_write(repo / MODULES_FILE, text.encode())
    return done


def _check_rewritten(text: str, given: LocMap, done: list[Updated], tag: str | None) -> None:
    """The rewritten modules.yaml says what was meant, before it replaces the file: an entry
    written in a way the line edits cannot follow (a flow mapping on one line) is refused."""
    from reconciler.model.yamlload import load

    try:
        modules = load(text, MODULES_FILE).get("modules")
    except (ModelError, AttributeError):
        modules = None
    for updated in done:
        entry = modules.get(updated.name) if isinstance(modules, dict) else None
        ok = isinstance(entry, dict) and entry.get("commit") == updated.new
        if ok and tag is not None:
            assert isinstance(entry, dict)
            ok = entry.get("tag") == tag and "ref" not in entry
        if not ok:
            raise ModelError.one(
                "cannot rewrite this entry in place: write it as a block mapping, one key on a "
                "line (url:, tag: or ref:, commit:)",
                Location(MODULES_FILE, given.line_of(updated.name), f"modules.{updated.name}"),
            )
