"""The one way reconciler runs a process: bounded in output, in time, and in what it leaves.

``run`` starts the child in its own session (so in its own process group), feeds it its input,
and reads its output as it arrives, keeping at most ``output_cap`` bytes of each stream (its
head, its tail, or both) and counting what it dropped: a command printing gigabytes costs the
agent no more than the cap. At the deadline it stops reading, ends the whole group (SIGTERM, a
short grace, SIGKILL) and returns, even if a process that left the group still holds the
output open. When the child exits, whatever it left running in its group is killed too.

This module is a low layer: it imports nothing from reconciler, and raises only ``OSError``
(the command cannot be started) and ``TimedOut`` (from ``Completed.check_timeout``).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_CAP = 64 * 1024
GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL of a group past its deadline
REAP_SECONDS = 5.0  # waiting for a killed child to be reaped, at the most
_CHUNK = 1 << 16
# While pipes are open, how often the child's exit is looked at: a process it started that
# keeps the pipes open must not keep the caller waiting for it.
_POLL_SECONDS = 0.05
_DRAIN_SECONDS = 1.0  # reading what is left after the child exited, at the most

Keep = Literal["head", "tail", "both"]
Stderr = Literal["capture", "merge", "discard"]


class TimedOut(TimeoutError):
    """A process ran past its timeout and was killed with its group."""

    def __init__(self, completed: Completed) -> None:
        super().__init__(f"{completed.argv[0]}: timed out after {completed.timeout:g}s")
        self.completed = completed


class _Capture:
    """At most ``cap`` bytes of a stream, the part ``keep`` says, and how many were dropped."""

    def __init__(self, cap: int, keep: Keep) -> None:
        self.cap = max(0, cap)
        self.keep = keep
        self.head_cap = self.cap if keep == "head" else self.cap // 2 if keep == "both" else 0
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk or self.keep == "head":
            return
        self.tail += chunk
        tail_cap = self.cap - self.head_cap
        if len(self.tail) > 2 * tail_cap + _CHUNK:  # trim now and then, not on every chunk
            del self.tail[: len(self.tail) - tail_cap]

    def result(self) -> tuple[bytes, int]:
        tail_cap = self.cap - self.head_cap
        tail = bytes(self.tail[len(self.tail) - tail_cap :]) if tail_cap else b""
        kept = bytes(self.head) + tail
        return kept, self.total - len(kept)


@dataclass(frozen=True)
class Completed:
    """How a process ended and what it printed (as kept: see ``*_dropped``).

    ``returncode`` is None when the process was killed for its timeout or its output.
    """

    argv: tuple[str, ...]
    returncode: int | None
    stdout: bytes
    stderr: bytes
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    timed_out: bool = False
    overflowed: bool = False  # killed for printing more than the cap (kill_on_overflow)
    timeout: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check_timeout(self) -> Completed:
        """Self, or TimedOut when the process ran past its timeout."""
        if self.timed_out:
            raise TimedOut(self)
        return self

    def text(self, stream: Literal["stdout", "stderr"] = "stdout") -> str:
        """A stream as text, with a marker where bytes were dropped."""
        data = self.stdout if stream == "stdout" else self.stderr
        dropped = self.stdout_dropped if stream == "stdout" else self.stderr_dropped
        text = data.decode(errors="replace")
        if dropped:
            text = f"[{dropped} bytes of output dropped]\n{text}"
        return text


def kill_group(pgid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    """Signal every process of a group; a group already gone is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    output_cap: int = DEFAULT_CAP,
    keep: Keep = "tail",
    stderr: Stderr = "capture",
    kill_on_overflow: bool = False,
    uid: int | None = None,
    gid: int | None = None,
    grace: float = GRACE_SECONDS,
    watch: Callable[[], None] | None = None,
    watch_every: float = 1.0,
) -> Completed:
    """Run ``argv`` to its end or its deadline, ``timeout`` seconds from now.

    ``env`` is the whole environment (None: this process's). ``stderr``: kept apart, merged
    into stdout, or discarded. ``kill_on_overflow``: a stream passing ``output_cap`` ends the
    process (as a timeout does) instead of being cut. ``uid``/``gid``: run as that user, with
    no supplementary groups (needs root). ``watch`` is called every ``watch_every`` seconds
    while the process runs; what it raises ends the process group and propagates. Raises
    OSError when the command cannot be started.
    """
    deadline = time.monotonic() + timeout
    extra: dict[str, object] = {}
    if uid is not None:
        extra.update(user=uid, group=gid, extra_groups=[])
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr={
            "capture": subprocess.PIPE,
            "merge": subprocess.STDOUT,
            "discard": subprocess.DEVNULL,
        }[stderr],
        cwd=cwd,
        env=None if env is None else dict(env),
        start_new_session=True,
        **extra,  # type: ignore[call-overload]
    )
    pgid = proc.pid  # a new session's leader: its pid is the group's id
    out, err = _Capture(output_cap, keep), _Capture(output_cap, keep)
    timed_out = overflowed = False
    try:
        timed_out, overflowed = _pump(
            proc, input, out, err, deadline, kill_on_overflow, watch, watch_every
        )
        if not (timed_out or overflowed):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out or overflowed:
            _end_group(proc, pgid, grace)
    finally:
        kill_group(pgid)  # what the command left running in its group
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(REAP_SECONDS)
    stdout, stdout_dropped = out.result()
    stderr_data, stderr_dropped = err.result()
    return Completed(
        argv=tuple(argv),
        returncode=None if timed_out or overflowed else proc.returncode,
        stdout=stdout,
        stderr=stderr_data,
        stdout_dropped=stdout_dropped,
        stderr_dropped=stderr_dropped,
        timed_out=timed_out,
        overflowed=overflowed,
        timeout=timeout,
    )


