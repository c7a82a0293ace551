"""package with provider pip: wheels built here by hand, real virtualenvs, real pip, no network.

The wheels go into a directory inside a temporary root that ``find_links`` names (pip runs with
``--no-index``). A runner that records every command it runs (and runs it) counts pip's runs.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import textwrap
import threading
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ModelError, ResourceError
from reconciler.fs import BackupStore, Root
from reconciler.model.catalog import Compiler
from reconciler.resources.base import Change, Context
from reconciler.resources.package import Package
from reconciler.resources.runner import Runner, RunResult
from reconciler.source import DirectorySnapshot
from tests.conftest import CLI, need, seed_root, write_tree
from tests.resources.conftest import make
from tests.resources.test_artifact import sha, tar_gz

VENV = "/opt/tools"
WHEELS = "/srv/wheels"


@pytest.fixture(autouse=True)
def _python_venv() -> None:
    need_venv()


def need_venv() -> None:
    """python3 with its venv module (and ensurepip), as the agent's clean PATH finds it."""
    need("python3")
    done = subprocess.run(
        ["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.fail("python3 -m venv needs the Debian package python3-venv", pytrace=False)


def make_wheel(directory: Path, name: str, version: str, requires: Sequence[str] = ()) -> Path:
    """A pure-Python wheel written as a zip by hand: a module that knows its version."""
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'VERSION = "{version}"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        hashed = hashlib.sha256(text.encode()).digest()
        record.append(
            f"{path},sha256={base64.urlsafe_b64encode(hashed).rstrip(b'=').decode()},{len(text)}"
        )
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    wheel = directory / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def add_wheels(directory: Path) -> None:
    make_wheel(directory, "rtest-lib", "1.0")
    make_wheel(directory, "rtest-app", "1.0", ["rtest-lib"])
    make_wheel(directory, "rtest-tool", "1.0")
    make_wheel(directory, "rtest-tool", "2.0")


class Recording(Runner):
    """The real runner, keeping the argv of every command it ran."""

    def __init__(self, base_env: Mapping[str, str] | None = None) -> None:
        super().__init__(base_env)
        self.ran: list[list[str]] = []

    def run(self, argv: list[str], **kw: Any) -> RunResult:
        self.ran.append(argv)
        return super().run(argv, **kw)

    def pip(self, command: str) -> list[list[str]]:
        """The pip runs of one command (``install``, ``uninstall``, ``list``)."""
        return [a for a in self.ran if a[1:3] == ["-m", "pip"] and a[3] == command]


@pytest.fixture
def pypi(tmp_path: Path) -> tuple[Context, Recording, Path]:
    root = seed_root(tmp_path / "root")
    add_wheels(root / WHEELS.lstrip("/"))
    runner = Recording(base_env={"RECONCILER_ROOT": str(root)})
    state = tmp_path / "state"
    return Context(Root(root), state, BackupStore(state), runner), runner, root


def installed(root: Path, name: str, venv: str = VENV) -> str | None:
    """The version the virtualenv's python imports (None: not importable)."""
    python = root / venv.lstrip("/") / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", f"import {name.replace('-', '_')} as m; print(m.VERSION)"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def pip(title: str, ensure: str = "present", **attrs: Any) -> Package:
    values = {"provider": "pip", "virtualenv": VENV, "find_links": WHEELS, **attrs}
    resource = make(Package, title, ensure=ensure, **values)
    assert isinstance(resource, Package)
    assert Package.validate(title, resource.attrs) == []
    return resource


def converge(ctx: Context, apply: bool, *packages: Package) -> dict[str, Any]:
    return dict(Package.converge_batch(ctx, packages, apply))


def summary(changes: list[Change]) -> list[tuple[str, str | None, str | None]]:
    return [(c.property, c.before, c.after) for c in changes]


def test_plan_shows_the_virtualenv_and_the_install_and_makes_nothing(
    pypi: tuple[Context, Recording, Path],
) -> None:
    ctx, runner, root = pypi
    changes = pip("rtest-tool", "1.0").check_apply(ctx, apply=False)
    assert summary(changes) == [
        ("ensure", "absent", "1.0"),
        ("virtualenv", "absent", VENV),
        ("pip", None, f"install rtest-tool==1.0 in {VENV}"),
    ]
    assert not (root / "opt/tools").exists()
    assert runner.ran == []


def test_two_pinned_packages_install_in_one_transaction(
    pypi: tuple[Context, Recording, Path],
) -> None:
    ctx, runner, root = pypi
    wanted = (pip("rtest-tool", "1.0"), pip("Rtest_Lib", "1.0"))
    outcome = converge(ctx, True, *wanted)
    assert summary(outcome["package:rtest-tool"]) == [
        ("ensure", "absent", "1.0"),
        ("virtualenv", "absent", VENV),
        ("pip", None, f"install rtest-tool==1.0 in {VENV}"),
    ]
    assert summary(outcome["package:Rtest_Lib"])[0] == ("ensure", "absent", "1.0")
    assert installed(root, "rtest-tool") == installed(root, "rtest-lib") == "1.0"
    assert len(runner.pip("install")) == 1  # one transaction for both
    assert runner.pip("install")[0][-3:] == ["--", "Rtest_Lib==1.0", "rtest-tool==1.0"]
    assert [a for a in runner.ran if a[:3] == ["python3", "-m", "venv"]] == [
        ["python3", "-m", "venv", "--", str(root / "opt/tools")]
    ]
    # Converged: the next check finds nothing (the spelling of a name does not matter).
    runner.ran.clear()
    assert converge(ctx, True, *wanted) == {"package:rtest-tool": [], "package:Rtest_Lib": []}
    assert runner.pip("install") == [] and len(runner.pip("list")) == 1


def test_upgrade_downgrade_latest_and_absent(pypi: tuple[Context, Recording, Path]) -> None:
    ctx, runner, root = pypi
    pip("rtest-app").check_apply(ctx, apply=True)  # present: the newest, with its dependency
    assert installed(root, "rtest-app") == installed(root, "rtest-lib") == "1.0"
    pip("rtest-tool", "1.0").check_apply(ctx, apply=True)
    changes = pip("rtest-tool", "2.0").check_apply(ctx, apply=True)  # an upgrade
    assert summary(changes) == [
        ("ensure", "1.0", "2.0"),
        ("pip", None, f"install rtest-tool==2.0 in {VENV}"),
    ]
    assert installed(root, "rtest-tool") == "2.0"
    changes = pip("rtest-tool", "1.0").check_apply(ctx, apply=True)  # a downgrade
    assert summary(changes)[0] == ("ensure", "2.0", "1.0")
    assert installed(root, "rtest-tool") == "1.0"
    # latest: the newest version find_links offers, shown by plan, installed by apply.
    latest = pip("rtest-tool", "latest")
    assert summary(latest.check_apply(ctx, apply=False))[0] == ("ensure", "1.0", "2.0")
    assert installed(root, "rtest-tool") == "1.0"
    assert summary(latest.check_apply(ctx, apply=True))[0] == ("ensure", "1.0", "2.0")
    assert installed(root, "rtest-tool") == "2.0"
    assert latest.check_apply(ctx, apply=False) == []
    # absent: removed with pip uninstall, in the same run as an install.
    make_wheel(root / WHEELS.lstrip("/"), "rtest-extra", "0.1")
    runner.ran.clear()
    outcome = converge(ctx, True, pip("rtest-tool", "absent"), pip("rtest-extra", "0.1"))
    assert summary(outcome["package:rtest-tool"]) == [
        ("ensure", "2.0", "absent"),
        ("pip", None, f"uninstall rtest-tool in {VENV}"),
    ]
    assert installed(root, "rtest-tool") is None
    assert installed(root, "rtest-extra") == "0.1"
    assert len(runner.pip("uninstall")) == len(runner.pip("install")) == 1
    assert pip("rtest-tool", "absent").check_apply(ctx, apply=False) == []


def test_an_unknown_version_or_package_fails_alone(pypi: tuple[Context, Recording, Path]) -> None:
    ctx, _, root = pypi
    outcome = converge(
        ctx, True, pip("rtest-tool", "9.9"), pip("rtest-nosuch"), pip("rtest-lib", "1.0")
    )
    assert isinstance(outcome["package:rtest-tool"], ResourceError)
    assert str(outcome["package:rtest-tool"]) == (
        "pip finds no version 9.9 of rtest-tool (known: 1.0, 2.0)"
    )
    assert str(outcome["package:rtest-nosuch"]) == "pip finds no rtest-nosuch (known: none)"
    assert summary(outcome["package:rtest-lib"])[0] == ("ensure", "absent", "1.0")
    assert installed(root, "rtest-lib") == "1.0"
    assert installed(root, "rtest-tool") is None


def test_one_package_in_two_virtualenvs_by_name(pypi: tuple[Context, Recording, Path]) -> None:
    ctx, runner, root = pypi
    tools = pip("tools-tool", "1.0", name="rtest-tool")
    app = pip("app-tool", "2.0", name="rtest-tool", virtualenv="/opt/app")
    outcome = converge(ctx, True, tools, app)
    assert summary(outcome["package:app-tool"])[-1] == (
        "pip",
        None,
        "install rtest-tool==2.0 in /opt/app",
    )
    assert installed(root, "rtest-tool") == "1.0"
    assert installed(root, "rtest-tool", "/opt/app") == "2.0"
    assert len(runner.pip("install")) == 2  # one transaction per virtualenv
    # Twice the same package in one virtualenv: the second one fails, naming the first.
    clash = converge(ctx, True, tools, pip("again", "2.0", name="rtest-tool"))
    assert clash["package:tools-tool"] == []
    assert str(clash["package:again"]) == (
        "rtest-tool in /opt/tools is also managed by package:tools-tool"
    )
    assert installed(root, "rtest-tool") == "1.0"


def test_a_virtualenv_leading_out_of_the_root_is_refused(
    pypi: tuple[Context, Recording, Path], tmp_path: Path
) -> None:
    ctx, runner, root = pypi
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "opt/tools").symlink_to(outside)
    with pytest.raises(ResourceError, match="virtualenv /opt/tools leaves the root"):
        pip("rtest-tool").check_apply(ctx, apply=True)
    assert list(outside.iterdir()) == [] and runner.ran == []


def test_a_directory_that_is_not_a_virtualenv_fails(pypi: tuple[Context, Recording, Path]) -> None:
    ctx, _, root = pypi
    (root / "opt/tools").mkdir(parents=True)
    (root / "opt/tools/notes.txt").write_text("mine\n")
    with pytest.raises(ResourceError, match="/opt/tools exists and is not a virtualenv"):
        pip("rtest-tool").check_apply(ctx, apply=True)
    assert os.listdir(root / "opt/tools") == ["notes.txt"]
    # An empty directory (one a directory resource made) becomes the virtualenv.
    (root / "opt/tools/notes.txt").unlink()
    pip("rtest-tool", "1.0").check_apply(ctx, apply=True)
    assert installed(root, "rtest-tool") == "1.0"


def test_a_run_installs_in_the_root_and_plan_installs_nothing(
    cli: CLI, make_repo: Callable[..., Path], tmp_path: Path
) -> None:
    """Through the CLI: pip packages of two profiles, one required by a file, their wheels
    unpacked by an artifact declared after them; apt untouched (the root has no dpkg)."""
    add_wheels(tmp_path / "built")
    release = tar_gz({w.name: w.read_bytes() for w in (tmp_path / "built").iterdir()})
    write_tree(cli.root / "srv/incoming", {"wheels.tar.gz": release})
    common = f"provider: pip\n    virtualenv: {VENV}\n    find_links: {WHEELS}\n"
    repo = make_repo(
        {
            "nodes.yaml": "default: app\n",
            "roles/app.yaml": "profiles: [app, tools]\n",
            "profiles/app.yaml": textwrap.dedent(
                """\
                resources:
                  - package: rtest-app
                    COMMON
                  - file: /etc/app.conf
                    content: "x\\n"
                    require: package:rtest-app
                """
            ).replace("COMMON\n", common),
            "profiles/tools.yaml": f"resources:\n  - package: rtest-tool\n    {common}"
            "    ensure: '1.0'\n"
            f"  - artifact: {WHEELS}\n    url: file:///srv/incoming/wheels.tar.gz\n"
            f"    sha256: {sha(release)}\n    extract: tar.gz\n"
            f"  - directory: {VENV}\n    mode: '0750'\n",
        }
    )
    order = Compiler(DirectorySnapshot(repo)).compile("n1", {"os": {"family": "Debian"}}).order()
    for package in ("package:rtest-app", "package:rtest-tool"):  # required automatically
        assert order.index(f"artifact:{WHEELS}") < order.index(package)
        assert order.index(f"directory:{VENV}") < order.index(package)
    plan = cli.run("plan", repo, "--node", "n1", check=2)
    assert f"install rtest-tool==1.0 in {VENV}" in plan.stdout
    assert "virtualenv" in plan.stdout
    assert not (cli.root / "opt/tools").exists()
    cli.run("apply", repo, "--node", "n1", check=2)
    assert installed(cli.root, "rtest-app") == installed(cli.root, "rtest-tool") == "1.0"
    assert (cli.root / "opt/tools").stat().st_mode & 0o777 == 0o750  # the venv, in it
    assert (cli.root / "etc/app.conf").read_text() == "x\n"
    cli.run("apply", repo, "--node", "n1", check=0)


@pytest.mark.parametrize(
    ("title", "attrs", "key", "bad"),
    [
        ("-e", {}, None, "not a Python package name (PEP 508)"),
        ("rtest", {"name": "-e"}, "name", "'-e' is not a Python package name"),
        ("git+https://example.com/x.git", {}, None, "not a Python package name"),
        ("x @ https://example.com/x.whl", {}, None, "not a Python package name"),
        ("rtest", {"ensure": ">=1.0"}, "ensure", "must be present, absent, latest or a version"),
        ("rtest", {"ensure": "1.0; rm -rf /"}, "ensure", "must be present, absent, latest"),
        ("rtest", {"virtualenv": None}, "virtualenv", "provider pip needs the virtualenv"),
        ("rtest", {"virtualenv": "opt/tools"}, "virtualenv", "must be an absolute path"),
        ("rtest", {"virtualenv": "/opt/../etc"}, "virtualenv", "must be an absolute path"),
        ("rtest", {"index_url": "--trusted-host=x"}, "index_url", "must be an http:// or"),
        ("rtest", {"index_url": "file:///srv"}, "index_url", "must be an http:// or https://"),
        ("rtest", {"find_links": "/srv/a\nb"}, "find_links", "must be an absolute path or"),
        ("rtest", {"find_links": "-f"}, "find_links", "must be an absolute path or"),
        ("rtest", {"index_url": "https://u:pw@x/"}, "index_url", "must not hold credentials"),
    ],
)
def test_names_and_values_that_could_inject_are_refused(
    title: str, attrs: dict[str, Any], key: str | None, bad: str
) -> None:
    values = {"provider": "pip", "virtualenv": VENV, "ensure": "present", **attrs}
    problems = Package.validate(title, values)
    assert any(k == key and bad in message for k, message in problems), problems


def test_pip_attributes_are_refused_for_apt() -> None:
    problems = Package.validate("nginx", {"provider": "apt", "virtualenv": VENV})
    assert problems == [("virtualenv", "only for provider pip")]
    problems = Package.validate("web", {"provider": "apt", "name": "-oDir=/"})
    assert problems == [("name", "'-oDir=/' is not a Debian package name")]


def test_the_provider_defaults_by_os_family(make_repo: Callable[..., Path]) -> None:
    repo = make_repo(
        {
            "nodes.yaml": "default: app\n",
            "roles/app.yaml": "profiles: [app]\n",
            "profiles/app.yaml": "resources:\n  - package: nginx\n",
        }
    )
    compiler = Compiler(DirectorySnapshot(repo))
    catalog = compiler.compile("n1", {"os": {"family": "Debian"}})
    assert catalog.entries["package:nginx"].resource.attrs["provider"] == "apt"
    with pytest.raises(ModelError) as refused:
        compiler.compile("n1", {"os": {"family": "RedHat"}})
    assert str(refused.value.problems[0]) == (
        "profiles/app.yaml:2: no package provider for os.family 'RedHat': "
        "set 'provider' (apt or pip)"
    )


class _Index(SimpleHTTPRequestHandler):
    """Serves a directory; every path asked for is kept in ``asked``."""

    asked: list[str]

    def log_message(self, format: str, *args: object) -> None:
        self.asked.append(self.path)


@contextlib.contextmanager
def simple_index(directory: Path, wheels: Sequence[Path]) -> Iterator[tuple[str, list[str]]]:
    """A PEP 503 index of ``wheels`` on 127.0.0.1 (pip trusts plain http there): its URL and
    the paths pip asked for."""
    for wheel in wheels:
        project = wheel.name.split("-")[0].replace("_", "-")
        page = directory / "simple" / project / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        (directory / "files").mkdir(exist_ok=True)
        shutil.copy(wheel, directory / "files" / wheel.name)
        with page.open("a") as html:
            html.write(f'<a href="../../files/{wheel.name}">{wheel.name}</a>\n')
    asked: list[str] = []
    handler = functools.partial(
        type("Handler", (_Index,), {"asked": asked}), directory=str(directory)
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/", asked
    finally:
        server.shutdown()
        server.server_close()


def test_index_url_installs_from_an_index(
    pypi: tuple[Context, Recording, Path], tmp_path: Path
) -> None:
    ctx, _, root = pypi
    built = tmp_path / "built"
    wheels = [
        make_wheel(built, "rtest-web", "3.0", ["rtest-lib"]),
        make_wheel(built, "rtest-lib", "1.0"),
    ]
    with simple_index(tmp_path / "index", wheels) as (url, asked):
        changes = pip("rtest-web", find_links=None, index_url=url).check_apply(ctx, apply=True)
    assert summary(changes)[0] == ("ensure", "absent", "3.0")
    assert installed(root, "rtest-web") == "3.0" and installed(root, "rtest-lib") == "1.0"
    assert "/simple/rtest-web/" in asked and "/files/rtest_web-3.0-py3-none-any.whl" in asked


# The case of tests/resources/test_attributes.py for the pip provider: every attribute written,
# each effect checked by check_attributes. @INDEX@ is a local index's URL.
ATTRIBUTES = """
resources:
  - package: rtest-tool
    provider: pip
    virtualenv: /opt/tools
    find_links: /srv/wheels
    ensure: "1.0"
  - package: rtest-web
    provider: pip
    virtualenv: /opt/indexed
    index_url: "@INDEX@"
  - package: other-tool
    name: rtest-tool
    provider: pip
    virtualenv: /opt/other
    find_links: /srv/wheels
    ensure: "2.0"
"""


def check_attributes(cli: CLI, tmp: Path, control_repo: Callable[[Path, str], Path]) -> None:
    need_venv()
    add_wheels(cli.root / WHEELS.lstrip("/"))
    built = tmp / "built"
    wheels = [make_wheel(built, "rtest-web", "3.0", ["rtest-lib"])]
    with simple_index(tmp / "index", [*wheels, make_wheel(built, "rtest-lib", "1.0")]) as (
        url,
        asked,
    ):
        repo = control_repo(tmp / "repo", ATTRIBUTES.replace("@INDEX@", url))
        cli.run("apply", repo, "--node", "n1", check=2)
    # provider: pip, not apt (the root has no dpkg database, apt would have failed)
    # virtualenv: made under the root; find_links: the only place rtest-tool is;
    # ensure: 1.0 although 2.0 is there too
    assert installed(cli.root, "rtest-tool", "/opt/tools") == "1.0"
    assert installed(cli.root, "rtest-web", "/opt/tools") is None
    # index_url: rtest-web and its dependency, only on the index
    assert installed(cli.root, "rtest-web", "/opt/indexed") == "3.0"
    assert installed(cli.root, "rtest-lib", "/opt/indexed") == "1.0"
    assert "/simple/rtest-web/" in asked
    assert installed(cli.root, "rtest-tool", "/opt/indexed") is None
    # name: the package of the title other-tool, in another virtualenv at another version
    assert installed(cli.root, "rtest-tool", "/opt/other") == "2.0"
