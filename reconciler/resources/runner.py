"""Running commands for resources: argv lists, a clean environment, a user, through
``reconciler.process`` (output capped as it arrives, a timeout that ends the whole group).

A shell is used only when the caller asks for one (an exec whose command is a string). Output
(stdout and stderr together) is kept up to a bound, the last bytes being the useful ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reconciler import process
from reconciler.errors import ResourceError

MAX_OUTPUT = 64 * 1024
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RunResult:
    returncode: int
    output: str
    timed_out: bool = False
    dropped: int = 0  # bytes of output not kept (the head of a long output)

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
        uid: int | None = None
        gid: int | None = None
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
                uid, gid = entry.pw_uid, entry.pw_gid
                environ.setdefault("HOME", entry.pw_dir)
                environ.setdefault("USER", user)
        try:
            done = process.run(
                argv,
                timeout=timeout,
                cwd=cwd,
                env=environ,
                input=input,
                output_cap=MAX_OUTPUT,
                keep="tail",
                stderr="merge",
                uid=uid,
                gid=gid,
            )
        except FileNotFoundError:
            raise ResourceError(f"command not found: {argv[0]}") from None
        except PermissionError:
            raise ResourceError(f"command not executable: {argv[0]}") from None
        except OSError as exc:
            raise ResourceError(f"cannot run {argv[0]}: {exc.strerror}") from None
        code = -1 if done.returncode is None else done.returncode
        return RunResult(
            code, done.stdout.decode(errors="replace"), done.timed_out, done.stdout_dropped
        )
