"""Every attribute docs/resources.md documents, written in a control repo and checked on the machine.

The table is the profiles below: ``test_every_documented_attribute_is_written_by_a_case``
reads the documentation and fails when an attribute of a type is written by none of them (or
when the documentation and a type's schema disagree). Each case applies its profile with the real
CLI under a temporary root (or, for services, compiles it and converges against the stand-in
``systemctl``) and checks what the attribute did: modes, owners, contents, who ran a command,
which packages dpkg has.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import Location, ModelError
from reconciler.fs import BackupStore
from reconciler.model.catalog import Compiler, attribute_names, resource_type
from reconciler.model.yamlload import LocMap, load
from reconciler.resources.base import COMMON_ATTRIBUTES, REGISTRY, Context
from reconciler.source import DirectorySnapshot
from tests.conftest import CLI, git, need, write_tree
from tests.daemon.conftest import GitServer
from tests.resources import test_apt_repository, test_git, test_package, test_pip, test_service
from tests.resources.test_apt_repository import ARCH, SignedRepo
from tests.resources.test_artifact import sha, tar_gz
from tests.resources.test_git import Served, add_submodule
from tests.resources.test_package import AptRepo, dpkg_version, make_apt_root
from tests.resources.test_service import calls

# The fixtures of the package and service tests: a local apt repository, the stand-in systemctl.
apt = test_package.apt
systemd = test_service.systemd
signed = test_apt_repository.signed
served = test_git.served

DOCS = Path(__file__).resolve().parents[2] / "docs" / "resources.md"
EVERY_TYPE = "*"  # the section of the attributes every type takes

# -- the table: one profile per case --------------------------------------------------------------

# Files, directories, symlinks, lines, execs, accounts, artifacts and the attributes every type
# takes, in one apply. @WWW@ is the releases' directory inside the root, @PORT@ the slow
# artifact server's port.
MACHINE = """
resources:
  - file: /etc/owned
    content: "owned\\n"
    mode: "0640"
    owner: rtestu
    group: rtestg
  - file: /etc/copied
    source: copied.bin
  - file: /etc/rendered
    template: rendered.j2
  - file: /etc/gone
    ensure: absent
  - file: /etc/backed-up
    content: "new\\n"
  - file: /etc/not-backed-up
    content: "new\\n"
    backup: false
  - file: /etc/kept
    content: "new\\n"
    replace: false
  - file: /etc/checked
    content: "good\\n"
    validate_cmd: "grep -qx good %"
  - file: /etc/refused
    content: "bad\\n"
    validate_cmd: [grep, -qx, good, "%"]
  - file: /etc/was-a-dir
    content: "a file now\\n"
    force: true

  - directory: /srv/owned
    mode: "0750"
    owner: rtestu
    group: rtestg
  - directory: /srv/gone
    ensure: absent
  - directory: /srv/purged
    purge: true
  - file: /srv/purged/managed
    content: "m\\n"

  - symlink: /etc/link
    target: owned
  - symlink: /etc/old-link
    ensure: absent
  - symlink: /etc/was-a-file
    target: owned
  - symlink: /etc/link-was-a-dir
    target: owned
    force: true

  - line: max
    path: /etc/pg.conf
    text: "max_connections = 200"
    match: '^#?max_connections'
  - line: "obsolete = 1"
    path: /etc/pg.conf
    ensure: absent

  - exec: shell
    command: 'echo shell > "$RECONCILER_ROOT/tmp/shell"'
  - exec: argv
    command: [/bin/sh, -c, 'echo argv > "$RECONCILER_ROOT/tmp/argv"']
  - exec: creates
    command: 'touch "$RECONCILER_ROOT/tmp/creates-ran"'
    creates: /etc/pg.conf
  - exec: unless
    command: 'touch "$RECONCILER_ROOT/tmp/unless-ran"'
    unless: "true"
  - exec: onlyif
    command: 'touch "$RECONCILER_ROOT/tmp/onlyif-ran"'
    onlyif: [/bin/false]
  - exec: refreshonly
    command: 'touch "$RECONCILER_ROOT/tmp/refreshonly-ran"'
    refreshonly: true
  - exec: cwd
    command: 'pwd > "$RECONCILER_ROOT/tmp/cwd"'
    cwd: /srv
  - exec: environment
    command: 'echo "$GREETING" > "$RECONCILER_ROOT/tmp/environment"'
    environment: {GREETING: hello}
  - exec: user
    command: 'id -un > "$RECONCILER_ROOT/tmp/user"'
    user: nobody
  - exec: timeout
    command: 'sleep 20; touch "$RECONCILER_ROOT/tmp/timeout-ran"'
    timeout: 1
  - exec: returns
    command: 'touch "$RECONCILER_ROOT/tmp/returns-ran"; exit 3'
    returns: [0, 3]

  - group: rtest-app
    gid: 4500
  - group: rtest-plain
  - group: rtest-sys
    system: true
  - group: oldgroup
    ensure: absent
  - user: rtest-app
    uid: 4501
    gid: rtest-app
    groups: [rtest-plain]
    home: /srv/rtest-app
    shell: /bin/sh
  - user: rtest-daemon
    gid: rtest-sys
    system: true
  - user: olduser
    ensure: absent

  - artifact: /opt/release
    url: "file://@WWW@/release.tar.gz"
    sha256: "@RELEASE@"
    extract: tar.gz
  - artifact: /opt/plain
    url: "file://@WWW@/tool.bin"
    sha256: "@TOOL@"
  - artifact: /opt/wrong
    url: "file://@WWW@/tool.bin"
    sha256: "0000000000000000000000000000000000000000000000000000000000000000"
  - artifact: /opt/too-big
    url: "file://@WWW@/big.bin"
    sha256: "@BIG@"
    max_size: 1024
  - artifact: /opt/slow
    url: "http://127.0.0.1:@PORT@/slow.bin"
    sha256: "@SLOW@"
    timeout: 1

  - exec: requires
    command: 'test -e "$RECONCILER_ROOT/tmp/required" && touch "$RECONCILER_ROOT/tmp/requires-ran"'
    require: exec:required
  - exec: required
    command: 'sleep 0.5; touch "$RECONCILER_ROOT/tmp/required"'
  - exec: later
    command: 'test -e "$RECONCILER_ROOT/tmp/earlier" && touch "$RECONCILER_ROOT/tmp/later-ran"'
  - exec: earlier
    command: 'sleep 0.5; touch "$RECONCILER_ROOT/tmp/earlier"'
    before: exec:later
  - file: /etc/notifier
    content: "x\\n"
    notify: exec:notified
  - exec: notified
    command: 'touch "$RECONCILER_ROOT/tmp/notified"'
    refreshonly: true
  - exec: subscriber
    command: 'touch "$RECONCILER_ROOT/tmp/subscribed"'
    refreshonly: true
    subscribe: file:/etc/notifier
  - file: /etc/when-false
    content: "x\\n"
    when: "node == 'elsewhere'"
  - file: /etc/when-true
    content: "x\\n"
    when: "node == 'n1'"
  - file: /etc/noop
    content: "x\\n"
    noop: true
  - file: /etc/secret
    content: "hunter2-in-a-file\\n"
    sensitive: true
