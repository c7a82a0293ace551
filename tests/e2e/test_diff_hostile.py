"""``reconciler diff`` on a hostile change: the branch under review and its facts directory are
written by whoever opened the pull request. The real CLI in a subprocess, a real git repository."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.review import load_facts_dir
from reconciler.review.fleet import Request, diff_fleet
from tests.conftest import CLI, commit_all, git, write_tree
from tests.e2e.test_diff import BASE, diff, facts_dir

# A resource title and a file's content that try to close the markdown around them and start
# a section of their own, and a fact that tries the same through a template.
HOSTILE = {
    "profiles/motd.yaml": """
        params:
          message: hello
        resources:
          - file: "/etc/motd`</code></summary>\\n\\n# INJECTED TITLE\\n"
            content: "x\\n```\\n````\\n</details>\\n\\n# INJECTED CONTENT\\n"
          - file: /etc/fact
            content: "{{ facts.evil }}"
    """,
}
# A node name (its facts file's name) with line breaks, markdown and HTML in it.
EVIL_NODE = "web-2\n\n# INJECTED NAME\n<img src=x onerror=alert(1)>\r\r<!--"


def hostile_change(tmp_path: Path) -> tuple[Path, Path]:
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    write_tree(repo, HOSTILE)
    commit_all(repo, "change")
    facts = tmp_path / "facts"
    facts.mkdir()
    fact = 'os: {family: Debian}\nevil: "a\\n\\n# INJECTED FACT\\n</details>\\n"\n'
    (facts / "web-1.yaml").write_text(fact)
    # these two fail to compile (no `evil` fact): listed first, names and all
    (facts / f"{EVIL_NODE}.yaml").write_text("os: {family: Debian}\n")
    (facts / "db-1.yaml").write_text("os: {family: Debian}\n")
    return repo, facts


def outside_code_blocks(markdown: str) -> list[str]:
    """The lines of ``markdown`` that are not inside a fenced code block (CommonMark: a fence
    closes on a line of at least as many backticks; \\r is a line ending too)."""
    lines, fence = [], ""
    for line in re.split(r"\r\n|\r|\n", markdown):
        if fence:
            if re.fullmatch(r" {0,3}`+\s*", line) and len(line.strip()) >= len(fence):
                fence = ""
            continue
        opened = re.match(r" {0,3}(`{3,})", line)
        if opened:
            fence = opened.group(1)
            continue
        lines.append(line)
    return lines


def test_the_markdown_keeps_names_titles_and_content_in_their_sections(
    cli: CLI, tmp_path: Path
) -> None:
    repo, facts = hostile_change(tmp_path)
    done = diff(cli, repo, facts, "--format=markdown", check=4)
    outside = [line for line in outside_code_blocks(done.stdout) if line.strip()]
    # the comment's own structure, and nothing else, outside the code blocks
    allowed = re.compile(
        r"### reconciler diff |\*\*\d+\*\* of |\*\*Fails to compile at |- `[^`]+`: `[^`]+`\Z"
        r"|<details><summary><code>[^<>]*</code> \(role \w+\): [^<>]*</summary>\Z|</details>\Z"
    )
    assert all(allowed.match(line) for line in outside), outside
    assert sum(line == "</details>" for line in outside) == 3  # one per node group
    assert not any(line.lstrip().startswith(("#", "<img", "<!--")) for line in outside[1:])
    # the name is shown, escaped, in its own summary and in the list of failures
    shown = "web-2\\n\\n# INJECTED NAME\\n&lt;img src=x onerror=alert(1)&gt;\\r\\r&lt;!--"
    assert f"<details><summary><code>{shown}</code> (role web)" in done.stdout
    assert "- `web-2\\n\\n# INJECTED NAME\\n<img src=x onerror=alert(1)>\\r\\r<!--`" in (
        done.stdout
    )


def test_the_text_output_shows_one_line_per_name_and_title(cli: CLI, tmp_path: Path) -> None:
    repo, facts = hostile_change(tmp_path)
    out = diff(cli, repo, facts, check=4).stdout
    assert not any(
        line.startswith(("# INJECTED", "<img", "<!--", "</details>")) for line in out.split("\n")
    )
    assert "\r" not in out
    assert "+ file:/etc/motd`</code></summary>\\n\\n# INJECTED TITLE\\n   (profiles" in out
    assert "--- file:/etc/motd`</code></summary>\\n\\n# INJECTED TITLE\\n content (HEAD~1)" in out
    assert "node web-2\\n\\n# INJECTED NAME\\n<img src=x onerror=alert(1)>\\r\\r<!--: role" in out
    # a content diff keeps its lines, each behind its mark
    assert "+# INJECTED CONTENT\n" in out and "+# INJECTED FACT\n" in out


SECRET = "ghp_the_runners_token_0123456789"


@pytest.mark.parametrize(
    "plant",
    ["link to a mapping outside", "link to /etc/shadow", "directory is a link", "huge", "fifo",
     "a directory", "alias bomb", "not a mapping", "dot name"],
)  # fmt: skip
def test_a_hostile_facts_directory_is_refused_naming_the_file(
    cli: CLI, tmp_path: Path, plant: str
) -> None:
    """The facts directory is part of the change: a link in it is never followed (it would put a
    file of the CI runner, a token say, in the comment), a file is read up to 1 MiB, and a
    bomb is refused in bounded time."""
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    write_tree(repo, {"profiles/motd.yaml": 'resources:\n  - file: /etc/t\n    content: "{{ facts.token }}"\n'})  # fmt: skip
    commit_all(repo, "change")
    outside = tmp_path / "runner" / "hosts.yaml"
    outside.parent.mkdir()
    outside.write_text(f"token: {SECRET}\n")
    facts = tmp_path / "review-facts"
    facts.mkdir()
    (facts / "db-1.yaml").write_text("os: {family: Debian}\n")
    target = facts / "web-1.yaml"
    given = facts
    if plant == "link to a mapping outside":
        target.symlink_to(outside)
    elif plant == "link to /etc/shadow":
        target.symlink_to("/etc/shadow")
    elif plant == "directory is a link":
        given = tmp_path / "linked-facts"
        given.symlink_to(outside.parent)
    elif plant == "huge":
        target.write_text(f"token: {SECRET}\npad: '{'x' * (2 * 1024 * 1024)}'\n")
    elif plant == "fifo":
        os.mkfifo(target)
    elif plant == "a directory":
        target.mkdir()
    elif plant == "alias bomb":
        rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for this, last in zip("bcdefghi", "abcdefgh", strict=True):
            rows.append(f"{this}: &{this} [{', '.join([f'*{last}'] * 9)}]")
        target.write_text("\n".join(rows) + "\n")
    elif plant == "not a mapping":
        target.write_text(f"- {SECRET}\n")
    elif plant == "dot name":
        (facts / "..yaml").write_text("os: {family: Debian}\n")
    done = diff(cli, repo, given, check=1)
    assert SECRET not in done.stdout + done.stderr
    assert done.stdout == ""
    why = {
        "link to a mapping outside": "web-1.yaml: a symbolic link: facts are read from regular",
        "link to /etc/shadow": "web-1.yaml: a symbolic link",
        "directory is a link": "linked-facts: a symbolic link; give the directory",
        "huge": "web-1.yaml: larger than 1048576 bytes",
        "fifo": "web-1.yaml: not a regular file",
        "a directory": "web-1.yaml: not a regular file",
        "alias bomb": "web-1.yaml: aliases expand to more than",
        "not a mapping": "web-1.yaml:1: facts must be a mapping",
        "dot name": "..yaml: '.' is not a node's name",
    }[plant]
    assert why in done.stderr, done.stderr


@pytest.mark.parametrize(
    "url", ["ext::sh -c touch% {marker}", "fd::3", "-u touch {marker}", "gopher://{marker}"]
)
def test_a_module_url_that_could_run_a_program_fails_the_change_at_its_line(
    cli: CLI, tmp_path: Path, url: str
) -> None:
    """A change pinning a module at a URL git would hand to a helper or read as an option: the
    review runs nothing and reports the change as failing at modules.yaml's line (exit 4, in
    the comment), not as a review that could not run."""
    marker = tmp_path / "ran"
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    url = url.format(marker=marker)
    write_tree(
        repo, {"modules.yaml": f"modules:\n  m:\n    url: {url!r}\n    commit: {'a' * 40}\n"}
    )
    commit_all(repo, "change")
    facts = tmp_path / "facts"
    facts.mkdir()
    (facts / "web-1.yaml").write_text("os: {family: Debian}\n")
    done = diff(cli, repo, facts, "--format=markdown", check=4)
    assert "- `web-1`: `modules.yaml:3, key 'modules.m.url': url " in done.stdout
    assert not marker.exists()


def looping_change(tmp_path: Path) -> tuple[Path, Path]:
    """10^10 turns of an empty loop in the web role's template, within every bound on output;
    a plain change for db."""
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x\n"
    write_tree(
        repo,
        {
            "templates/site.j2": loop,
            "profiles/site.yaml": "resources:\n  - file: /etc/site\n    template: site.j2\n",
            "profiles/motd.yaml": 'resources:\n  - file: /etc/motd\n    content: "bye\\n"\n',
        },
    )
    commit_all(repo, "change")
    facts = tmp_path / "facts"
    facts.mkdir()
    for node in ("web-1", "web-2", "db-1"):
        (facts / f"{node}.yaml").write_text("os: {family: Debian}\n")
    # another OS: its own compile, after web's (nodes are compiled in the order of their names)
    (facts / "zz-1.yaml").write_text("os: {family: RedHat}\n")
    return repo, facts


def test_a_template_that_loops_for_hours_fails_its_nodes_at_compile_timeout(
    cli: CLI, tmp_path: Path
) -> None:
    """The nodes of that role fail to compile after `--compile-timeout` (exit 4, the other
    nodes compared as usual), instead of holding the review until the CI job is killed."""
    repo, facts = looping_change(tmp_path)
    done = diff(cli, repo, facts, "--compile-timeout=2", check=4)
    assert "web-1, web-2 (2 nodes): roles/web.yaml: the compile took longer than 2s" in done.stdout
    assert "node db-1, zz-1 (2 nodes): role db\n  ~ file:/etc/motd" in done.stdout  # as usual


def test_the_compile_timeout_holds_in_one_process_too(tmp_path: Path) -> None:
    """One worker: the compiles run in the calling process, whose later compiles still work."""
    repo, facts = looping_change(tmp_path)
    request = Request(
        str(repo), "HEAD~1", "HEAD", load_facts_dir(facts), workers=1, compile_timeout=2
    )
    result = {n.node: n for n in diff_fleet(request).nodes}
    assert result["web-1"].status == "failed"
    assert "took longer than 2s" in result["web-1"].problems_after[0].message
    for node in ("db-1", "zz-1"):
        assert result[node].status == "changed"
        assert [c.id for c in result[node].resources] == ["file:/etc/motd"]


def test_the_cli_offers_the_reviews_own_default() -> None:
    from reconciler.cli import COMPILE_TIMEOUT as SHOWN
    from reconciler.review.fleet import COMPILE_TIMEOUT

    assert SHOWN == COMPILE_TIMEOUT


def test_a_huge_version_keeps_the_comment_under_its_limit(cli: CLI, tmp_path: Path) -> None:
    """An app version of 20000 digits on 201 nodes: the markdown stays under 60000 characters
    (GitHub refuses a comment over 65536: the review would not be posted at all; it was 621019
    characters); the rollout lines are cut and counted, and the ordering does not fail on a
    number of 20000 digits (it did: exit 1)."""
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    app = (repo / "apps/shop.yaml").read_text()
    (repo / "apps/shop.yaml").write_text(app.replace('"1.0"', '"' + "9" * 20000 + '"'))
    commit_all(repo, "change")
    nodes = (*(f"web-{i}" for i in range(200)), "db-1")
    facts = tmp_path / "facts"
    facts.mkdir()
    for node in nodes:
        (facts / f"{node}.yaml").write_text("os: {family: Debian}\n")
    done = diff(cli, repo, facts, "--format=markdown", check=2)
    assert len(done.stdout) < 60_000
    assert "    1. db-1 1.0 -> 9999" in done.stdout
    assert "more line(s): run `reconciler diff`" in done.stdout
    assert "more node(s) not shown" in done.stdout
    text = diff(cli, repo, facts, check=2).stdout  # the text output has every node
    assert all(f"{node} 1.0 -> {'9' * 20000}" in text for node in nodes)


def test_a_nodes_yaml_of_20000_entries_for_300_nodes(cli: CLI, tmp_path: Path) -> None:
    """nodes.yaml is read once per revision, not once per node: 20000 entries and 300 nodes
    take seconds (they took more than 300 s, past the CLI's bound of two minutes here)."""
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    entries = "".join(f"  - match: 'other-{i}-*'\n    role: web\n" for i in range(20000))
    (repo / "nodes.yaml").write_text(
        f"nodes:\n{entries}  - match: 'web-*'\n    role: web\ndefault: web\n"
    )
    commit_all(repo, "change")
    nodes = (*(f"web-{i}" for i in range(299)), "db-1")
    done = diff(cli, repo, facts_dir(tmp_path, nodes), check=2)
    assert "node db-1: role web\n  role: db -> web" in done.stdout
    assert "1 of 300 node(s) change" in done.stdout


def test_a_small_change_holding_gigabytes_of_data_is_scanned_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """One blob of 16 MB (the most a file may hold) under 80 names in data/: 1.3 GB to read,
    in a repository of a few kilobytes. The review scans each file once and keeps none, under
    a 1 GiB address-space limit (it kept them all: MemoryError, exit 1)."""
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    blob = subprocess.run(
        ["git", "-C", str(repo), "hash-object", "-w", "--stdin"],
        input=b"# " + b"x" * (16 * 1024 * 1024 - 100) + b"\n",
        capture_output=True, check=True,
    ).stdout.decode().strip()  # fmt: skip
    for index in range(80):
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},data/d{index}.yaml")
    git(repo, "commit", "-q", "-m", "data")
    limit = 1024**3

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "diff", f"--repo={repo}", "--from=HEAD~1",
         "--to=HEAD", f"--facts-dir={facts_dir(tmp_path)}"],
        capture_output=True, text=True, timeout=300, preexec_fn=limited,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "0 of 4 node(s) change" in done.stdout


