"""The pip provider of ``package``: Python packages pinned in a named virtual environment.

The packages of a run that share a virtualenv (and an index) are checked with one ``pip list``
and installed with ONE ``pip install`` (``name``, ``name==version``), their removals with one
``pip uninstall`` before it; pip resolves them together. A virtualenv that does not exist is made
with ``python3 -m venv`` first. A requirement pip finds no distribution for fails alone: it is
taken out and the transaction runs again without it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.errors import ReconcilerError, ResourceError
from reconciler.fs import Root
from reconciler.resources.base import Change, Context, Resource

# PEP 508 names: letters, digits, and . _ - inside; nothing that pip could read as an option.
NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\Z")
# PEP 440 public versions, with a local part.
VERSION = re.compile(
    r"(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?"
    r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?\Z",
    re.IGNORECASE,
)
URL = re.compile(r"https?://[!-~]+\Z")  # printable, no spaces
CREDENTIALS = re.compile(r"https?://[^/]*@")
KEYWORDS = ("present", "installed", "absent", "latest")
TIMEOUT = 1800.0  # one transaction, downloads and builds included
QUERY_TIMEOUT = 120.0
VENV_TIMEOUT = 300.0
TAIL_LINES = 20
ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1", "PIP_NO_COLOR": "1"}
NOT_FOUND = re.compile(
    r"Could not find a version that satisfies the requirement (\S+) \(from versions: ([^)]*)\)"
)


def canonical(name: str) -> str:
    """The PEP 503 form of a name: ``Foo_Bar`` and ``foo-bar`` are one project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version_key(version: str) -> tuple[str, tuple[int, ...], str]:
    epoch, _, rest = version.lower().rpartition("!")
    found = re.match(r"([0-9]+(?:\.[0-9]+)*)(.*)", rest)
    if not found:
        return epoch, (), rest
    release = [int(part) for part in found.group(1).split(".")]
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    return epoch, tuple(release), found.group(2)


def same_version(a: str, b: str) -> bool:
    """Whether two versions are equal as pip compares them (``1.0`` is ``1.0.0``)."""
    return _version_key(a) == _version_key(b)


def problems(
    name: str, attrs: Mapping[str, Any], name_key: str | None = None
) -> list[tuple[str | None, str]]:
    """What is wrong with a pip package's name (the title, or ``name_key``'s value) and
    attributes, naming the attribute."""
    found: list[tuple[str | None, str]] = []
    if not NAME.match(name):
        found.append((name_key, f"{name!r} is not a Python package name (PEP 508)"))
    ensure = attrs.get("ensure", "present")
    if not isinstance(ensure, str) or not (ensure in KEYWORDS or VERSION.match(ensure)):
        found.append(
            ("ensure", f"must be present, absent, latest or a version (PEP 440), not {ensure!r}")
        )
    venv = attrs.get("virtualenv")
    if not venv:
        found.append(("virtualenv", "provider pip needs the virtualenv to install into"))
    elif not _is_path(str(venv)):
        found.append(("virtualenv", f"must be an absolute path without '..', not {venv!r}"))
    index_url = attrs.get("index_url")
    if index_url is not None and not URL.match(str(index_url)):
        found.append(("index_url", f"must be an http:// or https:// URL, not {index_url!r}"))
    links = attrs.get("find_links")
    if links is not None and not (URL.match(str(links)) or _is_path(str(links))):
        found.append(
            ("find_links", f"must be an absolute path or an http(s):// URL, not {links!r}")
        )
    for key in ("index_url", "find_links"):
        if CREDENTIALS.match(str(attrs.get(key) or "")):
            # not repeated in the message: it would show the password
            found.append((key, "must not hold credentials (user:password@): use pip.conf"))
    return found


def _is_path(value: str) -> bool:
    if not value.isprintable():
        return False
    try:
        Root.parts(value)
    except ReconcilerError:
        return False
    return True


@dataclass(frozen=True)
class Where:
    """Where a group of packages goes: a virtualenv as written, and the index pip reads."""

    virtualenv: str
    index_url: str | None
    find_links: str | None


