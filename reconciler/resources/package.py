"""package: a Debian package (or, with ``provider: pip``, a Python package in a virtualenv)
installed, at the newest or at a given version, or absent. The provider defaults by the node's
``os.family`` (Debian: apt); the pip provider is in ``_pip``.

The state is read with ``dpkg-query`` (and ``apt-cache policy`` for ``latest``); changes are made
with ``apt-get``, non-interactively, waiting for the dpkg lock up to a bound. Every package that
must change in a run goes into ONE ``apt-get install`` transaction (``name``, ``name=version``
and ``name-`` for removal), because apt resolves dependencies best all at once and each apt
process costs seconds: the engine hands ready packages over together (``converge_batch``).

Under ``--root`` apt and dpkg act on the tree under the root (``-o Dir=``, ``dpkg --root``): the
root must hold a dpkg database (``var/lib/dpkg/status``) and apt's own directories and sources.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from reconciler.errors import ResourceError
from reconciler.resources import _pip
from reconciler.resources.base import Attr, Change, Context, Resource, register

Provider = Literal["apt", "pip"]
PROVIDERS: tuple[Provider, ...] = get_args(Provider)
# The provider of a package that names none, by the node's os.family.
BY_FAMILY: Mapping[str, Provider] = {"Debian": "apt"}
PIP_ONLY = ("virtualenv", "index_url", "find_links")

NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(:[a-z0-9-]+)?\Z")
VERSION = re.compile(r"[0-9][A-Za-z0-9.+~:-]*\Z")
VERSION_ROW = re.compile(r"^ +(?:\*\*\* )?(\S+) -?\d+$")  # a row of apt-cache's version table
KEYWORDS = ("present", "installed", "absent", "latest")
LOCK_WAIT = 300  # seconds apt waits for another apt or dpkg to let go of the lock
TIMEOUT = 1800.0  # one transaction, downloads included
QUERY_TIMEOUT = 120.0
LISTS_VALID = 3600.0  # package lists younger than this are not refreshed before an install
TAIL_LINES = 20
SIGNED_BY = re.compile(r"^(Signed-By:[ \t]*)(/\S*)[ \t]*$", re.MULTILINE | re.IGNORECASE)


def lists_stamp(ctx: Context) -> Path:
    """When reconciler last fetched the package lists (its mtime)."""
    return ctx.state_dir / "cache" / "apt-lists.stamp"


def stale_mark(ctx: Context) -> Path:
    """Present when the sources changed since the lists were last fetched."""
    return ctx.state_dir / "cache" / "apt-lists.stale"


def mark_lists_stale(ctx: Context) -> None:
    """The sources changed: the next package apply fetches the lists before it judges."""
    mark = stale_mark(ctx)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()
    lists_stamp(ctx).unlink(missing_ok=True)


@dataclass
class Policy:
    candidate: str | None
    versions: set[str]


class Apt:
    """apt-get, apt-cache and dpkg-query for one root."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.root = ctx.root.prefix
        self.admindir = self.root / "var/lib/dpkg"
        self.options: list[str] = []
        if self.root != Path("/"):
            if not (self.admindir / "status").is_file():
                raise ResourceError(f"no dpkg database under --root {self.root} ({self.admindir})")
            self.options = [
                f"-oDir={self.root}",
                f"-oDir::State::status={self.admindir / 'status'}",
                f"-oDPkg::Options::=--root={self.root}",
                *self._sources_view(),
            ]

    def _sources_view(self) -> list[str]:
        """Under --root, the root's deb822 sources as apt must read them from outside: apt takes
        a ``Signed-By:`` path from the host's /, so each is given with the root before it, in a
        copy of sources.list.d under the state directory (the root's files keep the node's
        paths). Empty when the root has no .sources file."""
        parts = self.root / "etc/apt/sources.list.d"
        try:
            names = sorted(
                p.name for p in parts.iterdir() if p.name.endswith((".sources", ".list"))
            )
        except OSError:
            return []
        if not any(n.endswith(".sources") for n in names):
            return []
        view = self.ctx.state_dir / "cache" / "apt-sources.d"
        view.mkdir(parents=True, exist_ok=True)
        for old in view.iterdir():
            old.unlink()
        for name in names:
            text = (parts / name).read_text(errors="replace")
            if name.endswith(".sources"):
                text = SIGNED_BY.sub(lambda m: m.group(1) + str(self.root) + m.group(2), text)
            (view / name).write_text(text)
        return [f"-oDir::Etc::SourceParts={view}"]

    def _run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        env = {"DEBIAN_FRONTEND": "noninteractive", "APT_LISTCHANGES_FRONTEND": "none"}
        result = self.ctx.runner.run(argv, timeout=timeout, env=env)
        if result.timed_out:
            raise ResourceError(f"{argv[0]} timed out after {timeout:.0f}s")
        return result.returncode, result.output

    def installed(self, names: Sequence[str]) -> dict[str, str]:
        """name -> installed version, for the names that are installed (not only configured)."""
        fmt = "${binary:Package}\t${Package}\t${db:Status-Abbrev}\t${Version}\n"
        argv = ["dpkg-query", f"--admindir={self.admindir}", "-W", f"-f={fmt}", "--", *names]
        code, output = self._run(argv, QUERY_TIMEOUT)
        found: dict[str, str] = {}
        for line in output.splitlines():
            fields = line.split("\t")
            if len(fields) != 4:
                continue  # "no packages found matching x": a package never installed
            binary, package, status, version = fields
            if status[:2] in ("ii", "hi", "iU", "iF"):
                found[binary] = found[package] = version
        if code not in (0, 1):
            raise ResourceError(f"dpkg-query failed: {_tail(output)}")
        return found

    def policy(self, names: Sequence[str]) -> dict[str, Policy]:
        """name -> what apt would install now and every version it knows, for names it knows."""
        if not names:
            return {}
        code, output = self._run(["apt-cache", *self.options, "policy", "--", *names], 120.0)
        if code != 0:
            raise ResourceError(f"apt-cache policy failed: {_tail(output)}")
        found: dict[str, Policy] = {}
        name = None
        for line in output.splitlines():
            if line and not line[0].isspace() and line.endswith(":"):
                name = line[:-1]
                found[name] = Policy(None, set())
            elif name and line.strip().startswith("Candidate:"):
                version = line.split(":", 1)[1].strip()
                found[name].candidate = None if version == "(none)" else version
            elif name and (match := VERSION_ROW.match(line)):
                found[name].versions.add(match.group(1))
        return found

    def refresh_lists(self, stamp: Path, force: bool = False) -> bool:
        """``apt-get update`` unless it succeeded less than LISTS_VALID seconds ago."""
        try:
            if not force and time.time() - stamp.stat().st_mtime < LISTS_VALID:
                return False
        except OSError:
            pass
        code, output = self._run(["apt-get", *self.options, "-q", "update"], TIMEOUT)
        if code != 0:
            raise ResourceError(f"apt-get update failed: {_tail(output)}")
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.touch()
        stale_mark(self.ctx).unlink(missing_ok=True)
        return True

    def transaction(self, items: Sequence[str]) -> None:
        argv = [
            "apt-get",
            *self.options,
            "-q",
            "-y",
            f"-oDPkg::Lock::Timeout={LOCK_WAIT}",
            "-oDpkg::Options::=--force-confdef",
            "-oDpkg::Options::=--force-confold",
            "--allow-downgrades",
            "install",
            "--",
            *items,
        ]
        code, output = self._run(argv, TIMEOUT)
        if code != 0:
            raise ResourceError(f"apt-get install failed (exit {code}): {_tail(output)}")


