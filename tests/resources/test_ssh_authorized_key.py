"""ssh_authorized_key on a temporary root with real keys made by ssh-keygen, whose files
ssh-keygen reads back."""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ModelError, ReconcilerError, ResourceError
from reconciler.model.catalog import Compiler
from reconciler.resources.base import Context
from reconciler.resources.ssh_authorized_key import SshAuthorizedKey
from reconciler.source import DirectorySnapshot
from tests.conftest import need, write_tree
from tests.resources.conftest import make

UID = 4600
_made = itertools.count()


def keygen(tmp: Path, kind: str, name: str) -> tuple[str, str]:
    """A new public key of ``kind`` (ed25519, rsa, ecdsa): its type and base64."""
    need("ssh-keygen")
    path = tmp / f"key-{name}-{next(_made)}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", name, "-f", str(path)], check=True
    )
    kind_name, blob, _ = (path.with_suffix(".pub")).read_text().split(" ", 2)
    return kind_name, blob


def seed_user(root: Path) -> Path:
    (root / "etc/passwd").write_text(
        f"root:x:0:0:root:/root:/bin/bash\ndeploy:x:{UID}:{UID}::/home/deploy:/bin/sh\n"
    )
    home = root / "home/deploy"
    home.mkdir(parents=True)
    os.chown(home, UID, UID)
    return home


def key(tmp: Path, title: str, **attrs: Any) -> SshAuthorizedKey:
    if "key" not in attrs and attrs.get("ensure") != "absent":
        attrs["type"], attrs["key"] = keygen(tmp, "ed25519", title)
    resource = make(SshAuthorizedKey, title, user="deploy", **attrs)
    assert isinstance(resource, SshAuthorizedKey)
    return resource


def fingerprints(path: Path) -> list[str]:
    """What OpenSSH reads in the file: one line per key, ending with its comment."""
    done = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