"""

SERVICES = """
resources:
  - service: web
    ensure: running
    enable: true
  - service: idle
    ensure: stopped
    enable: false
    provider: systemd
"""

PACKAGES = """
resources:
  - package: rtest-tool
    ensure: "1.0"
  - package: rtest-app
    provider: apt
"""

PACKAGES_THEN = """
resources:
  - package: rtest-tool
    ensure: latest
  - package: rtest-app
    ensure: absent
"""

# -- apt_repository: a signed repository on 127.0.0.1, flat and with dists/ ----------------------

APT_REPOSITORIES = """
resources:
  - apt_repository: rtest-flat
    uris: "@URL@"
    suites: ./
    architectures: ["@ARCH@", all]
    key_source: rtest.asc
  - apt_repository: rtest-dists
    ensure: present
    uris: ["@URL@"]
    suites: stable
    components: main
    key: "@KEY@"
  - apt_repository: rtest-old
    ensure: absent
  - package: rtest-signed
  - package: rtest-dists
"""

# -- git: checkouts of a repository served by git daemon on 127.0.0.1 ----------------------------

GIT = """
resources:
  - git: /srv/tagged
    source: "@URL@"
    revision: v1
    user: rtgit
  - git: /srv/latest
    source: "@URL@"
    revision: main
    ensure: latest
  - git: /srv/with-lib
    source: "@URL@"
    submodules: true
  - git: /srv/old
    ensure: absent
"""

# The case (a test of this module) that applies each profile and checks its effects.
TABLE: dict[str, tuple[str, ...]] = {
    "test_machine": (MACHINE,),
    "test_services": (SERVICES,),
    "test_packages": (PACKAGES, PACKAGES_THEN),
    "test_apt_repositories": (APT_REPOSITORIES,),
    "test_git_checkouts": (GIT,),
    "test_pip_packages": (test_pip.ATTRIBUTES,),
}

# -- mount: live tmpfs mounts under @BASE@, a temporary directory, with a table of their own --
MOUNTS = """
resources:
  - mount: "@BASE@/mounted"
    device: tmpfs
    fstype: tmpfs
    options: "size=1m,ro"
    dump: 1
    pass: 2
    target: "@BASE@/fstab"
  - mount: "@BASE@/present"
    ensure: present
    device: tmpfs
    fstype: tmpfs
    target: "@BASE@/fstab"
  - mount: "@BASE@/unmounted"
    ensure: unmounted
    device: tmpfs
    fstype: tmpfs
    target: "@BASE@/fstab"
  - mount: "@BASE@/gone"
    ensure: absent
    target: "@BASE@/fstab"
