"""package (apt): real .deb files built with dpkg-deb, a local apt source, real apt-get and dpkg.

Everything happens under a temporary root (``apt-get -o Dir=``, ``dpkg --root``), so the host's
packages are never touched. apt's history log under the root counts the transactions.
"""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.errors import ResourceError
from reconciler.fs import BackupStore, Root
from reconciler.resources.base import Change, Context
from reconciler.resources.package import Package
from reconciler.resources.runner import Runner
from tests.conftest import CLI, need
from tests.resources.conftest import make


@pytest.fixture(autouse=True)
def _debian_tools() -> None:
    need("dpkg-deb")
    need("apt-get")


class AptRepo:
    """A flat apt repository in a directory: .deb files and their Packages index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir()
        self.entries: list[str] = []
        self.write_index()

    def add(self, name: str, version: str, depends: str = "") -> None:
        build = self.path.parent / f"build-{name}-{version}"
        (build / "DEBIAN").mkdir(parents=True)
        control = f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        control += "Maintainer: Tests <tests@example.invalid>\n"
        control += f"Depends: {depends}\n" if depends else ""
        control += "Description: a package built by the tests\n"
        (build / "DEBIAN" / "control").write_text(control)
        share = build / "usr" / "share" / name
        share.mkdir(parents=True)
        (share / "VERSION").write_text(version + "\n")
        deb = self.path / f"{name}_{version}_all.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-b", str(build), str(deb)],
            check=True,
            capture_output=True,
        )
        data = deb.read_bytes()
        self.entries.append(
            control
            + f"Filename: ./{deb.name}\nSize: {len(data)}\n"
            + f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
        self.write_index()

    def write_index(self) -> None:
        (self.path / "Packages").write_text("\n".join(self.entries))


def make_apt_root(root: Path, repo: AptRepo) -> None:
    """The directories dpkg and apt need under a root, with the repository as its source."""
    for sub in (
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).touch()
    (root / "etc/apt/sources.list").write_text(f"deb [trusted=yes] file:{repo.path} ./\n")


def dpkg_version(root: Path, name: str) -> str | None:
    """What dpkg-query says is installed under the root (None: not installed)."""
    out = subprocess.run(
        [
            "dpkg-query",
            f"--admindir={root}/var/lib/dpkg",
            "-W",
            "-f=${db:Status-Abbrev} ${Version}",
            name,
        ],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or not out.stdout.startswith("ii"):
        return None
    return out.stdout.split()[-1]


def transactions(root: Path) -> list[str]:
    """apt's history log under the root, one entry per apt-get transaction."""
    log = root / "var/log/apt/history.log"
    if not log.exists():
        return []
    return [e for e in log.read_text().split("\n\n") if "Start-Date" in e]


@pytest.fixture
def apt(tmp_path: Path) -> tuple[Context, AptRepo, Path]:
    repo = AptRepo(tmp_path / "repo")
    repo.add("rtest-lib", "1.0")
    repo.add("rtest-app", "1.0", depends="rtest-lib")
    repo.add("rtest-tool", "1.0")
    root = tmp_path / "root"
    make_apt_root(root, repo)
    state = tmp_path / "state"
    ctx = Context(
        root=Root(root),
        state_dir=state,
        backups=BackupStore(state),
        runner=Runner(base_env={"RECONCILER_ROOT": str(root)}),
    )
    return ctx, repo, root


def outcome_of(ctx: Context, apply: bool, *packages: Package) -> dict[str, object]:
    return dict(Package.converge_batch(ctx, packages, apply))


def summary(changes: list[Change]) -> list[tuple[str, str | None, str | None]]:
    return [(c.property, c.before, c.after) for c in changes]


def pkg(name: str, ensure: str = "present") -> Package:
    resource = make(Package, name, ensure=ensure)
    assert isinstance(resource, Package)
    return resource


def fetch_lists(ctx: Context) -> None:
    """Fetch the package lists once, as a node that has run apt-get update has them."""
    from reconciler.resources.package import Apt

    Apt(ctx).refresh_lists(ctx.state_dir / "cache" / "apt-lists.stamp")


def test_plan_says_what_would_run_and_installs_nothing(apt: tuple[Context, AptRepo, Path]) -> None:
    ctx, _, root = apt
    fetch_lists(ctx)
    changes = pkg("rtest-app").check_apply(ctx, apply=False)
    assert [(c.property, c.before, c.after) for c in changes] == [
        ("ensure", "absent", "1.0"),
        ("apt-get", None, "install rtest-app"),
    ]
    assert dpkg_version(root, "rtest-app") is None
    assert transactions(root) == []


def test_packages_of_a_run_install_in_one_transaction(apt: tuple[Context, AptRepo, Path]) -> None:
    ctx, _, root = apt
    outcome = outcome_of(ctx, True, pkg("rtest-app"), pkg("rtest-tool", "1.0"))
    assert all(isinstance(v, list) and v for v in outcome.values()), outcome
    assert dpkg_version(root, "rtest-app") == "1.0"
    assert dpkg_version(root, "rtest-lib") == "1.0"  # its dependency, resolved by apt
    assert dpkg_version(root, "rtest-tool") == "1.0"
    assert (root / "usr/share/rtest-tool/VERSION").read_text() == "1.0\n"
    assert len(transactions(root)) == 1
    # Converged: a second check finds nothing, and runs no transaction.
    assert outcome_of(ctx, True, pkg("rtest-app"), pkg("rtest-tool", "1.0")) == {
        "package:rtest-app": [],
        "package:rtest-tool": [],
    }
    assert len(transactions(root)) == 1