def _tail(output: str) -> str:
    return "\n".join(output.rstrip().splitlines()[-TAIL_LINES:])


@register
class Package(Resource):
    type = "package"
    attributes: ClassVar[Mapping[str, Attr]] = {
        "ensure": Attr("str", default="present", doc="present, absent, latest or a version"),
        "provider": Attr("str", default="apt", choices=PROVIDERS),
        "name": Attr("str", doc="the package's name, when the title is another"),
        "virtualenv": Attr("str", doc="pip: the virtualenv's directory, made when missing"),
        "index_url": Attr("str", doc="pip: the package index (http or https)"),
        "find_links": Attr("str", doc="pip: a directory or URL of distributions"),
    }
    batched: ClassVar[bool] = True

    @classmethod
    def complete(
        cls, attrs: dict[str, Any], facts: Mapping[str, Any]
    ) -> list[tuple[str | None, str]]:
        if attrs.get("provider") is not None:
            return []
        system = facts.get("os")
        family = system.get("family") if isinstance(system, Mapping) else None
        provider = BY_FAMILY.get(family) if isinstance(family, str) else None
        if provider is None:
            return [
                (
                    "provider",
                    f"no package provider for os.family {family!r}: "
                    f"set 'provider' ({' or '.join(PROVIDERS)})",
                )
            ]
        attrs["provider"] = provider
        return []

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        named = attrs.get("name")
        if named is not None and not isinstance(named, str):
            return [("name", f"must be a string, not {named!r}")]
        title, key = (named, "name") if named else (title, None)
        if attrs.get("provider") == "pip":
            return _pip.problems(title, attrs, key)
        problems: list[tuple[str | None, str]] = [
            (attr, "only for provider pip") for attr in PIP_ONLY if attrs.get(attr) is not None
        ]
        if not NAME.match(title):
            problems.append((key, f"{title!r} is not a Debian package name"))
        ensure = attrs.get("ensure", "present")
        if not isinstance(ensure, str) or not (ensure in KEYWORDS or VERSION.match(ensure)):
            problems.append(
                ("ensure", f"must be present, absent, latest or a version, not {ensure!r}")
            )
        return problems

    @property
    def ensure(self) -> str:
        ensure = str(self.attrs.get("ensure") or "present")
        return "present" if ensure == "installed" else ensure

    def _wanted(self, installed: str | None, policy: Policy | None) -> str | None:
        """The transaction item that converges this package, or None when it is in sync."""
        ensure = self.ensure
        if ensure == "absent":
            return f"{self.package}-" if installed else None
        if ensure == "present":
            return None if installed else self.package
        if ensure == "latest":
            if policy is None or policy.candidate is None:
                return None if installed else self.package  # apt will say it knows none
            return None if installed == policy.candidate else self.package
        return None if installed == ensure else f"{self.package}={ensure}"

    def _unavailable(self, item: str, policy: Policy | None) -> str | None:
        """Why apt cannot install ``item`` now, or None when it can."""
        if item.endswith("-"):
            return None
        if policy is None or (policy.candidate is None and not policy.versions):
            return f"apt knows no package named {self.package}"
        if "=" in item and self.ensure not in policy.versions:
            known = ", ".join(sorted(policy.versions)) or "none"
            return f"apt knows no version {self.ensure} of {self.package} (known: {known})"
        if "=" not in item and policy.candidate is None:
            return f"apt has no installable version of {self.package}"
        return None

    def _target(self, policy: Policy | None) -> str:
        if self.ensure in ("present", "latest"):
            return policy.candidate or self.ensure if policy else self.ensure
        return self.ensure

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        outcome = self.converge_batch(ctx, [self], apply)[self.id]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def autorequire(self) -> list[str]:
        return _pip.requires(self.attrs) if self.provider == "pip" else []

    @property
    def package(self) -> str:
        """The package's name: ``name``, or the title."""
        return str(self.attrs.get("name") or self.title)

    @property
    def provider(self) -> Provider:
        return "pip" if self.attrs.get("provider") == "pip" else "apt"

    @classmethod
    def converge_batch(
        cls, ctx: Context, resources: Sequence[Resource], apply: bool
    ) -> dict[str, list[Change] | Exception]:
        """Check and apply packages: the apt ones together, the pip ones by virtualenv."""
        packages = [r for r in resources if isinstance(r, Package)]
        apt = [p for p in packages if p.provider == "apt"]
        pip = [(p, p.package, p.ensure) for p in packages if p.provider == "pip"]
        outcome = _pip.converge(ctx, pip, apply) if pip else {}
        if apt:
            outcome.update(cls._converge_apt(ctx, apt, apply))
        return outcome

    @classmethod
    def _converge_apt(
        cls, ctx: Context, resources: Sequence[Package], apply: bool
    ) -> dict[str, list[Change] | Exception]:
        """Check a set of packages with one query each, and apply them in one transaction.

        Returns each resource's changes, or the error that failed it. A package apt cannot
        install (no such name or version, even after refreshing the lists) fails alone, before
        the transaction. After the transaction every package is queried again: one still
        differing is failed, with apt's output."""
        packages = {r.id: r for r in resources}
        outcome: dict[str, list[Change] | Exception] = {}
        try:
            apt = Apt(ctx)
            names = [p.package for p in packages.values()]
            if (
                apply
                and stale_mark(ctx).exists()
                and any(p.ensure != "absent" for p in packages.values())
            ):
                # An apt_repository changed: judge latest (and versions) by its lists.
                apt.refresh_lists(lists_stamp(ctx), force=True)
            installed = apt.installed(names)
            policy = apt.policy([p.package for p in packages.values() if p.ensure != "absent"])
        except ResourceError as exc:
            return {rid: exc for rid in packages}
        items: dict[str, str] = {}
        for rid, p in packages.items():
            item = p._wanted(installed.get(p.package), policy.get(p.package))
            if item is None:
                outcome[rid] = []
                continue
            items[rid] = item
            removing = item.endswith("-")
            outcome[rid] = [
                Change(
                    "ensure",
                    installed.get(p.package, "absent"),
                    "absent" if removing else p._target(policy.get(p.package)),
                ),
                Change("apt-get", None, f"{'remove' if removing else 'install'} {item.strip('-')}"),
            ]
        if not apply or not items:
            return outcome
        try:
            installing = [packages[rid].package for rid, i in items.items() if not i.endswith("-")]
            if installing:
                stamp = lists_stamp(ctx)
                refreshed = apt.refresh_lists(stamp)
                policy = apt.policy(installing)
                if not refreshed and any(
                    packages[rid]._unavailable(item, policy.get(packages[rid].package))
                    for rid, item in items.items()
                ):
                    apt.refresh_lists(stamp, force=True)
                    policy = apt.policy(installing)
        except ResourceError as exc:
            return {**outcome, **{rid: exc for rid in items}}
        for rid, item in list(items.items()):
            why = packages[rid]._unavailable(item, policy.get(packages[rid].package))
            if why:
                outcome[rid] = ResourceError(why)
                del items[rid]
        failure: ResourceError | None = None
        if items:
            try:
                apt.transaction(sorted(items.values()))
            except ResourceError as exc:
                failure = exc
        try:
            now = apt.installed(names)
        except ResourceError as exc:
            return {**outcome, **{rid: exc for rid in items}}
        for rid in items:
            p = packages[rid]
            if p._wanted(now.get(p.package), policy.get(p.package)) is not None:
                outcome[rid] = failure or ResourceError(
                    f"DidNotConverge: {p.package} is {now.get(p.package, 'absent')} after apt-get"
                )
                continue
            planned = outcome[rid]
            commands = planned if isinstance(planned, list) else []
            outcome[rid] = [
                Change("ensure", installed.get(p.package, "absent"), now.get(p.package, "absent")),
                *(c for c in commands if c.property == "apt-get"),
            ]
        return outcome