"""
TABLE["test_mounts"] = (MOUNTS,)

# -- ssh_authorized_key: keys made by ssh-keygen (@ED@, @RSA@), applied under --root --------------
SSH_KEYS = """
resources:
  - ssh_authorized_key: deploy@desk
    user: deploy
    type: ecdsa-sha2-nistp256
    key: "@EC@"
  - ssh_authorized_key: deploy@laptop
    user: deploy
    type: ssh-ed25519
    key: "@ED@"
    options: ['from="10.0.0.0/8"', no-pty]
    exclusive: true
  - ssh_authorized_key: deploy@ci
    user: deploy
    type: ssh-rsa
    key: "@RSA@"
    target: /etc/ssh/keys/deploy
  - ssh_authorized_key: old@host
    user: deploy
    ensure: absent
    target: /etc/ssh/keys/deploy
  - directory: /etc/ssh/keys
    purge: true
"""
TABLE["test_ssh_keys"] = (SSH_KEYS,)


def documented() -> set[tuple[str, str]]:
    """(type, attribute) for every attribute in docs/resources.md's tables; type "*" for the
    attributes every type takes."""
    found: set[tuple[str, str]] = set()
    section = None
    for line in DOCS.read_text().splitlines():
        heading = re.match(r"## (.+)", line)
        if heading:
            title = heading.group(1).strip()
            section = EVERY_TYPE if title.startswith("Attributes every type") else title
            section = section if section == EVERY_TYPE or section in REGISTRY else None
        elif section is not None and line.startswith("|"):
            first = line.split("|")[1]
            found |= {(section, name) for name in re.findall(r"`([a-z_0-9]+)`", first)}
    return found


def written(profile: str) -> set[tuple[str, str]]:
    """(type, attribute) for every attribute a profile writes; type "*" for those of every
    type."""
    found: set[tuple[str, str]] = set()
    for declaration in load(profile, "profile.yaml")["resources"]:
        assert isinstance(declaration, LocMap)
        kind = resource_type(declaration, Location("profile.yaml", declaration.line))
        for key in declaration:
            if key != kind:
                found.add((EVERY_TYPE if key in COMMON_ATTRIBUTES else kind, str(key)))
    return found


def test_every_documented_attribute_is_written_by_a_case() -> None:
    docs = documented()
    for kind in REGISTRY:
        assert {a for k, a in docs if k == kind} == set(attribute_names(kind)), kind
    assert {a for k, a in docs if k == EVERY_TYPE} == set(COMMON_ATTRIBUTES)
    covered = set().union(*(written(p) for profiles in TABLE.values() for p in profiles))
    assert sorted(docs - covered) == []
    assert all(callable(globals().get(name)) for name in TABLE)


# -- the cases ------------------------------------------------------------------------------------


def control_repo(base: Path, profile: str, files: Mapping[str, str | bytes] | None = None) -> Path:
    """A control repo giving every node one role with one profile (and other ``files``)."""
    tree: dict[str, str | bytes] = {
        "nodes.yaml": "default: all\n",
        "roles/all.yaml": "profiles: [case]\n",
        "profiles/case.yaml": profile,
    }
    return write_tree(base, {**tree, **(files or {})})


@pytest.fixture
def open_cli() -> Iterator[CLI]:
    """The CLI on a root any user can reach, whose tmp/ anyone may write: an exec run as
    ``user: nobody`` writes there."""
    base = Path(tempfile.mkdtemp(prefix="reconciler-attributes-"))
    try:
        base.chmod(0o755)
        cli = CLI(base)
        cli.root.chmod(0o755)
        (cli.root / "tmp").chmod(0o1777)
        yield cli
    finally:
        shutil.rmtree(base)


SLOW_BODY = b"slow\n" * 10


class _Slow(BaseHTTPRequestHandler):
    """Sends the headers at once and the body 3 s later."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(SLOW_BODY)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(3)
        with contextlib.suppress(OSError):
            self.wfile.write(SLOW_BODY)


@pytest.fixture
def slow_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


ACCOUNTS = {
    "passwd": "root:x:0:0:root:/root:/bin/bash\nrtestu:x:4321:4322::/:/bin/sh\n"
    "olduser:x:3001:0::/:/bin/sh\n",
    "group": "root:x:0:\nrtestg:x:4322:\noldgroup:x:3000:\n",
    "shadow": "root:*:19000:0:99999:7:::\nrtestu:*:19000::::::\nolduser:*:19000::::::\n",
    "gshadow": "root:*::\nrtestg:*::\noldgroup:*::\n",
}


