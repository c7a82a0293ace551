"""The command line: parses arguments and calls the engine or the daemon, nothing more."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler import __version__
from reconciler.errors import ModelError, ReconcilerError, SourceError

if TYPE_CHECKING:
    from reconciler.model.data import Found

EXIT_ERROR = 1
# reconciler.review.fleet.COMPILE_TIMEOUT, here so that --help does not import the review layer
COMPILE_TIMEOUT = 60.0
# reconciler.apps.fleet.STATES, here so that --help does not import the apps layer
FLEET_STATES = (
    *("in_sync", "changed", "failed", "rejected", "fetch_failed", "error"),
    *("stale", "suspended"),
)


def _say(text: str = "", file: Any = None) -> None:
    """Print text that may hold names and messages from the repo or the node: control
    characters are shown as escapes, never passed to the terminal."""
    from reconciler.engine.report import printable_lines

    print(printable_lines(text), file=file)


def _err(message: str) -> None:
    _say(f"reconciler: {message}", file=sys.stderr)


def _warn(message: str) -> None:
    _say(f"reconciler: warning: {message}", file=sys.stderr)


# One help text per option, whichever command takes it. An option that means something else in
# one command (validate's repeatable --node, init's --config) says so there.
_HELP = {
    "--config": "the daemon's configuration file; flags override it",
    "--repo": "control repo: a local directory (working tree) or a git URL",
    "--ref": "a branch, tag or commit (read from git, not the working tree)",
    "--node": "the node name (default: this host's FQDN)",
    "--facts": "YAML or JSON facts to add",
    "--root": "prefix every managed path with this directory",
    "--state-dir": "where reports, backups, the inventory and a suspension live",
    "--noop": "check only: report drift, change nothing",
    "--allow-rewind": (
        "apply a branch moved to a commit that does not descend from the applied one"
    ),
    "--ignore-suspension": "enforce even while enforcement is suspended (reconciler suspend)",
    "--format": "how to print the result",
}

_METAVAR = {
    "--config": "FILE",
    "--repo": "PATH|URL",
    "--ref": "REF",
    "--node": "NAME",
    "--facts": "FILE",
    "--root": "DIR",
    "--state-dir": "DIR",
}

_EXIT_CODES = "exit 0 in sync, 2 changed, 4 failed, 6 both, 1 could not run"


def _command(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary is both its entry in the list and its description."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=summary[0].upper() + summary[1:] + "."
    )
    return parser


def _option(p: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    kwargs.setdefault("help", _HELP[name])
    if name in _METAVAR and kwargs.get("action") in (None, "append"):
        kwargs.setdefault("metavar", _METAVAR[name])
    p.add_argument(name, **kwargs)


def _add_source_options(p: argparse.ArgumentParser) -> None:
    _option(p, "--config", type=Path)
    _option(p, "--repo")
    _option(p, "--ref")
    _option(p, "--node")
    _option(p, "--facts", type=Path, dest="facts_file")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    _add_source_options(p)
    _option(p, "--root", type=Path)
    _option(p, "--state-dir", type=Path)
    _option(p, "--allow-rewind", action="store_true")
    _option(p, "--format", choices=("text", "json"), default="text")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Pull-based GitOps agent: converge this node to its control repo.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"reconciler {__version__}",
        help="print reconciler's version and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "apply", f"converge the node ({_EXIT_CODES})")
    _add_run_options(p)
    _option(p, "--noop", action="store_true")
    _option(p, "--ignore-suspension", action="store_true")
    p = _command(
        sub, "plan", "show what apply would change; change nothing (exit 0 in sync, 2 drift)"
    )
    _add_run_options(p)

    p = _command(
        sub,
        "validate",
        "check every file of the repo and compile every role, or every node with its own facts "
        "(--facts-dir, --all) (exit 0 valid, 1 invalid or could not run)",
    )
    _option(p, "--config", type=Path)
    _option(p, "--repo")
    _option(p, "--ref")
    _option(
        p,
        "--node",
        action="append",
        default=[],
        help="also compile this node (repeatable); with --facts-dir or --all, only these nodes",
    )
    _option(p, "--facts", type=Path, dest="facts_file")
    _option(p, "--state-dir", type=Path)  # the modules' mirrors are kept there
    fleet_facts = p.add_mutually_exclusive_group()
    fleet_facts.add_argument(
        "--facts-dir",
        type=Path,
        metavar="DIR",
        help="<node>.yaml files of facts, one per node (as `reconciler facts` prints them)",
    )
    fleet_facts.add_argument(
        "--all",
        action="store_true",
        help="compile every node with its own facts as published to the coordination store "
        "of --config, in place of this host's",
    )
    p.add_argument("--role", help="only the nodes of this role")

    p = _command(
        sub,
        "diff",
        "what a change of the control repo changes on every node, before it lands "
        "(exit 0 nothing, 2 changes, 4 a catalog fails at --to, 1 could not run)",
    )
    _option(p, "--repo", required=True, help="control repo: a git repository (path or URL)")
    p.add_argument(
        "--from", dest="before", required=True, metavar="REF",
        help="the revision before the change: a branch, tag or commit",
    )  # fmt: skip
    p.add_argument(
        "--to", dest="after", required=True, metavar="REF",
        help="the revision with the change: a branch, tag or commit",
    )  # fmt: skip
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--facts-dir",
        type=Path,
        metavar="DIR",
        help="<node>.yaml files of facts, one per node (as `reconciler facts` prints them)",
    )
    given.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="read every node's facts from the coordination store this configuration file "
        "names (nothing else of it is used)",
    )
    _option(p, "--node", action="append", default=[], help="only this node (repeatable)")
    p.add_argument("--role", help="only nodes with this role at either revision")
    _option(p, "--format", choices=("text", "json", "markdown"), default="text")
    _option(
        p,
        "--state-dir",
        type=Path,
        help="where a remote repo and the modules are fetched (default: a temporary directory)",
    )
    p.add_argument(
        "--compile-timeout",
        type=float,
        default=COMPILE_TIMEOUT,
        metavar="SECONDS",
        help="stop one catalog's compile after this long: that node fails to compile "
        f"(default: {COMPILE_TIMEOUT:g})",
    )

    p = _command(sub, "modules", "the modules the control repo pins in modules.yaml")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(
        actions,
        "update",
        "resolve each module's tag, or ref (branch or tag), and rewrite its commit pin",
    )
    p.add_argument("name", nargs="*", help="the modules to update (default: every one)")
    p.add_argument(
        "--tag",
        help="pin the one module named to this tag (written as its tag:, in place of a ref:)",
    )
    _option(p, "--repo", default=".", help="the control repo's working tree (default: .)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for reading the repo")

    p = _command(sub, "facts", "print this node's facts, or every node's from the store (--all)")
    _option(p, "--format", choices=("yaml", "json"), default="yaml")
    _option(p, "--config", type=Path)
    _option(p, "--node")
    _option(p, "--facts", type=Path, dest="facts_file")
    p.add_argument(
        "--all",
        action="store_true",
        help="every node's facts as published to the coordination store of --config",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="with --all: write one <node>.yaml per node into DIR (new or empty)",
    )

    p = _command(sub, "status", "the last run of this node, and a suspension of enforcement")
    _option(p, "--config", type=Path)
    _option(p, "--state-dir", type=Path)
    _option(p, "--format", choices=("text", "json"), default="text")

    p = _command(
        sub,
        "fleet",
        "every node's last run, as the nodes published it (exit 0 in sync, 2 changed, "
        "4 failed or stale, 6 both, 1 could not read)",
    )
    _option(p, "--config", type=Path, required=True)
    p.add_argument("--role", help="only the nodes of this role")
    p.add_argument("--state", choices=FLEET_STATES, help="only the nodes whose last run ended so")
    _option(p, "--format", choices=("text", "json"), default="text")

    p = _command(sub, "apps", "application deployments across the fleet")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(
        actions,
        "status",
        "each component's version and state on every node, and what waiting nodes wait for "
        "(exit 0, 4 a node failed, 1 could not read)",
    )
    p.add_argument("app", help="the app's name")
    _option(p, "--config", type=Path, required=True)
    _option(p, "--format", choices=("text", "json"), default="text")

    p = _command(sub, "explain", "which data level, file, line and commit set a value")
    p.add_argument(
        "key",
        help="<profile>.<parameter> (nginx.port), a data key (ntp_servers), or collect:NAME "
        "(what nodes published under NAME)",
    )
    _add_source_options(p)
    _option(p, "--state-dir", type=Path)  # the modules' mirrors are kept there

    p = _command(sub, "suspend", "pause enforcement: runs check and report, change nothing")
    p.add_argument(
        "--reason",
        required=True,
        help="why: shown by status, apply, and the daemon's status page and logs",
    )
    p.add_argument(
        "--until",
        metavar="TIME|DURATION",
        help="an end time (2026-11-25T08:00Z) or a duration (2h)",
    )
    _option(p, "--config", type=Path)
    _option(p, "--state-dir", type=Path)

    p = _command(sub, "resume", "end a suspension of enforcement")
    _option(p, "--config", type=Path)
    _option(p, "--state-dir", type=Path)

    p = _command(sub, "secret", "encrypt a value for the control repo's data")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = _command(
        actions,
        "encrypt",
        "print ENC[AGE,...] for named nodes and roles, or ENC[PKCS7,...] with --eyaml",
    )
    _option(p, "--repo", default=".", help="the control repo whose recipients to read (default: .)")
    _option(p, "--ref")
    _option(p, "--node", action="append", default=[], help="a node to encrypt for (repeatable)")
    p.add_argument("--role", action="append", default=[], help="a role to encrypt for (repeatable)")
    p.add_argument("--value", help="the value (default: standard input, less one final newline)")
    p.add_argument("--eyaml", action="store_true", help="encrypt for an eyaml key pair instead")
    p.add_argument(
        "--public-key",
        type=Path,
        default=Path("keys/public_key.pkcs7.pem"),
        help="with --eyaml: the public key (default: eyaml's, keys/public_key.pkcs7.pem)",
    )

    p = _command(sub, "daemon", "run the agent (under systemd)")
    _option(p, "--config", type=Path, required=True)

    p = _command(sub, "demo", "run the agent on the bundled example control repo")
    p.add_argument("--exit-after", type=float, help=argparse.SUPPRESS)  # for tests
    p.add_argument(
        "--prepare",
        type=Path,
        metavar="DIR",
        help="only copy the example to DIR (a git repository, its module beside it) and exit",
    )

    p = _command(sub, "init", "write the daemon's configuration, once the control repo can be read")
    _option(p, "--repo", required=True, help="the control repo's git URL")
    _option(p, "--node", required=True, help="this node's name in the control repo")
    p.add_argument("--branch", help="the branch to follow (default: the remote's default)")
    _option(
        p,
        "--config",
        type=Path,
        default=Path("/etc/reconciler/config.yaml"),
        help="the configuration file to write (default: /etc/reconciler/config.yaml)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing configuration")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds for reading the repo")
    return parser


# A reader that went away (`reconciler status | head -1`) ends the command as SIGPIPE ends other
# tools, 128 + 13, without a word: the shell's pipefail still sees the output was cut short.
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is handled below
        return code
    except BrokenPipeError:
        # Python would flush stdout again at exit and print the error: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _dispatch(args: argparse.Namespace) -> int:
    try:
        handler = _HANDLERS[args.command]
        return handler(args)
    except ModelError as exc:
        _err(f"the control repo has {len(exc.problems)} problem(s):")
        for problem in exc.problems:
            _say(f"  {problem}", file=sys.stderr)
        return EXIT_ERROR
    except SourceError as exc:  # named as the daemon logs it: FetchFailed, SignatureRejected
        message = str(exc)
        _err(message if message.startswith(exc.reason) else f"{exc.reason}: {message}")
        return EXIT_ERROR
    except ReconcilerError as exc:
        _err(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:  # a bug or the machine (EMFILE, ENOMEM): said, not a traceback
        from reconciler.source.git import redact

        _err(f"Unexpected: {type(exc).__name__}: {redact(str(exc))}")
        return EXIT_ERROR


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Options from --config (when given) overridden by flags."""
    from reconciler.config import ReconcileConfig
    from reconciler.model.secrets import SecretsConfig

    values: dict[str, Any] = {
        "repo": None,
        "ref": None,
        "node": None,
        "root": Path("/"),
        "state_dir": Path("/var/lib/reconciler"),
        "facts_dirs": [],
        "noop": False,
        "timeout": 60.0,
        "verify": None,
        "coordination": None,
        "max_file_size": ReconcileConfig().max_file_size,
        "allow_rewind": False,
        "secrets": SecretsConfig(),
    }
    config_path = getattr(args, "config", None)
    if config_path is not None:
        from reconciler.config import load_config

        config = load_config(config_path)
        values.update(
            repo=config.source.url,
            ref=config.source.branch,
            node=config.node,
            root=config.root,
            state_dir=config.state_dir,
            facts_dirs=list(config.facts_dirs),
            noop=config.reconcile.mode == "noop",
            timeout=config.source.timeout,
            verify=config.source.verify,
            coordination=config.coordination,
            max_file_size=config.reconcile.max_file_size,
            allow_rewind=config.source.allow_rewind,
            secrets=config.secrets,
        )
    for key in ("repo", "ref", "node", "root", "state_dir"):
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    coordination = values["coordination"]
    if (
        coordination is not None
        and getattr(args, "state_dir", None) is not None
        and coordination.path == Path(config.state_dir) / "coordination"
    ):
        # the local store beside the state, by default: the state directory given here
        values["coordination"] = dataclasses.replace(
            coordination, path=Path(values["state_dir"]) / "coordination"
        )
    if getattr(args, "noop", False):
        values["noop"] = True
    if getattr(args, "allow_rewind", False):
        values["allow_rewind"] = True
    return values


