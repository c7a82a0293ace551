"""Running commands: argv lists, a clean environment, a timeout that kills the whole group.

A shell is used only when the caller asks for one (an exec whose command is a string). Output
(stdout and stderr together) is kept up to a bound, the last bytes being the useful ones.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import ResourceError

MAX_OUTPUT = 64 * 1024
GRACE_SECONDS = 2.0
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str
    timed_out: bool = False

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


class Runner:
    def __init__(self, base_env: Mapping[str, str] | None = None) -> None:
        self.base_env = dict(base_env or {})

    def run(
        self,
        argv: list[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        input: bytes | None = None,
    ) -> RunResult:
        environ = {"PATH": BASE_PATH, "LANG": "C.UTF-8", **self.base_env, **(env or {})}
        kwargs: dict[str, object] = {}
        if user is not None:
            if os.geteuid() != 0:
                import pwd

                if pwd.getpwuid(os.geteuid()).pw_name != user:
                    raise ResourceError(f"cannot run as {user!r}: reconciler is not root")
            else:
                import pwd

                try:
                    entry = pwd.getpwnam(user)
                except KeyError:
                    raise ResourceError(f"no user named {user!r}") from None
                kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
                environ.setdefault("HOME", entry.pw_dir)
                environ.setdefault("USER", user)
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=environ,
                start_new_session=True,
                **kwargs,  # type: ignore[call-overload]
            )
        except FileNotFoundError:
            raise ResourceError(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise ResourceError(f"command not executable: {argv[0]}") from None
        except OSError as exc:
            raise ResourceError(f"cannot run {argv[0]}: {exc.strerror}") from None
        timed_out = False
        try:
            out, _ = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out, _ = proc.communicate()
        finally:
            _kill_group(proc, only_leftovers=True)
        text = out[-MAX_OUTPUT:].decode(errors="replace")
        return RunResult(proc.returncode if not timed_out else -1, text, timed_out)


def _kill_group(proc: subprocess.Popen[bytes], only_leftovers: bool = False) -> None:
    """Stop the command's whole process group: TERM, a short grace, then KILL."""
    try:
        pgid = os.getpgid(proc.pid) if proc.poll() is None else proc.pid
    except ProcessLookupError:
        pgid = proc.pid
    if only_leftovers:
        # Children the command left behind in its group would hold locks or pipes: end them.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