def _pump(
    proc: subprocess.Popen[bytes],
    input: bytes | None,
    out: _Capture,
    err: _Capture,
    deadline: float,
    kill_on_overflow: bool,
    watch: Callable[[], None] | None,
    watch_every: float,
) -> tuple[bool, bool]:
    """Feed the input and read the outputs until both end, the child has exited (and what
    was already written is read), or the deadline: (timed out, overflowed)."""
    captures: dict[int, _Capture] = {}
    pending = memoryview(input or b"")
    with selectors.DefaultSelector() as selector:
        for pipe, capture in ((proc.stdout, out), (proc.stderr, err)):
            if pipe is not None:
                os.set_blocking(pipe.fileno(), False)
                selector.register(pipe.fileno(), selectors.EVENT_READ)
                captures[pipe.fileno()] = capture
        stdin_fd = None
        if proc.stdin is not None:
            stdin_fd = proc.stdin.fileno()
            if pending:
                os.set_blocking(stdin_fd, False)
                selector.register(stdin_fd, selectors.EVENT_WRITE)
            else:
                proc.stdin.close()
        drain_until: float | None = None
        next_watch = time.monotonic() + watch_every
        while captures:
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return True, False
            if watch is not None and now >= next_watch:
                watch()
                next_watch = now + watch_every
            events = selector.select(min(left, _POLL_SECONDS))
            for key, _ in events:
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        pending = pending[os.write(fd, pending[:_CHUNK]) :]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(fd)
                        assert proc.stdin is not None
                        proc.stdin.close()
                        stdin_fd = None
                    continue
                try:
                    chunk = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    del captures[fd]
                    continue
                capture = captures[fd]
                capture.add(chunk)
                if kill_on_overflow and capture.total > capture.cap:
                    return False, True
            if drain_until is not None and (not events or time.monotonic() > drain_until):
                # The child is gone and what it wrote is read: whoever still holds the pipes
                # open left its group and is not waited for.
                return False, False
            if drain_until is None and proc.poll() is not None:
                kill_group(proc.pid)  # what it left running in its group
                drain_until = time.monotonic() + _DRAIN_SECONDS
    return False, False


def _end_group(proc: subprocess.Popen[bytes], pgid: int, grace: float) -> None:
    """SIGTERM to the group, up to ``grace`` seconds for the child to go, then SIGKILL."""
    kill_group(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    kill_group(pgid, signal.SIGKILL)