def test_upgrade_to_latest_then_pin_back_then_remove(apt: tuple[Context, AptRepo, Path]) -> None:
    ctx, repo, root = apt
    assert outcome_of(ctx, True, pkg("rtest-tool"))["package:rtest-tool"]
    repo.add("rtest-tool", "2.0")
    # The lists were fetched moments ago, so latest is still 1.0 by them ...
    assert pkg("rtest-tool", "latest").check_apply(ctx, apply=False) == []
    # ... but a pinned version apt does not know makes it fetch the lists again.
    changes = pkg("rtest-tool", "2.0").check_apply(ctx, apply=True)
    assert summary(changes)[0] == ("ensure", "1.0", "2.0")
    assert dpkg_version(root, "rtest-tool") == "2.0"
    assert (root / "usr/share/rtest-tool/VERSION").read_text() == "2.0\n"
    # Back down to a pinned version (a downgrade), then latest brings 2.0 again.
    pkg("rtest-tool", "1.0").check_apply(ctx, apply=True)
    assert dpkg_version(root, "rtest-tool") == "1.0"
    latest = pkg("rtest-tool", "latest")
    assert summary(latest.check_apply(ctx, apply=False))[0] == ("ensure", "1.0", "2.0")
    latest.check_apply(ctx, apply=True)
    assert dpkg_version(root, "rtest-tool") == "2.0"
    # Removed, in the same transaction as an install.
    outcome = outcome_of(ctx, True, pkg("rtest-tool", "absent"), pkg("rtest-lib"))
    assert dpkg_version(root, "rtest-tool") is None
    assert not (root / "usr/share/rtest-tool/VERSION").exists()
    assert dpkg_version(root, "rtest-lib") == "1.0"
    removed = outcome["package:rtest-tool"]
    assert isinstance(removed, list) and summary(removed)[0] == ("ensure", "2.0", "absent")
    last = transactions(root)[-1]
    assert "Install: rtest-lib:" in last and "Remove: rtest-tool:" in last


def test_an_unknown_package_fails_alone(apt: tuple[Context, AptRepo, Path]) -> None:
    ctx, _, root = apt
    outcome = outcome_of(ctx, True, pkg("rtest-nosuch"), pkg("rtest-tool", "9.9"), pkg("rtest-lib"))
    assert isinstance(outcome["package:rtest-nosuch"], ResourceError)
    assert "no package named rtest-nosuch" in str(outcome["package:rtest-nosuch"])
    assert isinstance(outcome["package:rtest-tool"], ResourceError)
    assert "no version 9.9 of rtest-tool (known: 1.0)" in str(outcome["package:rtest-tool"])
    assert dpkg_version(root, "rtest-lib") == "1.0"
    assert dpkg_version(root, "rtest-tool") is None


def test_a_run_puts_every_package_in_one_transaction_and_plan_runs_none(
    apt: tuple[Context, AptRepo, Path], cli: CLI, make_repo: Callable[..., Path]
) -> None:
    """Through the CLI: packages from two profiles, one of them required by a file."""
    _, repo, _ = apt
    make_apt_root(cli.root, repo)
    control = make_repo(
        {
            "nodes.yaml": "default: app\n",
            "roles/app.yaml": "profiles: [app, tools]\n",
            "profiles/app.yaml": textwrap.dedent(
                """\
                resources:
                  - package: rtest-app
                  - file: /etc/app.conf
                    content: "x\\n"
                    require: package:rtest-app
                """
            ),
            "profiles/tools.yaml": "resources:\n  - package: rtest-tool\n    ensure: '1.0'\n",
        }
    )
    plan = cli.run("plan", control, "--node", "n1", check=2)
    assert "package:rtest-app" in plan.stdout and "install rtest-app" in plan.stdout
    assert transactions(cli.root) == []
    cli.run("apply", control, "--node", "n1", check=2)
    assert dpkg_version(cli.root, "rtest-app") == dpkg_version(cli.root, "rtest-tool") == "1.0"
    assert (cli.root / "etc/app.conf").read_text() == "x\n"
    assert len(transactions(cli.root)) == 1
    cli.run("apply", control, "--node", "n1", check=0)
    assert len(transactions(cli.root)) == 1


def test_a_root_without_a_dpkg_database_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "bare"
    root.mkdir()
    ctx = Context(Root(root), tmp_path / "s", BackupStore(tmp_path / "s"), Runner())
    with pytest.raises(ResourceError, match="no dpkg database under --root"):
        pkg("rtest-tool").check_apply(ctx, apply=False)


@pytest.mark.parametrize(
    ("title", "ensure", "bad"),
    [
        ("-oAPT::Foo=1", "present", "not a Debian package name"),
        ("Bad_Name", "present", "not a Debian package name"),
        ("nginx", "newest", "must be present, absent, latest or a version"),
        ("nginx", "1.0; rm -rf /", "must be present, absent, latest or a version"),
    ],
)
def test_names_and_versions_that_could_inject_are_refused(
    title: str, ensure: str, bad: str
) -> None:
    problems = Package.validate(title, {"ensure": ensure})
    assert any(bad in message for _, message in problems), problems