def module_repo(path: Path, secret: str) -> str:
    """A git repository on the reviewing machine, with a profile that shows ``secret``."""
    write_tree(
        path,
        {"profiles/leak.yaml": f'resources:\n  - file: /etc/leak\n    content: "{secret}\\n"\n'},
    )
    return commit_all(path, "private")


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_change_cannot_pin_a_module_at_a_path_of_the_reviewing_machine(
    cli: CLI, tmp_path: Path, scheme: str
) -> None:
    """A pull request pins a module at a repository of the CI runner (another project's
    checkout, say) and shows its files in the comment: refused at modules.yaml, its nodes fail
    to compile (exit 4) and nothing of it is read. A path the target branch pins already is
    read as before."""
    commit = module_repo(tmp_path / "private", SECRET)
    url = f"{scheme}{tmp_path / 'private'}"
    repo = write_tree(tmp_path / "repo", BASE)
    commit_all(repo, "base")
    modules = f"modules:\n  private:\n    url: {url}\n    commit: {commit}\n"
    write_tree(repo, {"modules.yaml": modules, "roles/web.yaml": "profiles: [private/leak]\n"})
    commit_all(repo, "change")
    facts = facts_dir(tmp_path, ("web-1",))
    done = diff(cli, repo, facts, "--format=markdown", check=4)
    assert SECRET not in done.stdout + done.stderr
    assert (
        f"modules.yaml:2, key 'modules.private.url': '{url}' is a path on the machine that runs "
        "the review, and the revision before the change pins no module there"
    ) in done.stdout

    # the target branch pins it: a change that uses it is reviewed as usual
    write_tree(repo, {"roles/web.yaml": "profiles: [motd, site]\n"})
    commit_all(repo, "the module on main")
    write_tree(repo, {"roles/web.yaml": "profiles: [private/leak]\n"})
    commit_all(repo, "use it")
    done = diff(cli, repo, facts, check=2)
    assert f"+{SECRET}" in done.stdout
