"""The command line's help and its reference, docs/cli.md: every command and option explained,
each option the same way wherever it appears, and the two naming the same options."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from reconciler.cli import build_parser

DOCS = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

# Options that mean something else in one command, and say so in their help.
DIFFERENT_MEANING = {
    ("validate", "--node"),  # repeatable: also compile this node
    ("secret encrypt", "--node"),  # a node to encrypt for
    ("secret encrypt", "--role"),  # a role to encrypt for; fleet: only the nodes of a role
    ("secret encrypt", "--repo"),  # defaults to the current directory
    ("init", "--repo"),  # a git URL only
    ("modules update", "--repo"),  # a working tree, defaults to the current directory
    ("init", "--node"),  # required
    ("init", "--config"),  # the file to write
    ("diff", "--node"),  # repeatable: only these nodes
    ("diff", "--repo"),  # a git repository only
    ("diff", "--state-dir"),  # only mirrors: of a remote repo and of modules
    ("diff", "--role"),  # the nodes of a role at either revision
    ("diff", "--config"),  # only its coordination store, for every node's facts
    ("validate", "--all"),  # compile every node with the facts it published
}
HIDDEN = {("demo", "--exit-after")}  # for tests


def commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, str | None, argparse.ArgumentParser]]:
    """(name, its one-line help, its parser) for every subcommand, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                yield full, summaries.get(name), sub
                yield from commands(sub, full + " ")


def options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag != "--help":
                yield flag, action


def leaves() -> dict[str, argparse.ArgumentParser]:
    """The commands a user runs (`secret encrypt`, not `secret`), and "" for the top level."""
    found = {name: sub for name, _, sub in commands(build_parser())}
    runnable = {
        name: sub
        for name, sub in found.items()
        if not any(other.startswith(name + " ") for other in found)
    }
    return {"": build_parser(), **runnable}


def shown_options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for flag, action in options(parser) if action.help != argparse.SUPPRESS}


class TestHelp:
    def test_every_command_has_a_summary_and_a_description(self) -> None:
        for name, summary, sub in commands(build_parser()):
            assert summary, f"{name}: no one-line help"
            assert sub.description, f"{name}: no description"
            assert "\n" not in summary, name

    def test_every_option_and_argument_has_help(self) -> None:
        for name, parser in [("", build_parser())] + [
            (n, p) for n, _, p in commands(build_parser())
        ]:
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                    continue
                where = f"{name or 'reconciler'} {action.option_strings or action.dest}"
                assert action.help, f"{where}: no help text"

    def test_an_option_says_the_same_everywhere(self) -> None:
        texts: dict[str, dict[str, str]] = {}
        for name, _, parser in commands(build_parser()):
            for flag, action in options(parser):
                if (name, flag) not in DIFFERENT_MEANING and action.help != argparse.SUPPRESS:
                    texts.setdefault(flag, {})[name] = str(action.help)
        differing = {flag: where for flag, where in texts.items() if len(set(where.values())) > 1}
        assert differing == {}
        assert {"apply", "plan", "status", "suspend", "resume", "daemon"} <= set(texts["--config"])

    def test_test_only_flags_are_hidden_and_plan_has_no_noop(self) -> None:
        found = leaves()
        for name, flag in HIDDEN:
            assert flag not in shown_options(found[name])
        assert "--noop" in shown_options(found["apply"])
        assert "--noop" not in {flag for flag, _ in options(found["plan"])}

    def test_apply_help_lists_every_exit_code(self) -> None:
        for args in (["--help"], ["apply", "--help"]):
            done = subprocess.run(
                [sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True
            )
            assert done.returncode == 0
            text = " ".join(done.stdout.split())
            assert "exit 0 in sync, 2 changed, 4 failed, 6 both, 1 could not run" in text


def documented() -> dict[str, set[str]]:
    """The synopsis at the top of docs/cli.md: the options it names for each command."""
    text = DOCS.read_text()
    synopsis = re.search(r"^```\n(.*?)^```", text, re.S | re.M)
    assert synopsis is not None, "docs/cli.md starts with no synopsis block"
    found: dict[str, set[str]] = {}
    current = None
    for line in synopsis.group(1).splitlines():
        if line.startswith("reconciler"):
            words = []
            for word in line.split()[1:]:
                if not re.fullmatch(r"[a-z]+", word):
                    break
                words.append(word)
            current = " ".join(words)
            found.setdefault(current, set())
        assert current is not None, line
        found[current] |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", line))
    return found


class TestReference:
    def test_docs_name_every_command_and_option_the_help_shows(self) -> None:
        in_help = {name: shown_options(parser) for name, parser in leaves().items()}
        assert documented() == in_help

    def test_every_command_has_a_section(self) -> None:
        headings = [line for line in DOCS.read_text().splitlines() if line.startswith("## ")]
        for name in leaves():
            if name:
                assert any(f"`{name}`" in h for h in headings), f"no section for {name}"
        assert any("`--version`" in h for h in headings)