def seed_machine(root: Path) -> None:
    """What the machine holds before the run: accounts, and paths the profile changes."""
    for name, text in ACCOUNTS.items():
        (root / "etc" / name).write_text(text)
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).chmod(0o640)
    for rel, text in {
        "etc/gone": "x\n",
        "etc/secret": "before\n",
        "etc/backed-up": "old\n",
        "etc/not-backed-up": "old\n",
        "etc/kept": "old\n",
        "etc/refused": "old\n",
        "etc/was-a-dir/inner": "inner\n",
        "etc/was-a-file": "plain\n",
        "etc/link-was-a-dir/within": "within\n",
        "etc/pg.conf": "listen = 'localhost'\n#max_connections = 100\nobsolete = 1\n",
        "srv/gone/data": "d\n",
        "srv/purged/stray": "s\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "etc/old-link").symlink_to("owned")


def account(root: Path, table: str, name: str) -> list[str]:
    """The fields of an entry of the root's passwd or group; [] when there is none."""
    for line in (root / "etc" / table).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    return []


def test_machine(open_cli: CLI, slow_server: int, tmp_path: Path) -> None:
    cli, root = open_cli, open_cli.root
    seed_machine(root)
    www = root / "srv" / "www"  # a file:// URL is read inside the root
    release = tar_gz({"app/VERSION": b"1.0\n"})
    tool, big = b"tool\n" * 10, b"b" * 2048
    write_tree(www, {"release.tar.gz": release, "tool.bin": tool, "big.bin": big})
    profile = MACHINE
    for token, value in {
        "@WWW@": "/srv/www",
        "@PORT@": str(slow_server),
        "@RELEASE@": sha(release),
        "@TOOL@": sha(tool),
        "@BIG@": sha(big),
        "@SLOW@": sha(SLOW_BODY),
    }.items():
        profile = profile.replace(token, value)
    copied = b"\x00\xffbytes as they are\n"
    repo = control_repo(
        tmp_path / "repo",
        profile,
        {"files/copied.bin": copied, "templates/rendered.j2": "node={{ node }} role={{ role }}\n"},
    )
    started = time.monotonic()
    done = cli.run("apply", repo, "--node", "n1", "--format", "json", check=6)
    assert time.monotonic() - started < 15  # the exec and the download timed out after 1 s
    report = json.loads(done.stdout)
    status = {r["id"]: r["status"] for r in report["resources"]}
    error = {r["id"]: r["error"] or "" for r in report["resources"]}
    failed = sorted(rid for rid, s in status.items() if s == "failed")
    assert failed == [
        "artifact:/opt/slow",
        "artifact:/opt/too-big",
        "artifact:/opt/wrong",
        "exec:timeout",
        "file:/etc/refused",
    ], error
    backups = BackupStore(cli.state)

    # file
    owned = (root / "etc/owned").stat()
    assert (root / "etc/owned").read_text() == "owned\n"  # content
    assert owned.st_mode & 0o7777 == 0o640  # mode
    assert (owned.st_uid, owned.st_gid) == (4321, 4322)  # owner, group: the root's accounts
    assert (root / "etc/copied").read_bytes() == copied  # source
    assert (root / "etc/rendered").read_text() == "node=n1 role=all\n"  # template
    assert not (root / "etc/gone").exists()  # ensure
    assert backups.entries("/etc/backed-up")  # backup (its default)
    assert (root / "etc/not-backed-up").read_text() == "new\n"
    assert backups.entries("/etc/not-backed-up") == []  # backup: false
    assert (root / "etc/kept").read_text() == "old\n"  # replace: false
    assert (root / "etc/checked").read_text() == "good\n"  # validate_cmd accepted
    assert (root / "etc/refused").read_text() == "old\n"  # validate_cmd refused
    assert "validate_cmd exited 1" in error["file:/etc/refused"]
    assert (root / "etc/was-a-dir").read_text() == "a file now\n"  # force
    assert list((cli.state / "backups" / "displaced").rglob("inner"))

    # directory
    srv = (root / "srv/owned").stat()
    assert srv.st_mode & 0o7777 == 0o750  # mode
    assert (srv.st_uid, srv.st_gid) == (4321, 4322)  # owner, group
    assert not (root / "srv/gone").exists() and backups.entries("/srv/gone/data")  # ensure
    assert sorted(os.listdir(root / "srv/purged")) == ["managed"]  # purge

    # symlink
    assert os.readlink(root / "etc/link") == "owned"  # target
    assert not (root / "etc/old-link").is_symlink()  # ensure
    assert os.readlink(root / "etc/was-a-file") == "owned"  # a file in the way, backed up
    assert backups.entries("/etc/was-a-file")
    assert os.readlink(root / "etc/link-was-a-dir") == "owned"  # force
    assert list((cli.state / "backups" / "displaced").rglob("within"))

    # line: path, text, match, ensure
    assert (root / "etc/pg.conf").read_text() == "listen = 'localhost'\nmax_connections = 200\n"

    # exec
    ran = {p.name: p.read_text() for p in (root / "tmp").iterdir()}
    assert ran["shell"] == "shell\n" and ran["argv"] == "argv\n"  # command
    assert "creates-ran" not in ran and status["exec:creates"] == "in_sync"  # creates
    assert "unless-ran" not in ran  # unless
    assert "onlyif-ran" not in ran  # onlyif
    assert "refreshonly-ran" not in ran  # refreshonly: not refreshed, not run
    assert ran["cwd"] == f"{root}/srv\n"  # cwd, under the root
    assert ran["environment"] == "hello\n"  # environment
    assert ran["user"] == "nobody\n"  # user
    assert "timed out" in error["exec:timeout"] and "timeout-ran" not in ran  # timeout
    assert "returns-ran" in ran and status["exec:returns"] == "changed"  # returns: exit 3 is fine

    # group
    assert account(root, "group", "rtest-app")[:3] == ["rtest-app", "x", "4500"]  # gid
    assert int(account(root, "group", "rtest-plain")[2]) >= 1000  # ensure (present)
    assert int(account(root, "group", "rtest-sys")[2]) < 1000  # system
    assert account(root, "group", "oldgroup") == []  # ensure: absent

    # user
    app = account(root, "passwd", "rtest-app")
    assert app == ["rtest-app", "x", "4501", "4500", "", "/srv/rtest-app", "/bin/sh"]
    assert account(root, "group", "rtest-plain")[3] == "rtest-app"  # groups
    assert not (root / "srv/rtest-app").exists()  # home is only recorded
    assert int(account(root, "passwd", "rtest-daemon")[2]) < 1000  # system
    assert account(root, "passwd", "olduser") == []  # ensure: absent

    # artifact
    assert (root / "opt/release/app/VERSION").read_text() == "1.0\n"  # url, sha256, extract
    assert (root / "opt/plain/tool.bin").read_bytes() == tool  # extract: none (the default)
    assert "checksum mismatch" in error["artifact:/opt/wrong"]  # sha256
    assert not (root / "opt/wrong").exists()
    assert "larger than 1024 bytes" in error["artifact:/opt/too-big"]  # max_size
    assert not (root / "opt/too-big").exists()
    assert "timed out" in error["artifact:/opt/slow"]  # timeout
    assert not (root / "opt/slow").exists()

    # every type
    assert "requires-ran" in ran  # require: it ran after exec:required
    assert "later-ran" in ran  # before: exec:earlier ran first
    assert "notified" in ran  # notify: the file changed, the exec was refreshed
    assert "subscribed" in ran  # subscribe
    assert not (root / "etc/when-false").exists() and "file:/etc/when-false" not in status
    assert (root / "etc/when-true").exists()  # when
    assert not (root / "etc/noop").exists() and status["file:/etc/noop"] == "would_change"
    assert (root / "etc/secret").read_text() == "hunter2-in-a-file\n"  # sensitive
    assert "hunter2" not in done.stdout + done.stderr  # no diff, only digests
    diffs = {r["id"]: [c.get("diff") for c in r["changes"]] for r in report["resources"]}
    assert "+new" in str(diffs["file:/etc/backed-up"])  # whereas other changes show a diff


def compile_profile(base: Path, profile: str) -> Any:
    return Compiler(DirectorySnapshot(control_repo(base, profile))).compile("n1", {})


def test_services(systemd: tuple[Context, Path], tmp_path: Path) -> None:
    """Compiled from the repo, converged against the stand-in systemctl (no systemd here)."""
    ctx, state = systemd
    state.write_text(json.dumps({"idle.service": {"active": True, "enabled": True}}))
    catalog = compile_profile(tmp_path / "repo", SERVICES)
    for rid in catalog.order():
        catalog.entries[rid].resource.check_apply(ctx, True)
    units = json.loads(state.read_text())
    assert units["web.service"] == {"active": True, "enabled": True}  # ensure, enable
    assert units["idle.service"] == {"active": False, "enabled": False}
    assert {"start -- web.service", "stop -- idle.service", "disable -- idle.service"} <= set(
        calls(state)
    )  # provider: systemd, through systemctl
    with pytest.raises(ModelError, match=r"key 'provider': must be one of systemd, not 'upstart'"):
        compile_profile(tmp_path / "other", SERVICES.replace("systemd", "upstart"))


def test_packages(apt: tuple[Context, AptRepo, Path], cli: CLI, tmp_path: Path) -> None:
    _, packages, _ = apt
    packages.add("rtest-tool", "2.0")
    make_apt_root(cli.root, packages)
    repo = control_repo(tmp_path / "repo", PACKAGES)
    cli.run("apply", repo, "--node", "n1", check=2)
    assert dpkg_version(cli.root, "rtest-tool") == "1.0"  # ensure: a version, not the newest
    assert dpkg_version(cli.root, "rtest-app") == "1.0"  # provider: apt, with its dependency
    assert dpkg_version(cli.root, "rtest-lib") == "1.0"
    control_repo(repo, PACKAGES_THEN)
    cli.run("apply", repo, "--node", "n1", check=2)
    assert dpkg_version(cli.root, "rtest-tool") == "2.0"  # ensure: latest
    assert dpkg_version(cli.root, "rtest-app") is None  # ensure: absent


# -- cron, host, sysctl: files under the root (sysctl's live value: tests/resources/test_sysctl.py)

CRON_HOST_SYSCTL = """
resources:
  - cron: nightly
    command: /usr/local/bin/backup
    minute: 30
    hour: 2
    monthday: 1-15
    month: "*/2"
    weekday: [1, 3]
    environment: [MAILTO=ops]
  - cron: mine
    command: /usr/bin/report
    user: rtestu
    target: crontab
    special: hourly
  - cron: old
    ensure: absent
  - host: db
    ip: 10.0.0.2
    host_aliases: [database]
  - host: gone
    ensure: absent
  - host: other
    ip: "fd00::1"
    target: /etc/hosts.other
  - sysctl: net.ipv4.ip_forward
    value: 1
  - sysctl: net.core.somaxconn
    value: 1024
    target: /etc/sysctl.d/60-net.conf
  - sysctl: vm.swappiness
    ensure: absent
    target: /etc/sysctl.d/60-net.conf
"""
TABLE["test_cron_host_sysctl"] = (CRON_HOST_SYSCTL,)


def test_cron_host_sysctl(cli: CLI, tmp_path: Path) -> None:
    root = cli.root
    write_tree(
        root,
        {
            "etc/passwd": "root:x:0:0::/root:/bin/sh\nrtestu:x:4321:4322::/:/bin/sh\n",
            "etc/group": "root:x:0:\nrtestg:x:4322:\ncrontab:x:107:\n",
            "etc/cron.d/old": "* * * * * root /bin/true\n",
            "etc/hosts": "127.0.0.1\tlocalhost\n10.0.0.1 db\n10.9.9.9 gone\n",
            "etc/hosts.other": "",
            "etc/sysctl.d/60-net.conf": "vm.swappiness = 10\n",
        },
    )
    (root / "var/spool/cron/crontabs").mkdir(parents=True)
    done = cli.run("apply", control_repo(tmp_path / "repo", CRON_HOST_SYSCTL), "--node", "n1")
    assert done.returncode == 2, done.stdout + done.stderr

    # cron: command, minute, hour, monthday, month, weekday, environment; target cron.d, user root
    nightly = (root / "etc/cron.d/nightly").read_text().splitlines()
    assert nightly[1:] == ["MAILTO=ops", "30 2 1-15 */2 1,3 root /usr/local/bin/backup"]
    mine = root / "var/spool/cron/crontabs/rtestu"  # target: crontab, user, special
    assert mine.read_text() == "# reconciler: mine\n@hourly /usr/bin/report\n"
    assert (mine.stat().st_uid, mine.stat().st_gid) == (4321, 107)
    assert not (root / "etc/cron.d/old").exists()  # ensure: absent

    # host: ip, host_aliases, ensure, target
    assert (root / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n10.0.0.2\tdb database\n"
    assert (root / "etc/hosts.other").read_text() == "fd00::1\tother\n"

    # sysctl: value, target, ensure (the file only, under --root)
    assert (root / "etc/sysctl.d/net.ipv4.ip_forward.conf").read_text() == (
        "net.ipv4.ip_forward = 1\n"
    )
    assert (root / "etc/sysctl.d/60-net.conf").read_text() == "net.core.somaxconn = 1024\n"
    assert "only the file under --root" in done.stdout


# -- systemd_unit ---------------------------------------------------------------------------------

SYSTEMD_UNITS = """
resources:
  - systemd_unit: app.service
    source: app.service
    enable: true
  - systemd_unit: app.timer
    template: app.timer.j2
  - systemd_unit: app limits
    unit: app.service
    dropin: limits
    content: "[Service]\\nLimitNOFILE=4096\\n"
  - systemd_unit: old.service
    ensure: absent
"""

TABLE["test_systemd_units"] = (SYSTEMD_UNITS,)

APP_UNIT = "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"


def test_systemd_units(cli: CLI, tmp_path: Path) -> None:
    """Applied by the real CLI under --root: systemd-analyze verify, systemctl --root enable."""
    need("systemd-analyze")
    need("systemctl")
    units = cli.root / "etc/systemd/system"
    write_tree(units, {"old.service": APP_UNIT})
    repo = control_repo(
        tmp_path / "repo",
        SYSTEMD_UNITS,
        {
            "files/app.service": APP_UNIT,
            "templates/app.timer.j2": "[Timer]\nOnCalendar=daily\n# {{ node }}\n",
        },
    )
    cli.run("apply", repo, "--node", "n1", check=2)
    assert (units / "app.service").read_text() == APP_UNIT  # source
    assert (units / "multi-user.target.wants/app.service").is_symlink()  # enable
    assert (units / "app.timer").read_text() == "[Timer]\nOnCalendar=daily\n# n1\n"  # template
    limits = units / "app.service.d/limits.conf"  # unit, dropin, content
    assert limits.read_text() == "[Service]\nLimitNOFILE=4096\n"
    assert not (units / "old.service").exists()  # ensure: absent
    cli.run("apply", repo, "--node", "n1", check=0)


# -- nftables -------------------------------------------------------------------------------------

NFTABLES = """
resources:
  - nftables: web
    content: "table inet rweb {\\n  chain input {\\n    tcp dport 80 accept\\n  }\\n}\\n"
  - nftables: copied
    source: copied.nft
    path: /etc/firewall/copied.nft
  - nftables: rendered
    template: rendered.nft.j2
  - nftables: old
    ensure: absent
"""

TABLE["test_nftables"] = (NFTABLES,)


def test_nftables(cli: CLI, tmp_path: Path) -> None:
    """Applied by the real CLI under --root: checked by nft -c, only the files are written (the
    live ruleset is tested in a network namespace in test_nftables.py)."""
    need("nft")
    write_tree(cli.root, {"etc/nftables.d/old.nft": "table ip old {\n}\n", "etc/firewall/.k": ""})
    copied = "table ip rcopied {\n  chain c {\n    counter\n  }\n}\n"
    repo = control_repo(
        tmp_path / "repo",
        NFTABLES,
        {"files/copied.nft": copied, "templates/rendered.nft.j2": "table ip r{{ node }} {\n}\n"},
    )
    cli.run("apply", repo, "--node", "n1", check=2)
    rulesets = cli.root / "etc/nftables.d"
    assert "tcp dport 80 accept" in (rulesets / "web.nft").read_text()  # content
    assert (cli.root / "etc/firewall/copied.nft").read_text() == copied  # source, path
    assert (rulesets / "rendered.nft").read_text() == "table ip rn1 {\n}\n"  # template
    assert not (rulesets / "old.nft").exists()  # ensure: absent
    assert not (cli.state / "nftables").exists()  # under --root nothing is loaded
    cli.run("apply", repo, "--node", "n1", check=0)


def test_mounts(tmp_path: Path) -> None:
    """Applied without --root (mounts are live state); the table is a file of the test's own."""
    from reconciler.resources.mount import live_mount
    from tests.conftest import need
    from tests.resources.mounts import tmpfs

    need("mount")
    with tmpfs(tmp_path / "probe"):  # skips when the kernel refuses a mount here
        pass
    base = tmp_path / "m"
    for name in ("mounted", "present", "unmounted", "gone"):
        (base / name).mkdir(parents=True)
        if name in ("unmounted", "gone"):
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(base / name)], check=True)
    (base / "fstab").write_text(f"tmpfs {base}/gone tmpfs defaults 0 0\n")
    repo = control_repo(tmp_path / "repo", MOUNTS.replace("@BASE@", str(base)))
    try:
        CLI(tmp_path)(
            *("apply", f"--repo={repo}", "--state-dir", str(tmp_path / "state"), "--node", "n1"),
            check=2,
        )
        mounted = live_mount(str(base / "mounted"))
        assert mounted is not None and mounted.fstype == "tmpfs"  # ensure, device, fstype
        assert "ro" in mounted.flags  # options
        assert live_mount(str(base / "present")) is None  # ensure: present
        assert live_mount(str(base / "unmounted")) is None  # ensure: unmounted
        assert live_mount(str(base / "gone")) is None  # ensure: absent
        assert sorted((base / "fstab").read_text().splitlines()) == [  # target
            f"tmpfs\t{base}/mounted\ttmpfs\tsize=1m,ro\t1\t2",  # dump, pass
            f"tmpfs\t{base}/present\ttmpfs\tdefaults\t0\t0",
            f"tmpfs\t{base}/unmounted\ttmpfs\tdefaults\t0\t0",
        ]
    finally:
        for name in ("mounted", "unmounted", "gone"):
            while live_mount(str(base / name)) is not None:
                subprocess.run(["umount", "-l", str(base / name)], check=True)


