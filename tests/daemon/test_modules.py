"""The daemon with modules: each run fetches the pinned commit, and only the pin moves it."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import commit_all, git, write_tree
from tests.daemon.conftest import Daemon, GitServer, wait_for

MODULE = {
    "profiles/banner.yaml": """
        resources:
          - file: /etc/banner
            template: banner.j2
    """,
    "templates/banner.j2": "banner 1\n",
}


def banner(d: Daemon) -> str:
    path = d.root / "etc/banner"
    return path.read_text() if path.exists() else ""


def test_the_daemon_applies_a_module_at_its_pin_and_moves_only_with_the_pin(
    daemon: Daemon, server: GitServer, tmp_path: Path
) -> None:
    bare = server.base / "site.git"
    git(server.base, "init", "-q", "--bare", str(bare))
    work = write_tree(tmp_path / "site-work", MODULE)
    first = commit_all(work, "banner 1")
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
    url = f"git://127.0.0.1:{server.port}/site.git"

    def pin(commit: str) -> str:
        return server.push(
            {
                "modules.yaml": f"modules:\n  site: {{url: '{url}', commit: {commit}}}\n",
                "roles/app.yaml": "profiles: [app, site/banner]\n",
            },
            f"pin {commit}",
        )

    pin(first)
    daemon.start()
    wait_for(lambda: banner(daemon) == "banner 1\n", what="the module applied")
    assert (daemon.state / "modules/site/mirror.git").is_dir()

    # a commit on the module's branch changes nothing: the pin decides
    write_tree(work, {"templates/banner.j2": "banner 2\n"})
    second = commit_all(work, "banner 2")
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
    server.push({"profiles/other.yaml": "resources: []\n"}, "an unrelated change")
    runs = daemon.metric("reconciler_runs_total", result="success")
    wait_for(lambda: daemon.metric("reconciler_runs_total", result="success") > runs)
    assert banner(daemon) == "banner 1\n"

    pin(second)
    wait_for(lambda: banner(daemon) == "banner 2\n", what="the new pin applied")


def test_the_daemon_refuses_a_moved_tag_and_keeps_enforcing_the_last_good_pin(
    daemon: Daemon, server: GitServer, tmp_path: Path
) -> None:
    bare = server.base / "site.git"
    git(server.base, "init", "-q", "--bare", str(bare))
    work = write_tree(tmp_path / "site-work", MODULE)
    first = commit_all(work, "banner 1")
    git(work, "tag", "-a", "-m", "release 1", "v1")
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main", "refs/tags/v1")
    url = f"git://127.0.0.1:{server.port}/site.git"

    def pin(tag: str, commit: str) -> str:
        return server.push(
            {
                "modules.yaml": f"modules:\n  site:\n    url: '{url}'\n    tag: {tag}\n"
                f"    commit: {commit}\n",
                "roles/app.yaml": "profiles: [app, site/banner]\n",
            },
            f"pin {tag}",
        )

    pin("v1", first)
    daemon.start()
    wait_for(lambda: banner(daemon) == "banner 1\n", what="the module applied")

    # v2 is released and locked in modules.yaml, but moved to another commit before the node
    # fetches it: the new revision is refused
    write_tree(work, {"templates/banner.j2": "banner 2\n"})
    second = commit_all(work, "banner 2")
    git(work, "tag", "-a", "-m", "release 2", "v2")
    write_tree(work, {"templates/banner.j2": "banner 3\n"})
    third = commit_all(work, "banner 3")
    git(work, "tag", "-f", "-a", "-m", "release 2, moved", "v2")
    git(work, "push", "-q", "-f", str(bare), "HEAD:refs/heads/main", "refs/tags/v2")
    errors = daemon.metric("reconciler_source_fetches_total", result="error")
    pin("v2", second)
    wait_for(
        lambda: daemon.metric("reconciler_source_fetches_total", result="error") > errors,
        what="the moved tag refused",
    )
    assert f"now leads to {third}, not to the locked commit {second}" in daemon.logs()
    assert "modules.yaml:4, key 'modules.site.tag'" in daemon.logs()
    assert banner(daemon) == "banner 1\n"
    # the last good pin, v1 in the module's mirror, is still enforced
    (daemon.root / "etc/banner").write_text("tampered\n")
    wait_for(lambda: banner(daemon) == "banner 1\n", 30, "the last good pin enforced")