class Venv:
    """pip in one virtualenv under the root."""

    def __init__(self, ctx: Context, where: Where) -> None:
        self.ctx = ctx
        self.where = where
        self.host = ctx.root.path(where.virtualenv)
        if self.host.exists() and not ctx.root.contains(self.host):
            raise ResourceError(f"virtualenv {where.virtualenv} leaves the root {ctx.root.prefix}")
        self.python = self.host / "bin" / "python"
        self.index: list[str] = []
        if where.index_url:
            self.index += ["--index-url", where.index_url]
        elif where.find_links:
            self.index.append("--no-index")  # only the given links, never the default index
        if where.find_links:
            links = where.find_links
            self.index += ["--find-links", links if URL.match(links) else str(ctx.root.path(links))]

    def exists(self) -> bool:
        """Whether the virtualenv is there; False also for an empty directory (a ``directory``
        resource may have made it) that ``python3 -m venv`` fills."""
        if self.python.exists():
            return True
        if self.host.is_dir() and not self.host.is_symlink() and not any(self.host.iterdir()):
            return False
        if self.host.exists() or self.host.is_symlink():
            raise ResourceError(
                f"{self.where.virtualenv} exists and is not a virtualenv (no bin/python)"
            )
        return False

    def _run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        result = self.ctx.runner.run(argv, timeout=timeout, env=ENV)
        if result.timed_out:
            raise ResourceError(f"{' '.join(argv[:4])} timed out after {timeout:.0f}s")
        return result.returncode, result.output

    def _pip(self, *args: str, timeout: float = QUERY_TIMEOUT) -> tuple[int, str]:
        return self._run([str(self.python), "-m", "pip", *args], timeout)

    def create(self) -> None:
        code, output = self._run(["python3", "-m", "venv", "--", str(self.host)], VENV_TIMEOUT)
        if code != 0:
            raise ResourceError(f"python3 -m venv {self.where.virtualenv} failed: {_tail(output)}")

    def _listing(self, *args: str) -> list[dict[str, Any]]:
        code, output = self._pip("list", "--format", "json", *args)
        # stderr is merged into the output: the JSON is the one line that is a list
        rows = [line for line in output.splitlines() if line.startswith("[")]
        if code != 0 or not rows:
            raise ResourceError(f"pip list failed in {self.where.virtualenv}: {_tail(output)}")
        try:
            parsed = json.loads(rows[-1])
        except ValueError:
            raise ResourceError(f"pip list printed no JSON: {_tail(output)}") from None
        return [row for row in parsed if isinstance(row, dict)]

    def installed(self) -> dict[str, str]:
        """canonical name -> installed version."""
        return {canonical(str(r["name"])): str(r["version"]) for r in self._listing()}

    def outdated(self) -> dict[str, str]:
        """canonical name -> the newest version the index offers, for outdated packages."""
        return {
            canonical(str(r["name"])): str(r["latest_version"])
            for r in self._listing("--outdated", *self.index)
        }

    def uninstall(self, names: Sequence[str]) -> None:
        code, output = self._pip("uninstall", "-y", "--", *names, timeout=TIMEOUT)
        if code != 0:
            raise ResourceError(f"pip uninstall failed (exit {code}): {_tail(output)}")

    def install(self, specs: Sequence[str]) -> tuple[int, str]:
        return self._pip("install", "--upgrade", *self.index, "--", *specs, timeout=TIMEOUT)


def _tail(output: str) -> str:
    return "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])


@dataclass
class Item:
    """One package of a group, and what converges it."""

    resource: Resource
    name: str
    ensure: str

    @property
    def key(self) -> str:
        return canonical(self.name)

    def spec(self, installed: str | None, newest: str | None) -> str | None:
        """The requirement that converges it (``-`` before a removal), or None when in sync."""
        if self.ensure == "absent":
            return f"-{self.name}" if installed else None
        if self.ensure == "present":
            return None if installed else self.name
        if self.ensure == "latest":
            return None if installed and newest is None else self.name
        if installed is not None and same_version(installed, self.ensure):
            return None
        return f"{self.name}=={self.ensure}"

    def target(self, newest: str | None) -> str:
        if self.ensure == "latest" and newest:
            return newest
        return self.ensure


def converge(
    ctx: Context, packages: Sequence[tuple[Resource, str, str]], apply: bool
) -> dict[str, list[Change] | Exception]:
    """Check (and with ``apply`` converge) pip packages, given as (resource, name, ensure):
    one group per virtualenv and index, each with one query and one transaction."""
    groups: dict[Where, list[Item]] = {}
    for resource, name, ensure in packages:
        where = Where(
            str(resource.attrs.get("virtualenv") or ""),
            _opt(resource.attrs.get("index_url")),
            _opt(resource.attrs.get("find_links")),
        )
        groups.setdefault(where, []).append(Item(resource, name, ensure))
    outcome: dict[str, list[Change] | Exception] = {}
    for where, items in groups.items():
        outcome.update(_converge_group(ctx, where, items, apply))
    return outcome


