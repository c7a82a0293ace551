"""Benchmark ``reconciler diff`` over a fleet: N nodes over 10 roles, ~230 resources each.

The generated control repo is realistic: each role has five profiles, each with a directory,
14 files rendered from a template (a data-driven settings loop, the node's facts), 6 files
whose content looks data up (``lookup()``), 8 instances of a defined type (a directory, a
rendered file and a line each) from a data mapping (``for_each``), and an exec. The second
commit changes one data value of every role, a template, and a profile's file mode.

Each node has its own facts, as ``reconciler facts`` prints them (its name, address, memory,
uptime), over two OS families. Two variants:

- ``--reads-node`` (the default): the templates print the node's name, so every node's catalog
  is its own: N compiles per revision.
- ``--no-reads-node``: they do not, and nodes of a role with the same OS family share their
  catalog (compiled once).

With ``--validate``, times ``reconciler validate --ref HEAD --facts-dir`` on the same repo
instead: every node's catalog at the later commit, each with its own facts (one revision).

Usage: python bench/diff.py [--nodes 1000] [--repeat 3] [--no-reads-node] [--validate]
Prints the wall time of each whole ``reconciler diff`` (or ``validate``) process, its median,
and the summary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROLES = 10
PROFILES = 5


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def generate(repo: Path, reads_node: bool, version: int) -> None:
    """The control repo at ``version`` (1 or 2)."""
    name_line = "# managed for {{ node }}\n" if reads_node else "# managed by reconciler\n"
    for d in ("roles", "profiles", "data/roles", "data/os", "templates", "types"):
        (repo / d).mkdir(parents=True, exist_ok=True)
    (repo / "reconciler.yaml").write_text(
        "hierarchy:\n  - nodes/{node}.yaml\n  - roles/{role}.yaml\n"
        "  - os/{facts.os.family}.yaml\n  - common.yaml\n"
    )
    (repo / "nodes.yaml").write_text(
        "nodes:\n"
        + "".join(f'  - match: "r{r}-*"\n    role: r{r}\n' for r in range(ROLES))
        + "default: r0\n"
    )
    (repo / "types" / "vhost.yaml").write_text(
        "params:\n  port: {type: integer}\n  root: /srv/www\nresources:\n"
        '  - directory: "{{ params.root }}/{{ title }}"\n'
        '  - file: "/etc/web/sites/{{ title }}.conf"\n    template: vhost.j2\n'
        '  - line: "listen-{{ title }}"\n    path: /etc/web/ports.conf\n'
        '    text: "Listen {{ params.port }}"\n'
    )
    (repo / "templates" / "vhost.j2").write_text(
        name_line + "<VirtualHost *:{{ params.port }}>\n"
        "  DocumentRoot {{ params.root }}/{{ title }}\n"
        + ("  KeepAlive On\n" if version == 2 else "")
        + "</VirtualHost>\n"
    )
    (repo / "templates" / "conf.j2").write_text(
        name_line + "# {{ role }} on {{ facts.os.family }}\n"
        "{% for k, v in params.settings | dictsort %}{{ k }} = {{ v }}\n{% endfor %}"
        "workers = {{ facts.processors.count }}\n"
    )
    (repo / "data" / "common.yaml").write_text("ntp: [0.pool.ntp.org, 1.pool.ntp.org]\n")
    (repo / "data" / "os" / "Debian.yaml").write_text("pkgmgr: apt\n")
    (repo / "data" / "os" / "RedHat.yaml").write_text("pkgmgr: dnf\n")
    for r in range(ROLES):
        names = [f"p{r}_{i}" for i in range(PROFILES)]
        (repo / "roles" / f"r{r}.yaml").write_text(f"profiles: [{', '.join(names)}]\n")
        data = []
        for i, name in enumerate(names):
            changed = version == 2 and i == 0
            data.append(
                f"{name}:\n  settings:\n"
                + "".join(
                    f"    key{k}: value{k}{'-new' if changed and k == 3 else ''}\n"
                    for k in range(20)
                )
                + "  sites:\n"
                + "".join(f"    {name}-site{s}: {{port: {8000 + s}}}\n" for s in range(8))
            )
            mode = "0640" if version == 2 and i == 1 else "0644"
            lines = ["params:", "  settings: {}", "  sites: {}", "resources:"]
            lines.append(f'  - directory: "/etc/{name}"')
            for k in range(14):
                lines += [
                    f'  - file: "/etc/{name}/conf{k}.conf"',
                    "    template: conf.j2",
                    f'    mode: "{mode}"',
                    f"    notify: exec:reload-{name}",
                ]
            for k in range(6):
                lines += [
                    f'  - file: "/etc/{name}/static{k}"',
                    f"    content: \"static {k} ntp={{{{ lookup('ntp') | join(',') }}}} "
                    f"via {{{{ lookup('pkgmgr') }}}}\\n\"",
                ]
            lines += ['  - vhost: "{{ key }}"', "    for_each: params.sites"]
            lines += ['    port: "{{ item.port }}"']
            lines += [f"  - exec: reload-{name}", "    command: /bin/true", "    refreshonly: true"]
            (repo / "profiles" / f"{name}.yaml").write_text("\n".join(lines) + "\n")
        (repo / "data" / "roles" / f"r{r}.yaml").write_text("".join(data))


def facts_of(node: str, index: int) -> str:
    family, name = ("Debian", "Debian") if index % 3 else ("RedHat", "Rocky Linux")
    return (
        f"node: {node}\nhostname: {node}\nfqdn: {node}.example.com\n"
        f"os: {{family: {family}, name: {name}, release: {{major: '12'}}}}\n"
        f"processors: {{count: {2 if index % 2 else 4}}}\n"
        f"memory: {{total_bytes: {8 << 30}, available_bytes: {(index * 7919) % (4 << 30)}}}\n"
        f"networking: {{ip: 10.{index // 65536}.{index // 256 % 256}.{index % 256}}}\n"
        f"uptime_seconds: {index * 37}\n"
    )


def setup(root: Path, nodes: int, reads_node: bool) -> tuple[Path, Path]:
    repo, facts = root / "repo", root / "facts"
    repo.mkdir()
    facts.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    for version in (1, 2):
        generate(repo, reads_node, version)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"version {version}")
    for i in range(nodes):
        node = f"r{i % ROLES}-{i:04d}"
        (facts / f"{node}.yaml").write_text(facts_of(node, i))
    return repo, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reads-node", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--validate", action="store_true", help="time validate --facts-dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-diff-") as temp:
        repo, facts = setup(Path(temp), args.nodes, args.reads_node)
        command = [
            sys.executable, "-c", "from reconciler.cli import main; raise SystemExit(main())",
            "diff", "--repo", str(repo), "--from", "HEAD~1", "--to", "HEAD",
            "--facts-dir", str(facts),
        ]  # fmt: skip
        expected = 2
        if args.validate:
            command[3:] = [
                "validate", "--repo", str(repo), "--ref", "HEAD", "--facts-dir", str(facts),
                "--state-dir", str(Path(temp) / "state"),
            ]  # fmt: skip
            expected = 0
        times = []
        summary = ""
        for _ in range(args.repeat):
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            times.append(time.perf_counter() - start)
            if done.returncode != expected:
                sys.exit(f"reconciler {command[3]} exited {done.returncode}: {done.stderr}")
            summary = done.stdout.strip().splitlines()[-2 if args.validate else -1]
        print(
            f"{command[3]}: nodes {args.nodes}, roles {ROLES}, reads node name: {args.reads_node}, "
            f"cores {os.cpu_count()}"
        )
        print("runs: " + ", ".join(f"{t:.2f}s" for t in times))
        print(f"median: {statistics.median(times):.2f}s")
        print(summary)


if __name__ == "__main__":
    main()