def _repo(values: dict[str, Any]) -> str:
    """The control repo to read: never the current directory unless the user names it."""
    if values["repo"] is None:
        raise ReconcilerError("no control repo: give --repo PATH|URL or --config FILE")
    return str(values["repo"])


def _options(args: argparse.Namespace) -> Any:
    from reconciler.reconcile import RunOptions

    values = _settings(args)
    return RunOptions(
        repo=_repo(values),
        ref=values["ref"],
        node=values["node"],
        root=Path(values["root"]),
        state_dir=Path(values["state_dir"]),
        facts_file=getattr(args, "facts_file", None),
        facts_dirs=values["facts_dirs"],
        noop=values["noop"],
        timeout=values["timeout"],
        verify=values["verify"],
        coordination=values["coordination"],
        max_file_size=values["max_file_size"],
        allow_rewind=values["allow_rewind"],
        secrets=values["secrets"],
        ignore_suspension=getattr(args, "ignore_suspension", False),
    )


def _snapshot(repo: str, values: dict[str, Any]) -> Any:
    """The revision to read; with source.verify in --config, only a verified signed commit."""
    from reconciler.reconcile import RunOptions, open_run_snapshot

    return open_run_snapshot(
        RunOptions(
            repo=repo,
            ref=values["ref"],
            state_dir=Path(values["state_dir"]),
            timeout=values["timeout"],
            verify=values["verify"],
        )
    )


