"""Run one ``reconciler`` command in this process under cProfile, split by phase.

    python bench/profile_phases.py [--top 8] -- apply --repo ... --root ... --state-dir ...

Phases: start-up (the imports, until the command starts), facts, load (reading and parsing
YAML, or its parse cache), compile (the rest of the catalog compilation), converge (the check
of every resource and the apply of what differs, in the engine's thread; writes handed to the
thread pool are not profiled, their wait is), report (the inventory, the report file, the
output) and other. Each phase prints its seconds (as profiled: cProfile roughly doubles them)
and its top functions by own time. Used by ``bench/run.py --profile``.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any

PHASES = ("start-up", "facts", "load", "compile", "converge", "report", "other")


class Phases:
    """One profiler per phase; entering a phase pauses the one running and resumes it after."""

    def __init__(self) -> None:
        self.profiles = {name: cProfile.Profile() for name in PHASES}
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.stack: list[tuple[str, float]] = []

    def enter(self, name: str) -> None:
        now = time.perf_counter()
        if self.stack:
            outer, since = self.stack[-1]
            self.profiles[outer].disable()
            self.seconds[outer] += now - since
        self.stack.append((name, now))
        self.profiles[name].enable()

    def leave(self) -> None:
        now = time.perf_counter()
        name, since = self.stack.pop()
        self.profiles[name].disable()
        self.seconds[name] += now - since
        if self.stack:
            outer, _ = self.stack[-1]
            self.stack[-1] = (outer, now)
            self.profiles[outer].enable()

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, attr)

        @functools.wraps(inner)
        def phased(*args: Any, **kwargs: Any) -> Any:
            self.enter(name)
            try:
                return inner(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, attr, phased)

    def print(self, top: int) -> None:
        total = sum(self.seconds.values())
        print(f"profiled {total:.2f} s in all (cProfile overhead included)")
        for name in PHASES:
            seconds = self.seconds[name]
            if not seconds:
                continue
            print(f"\n== {name}: {seconds:.3f} s ({100 * seconds / total:.0f}%)")
            out = io.StringIO()
            stats = pstats.Stats(self.profiles[name], stream=out)
            stats.sort_stats("tottime").print_stats(top)
            lines = out.getvalue().splitlines()
            start = next((i for i, line in enumerate(lines) if "ncalls" in line), len(lines))
            print("\n".join(line for line in lines[start:] if line.strip()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    phases = Phases()
    phases.enter("other")
    phases.enter("start-up")
    from reconciler import cli, reconcile
    from reconciler.engine import report, state
    from reconciler.model import catalog, repo, yamlload

    phases.leave()
    phases.wrap(reconcile, "gather_facts", "facts")
    phases.wrap(yamlload, "load", "load")
    phases.wrap(repo, "load", "load")
    phases.wrap(catalog.Compiler, "compile", "compile")
    phases.wrap(reconcile, "_converge", "converge")
    phases.wrap(reconcile, "_inventory", "report")
    phases.wrap(state.Inventory, "save", "report")
    phases.wrap(state, "save_report", "report")
    phases.wrap(report, "render_text", "report")
    stdout = sys.stdout
    sys.stdout = io.StringIO()  # the command's own output is not the point here
    try:
        code = cli.main(command)
    finally:
        sys.stdout = stdout
        phases.leave()
    print(f"reconciler {' '.join(command[:1])}: exit code {code}")
    phases.print(args.top)


if __name__ == "__main__":
    main()