def test_ssh_keys(cli: CLI, tmp_path: Path) -> None:
    from tests.resources.test_ssh_authorized_key import fingerprints, keygen

    ed, rsa, ec, stray = (keygen(tmp_path, k, k) for k in ("ed25519", "rsa", "ecdsa", "ecdsa"))
    root = cli.root
    (root / "etc/passwd").write_text(
        "root:x:0:0::/root:/bin/sh\ndeploy:x:4700:4700::/home/d:/bin/sh\n"
    )
    (root / "home/d").mkdir(parents=True)
    write_tree(
        root,
        {
            "home/d/.ssh/authorized_keys": f"{stray[0]} {stray[1]} stray@old\n",
            "etc/ssh/keys/deploy": f"{stray[0]} {stray[1]} old@host\n",
            "etc/ssh/keys/stray": "x\n",
        },
    )
    profile = SSH_KEYS.replace("@ED@", ed[1]).replace("@RSA@", rsa[1]).replace("@EC@", ec[1])
    cli.run("apply", control_repo(tmp_path / "repo", profile), "--node", "n1", check=2)
    home_keys = root / "home/d/.ssh/authorized_keys"
    # ensure, user, type, key, options; exclusive removed stray@old, kept the catalog's deploy@desk
    assert sorted(home_keys.read_text().splitlines()) == [
        f"ecdsa-sha2-nistp256 {ec[1]} deploy@desk",
        f'from="10.0.0.0/8",no-pty ssh-ed25519 {ed[1]} deploy@laptop',
    ]
    assert sorted(line.split()[-1] for line in fingerprints(home_keys)) == ["(ECDSA)", "(ED25519)"]
    st = home_keys.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (4700, 4700, 0o600)
    assert (root / "home/d/.ssh").stat().st_mode & 0o777 == 0o700
    # target; ensure: absent removed old@host
    assert (root / "etc/ssh/keys/deploy").read_text() == f"ssh-rsa {rsa[1]} deploy@ci\n"
    assert sorted(os.listdir(root / "etc/ssh/keys")) == ["deploy"]  # a purge keeps a target


