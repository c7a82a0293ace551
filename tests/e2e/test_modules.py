"""Modules: other git repositories pinned in modules.yaml, served by a real git daemon."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CLI, commit_all, git, write_tree
from tests.daemon.conftest import GitServer

APACHE = {
    "profiles/server.yaml": """
        params: {docroot: /srv/www}
        resources:
          - directory: "{{ params.docroot }}"
          - directory: /etc/apache2
          - directory: /etc/apache2/sites
          - file: "{{ params.docroot }}/index.html"
            source: index.html
          - vhost: default
            port: 80
    """,
    "types/vhost.yaml": """
        params:
          port: {type: integer}
        resources:
          - file: "/etc/apache2/sites/{{ title }}.conf"
            template: vhost.conf.j2
    """,
    "templates/vhost.conf.j2": "<VirtualHost *:{{ params.port }}> # {{ title }} (module)\n",
    "files/index.html": "module page\n",
}

CONTROL = {
    "nodes.yaml": "default: web\n",
    "roles/web.yaml": "profiles: [apache/server, site]\n",
    "profiles/site.yaml": """
        resources:
          - apache/vhost: shop
            port: 8080
    """,
    # the control repo's own template of the same name: a module never reads it
    "templates/vhost.conf.j2": "control repo template\n",
}


def serve_module(server: GitServer, tmp: Path, files: dict[str, str], name: str = "apache") -> str:
    work = write_tree(tmp / f"{name}-work", files)
    sha = commit_all(work, "module")
    git(work, "push", "-q", "-f", str(server.base / f"{name}.git"), "HEAD:main")
    return sha


def new_bare(server: GitServer, name: str = "apache") -> None:
    git(server.base, "init", "-q", "--bare", str(server.base / f"{name}.git"))


def control(tmp: Path, url: str, sha: str, **extra: str) -> Path:
    modules = f"""
        # the web server module, pinned
        modules:
          apache:
            url: {url}
            commit: {sha}  # written by reconciler modules update
            ref: main
    """
    return write_tree(tmp / "control", {**CONTROL, "modules.yaml": modules, **extra})


def module_url(server: GitServer, name: str = "apache") -> str:
    return f"git://127.0.0.1:{server.port}/{name}.git"


def test_a_modules_profiles_types_templates_and_files_are_its_own(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    sha = serve_module(server, tmp_path, APACHE)
    repo = control(tmp_path, module_url(server), sha)
    cli.run("apply", repo, check=2)
    assert (cli.root / "srv/www/index.html").read_text() == "module page\n"
    sites = cli.root / "etc/apache2/sites"
    # the module's profile names its own type unqualified; the control repo names it apache/vhost
    assert (sites / "default.conf").read_text() == "<VirtualHost *:80> # default (module)\n"
    assert (sites / "shop.conf").read_text() == "<VirtualHost *:8080> # shop (module)\n"
    assert (cli.state / "modules/apache/mirror.git").is_dir()
    done = cli("validate", f"--repo={repo}", "--state-dir", str(cli.state), check=0)
    assert "valid" in done.stdout


def test_a_pin_to_a_commit_on_no_branch_is_fetched_and_the_pin_alone_decides(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    work = write_tree(tmp_path / "apache-work", APACHE)
    pinned = commit_all(work, "release")
    git(work, "tag", "v1")
    git(work, "push", "-q", str(server.base / "apache.git"), "refs/tags/v1")
    # the branch moves on without the pinned commit: it is on no branch of the remote
    git(work, "checkout", "-q", "--orphan", "other")
    write_tree(work, {"templates/vhost.conf.j2": "not pinned\n"})
    git(
        work,
        "push",
        "-q",
        "-f",
        str(server.base / "apache.git"),
        f"{commit_all(work)}:refs/heads/main",
    )
    branches = git(server.base / "apache.git", "branch", "--contains", pinned)
    assert branches == ""
    repo = control(tmp_path, module_url(server), pinned)
    cli.run("apply", repo, check=2)
    assert "(module)" in (cli.root / "etc/apache2/sites/shop.conf").read_text()


def test_a_module_cannot_read_outside_its_tree(server: GitServer, cli: CLI, tmp_path: Path) -> None:
    new_bare(server)
    work = write_tree(tmp_path / "apache-work", {**APACHE, "templates/vhost.conf.j2": ""})
    (work / "templates/vhost.conf.j2").unlink()
    (work / "templates/vhost.conf.j2").symlink_to("../../../control/nodes.yaml")
    (work / "files/index.html").unlink()
    (work / "files/index.html").symlink_to("/etc/passwd")
    sha = commit_all(work, "escape")
    git(work, "push", "-q", "-f", str(server.base / "apache.git"), "HEAD:main")
    repo = control(tmp_path, module_url(server), sha)
    done = cli.run("apply", repo, check=1)
    assert "modules/apache/files/index.html" in done.stderr
    assert "symlink that leaves" in done.stderr
    assert not (cli.root / "srv/www/index.html").exists()
    assert not (cli.root / "etc/apache2").exists()

    # a profile reaching for the control repo's files by a path is refused as well
    escape = {"profiles/server.yaml": "resources:\n  - file: /x\n    source: ../../nodes.yaml\n"}
    write_tree(work, escape)
    sha = commit_all(work, "escape again")
    git(work, "push", "-q", "-f", str(server.base / "apache.git"), "HEAD:main")
    repo = control(tmp_path, module_url(server), sha)
    done = cli.run("apply", repo, check=1)
    assert "modules/apache/profiles/server.yaml:3, key 'source'" in done.stderr
    assert "must stay inside" in done.stderr


def test_modules_update_rewrites_the_pins_and_keeps_the_comments(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    first = serve_module(server, tmp_path, APACHE)
    repo = control(tmp_path, module_url(server), first)
    second = serve_module(
        server, tmp_path, {"templates/vhost.conf.j2": "version 2 of {{ title }}\n"}
    )
    before = (repo / "modules.yaml").read_text()
    done = cli("modules", "update", "--repo", str(repo), check=0)
    assert f"apache: {first} -> {second} (refs/heads/main)" in done.stdout
    assert (repo / "modules.yaml").read_text() == before.replace(first, second)
    assert "# written by reconciler modules update" in (repo / "modules.yaml").read_text()
    cli.run("apply", repo, check=2)
    assert (cli.root / "etc/apache2/sites/shop.conf").read_text() == "version 2 of shop\n"

    # a tag is resolved to the commit it names (an annotated tag: the commit, not the tag)
    work = tmp_path / "apache-work"
    git(work, "tag", "-a", "-m", "release 1", "v1", first)
    git(work, "push", "-q", str(server.base / "apache.git"), "refs/tags/v1")
    text = (repo / "modules.yaml").read_text().replace("ref: main", "ref: v1")
    (repo / "modules.yaml").write_text(text)
    done = cli("modules", "update", "apache", "--repo", str(repo), check=0)
    assert f"apache: {second} -> {first} (refs/tags/v1)" in done.stdout
    assert f"commit: {first}" in (repo / "modules.yaml").read_text()

    # a module without a commit yet gets one, after its url
    lines = (repo / "modules.yaml").read_text().splitlines(keepends=True)
    (repo / "modules.yaml").write_text("".join(line for line in lines if "commit:" not in line))
    cli("modules", "update", "--repo", str(repo), check=0)
    text = (repo / "modules.yaml").read_text()
    assert f"    url: {module_url(server)}\n    commit: {first}\n    ref: v1" in text

    done = cli("modules", "update", "nginx", "--repo", str(repo), check=1)
    assert "no module 'nginx' in modules.yaml" in done.stderr


def test_validate_checks_every_pin_and_every_reference(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    sha = serve_module(server, tmp_path, APACHE)

    def validate(repo: Path, check: int) -> str:
        done = cli("validate", f"--repo={repo}", "--state-dir", str(cli.state), check=check)
        return done.stderr

    missing = "5eed" * 10
    err = validate(control(tmp_path, module_url(server), missing), 1)
    assert "module 'apache' (modules.yaml:3, key 'modules.apache')" in err
    assert f"the pinned commit {missing} is not in" in err

    repo = control(
        tmp_path,
        module_url(server),
        sha,
        **{"roles/web.yaml": "profiles: [apache/servr, nginx/site, site]\n"},
    )
    err = validate(repo, 1)
    assert "roles/web.yaml:1" in err
    assert "profile 'apache/servr' not found (no modules/apache/profiles/servr.yaml)" in err
    assert "did you mean" in err or "apache/server" in err
    assert "there is no module 'nginx' in modules.yaml" in err

    write_tree(repo, {"modules.yaml": "modules:\n  apache: {url: x, commit: main}\n"})
    err = validate(repo, 1)
    assert "modules.yaml:2, key 'modules.apache.commit': must be a full commit id" in err


def test_with_source_verify_an_unsigned_module_is_refused_before_it_is_read(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    from tests.source.test_verify import ssh_signer

    keys = tmp_path / "keys"
    keys.mkdir()
    trusted = ssh_signer(keys, "trusted")
    assert trusted.public is not None
    allowed = keys / "allowed"
    allowed.write_text(f'ops@example.com namespaces="git" {trusted.public.read_text()}')
    signing = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={trusted.key}"]

    new_bare(server)
    work = write_tree(tmp_path / "apache-work", APACHE)
    unsigned = commit_all(work, "unsigned")
    git(work, "push", "-q", "-f", str(server.base / "apache.git"), "HEAD:main")
    repo = control(tmp_path, module_url(server), unsigned)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, *signing, "commit", "-q", "-S", "-m", "signed control repo")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"node: web-1\nroot: {cli.root}\nstate_dir: {cli.state}\nfacts_dirs: []\n"
        f"source:\n  url: {repo}\n  branch: main\n"
        f"  verify:\n    format: ssh\n    allowed_signers: {allowed}\n"
    )
    done = cli("apply", "--config", str(config), check=1)
    assert f"commit {unsigned}: module 'apache' (modules.yaml:3" in done.stderr
    assert "not signed" in done.stderr
    assert not (cli.root / "etc/apache2").exists()
    done = cli("validate", "--config", str(config), check=1)
    assert "module 'apache'" in done.stderr and "not signed" in done.stderr

    # the same tree, signed by the trusted key and pinned by a signed commit: applied
    git(work, *signing, "commit", "-q", "-S", "--allow-empty", "-m", "signed")
    signed = git(work, "rev-parse", "HEAD")
    git(work, "push", "-q", "-f", str(server.base / "apache.git"), "HEAD:main")
    (repo / "modules.yaml").write_text(
        (repo / "modules.yaml").read_text().replace(unsigned, signed)
    )
    git(repo, "add", "-A")
    git(repo, *signing, "commit", "-q", "-S", "-m", "pin the signed module")
    cli("apply", "--config", str(config), check=2)
    assert "(module)" in (cli.root / "etc/apache2/sites/shop.conf").read_text()


def test_a_modules_data_is_the_lowest_level_for_its_own_profiles(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    data = {"data/common.yaml": "server:\n  docroot: /srv/module\n"}
    sha = serve_module(server, tmp_path, {**APACHE, **data})
    repo = control(tmp_path, module_url(server), sha)
    cli.run("apply", repo, check=2)
    assert (cli.root / "srv/module/index.html").read_text() == "module page\n"
    explain = ["explain", "apache/server.docroot", f"--repo={repo}", "--node", "web-1"]
    done = cli(*explain, "--state-dir", str(cli.state), check=0)
    assert "set by data level 'module apache': modules/apache/data/common.yaml:2" in done.stdout

    # the control repo's data overrides the module's, as Hiera's overrides module data
    write_tree(repo, {"data/common.yaml": "apache/server:\n  docroot: /srv/site\n"})
    cli.run("apply", repo, check=2)
    assert (cli.root / "srv/site/index.html").read_text() == "module page\n"
    explain = ["explain", "apache/server.docroot", f"--repo={repo}", "--node", "web-1"]
    done = cli(*explain, "--state-dir", str(cli.state), check=0)
    assert '= "/srv/site"' in done.stdout
    assert "data/common.yaml:2" in done.stdout

    # a module's data sets only its own profiles' parameters
    bad = {"data/common.yaml": "motd:\n  contact: me\n"}
    sha = serve_module(server, tmp_path, {**APACHE, **bad})
    repo = control(tmp_path, module_url(server), sha)
    done = cli.run("apply", repo, check=1)
    assert "modules/apache/data/common.yaml:1, key 'motd': module 'apache' has no profile" in (
        done.stderr
    )


def test_the_example_load_balancer_uses_the_bundled_apache_module(cli: CLI, tmp_path: Path) -> None:
    from reconciler.demo import copy_example

    repo = copy_example(tmp_path / "control-repo")
    assert (tmp_path / "modules/apache/.git").is_dir()
    facts = tmp_path / "facts.json"
    facts.write_text('{"os": {"family": "Debian", "name": "Debian"}}')
    cli.run("apply", repo, "--node", "lb-1", "--facts", str(facts), check=2)
    sites = cli.root / "etc/apache2/sites-enabled"
    assert "<VirtualHost *:80>\n    ServerName shop.example.com\n" in (
        (sites / "shop.conf").read_text()
    )
    # data/roles/lb.yaml (8080) over the module's data (8000) over the profile's default (80)
    assert "Listen 8080\n" in (cli.root / "etc/apache2/ports.conf").read_text()
    assert "<VirtualHost *:8080>" in (sites / "default.conf").read_text()
    assert "apache module" in (cli.root / "srv/default/index.html").read_text()


def test_demo_prepare_lays_out_the_example_to_try_by_hand(cli: CLI, tmp_path: Path) -> None:
    done = cli("demo", "--prepare", str(tmp_path / "ex"), check=0)
    repo = tmp_path / "ex/control-repo"
    assert str(repo) in done.stdout
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "production"
    assert git(repo, "status", "--porcelain") == ""
    pinned = git(tmp_path / "ex/modules/apache", "rev-parse", "HEAD")
    assert f"commit: {pinned}" in (repo / "modules.yaml").read_text()
    nodes = ["--node", "lb-1", "--node", "web-1"]
    done = cli("validate", f"--repo={repo}", "--state-dir", str(cli.state), *nodes, check=0)
    assert "lb-1: role lb" in done.stdout


def test_a_module_template_is_judged_sensitive_by_its_own_text(
    server: GitServer, cli: CLI, tmp_path: Path
) -> None:
    new_bare(server)
    files = {
        "profiles/login.yaml": """
            params: {password: changeme, greeting: hello}
            sensitive_params: [password]
            resources:
              - file: /etc/greeting
                template: greeting.j2
              - file: /etc/secret
                template: secret.j2
        """,
        "templates/greeting.j2": "{{ params.greeting }}\n",
        "templates/secret.j2": "{{ params.password }}\n",
    }
    sha = serve_module(server, tmp_path, files)
    repo = control(
        tmp_path, module_url(server), sha, **{"roles/web.yaml": "profiles: [apache/login]\n"}
    )
    cli.run("apply", repo, check=2)
    (cli.root / "etc/greeting").write_text("tampered\n")
    (cli.root / "etc/secret").write_text("tampered\n")
    done = cli.run("plan", repo, check=2)
    # the module's greeting.j2 names no sensitive parameter: its diff is shown; secret.j2 does
    assert "+hello" in done.stdout
    assert "--- /etc/greeting" in done.stdout
    assert "--- /etc/secret" not in done.stdout
    assert "changeme" not in done.stdout


def test_a_relative_state_dir_is_the_callers_directory(server: GitServer, tmp_path: Path) -> None:
    """`--state-dir .state` (as a CI job gives it): the module's mirror is made there, relative
    to where reconciler runs, and read from there."""
    import os
    import subprocess
    import sys

    new_bare(server)
    repo = control(tmp_path, module_url(server), serve_module(server, tmp_path, APACHE))
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "validate", f"--repo={repo}",
         "--state-dir", ".state"],
        cwd=workspace, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (workspace / ".state/modules/apache/mirror.git").is_dir()
    assert not Path("/.state").exists()
