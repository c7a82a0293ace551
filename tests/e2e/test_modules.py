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