def test_apt_repositories(signed: SignedRepo, cli: CLI, tmp_path: Path) -> None:
    signed.add("rtest-dists", "1.0", suite="stable")
    make_apt_root(cli.root, signed.apt)
    (cli.root / "etc/apt/sources.list").write_text("")
    old = {"sources.list.d/rtest-old.sources": "Types: deb\n", "keyrings/rtest-old.asc": "k\n"}
    write_tree(cli.root / "etc/apt", old)
    key = json.dumps(signed.armored.decode())[1:-1]
    profile = APT_REPOSITORIES.replace("@URL@", signed.url).replace("@ARCH@", ARCH)
    repo = control_repo(
        tmp_path / "repo", profile.replace("@KEY@", key), {"files/rtest.asc": signed.armored}
    )
    cli.run("apply", repo, "--node", "n1", check=2)
    etc = cli.root / "etc/apt"
    flat = (etc / "sources.list.d/rtest-flat.sources").read_text()
    assert f"URIs: {signed.url}\nSuites: ./\n" in flat  # uris, suites
    assert f"Architectures: {ARCH} all\n" in flat  # architectures
    assert "Signed-By: /etc/apt/keyrings/rtest-flat.asc\n" in flat
    assert (etc / "keyrings/rtest-flat.asc").read_bytes() == signed.armored  # key_source
    dists = (etc / "sources.list.d/rtest-dists.sources").read_text()
    assert "Suites: stable\nComponents: main\n" in dists  # components; ensure: present
    assert (etc / "keyrings/rtest-dists.asc").read_text().strip() == signed.armored.decode().strip()
    assert not (etc / "sources.list.d/rtest-old.sources").exists()  # ensure: absent
    assert not (etc / "keyrings/rtest-old.asc").exists()
    # Both sources were fetched (signatures checked with their keys) and served the packages.
    assert dpkg_version(cli.root, "rtest-signed") == "1.0"
    assert dpkg_version(cli.root, "rtest-dists") == "1.0"