class TestKeys:
    def test_a_key_with_options_gets_the_files_sshd_requires(
        self, ctx: Context, tmp_path: Path
    ) -> None:
        home = seed_user(ctx.root.prefix)
        laptop = key(tmp_path, "deploy@laptop", options=['from="10.0.0.0/8"', "no-pty"])
        planned = laptop.check_apply(ctx, apply=False)
        assert [c.property for c in planned] == [".ssh", "key"]
        assert not (home / ".ssh").exists()  # the plan made nothing

        assert laptop.check_apply(ctx, apply=True) == planned
        ssh, keys = (home / ".ssh").stat(), (home / ".ssh/authorized_keys").stat()
        assert (ssh.st_mode & 0o7777, ssh.st_uid, ssh.st_gid) == (0o700, UID, UID)
        assert (keys.st_mode & 0o7777, keys.st_uid, keys.st_gid) == (0o600, UID, UID)
        text = (home / ".ssh/authorized_keys").read_text()
        assert text == f'from="10.0.0.0/8",no-pty ssh-ed25519 {laptop.attrs["key"]} deploy@laptop\n'
        assert fingerprints(home / ".ssh/authorized_keys")[0].endswith("deploy@laptop (ED25519)")
        assert laptop.check_apply(ctx, apply=False) == []

    def test_other_lines_stay_a_changed_key_is_replaced_and_absent_removes(
        self, ctx: Context, tmp_path: Path
    ) -> None:
        home = seed_user(ctx.root.prefix)
        (home / ".ssh").mkdir(mode=0o700)
        os.chown(home / ".ssh", UID, UID)
        kind, other = keygen(tmp_path, "rsa", "other")
        keys = home / ".ssh/authorized_keys"
        keys.write_text(f"# hand-written\n{kind} {other} other@host\n")
        os.chown(keys, UID, UID)
        keys.chmod(0o600)
        key(tmp_path, "ci").check_apply(ctx, apply=True)
        renewed = key(tmp_path, "ci")  # a new key under the same comment
        changes = renewed.check_apply(ctx, apply=True)
        assert [c.property for c in changes] == ["key"]
        assert changes[0].diff is not None and "-ssh-ed25519" in changes[0].diff
        assert keys.read_text() == (
            f"# hand-written\n{kind} {other} other@host\nssh-ed25519 {renewed.attrs['key']} ci\n"
        )
        assert ctx.backups.entries("/home/deploy/.ssh/authorized_keys")
        gone = key(tmp_path, "ci", ensure="absent")
        assert [(c.property, c.after) for c in gone.check_apply(ctx, apply=True)] == [("key", None)]
        assert keys.read_text() == f"# hand-written\n{kind} {other} other@host\n"
        assert gone.check_apply(ctx, apply=False) == []

    def test_modes_and_owners_are_repaired(self, ctx: Context, tmp_path: Path) -> None:
        home = seed_user(ctx.root.prefix)
        laptop = key(tmp_path, "laptop")
        laptop.check_apply(ctx, apply=True)
        (home / ".ssh").chmod(0o755)
        os.chown(home / ".ssh/authorized_keys", 0, 0)
        (home / ".ssh/authorized_keys").chmod(0o644)
        changes = laptop.check_apply(ctx, apply=True)
        assert {c.property for c in changes} == {
            ".ssh mode",
            "authorized_keys mode",
            "authorized_keys owner",
        }
        keys = (home / ".ssh/authorized_keys").stat()
        assert (keys.st_mode & 0o777, keys.st_uid) == (0o600, UID)
        assert (home / ".ssh").stat().st_mode & 0o777 == 0o700

    def test_a_target_of_its_own(self, ctx: Context, tmp_path: Path) -> None:
        seed_user(ctx.root.prefix)
        (ctx.root.prefix / "etc/ssh/keys").mkdir(parents=True)
        key(tmp_path, "ops", target="/etc/ssh/keys/deploy").check_apply(ctx, apply=True)
        written = ctx.root.prefix / "etc/ssh/keys/deploy"
        assert written.read_text().endswith(" ops\n")
        assert (written.stat().st_uid, written.stat().st_mode & 0o777) == (UID, 0o600)
        assert (ctx.root.prefix / "etc/ssh/keys").stat().st_mode & 0o777 == 0o755  # untouched


class TestExclusive:
    def test_keys_the_catalog_does_not_declare_are_removed(
        self, ctx: Context, tmp_path: Path
    ) -> None:
        home = seed_user(ctx.root.prefix)
        kept, also = key(tmp_path, "kept", exclusive=True), key(tmp_path, "also")
        stray_type, stray = keygen(tmp_path, "ecdsa", "stray")
        ctx.catalog_resources = (kept, also)
        also.check_apply(ctx, apply=True)
        keys = home / ".ssh/authorized_keys"
        keys.write_text(keys.read_text() + f"# a comment\n{stray_type} {stray} stray@old\n")
        changes = kept.check_apply(ctx, apply=False)
        assert [(c.property, c.after) for c in changes] == [("key", kept.line()), ("purged", None)]
        assert "stray@old" in keys.read_text()  # the plan removed nothing
        kept.check_apply(ctx, apply=True)
        assert [line.rsplit(" ", 1)[-1] for line in keys.read_text().splitlines()] == [
            "also",
            "comment",
            "kept",
        ]
        assert kept.check_apply(ctx, apply=False) == []

    def test_without_exclusive_other_keys_stay(self, ctx: Context, tmp_path: Path) -> None:
        home = seed_user(ctx.root.prefix)
        key(tmp_path, "first").check_apply(ctx, apply=True)
        key(tmp_path, "second").check_apply(ctx, apply=True)
        assert len(fingerprints(home / ".ssh/authorized_keys")) == 2


