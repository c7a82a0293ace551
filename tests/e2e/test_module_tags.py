"""Modules pinned by a tag (``tag:`` with its ``commit:`` lock), served by a real git daemon:
the tag is fetched and must still lead to the lock, and with ``source.verify`` the tag's own
signature (GPG or SSH, real keys) is what is checked."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CLI, GIT_ENV, commit_all, git, write_tree
from tests.daemon.conftest import GitServer
from tests.e2e.test_modules import APACHE, CONTROL, control, module_url, new_bare, serve_module
from tests.source.test_verify import Signer, gpg_signer, sh, ssh_signer


@dataclass
class Keys:
    trusted: Signer
    stranger: Signer
    verify: str  # the node's source.verify, as its configuration file says it
    untrusted: str  # how a refusal names a key that is not trusted


@pytest.fixture(scope="module", params=["ssh", "gpg"])
def keys(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Keys]:
    base = tmp_path_factory.mktemp(request.param)
    if request.param == "ssh":
        trusted, stranger = ssh_signer(base, "trusted"), ssh_signer(base, "stranger")
        assert trusted.public is not None
        allowed = base / "allowed"
        allowed.write_text(f'ops@example.com namespaces="git" {trusted.public.read_text()}')
        verify = f"  verify:\n    format: ssh\n    allowed_signers: {allowed}\n"
        yield Keys(trusted, stranger, verify, f"which is not in the allowed signers {allowed}")
        return
    trusted, stranger = gpg_signer(base, "trusted"), gpg_signer(base, "stranger")
    keyring = trusted.exported["armored"]
    verify = f"  verify:\n    format: gpg\n    keyring: {keyring}\n"
    yield Keys(trusted, stranger, verify, f"which is not in the keyring {keyring}")
    for signer in (trusted, stranger):  # the agents signing started
        subprocess.run(
            ["gpgconf", "--homedir", str(signer.home), "--kill", "gpg-agent"],
            env=GIT_ENV,
            capture_output=True,
            check=False,
        )


def tag(work: Path, name: str, signer: Signer | None = None, commit: str = "HEAD") -> str:
    """An annotated tag (signed by ``signer`` when given); its tag object's id."""
    how = ["-a"] if signer is None else ["-s"]
    args = [*(signer.git_args() if signer else []), "tag", "-f", *how, "-m", f"release {name}"]
    sh("git", "-C", work, *args, name, commit, env=signer.env() if signer else None)
    return git(work, "rev-parse", f"refs/tags/{name}")


def publish(server: GitServer, work: Path, *tags: str) -> None:
    refs = [f"refs/tags/{t}" for t in tags]
    git(work, "push", "-q", "-f", str(server.base / "apache.git"), "HEAD:refs/heads/main", *refs)


def tag_pin(url: str, name: str, commit: str) -> str:
    return f"modules:\n  apache:\n    url: {url}\n    tag: {name}\n    commit: {commit}\n"


def signed_control(tmp: Path, signer: Signer, modules: str) -> Path:
    """The control repo, its last commit signed by ``signer`` (a new one for each call)."""
    repo = write_tree(tmp / "control", {**CONTROL, "modules.yaml": modules})
    if not (repo / ".git").exists():
        git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    args = [*signer.git_args(), "commit", "-q", "-S", "--allow-empty", "-m", "pin"]
    sh("git", "-C", repo, *args, env=signer.env())
    return repo


def node_config(tmp: Path, cli: CLI, repo: Path, verify: str) -> str:
    config = tmp / "config.yaml"
    config.write_text(
        f"node: web-1\nroot: {cli.root}\nstate_dir: {cli.state}\nfacts_dirs: []\n"
        f"source:\n  url: {repo}\n  branch: main\n{verify}"
    )
    return str(config)


def shop(cli: CLI) -> str:
    path = cli.root / "etc/apache2/sites/shop.conf"
    return path.read_text() if path.exists() else ""


