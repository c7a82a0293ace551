"""Benchmark the fleet view on N run summaries in a local coordination store.

Times, as medians: reading and checking every summary (``fleet.read``), building the rows
(``fleet_rows``), and rendering the daemon's /fleet page (at most ``MAX_ROWS`` rows) and
``reconciler fleet``'s text. One summary in ten is a failed run with a message.

Usage: python bench/fleet.py [--sizes 1000 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from reconciler.apps import fleet
from reconciler.apps.store import LocalStore
from reconciler.daemon.http import fleet_page

T = TypeVar("T")


def populate(store: LocalStore, n: int) -> None:
    now = time.time()
    for i in range(n):
        failed = i % 10 == 0
        summary = fleet.RunSummary(
            node=f"node-{i:05d}",
            role=f"role-{i % 7}",
            revision="3f2c1a9d0b7e4c55a1f0d2e8b9c3a7f6e5d4c3b2",
            branch="production",
            ended=now - i,
            result="failed" if failed else "in_sync",
            drifted=i % 3,
            changed=0,
            failed=1 if failed else 0,
            noop=False,
            suspended=False,
            version="0.1.0",
            ttl=3600.0,
            message="failed: exec:broken" if failed else "",
        )
        store.publish_record("summary", summary.node, fleet.encode(summary), summary.ttl)


def timed(step: Callable[[], T], repeat: int) -> tuple[float, T]:
    """The median seconds of ``repeat`` calls, and the last call's result."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = step()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def measure(n: int, repeat: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp))
        populate(store, n)
        read_t, summaries = timed(lambda: fleet.read(store, print), repeat)
        rows_t, rows = timed(lambda: fleet.fleet_rows(summaries), repeat)
        page_t, page = timed(lambda: fleet_page(rows, None, "node-00000"), repeat)
        text_t, _ = timed(lambda: fleet.render_text(rows), repeat)
    ms = [f"{x * 1000:>7.0f}ms" for x in (read_t, rows_t, page_t, text_t)]
    return f"{n:>7} {' '.join(ms)} {len(page.encode()):>11}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'nodes':>7} {'read':>9} {'rows':>9} {'page':>9} {'text':>9} {'page bytes':>11}")
    for n in args.sizes:
        print(measure(n, args.repeat))


if __name__ == "__main__":
    main()