def _colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _run(args: argparse.Namespace, plan: bool) -> int:
    """apply or plan: one run through the engine; its outcome picks the exit code."""
    from reconciler.engine.report import render_text
    from reconciler.reconcile import reconcile

    # One run and the process ends: what it allocates is given back at exit, so the cyclic
    # garbage collector would only scan the catalog again and again (and once more at the
    # end of the run, the catalog and the report still in hand) for nothing to free.
    gc.disable()
    outcome = reconcile(_options(args), plan=plan, warn=_warn)
    if outcome.suspended is not None:
        s = outcome.suspended
        _say(
            f"reconciler: enforcement is suspended ({s.reason}, {s.end()}): running in noop; "
            "--ignore-suspension to apply anyway",
            file=sys.stderr,
        )
    report = outcome.report
    if not outcome.ran or report is None:
        if outcome.problems:
            _err(f"the control repo has {len(outcome.problems)} problem(s):")
            for problem in outcome.problems:
                _say(f"  {problem}", file=sys.stderr)
        else:
            _err(outcome.message)
        return EXIT_ERROR
    if args.format == "json":
        print(report.to_json())
    else:
        sys.stdout.write(render_text(report, _colour(), plan))
    if plan:
        if report.failed:
            return EXIT_ERROR
        return 2 if report.changed else 0
    return report.exit_code()