class TestSymlinks:
    def test_a_planted_ssh_directory_is_not_followed(self, ctx: Context, tmp_path: Path) -> None:
        home = seed_user(ctx.root.prefix)
        elsewhere = ctx.root.prefix / "root/.ssh"
        elsewhere.mkdir(parents=True)
        (home / ".ssh").symlink_to(elsewhere)
        os.lchown(home / ".ssh", UID, UID)  # planted by the user
        with pytest.raises(ReconcilerError, match="symlink"):
            key(tmp_path, "laptop").check_apply(ctx, apply=True)
        assert os.listdir(elsewhere) == []

    def test_a_planted_keys_file_is_not_followed(self, ctx: Context, tmp_path: Path) -> None:
        home = seed_user(ctx.root.prefix)
        (home / ".ssh").mkdir(mode=0o700)
        os.chown(home / ".ssh", UID, UID)
        shadow = ctx.root.prefix / "etc/shadow"
        shadow.write_text("root:*:1::::::\n")
        (home / ".ssh/authorized_keys").symlink_to(shadow)
        os.lchown(home / ".ssh/authorized_keys", UID, UID)
        with pytest.raises(ResourceError, match="symlink: not followed"):
            key(tmp_path, "laptop").check_apply(ctx, apply=True)
        assert shadow.read_text() == "root:*:1::::::\n"
        assert (shadow.stat().st_uid, shadow.stat().st_mode & 0o777) == (0, 0o644)

    def test_an_unknown_user_fails_naming_the_passwd(self, ctx: Context, tmp_path: Path) -> None:
        seed_user(ctx.root.prefix)
        nobody = make(SshAuthorizedKey, "x", user="ghost", type="ssh-ed25519", key="AAAA")
        with pytest.raises(ResourceError, match=r"no user 'ghost' in .*/etc/passwd"):
            nobody.check_apply(ctx, apply=False)


def compile_key(tmp_path: Path, body: str) -> None:
    profile = "resources:\n  - ssh_authorized_key: deploy@laptop\n    user: deploy\n" + body
    files = {"nodes.yaml": "default: all\n", "roles/all.yaml": "profiles: [p]\n"}
    repo = write_tree(tmp_path / "repo", {**files, "profiles/p.yaml": profile})
    Compiler(DirectorySnapshot(repo)).compile("n1", {})


RSA_BLOB = "AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7"  # starts with the name ssh-rsa


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    type: ssh-ed25519\n    key: 'not base64!'\n", r"key.*not base64"),
        (f"    type: ssh-ed25519\n    key: {RSA_BLOB}\n", r"key.*not a ssh-ed25519 key .*ssh-rsa"),
        ("    type: ssh-dsa\n    key: AAAA\n", r"type.*must be one of"),
        ("    type: ssh-rsa\n", r"key.*needed unless ensure is absent"),
        (
            f"    type: ssh-rsa\n    key: {RSA_BLOB}\n    options: ['no-pty\\nssh-rsa AAAA x']\n",
            r"options.*not an option",
        ),
        (
            f"    type: ssh-rsa\n    key: {RSA_BLOB}\n    options: 'command=\"a\" b'\n",
            r"options.*not an option",
        ),
        (f"    type: ssh-rsa\n    key: {RSA_BLOB}\n    target: .ssh/keys\n", r"target.*absolute"),
    ],
)
def test_bad_values_are_refused_naming_the_attribute(
    tmp_path: Path, body: str, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        compile_key(tmp_path, body)


def test_a_user_that_could_be_an_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"user.*not a valid user"):
        compile_key_as(tmp_path, "-oProxyCommand")


def compile_key_as(tmp_path: Path, user: str) -> None:
    profile = (
        f"resources:\n  - ssh_authorized_key: k\n    user: '{user}'\n"
        f"    type: ssh-rsa\n    key: {RSA_BLOB}\n"
    )
    files = {"nodes.yaml": "default: all\n", "roles/all.yaml": "profiles: [p]\n"}
    repo = write_tree(tmp_path / "repo2", {**files, "profiles/p.yaml": profile})
    Compiler(DirectorySnapshot(repo)).compile("n1", {})