def test_git_checkouts(served: Served, server: GitServer, cli: CLI, tmp_path: Path) -> None:
    add_submodule(served, server)
    main = git(served.bare, "rev-parse", "main")
    write_tree(cli.root, {"etc/passwd": "rtgit:x:4601:4601::/srv:/bin/sh\n"})
    git(tmp_path, "init", "-q", str(cli.root / "srv/old"))
    repo = control_repo(tmp_path / "repo", GIT.replace("@URL@", served.url))
    plan = cli.run("plan", repo, "--node", "n1", check=2)
    assert served.first in plan.stdout and not (cli.root / "srv/tagged").exists()
    cli.run("apply", repo, "--node", "n1", check=2)
    tagged = cli.root / "srv/tagged"
    assert (tagged / "README").read_text() == "one\n"  # source, revision: a tag
    assert {p.lstat().st_uid for p in [tagged, *tagged.rglob("*")]} == {4601}  # user
    assert git(cli.root / "srv/latest", "rev-parse", "HEAD") == main  # ensure: latest
    assert (cli.root / "srv/with-lib/lib/lib.txt").read_text() == "lib\n"  # submodules
    assert not (cli.root / "srv/old").exists()  # ensure: absent
    assert not served.marker.exists()
    cli.run("apply", repo, "--node", "n1", check=0)


def test_pip_packages(cli: CLI, tmp_path: Path) -> None:
    """package with provider pip: its case is test_pip.ATTRIBUTES, checked here."""
    test_pip.check_attributes(cli, tmp_path, control_repo)