def cmd_apply(args: argparse.Namespace) -> int:
    return _run(args, plan=False)


def cmd_plan(args: argparse.Namespace) -> int:
    return _run(args, plan=True)


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.model.catalog import Compiler, repo_warnings, tidy, validate_repo
    from reconciler.model.modules import with_modules
    from reconciler.reconcile import RunOptions, gather_facts

    every_node = args.facts_dir is not None or args.all
    if not every_node and args.role is not None:
        raise ReconcilerError("--role goes with --facts-dir or --all")
    if every_node and args.facts_file is not None:
        raise ReconcilerError("--facts is for this host's facts, not with --facts-dir or --all")
    values = _settings(args)
    repo = _repo(values)
    snapshot = _snapshot(repo, values)
    try:
        # every pin must exist (and, with source.verify, be signed) for the references to resolve
        snapshot = with_modules(
            snapshot, Path(values["state_dir"]), values["timeout"], values["verify"]
        )
    except ModelError as exc:
        _err(f"{snapshot.description}: {len(exc.problems)} problem(s):")
        for problem in exc.problems:
            _say(f"  {problem}", file=sys.stderr)
        return EXIT_ERROR
    if every_node:
        return _validate_nodes(args, values, snapshot)
    options = RunOptions(repo=repo, facts_file=args.facts_file, facts_dirs=values["facts_dirs"])
    this_node, facts = gather_facts(options, _warn)
    problems = validate_repo(snapshot, facts, this_node)
    for warning in repo_warnings(snapshot):
        _warn(warning)
    compiled = []
    for node in args.node:
        try:
            catalog = Compiler(snapshot).compile(node, {**facts, "node": node})
            compiled.append(f"{node}: role {catalog.role}, {len(catalog.entries)} resources")
        except ModelError as exc:
            problems = tidy([*problems, *exc.problems])
    if problems:
        _err(f"{snapshot.description}: {len(problems)} problem(s):")
        for problem in problems:
            _say(f"  {problem}", file=sys.stderr)
        return EXIT_ERROR
    for line in compiled:
        _say(line)
    _say(f"{snapshot.description}: valid ({snapshot.revision or 'working tree'})")
    return 0


def _review_facts(args: argparse.Namespace) -> dict[str, Any]:
    """Every node's facts: from --facts-dir, or as the nodes published them to the store of
    --config's coordination section."""
    if args.facts_dir is not None:
        from reconciler.review import load_facts_dir

        return load_facts_dir(args.facts_dir)
    from reconciler.apps.facts import fleet_facts

    if args.config is None:
        raise ReconcilerError("--all reads the coordination store: give --config FILE")
    found = fleet_facts(_settings(args)["coordination"], _warn)
    if not found:
        raise ReconcilerError(
            f"no node has published its facts to the coordination store of {args.config}"
        )
    return dict(found)