def test_a_signed_tag_is_applied_though_its_commit_is_unsigned(
    keys: Keys, server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    work = write_tree(tmp_path / "apache-work", APACHE)
    unsigned = commit_all(work, "release, not signed")
    tag(work, "v1.2.0", keys.trusted)
    publish(server, work, "v1.2.0")
    url = module_url(server)
    repo = signed_control(tmp_path, keys.trusted, tag_pin(url, "v1.2.0", unsigned))
    config = node_config(tmp_path, cli, repo, keys.verify)
    cli("apply", "--config", config, check=2)
    assert shop(cli) == "<VirtualHost *:8080> # shop (module)\n"
    assert git(cli.state / "modules/apache/mirror.git", "rev-parse", "v1.2.0^{commit}") == unsigned
    done = cli("validate", "--config", config, check=0)
    assert "valid" in done.stdout

    # pinned by the same commit without the tag, the commit's own signature counts: it has none
    commit_pin = f"modules:\n  apache:\n    url: {url}\n    commit: {unsigned}\n"
    signed_control(tmp_path, keys.trusted, commit_pin)
    done = cli("apply", "--config", config, check=1)
    assert f"commit {unsigned}: module 'apache' (modules.yaml:2, key 'modules.apache')" in (
        done.stderr
    )
    assert "not signed" in done.stderr


def test_with_verify_an_unsigned_untrusted_or_lightweight_tag_is_refused(
    keys: Keys, server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    work = write_tree(tmp_path / "apache-work", APACHE)
    unsigned = commit_all(work, "release")
    unsigned_tag = tag(work, "v1-unsigned")
    stranger_tag = tag(work, "v1-stranger", keys.stranger)
    # a lightweight tag on a commit the trusted key signed: a tag pin is judged by its tag
    sh("git", "-C", work, *keys.trusted.git_args(), "commit", "-q", "-S", "--allow-empty",
       "-m", "signed", env=keys.trusted.env())  # fmt: skip
    signed = git(work, "rev-parse", "HEAD")
    git(work, "tag", "v1-light")
    publish(server, work, "v1-unsigned", "v1-stranger", "v1-light")
    url = module_url(server)
    config = node_config(tmp_path, cli, tmp_path / "control", keys.verify)

    cases = [
        ("v1-unsigned", unsigned, f"tag 'v1-unsigned' ({unsigned_tag}): not signed"),
        ("v1-stranger", unsigned, f"tag 'v1-stranger' ({stranger_tag}): signed by "),
        ("v1-light", signed, f"tag 'v1-light' ({signed}): a lightweight tag"),
    ]
    for name, commit, why in cases:
        signed_control(tmp_path, keys.trusted, tag_pin(url, name, commit))
        done = cli("apply", "--config", config, check=1)
        assert f"module 'apache' (modules.yaml:4, key 'modules.apache.tag'): {why}" in (
            done.stderr
        ), name
        assert "SignatureRejected" in done.stderr
        if name == "v1-stranger":
            assert keys.untrusted in done.stderr
        assert not (cli.root / "etc/apache2").exists(), name


def test_a_moved_tag_changes_nothing_and_is_refused_where_it_is_fetched(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    work = write_tree(tmp_path / "apache-work", APACHE)
    first = commit_all(work, "release 1")
    tag(work, "v1")
    publish(server, work, "v1")
    repo = write_tree(
        tmp_path / "control",
        {**CONTROL, "modules.yaml": tag_pin(module_url(server), "v1", first)},
    )
    cli.run("apply", repo, check=2)
    assert shop(cli) == "<VirtualHost *:8080> # shop (module)\n"

    # v1 is moved on the remote to another commit
    write_tree(work, {"templates/vhost.conf.j2": "moved {{ title }}\n"})
    second = commit_all(work, "release 1, again")
    tag(work, "v1")
    publish(server, work, "v1")
    # this node's mirror holds v1 at the locked commit: nothing changes
    cli.run("apply", repo, check=0)
    assert shop(cli) == "<VirtualHost *:8080> # shop (module)\n"
    # a node that fetches the tag now refuses it, and changes nothing
    other = CLI(tmp_path / "other")
    done = other.run("apply", repo, check=1)
    assert "module 'apache' (modules.yaml:4, key 'modules.apache.tag'): the tag 'v1' of " in (
        done.stderr
    )
    assert f"now leads to {second}, not to the locked commit {first}: refused" in done.stderr
    assert not (other.root / "etc/apache2").exists()
    done = other("validate", f"--repo={repo}", "--state-dir", str(other.state), check=1)
    assert f"now leads to {second}" in done.stderr

    # modules update rewrites the lock and says that the tag moved; then it applies
    done = cli("modules", "update", "--repo", str(repo), check=0)
    assert f"apache: {first} -> {second} (refs/tags/v1, the tag moved)" in done.stdout
    assert (repo / "modules.yaml").read_text() == tag_pin(module_url(server), "v1", second)
    cli.run("apply", repo, check=2)
    assert shop(cli) == "moved shop\n"
    other.run("apply", repo, check=2)
    assert (other.root / "etc/apache2/sites/shop.conf").read_text() == "moved shop\n"


def test_modules_update_tag_pins_a_module_to_a_tag(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    first = serve_module(server, tmp_path, APACHE)
    work = tmp_path / "apache-work"
    tag(work, "v1")
    publish(server, work, "v1")
    second = serve_module(server, tmp_path, {"templates/vhost.conf.j2": "main {{ title }}\n"})
    repo = control(tmp_path, module_url(server), second)  # follows ref: main
    modules = repo / "modules.yaml"
    before = modules.read_text()

    done = cli("modules", "update", "apache", "--tag", "v1", "--repo", str(repo), check=0)
    assert f"apache: {second} -> {first} (refs/tags/v1)" in done.stdout
    assert "moved" not in done.stdout
    # ref: gave its line to tag:, the lock is rewritten, the comments stay
    expected = before.replace("ref: main", "tag: v1").replace(second, first)
    assert modules.read_text() == expected
    cli.run("apply", repo, check=2)
    assert shop(cli) == "<VirtualHost *:8080> # shop (module)\n"
    done = cli("modules", "update", "--repo", str(repo), check=0)
    assert f"apache: {first} (refs/tags/v1), unchanged" in done.stdout

    # an entry with neither tag: nor ref: gets tag: after its url, then the commit
    url = module_url(server)
    modules.write_text(f"modules:\n  apache:\n    url: {url}\n")
    cli("modules", "update", "apache", "--tag", "v1", "--repo", str(repo), check=0)
    assert modules.read_text() == tag_pin(url, "v1", first)

    done = cli("modules", "update", "--tag", "v1", "--repo", str(repo), check=1)
    assert "--tag pins one module: name it" in done.stderr
    done = cli("modules", "update", "apache", "--tag", "v9", "--repo", str(repo), check=1)
    assert "module 'apache' (modules.yaml:2, key 'modules.apache')" in done.stderr
    assert "has no tag 'v9'" in done.stderr
    assert modules.read_text() == tag_pin(url, "v1", first)

    # an entry on one line cannot take a new key by a line edit: refused, the file as it was
    flow = f"modules:\n  apache: {{url: '{url}', commit: {second}}}\n"
    modules.write_text(flow)
    done = cli("modules", "update", "apache", "--tag", "v1", "--repo", str(repo), check=1)
    assert "modules.yaml:2, key 'modules.apache': cannot rewrite this entry in place" in (
        done.stderr
    )
    assert modules.read_text() == flow


def test_validate_checks_tag_pins_and_names_the_line(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    work = write_tree(tmp_path / "apache-work", APACHE)
    sha = commit_all(work, "release")
    tag(work, "v1")
    git(work, "tag", "v1-light")
    publish(server, work, "v1", "v1-light")
    url = module_url(server)

    def validate(modules: str, check: int) -> str:
        repo = write_tree(tmp_path / "control", {**CONTROL, "modules.yaml": modules})
        done = cli("validate", f"--repo={repo}", "--state-dir", str(cli.state), check=check)
        return done.stdout + done.stderr

    assert "valid" in validate(tag_pin(url, "v1", sha), 0)
    # without source.verify, a lightweight tag pins as well
    assert "valid" in validate(tag_pin(url, "v1-light", sha), 0)

    both = tag_pin(url, "v1", sha) + "    ref: main\n"
    out = validate(both, 1)
    assert (
        "modules.yaml:4, key 'modules.apache.tag': a module pinned by `tag:` follows that tag: "
        "give `tag:` or `ref:`, not both"
    ) in out
    out = validate(tag_pin(url, "'-v1'", sha), 1)
    assert "modules.yaml:4, key 'modules.apache.tag': must be a tag name" in out
    out = validate(tag_pin(url, "v9", sha), 1)
    assert "module 'apache' (modules.yaml:4, key 'modules.apache.tag')" in out
    assert "has no tag 'v9'" in out
    # the tag exists but leads elsewhere than the lock
    other = "5eed" * 10
    out = validate(tag_pin(url, "v1", other), 1)
    assert f"the tag 'v1' of {url} now leads to {sha}, not to the locked commit {other}" in out