def requires(attrs: Mapping[str, Any]) -> list[str]:
    """What a pip package comes after when the catalog has it: the virtualenv's directory, and
    the artifact or directory of its ``find_links``."""
    found = [f"directory:{attrs['virtualenv']}"] if attrs.get("virtualenv") else []
    links = attrs.get("find_links")
    if links and not URL.match(str(links)):
        found += [f"artifact:{links}", f"directory:{links}"]
    return found


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _converge_group(
    ctx: Context, where: Where, items: list[Item], apply: bool
) -> dict[str, list[Change] | Exception]:
    outcome: dict[str, list[Change] | Exception] = {}
    try:
        venv = Venv(ctx, where)
        exists = venv.exists()
        installed = venv.installed() if exists else {}
        newest = _newest(venv, items, installed)
    except ReconcilerError as exc:
        error = exc if isinstance(exc, ResourceError) else ResourceError(str(exc))
        return {i.resource.id: error for i in items}
    specs: dict[str, str] = {}
    first: dict[str, Item] = {}
    for item in items:
        rid = item.resource.id
        other = first.setdefault(item.key, item)
        if other is not item:
            clash = f"{item.name} in {where.virtualenv} is also managed by {other.resource.id}"
            outcome[rid] = ResourceError(clash)
            continue
        before = installed.get(item.key)
        spec = item.spec(before, newest.get(item.key))
        if spec is None:
            outcome[rid] = []
            continue
        specs[rid] = spec
        removing = spec.startswith("-")
        changes = [
            Change(
                "ensure",
                before or "absent",
                "absent" if removing else item.target(newest.get(item.key)),
            )
        ]
        if not exists:
            changes.append(Change("virtualenv", "absent", where.virtualenv))
        verb = "uninstall" if removing else "install"
        changes.append(Change("pip", None, f"{verb} {spec.lstrip('-')} in {where.virtualenv}"))
        outcome[rid] = changes
    if not apply or not specs:
        return outcome
    by_rid = {i.resource.id: i for i in items}
    failure: dict[str, ResourceError] = {}
    removals = {rid: s[1:] for rid, s in specs.items() if s.startswith("-")}
    installs = {rid: s for rid, s in specs.items() if not s.startswith("-")}
    try:
        if removals:
            venv.uninstall(sorted(removals.values()))
    except ResourceError as exc:
        failure.update(dict.fromkeys(removals, exc))
    try:
        if installs and not exists:
            venv.create()
        _install(venv, installs, by_rid, outcome, failure)
    except ResourceError as exc:
        failure.update(dict.fromkeys(installs, exc))
    try:
        now = venv.installed() if venv.exists() else {}
        newest = _newest(venv, items, now)
    except ReconcilerError as exc:
        error = exc if isinstance(exc, ResourceError) else ResourceError(str(exc))
        return {**outcome, **dict.fromkeys(specs, error)}
    for rid in specs:
        item = by_rid[rid]
        if isinstance(outcome.get(rid), Exception):
            continue
        if item.spec(now.get(item.key), newest.get(item.key)) is not None:
            outcome[rid] = failure.get(rid) or ResourceError(
                f"DidNotConverge: {item.name} is {now.get(item.key, 'absent')} in "
                f"{where.virtualenv} after pip"
            )
            continue
        planned = outcome[rid]
        commands = planned if isinstance(planned, list) else []
        outcome[rid] = [
            Change("ensure", installed.get(item.key, "absent"), now.get(item.key, "absent")),
            *(c for c in commands if c.property in ("virtualenv", "pip")),
        ]
    return outcome


def _newest(venv: Venv, items: Sequence[Item], installed: Mapping[str, str]) -> dict[str, str]:
    """The newer versions the index has of installed packages wanted at ``latest``."""
    if any(i.ensure == "latest" and i.key in installed for i in items):
        return venv.outdated()
    return {}


def _install(
    venv: Venv,
    installs: dict[str, str],
    by_rid: Mapping[str, Item],
    outcome: dict[str, list[Change] | Exception],
    failure: dict[str, ResourceError],
) -> None:
    """One ``pip install`` of every spec; a spec pip finds nothing for is failed alone and the
    rest installed again without it."""
    pending = dict(installs)
    while pending:
        code, output = venv.install(sorted(pending.values()))
        if code == 0:
            return
        missing = NOT_FOUND.search(output)
        culprit = None
        if missing:
            wanted = canonical(re.split(r"[=<>!~;\[ ]", missing.group(1), maxsplit=1)[0])
            culprit = next((r for r in pending if by_rid[r].key == wanted), None)
        if culprit is None:
            error = ResourceError(f"pip install failed (exit {code}): {_tail(output)}")
            failure.update(dict.fromkeys(pending, error))
            return
        assert missing is not None
        item = by_rid[culprit]
        what = f"version {item.ensure} of {item.name}" if "==" in pending[culprit] else item.name
        outcome[culprit] = ResourceError(
            f"pip finds no {what} (known: {missing.group(2).strip() or 'none'})"
        )
        del pending[culprit]