def _validate_nodes(args: argparse.Namespace, values: dict[str, Any], snapshot: Any) -> int:
    """validate --facts-dir or --all: the repo's files, then every node's catalog compiled
    with that node's facts."""
    from reconciler.model.catalog import repo_warnings, validate_files
    from reconciler.review.fleet import validate_fleet
    from reconciler.review.withheld import withheld_line

    facts = _review_facts(args)
    problems = validate_files(snapshot)
    for warning in repo_warnings(snapshot):
        _warn(warning)
    checked = validate_fleet(
        snapshot,
        facts,
        Path(values["state_dir"]),
        nodes=list(args.node),
        role=args.role,
        timeout=values["timeout"],
    )
    if args.role is not None and not checked.nodes:
        raise ReconcilerError(f"no node has role {args.role!r}")
    if not args.node and args.role is None:
        from reconciler.model.repo import names_of

        unused = sorted(set(names_of(snapshot, "role")) - {c.role for c in checked.nodes})
        if unused:  # no facts to compile them with; their files were checked all the same
            _warn(f"no node has role(s) {', '.join(unused)}: not compiled")
    if problems:
        _err(f"{snapshot.description}: {len(problems)} problem(s):")
        for problem in problems:
            _say(f"  {problem}", file=sys.stderr)
    failed = checked.failed()
    if failed:
        _err(f"{len(failed)} of {len(checked.nodes)} node(s) fail to compile with their facts:")
        shown = {str(p) for p in problems}
        groups: dict[tuple[str | None, tuple[Any, ...], tuple[str, ...]], list[str]] = {}
        for check in failed:
            groups.setdefault((check.role, check.problems, check.withheld), []).append(check.node)
        for (role, found, withheld), names in groups.items():
            label = "node" if len(names) == 1 else f"{len(names)} nodes"
            _say(f"  {label} {', '.join(names)} ({f'role {role}' if role else 'no role'}):",
                 file=sys.stderr)  # fmt: skip
            if withheld:
                _say(f"    {withheld_line(withheld)}", file=sys.stderr)
            new = [p for p in found if str(p) not in shown]
            for problem in new:
                _say(f"    {problem}", file=sys.stderr)
            if len(new) < len(found):
                _say(f"    and {len(found) - len(new)} problem(s) listed above", file=sys.stderr)
    placeheld: dict[tuple[str, ...], list[str]] = {}
    for check in checked.nodes:
        if check.withheld and not check.failed:
            placeheld.setdefault(check.withheld, []).append(check.node)
    for withheld, names in placeheld.items():
        label = "node" if len(names) == 1 else f"{len(names)} nodes"
        _say(f"{label} {', '.join(names)}: {withheld_line(withheld)}")
    roles = Counter(c.role or "(none)" for c in checked.nodes if not c.failed)
    compiled = ", ".join(f"{n} of role {r}" for r, n in sorted(roles.items()))
    _say(
        f"{sum(roles.values())} of {len(checked.nodes)} node(s) compile with their facts"
        + (f" ({compiled})" if compiled else "")
        + f"; {checked.compiles} distinct catalog(s) compiled"
    )
    if problems or failed:
        return EXIT_ERROR
    _say(f"{snapshot.description}: valid ({snapshot.revision or 'working tree'})")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from reconciler.review.fleet import Request, diff_fleet
    from reconciler.review.render import to_json, to_markdown, to_text

    request = Request(
        repo=str(args.repo),
        before=args.before,
        after=args.after,
        facts=_review_facts(args),
        nodes=list(args.node),
        role=args.role,
        state_dir=args.state_dir,
        compile_timeout=args.compile_timeout,
    )
    diff = diff_fleet(request)
    if args.format == "json":
        sys.stdout.write(to_json(diff))
    elif args.format == "markdown":
        _say(to_markdown(diff).rstrip("\n"))
    else:
        _say(to_text(diff).rstrip("\n"))
    return diff.exit_code()


def cmd_facts(args: argparse.Namespace) -> int:
    from reconciler import facts as factsmod
    from reconciler.reconcile import RunOptions, gather_facts

    if args.all or args.out is not None:
        return _fleet_facts(args)
    values = _settings(args)
    options = RunOptions(
        repo="", node=values["node"], facts_file=args.facts_file, facts_dirs=values["facts_dirs"]
    )
    _, facts = gather_facts(options, _warn)
    sys.stdout.write(factsmod.render(facts, args.format))
    return 0


def _fleet_facts(args: argparse.Namespace) -> int:
    """``facts --all``: every node's published facts, as files in --out or on stdout."""
    from reconciler import facts as factsmod
    from reconciler.apps.facts import fleet_published
    from reconciler.fs import atomic_write

    if not args.all:
        raise ReconcilerError("--out DIR goes with --all")
    if args.config is None:
        raise ReconcilerError("--all reads the coordination store: give --config FILE")
    if args.node is not None or args.facts_file is not None:
        raise ReconcilerError("--node and --facts are for this node's facts, not with --all")
    if args.out is not None and args.format != "yaml":
        raise ReconcilerError("--out writes YAML files: leave out --format json")
    out: Path | None = args.out
    if out is not None:
        try:
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise ReconcilerError(f"--out {out}: not a new or empty directory")
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReconcilerError(f"--out {out}: {exc.strerror or exc}") from None
    published = fleet_published(_settings(args)["coordination"], _warn)
    documents = {node: found.document() for node, found in published.items()}
    if out is not None:
        for node, document in documents.items():
            path = out / f"{node}.yaml"
            try:
                atomic_write(path, factsmod.render(document, "yaml").encode())
            except OSError as exc:
                raise ReconcilerError(f"{path}: {exc.strerror or exc}") from None
        _say(f"{len(documents)} node(s) written to {out}", file=sys.stderr)
    elif args.format == "json":
        sys.stdout.write(json.dumps(documents, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write("".join(f"---\n{factsmod.render(d, 'yaml')}" for d in documents.values()))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.engine.state import last_report, stopped_early
    from reconciler.engine.suspension import current

    values = _settings(args)
    state_dir = Path(values["state_dir"])
    report = last_report(state_dir, _warn)
    suspended = current(state_dir)
    if args.format == "json":
        if report is None:
            _err(f"no run report in {state_dir} yet")
            return EXIT_ERROR
        if suspended is not None:  # the report as written, and what holds now
            report = {**report, "suspended": suspended.to_dict()}
        print(json.dumps(report, indent=2))
        return 0
    if suspended is not None:
        _say(f"enforcement: {suspended.describe()}")
    if report is None:
        _err(f"no run report in {state_dir} yet")
        return EXIT_ERROR
    if stopped_early(report):
        # The newest run stopped before its resources (an unreachable remote, a refused
        # revision): say why, then show the last run that checked them.
        _say(f"last run:  {report.get('started')}: stopped before its resources")
        for error in report.get("errors", []):
            _say("  error" + _indented(": ", error, 4))
        report = last_report(state_dir, _warn, converged=True)
        if report is None:
            return 0
        _say("the last run that checked resources:")
    summary = report.get("summary", {})
    _say(f"node:      {report.get('node')} (role {report.get('role')})")
    revision = report.get("revision") or "working tree"
    branch = report.get("branch")
    _say(f"revision:  {revision}" + (f" ({branch})" if branch else ""))
    _say(
        f"last run:  {report.get('started')} in {report.get('duration_seconds', 0):.2f}s"
        f"{' (noop)' if report.get('noop') else ''}"
    )
    _say("resources: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    for item in report.get("resources", []):
        if item.get("status") in ("failed", "would_change", "skipped"):
            _say(f"  {item['status']:<12} {item['id']}" + _indented(": ", item.get("error"), 6))
    for error in report.get("errors", []):
        _say("  error" + _indented(": ", error, 4))
    apps = report.get("apps") or []
    if apps:
        from reconciler.engine.report import render_apps

        _say("apps (at the last run):")
        for line in render_apps(apps):
            _say("  " + line)
        _print_live_requirements(apps, values)
    return 0


def _indented(prefix: str, text: str | None, indent: int) -> str:
    """``text`` after ``prefix``, its later lines (a command's output) indented under it."""
    if not text:
        return ""
    return prefix + text.replace("\n", "\n" + " " * indent)


def _print_live_requirements(apps: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """What the components that waiting ones wait for report now, read from the store."""
    from reconciler.apps.store import CoordinationConfig, StoreError, open_store

    wanted = sorted({(a["app"], c) for a in apps for c in a.get("waits_for", {})})
    if not wanted:
        return
    config = values["coordination"] or CoordinationConfig(
        path=Path(values["state_dir"]) / "coordination"
    )
    try:
        store = open_store(config)
        try:
            _say("required components now:")
            for app, component in wanted:
                states = store.states(app, component)
                shown = ", ".join(
                    f"{n} {st.state}@{st.version}" for n, st in sorted(states.items())
                )
                _say(f"  {app}/{component}: {shown or 'no node has reported'}")
        finally:
            store.close()
    except StoreError as exc:
        _warn(f"coordination store: {exc}")


def _open_store(args: argparse.Namespace) -> Any:
    from reconciler.apps.store import open_store

    return open_store(_coordination(_settings(args)))


def cmd_fleet(args: argparse.Namespace) -> int:
    from reconciler.apps import fleet

    store = _open_store(args)
    try:
        summaries = fleet.read(store, _warn)
    finally:
        store.close()
    rows = fleet.fleet_rows(summaries, role=args.role, state=args.state)
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    elif rows:
        _say(fleet.render_text(rows).removesuffix("\n"))
    if not rows:
        _say(
            "reconciler: no node matches"
            if summaries
            else "reconciler: no node has published a run summary",
            file=sys.stderr,
        )
    return fleet.exit_code(rows)


def cmd_apps(args: argparse.Namespace) -> int:
    from reconciler.apps import fleet

    store = _open_store(args)
    try:
        components = fleet.app_status(store, args.app)
    finally:
        store.close()
    if not components:
        raise ReconcilerError(f"no node has published a state of app {args.app!r}")
    if args.format == "json":
        print(
            json.dumps({"app": args.app, "components": [c.to_dict() for c in components]}, indent=2)
        )
    else:
        _say(fleet.render_app_status(args.app, components).removesuffix("\n"))
    failed = any(s.state == "failed" for c in components for s in c.states.values())
    return 4 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from reconciler.apps.exports import exchange
    from reconciler.model.modules import with_modules
    from reconciler.reconcile import RunOptions, gather_facts

    values = _settings(args)
    repo = _repo(values)
    snapshot = _snapshot(repo, values)
    snapshot = with_modules(
        snapshot, Path(values["state_dir"]), values["timeout"], values["verify"]
    )
    options = RunOptions(
        repo=repo,
        node=values["node"],
        facts_file=args.facts_file,
        facts_dirs=values["facts_dirs"],
    )
    node, facts = gather_facts(options, _warn)
    if values["node"] is None:
        _say(f"reconciler: no --node given: explaining for this host, node {node}", file=sys.stderr)
    with exchange(None, _coordination(values)) as exports:
        if args.key.startswith("collect:"):
            return _explain_collect(args.key.removeprefix("collect:"), exports.read, node)
        return _explain(args, values, snapshot, node, facts, exports.read)


def _coordination(values: dict[str, Any]) -> Any:
    from reconciler.apps.store import CoordinationConfig

    return values["coordination"] or CoordinationConfig(
        path=Path(values["state_dir"]) / "coordination"
    )


def _explain_collect(name: str, read: Callable[[], Any], node: str) -> int:
    """What ``collect(NAME)`` gives, each mapping with the node that published it."""
    from reconciler.model.exports import Collector

    collector = Collector(read)
    try:
        found = collector.collect(name)
    except ValueError as exc:
        raise ReconcilerError(str(exc)) from None
    for why in collector.warnings:
        _warn(why)
    _say(f"collect({name!r}) = {len(found)} mapping(s)   (read by node {node})")
    for item in found:
        given = {k: v for k, v in item.items() if k != "node"}
        _say(f"  published by {item['node']}: {json.dumps(given, sort_keys=True)}")
    return 0


def _explain(
    args: argparse.Namespace,
    values: dict[str, Any],
    snapshot: Any,
    node: str,
    facts: dict[str, Any],
    read: Callable[[], Any],
) -> int:
    from reconciler.model.catalog import Compiler
    from reconciler.model.secrets import Keyring, SecretsConfig, encrypted
    from reconciler.resources.base import digest

    # With the node's keys, an encrypted value is decrypted (and shown as the digest of its
    # plaintext, as plans show it); without them, as the digest of what is written.
    keys: SecretsConfig = values["secrets"]
    keyring = Keyring(keys if any(vars(keys).values()) else None)
    compiler = Compiler(snapshot, keyring=keyring, collect=read)
    revision = snapshot.revision or "working tree"
    profile = args.key.split(".", 1)[0]
    if profile not in compiler.profile_names():  # a free data key
        free = compiler.explain_data(node, facts, args.key)
        shown = json.dumps(free.value, default=str)
        _say(f"{args.key} = {digest(shown) if free.secret else shown}   (node {node})")
        if free.secret:
            _say(_ENCRYPTED[keyring.decrypts])
        _explain_merged(free, revision, digest if free.secret else (lambda text: text))
        return 0
    value, found, default_at, data = compiler.explain(node, facts, args.key)
    merged = compiler.explain_data(node, facts, args.key) if found is not None else None
    # A default encrypted as written, or one that looked up an encrypted value.
    looked_up = compiler.secret_reads > 0
    secret = merged.secret if merged is not None else encrypted(value) or looked_up
    sensitive = secret or (
        args.key.split(".", 1)[1] in compiler.profile(profile, default_at).sensitive
    )
    shown = digest(json.dumps(value)) if sensitive else json.dumps(value)
    _say(f"{args.key} = {shown}   (node {node})")
    if secret:  # an encrypted default is shown as written: explain does not decrypt it
        _say(_ENCRYPTED[keyring.decrypts and not encrypted(value)])
    contributed = {found.level} if found is not None else set()
    if found is not None and merged is not None:
        if merged.merge != "first":
            _explain_merged(merged, revision, digest if sensitive else (lambda text: text))
            contributed = {piece.level for piece in merged.pieces}
        else:
            _say(
                f"  set by data level {found.level!r}: {found.where.file}:{found.where.line}"
                f" at {revision}"
            )
        _say(f"  (the default is at {default_at.file}:{default_at.line})")
    else:
        _say(f"  the profile's default: {default_at.file}:{default_at.line} at {revision}")
    _say("  levels, first wins:" if len(contributed) < 2 else "  levels, merged:")
    used = {level: file for level, file, _ in data.levels}
    skipped = dict(data.skipped)
    for level in compiler.settings.hierarchy:
        if level in used:
            mark = "<- this one" if level in contributed else ""
            _say(f"    {level:<32} {used[level]} {mark}")
        elif level in skipped:
            _say(f"    {level:<32} skipped: {skipped[level]}")
        else:
            _say(f"    {level:<32} no file")
    return 0


_ENCRYPTED = {
    True: "  encrypted in data: decrypted with this node's keys, shown as its digest",
    False: "  encrypted in data: shown as the digest of what is written (no keys configured)",
}


def _explain_merged(found: Found, revision: str, show: Callable[[str], str]) -> None:
    """The levels a data value was read or merged from, and where each piece came from."""
    if found.merge == "first":
        piece = found.pieces[0]
        _say(f"  set by data level {piece.level!r}: {piece.where} at {revision}")
        return
    _say(f"  merged ({found.merge}) from {len(found.pieces)} level(s), first level first:")
    for piece in found.pieces:
        _say(f"    data level {piece.level!r}: {piece.where.file}:{piece.where.line} at {revision}")
    origins = found.origins()
    if origins:
        _say("  where each piece comes from:")
    for label, given in origins:
        places = ", ".join(f"{p.where.file}:{p.where.line}" for p in given) or "?"
        _say(f"    {show(label)}: from {places}")


def cmd_suspend(args: argparse.Namespace) -> int:
    from reconciler.engine import suspension as suspend

    state_dir = Path(_settings(args)["state_dir"])
    until = suspend.parse_until(args.until) if args.until else None
    done = suspend.suspend(state_dir, args.reason, until)
    _say(f"enforcement {done.describe()}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from reconciler.engine import suspension as suspend

    state_dir = Path(_settings(args)["state_dir"])
    _say("enforcement resumed" if suspend.resume(state_dir) else "enforcement was not suspended")
    return 0


def cmd_secret(args: argparse.Namespace) -> int:
    from reconciler.model import secrets

    value = args.value if args.value is not None else sys.stdin.read().removesuffix("\n")
    if args.eyaml:
        if args.node or args.role:
            raise ReconcilerError("--eyaml encrypts for --public-key, not for nodes or roles")
        try:
            certificate = args.public_key.read_bytes()
        except OSError as exc:
            raise ReconcilerError(f"{args.public_key}: {exc.strerror}") from None
        print(secrets.encrypt_pkcs7(value.encode(), certificate))
        return 0
    if not args.node and not args.role:
        raise ReconcilerError("name who may decrypt it: --node NAME or --role NAME (repeatable)")
    snapshot = _snapshot(str(args.repo), _settings(args))
    recipients = secrets.recipients_for(secrets.load_recipients(snapshot), args.node, args.role)
    print(secrets.encrypt_age(value.encode(), recipients))
    return 0


def cmd_modules(args: argparse.Namespace) -> int:
    from reconciler.model.modules import update_pins

    for done in update_pins(Path(args.repo), list(args.name), args.timeout, args.tag):
        if done.old == done.new:
            _say(f"{done.name}: {done.new} ({done.ref}), unchanged")
        else:
            moved = ", the tag moved" if done.moved else ""
            _say(f"{done.name}: {done.old or '(none)'} -> {done.new} ({done.ref}{moved})")
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    from reconciler.daemon.agent import main as daemon_main

    return daemon_main(args.config)


def cmd_demo(args: argparse.Namespace) -> int:
    from reconciler import demo

    if args.prepare is not None:
        repo = demo.copy_example(args.prepare / "control-repo")
        demo.commit_example(repo)
        _say(f"{repo}: the example control repo (branch production), its modules beside it")
        return 0
    return demo.main(args.exit_after)


def cmd_init(args: argparse.Namespace) -> int:
    from reconciler.init import init
    from reconciler.source.git import shown_url

    done = init(args.config, args.repo, args.node, args.branch, args.force, args.timeout)
    _say(
        f"wrote {args.config}: node {args.node}, branch {done.branch} of "
        f"{shown_url(args.repo)} (now at {done.commit[:12]})"
    )
    _say("start the agent with:  systemctl enable --now reconciler")
    return 0


_HANDLERS = {
    "demo": cmd_demo,
    "init": cmd_init,
    "suspend": cmd_suspend,
    "resume": cmd_resume,
    "daemon": cmd_daemon,
    "apply": cmd_apply,
    "plan": cmd_plan,
    "validate": cmd_validate,
    "diff": cmd_diff,
    "facts": cmd_facts,
    "status": cmd_status,
    "explain": cmd_explain,
    "fleet": cmd_fleet,
    "apps": cmd_apps,
    "secret": cmd_secret,
    "modules": cmd_modules,
}

if __name__ == "__main__":
    raise SystemExit(main())
