"""exec: a command, run when its guards say so, or on a refresh."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import Any, ClassVar

from reconciler.errors import ResourceError
from reconciler.resources.base import Attr, Change, Context, Resource, register

TAIL_LINES = 20


def argv_of(command: str | list[Any]) -> list[str]:
    """A string runs through /bin/sh -c, as the user wrote it; a list is the argv."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return [str(part) for part in command]


@register
class Exec(Resource):
    type = "exec"
    recheck = False  # a command has no state to re-check: its guards decide
    secret_attributes = ("command", "unless", "onlyif", "environment")
    attributes: ClassVar[Mapping[str, Attr]] = {
        "command": Attr("argv", required=True),
        "creates": Attr("str"),
        "unless": Attr("argv"),
        "onlyif": Attr("argv"),
        "refreshonly": Attr("bool", default=False),
        "cwd": Attr("str"),
        "environment": Attr("mapping"),
        "user": Attr("str"),
        "timeout": Attr("int", default=300),
        "returns": Attr("intlist", default=[0]),
    }

    @classmethod
    def validate(cls, title: str, attrs: Mapping[str, Any]) -> list[tuple[str | None, str]]:
        problems: list[tuple[str | None, str]] = []
        for key in ("command", "unless", "onlyif"):
            value = attrs.get(key)
            if isinstance(value, list) and not value:
                problems.append((key, "must not be an empty list"))
        for key in ("creates", "cwd"):
            value = attrs.get(key)
            if value is not None and (
                not str(value).startswith("/") or ".." in str(value).split("/")
            ):
                problems.append((key, f"{value!r} must be an absolute path without '..'"))
        timeout = attrs.get("timeout")
        if timeout is not None and timeout <= 0:
            problems.append(("timeout", "must be more than zero"))
        user = attrs.get("user")
        if user is not None and (
            str(user).startswith("-") or any(c in str(user) for c in ":\n\0 ")
        ):
            problems.append(("user", f"{user!r} is not a user name"))
        return problems

    def _shown(self) -> str:
        command = self.attrs["command"]
        text = command if isinstance(command, str) else shlex.join(str(c) for c in command)
        return self.show(text)

    def _run(self, ctx: Context, command: Any) -> tuple[int, str, bool]:
        env = {str(k): str(v) for k, v in (self.attrs.get("environment") or {}).items()}
        cwd = ctx.root.path(str(self.attrs["cwd"])) if self.attrs.get("cwd") else None
        argv = argv_of(command)
        try:
            result = ctx.runner.run(
                argv,
                timeout=float(self.attrs.get("timeout") or 300),
                env=env,
                cwd=cwd,
                user=self.attrs.get("user"),
            )
        except ResourceError as exc:
            if not self.sensitive:
                raise
            # "command not found: PROGRAM": the program is part of the command.
            raise ResourceError(str(exc).replace(argv[0], self.show(argv[0]))) from None
        return result.returncode, result.tail(TAIL_LINES), result.timed_out

    def _should_run(self, ctx: Context) -> bool:
        creates = self.attrs.get("creates")
        if creates and os.path.lexists(ctx.root.path(str(creates))):
            return False
        for guard, wanted_zero in (("unless", False), ("onlyif", True)):
            command = self.attrs.get(guard)
            if command is None:
                continue
            code, _, timed_out = self._run(ctx, command)
            if timed_out:
                raise ResourceError(f"{guard} timed out")
            if (code == 0) != wanted_zero:
                return False
        return True

    def _execute(self, ctx: Context, what: str) -> list[Change]:
        code, tail, timed_out = self._run(ctx, self.attrs["command"])
        returns = self.attrs.get("returns")
        accepted = returns if isinstance(returns, list) else [returns if returns is not None else 0]
        if timed_out:
            raise ResourceError(
                f"timed out after {self.attrs.get('timeout')}s" + self._output(tail)
            )
        if code not in accepted:
            raise ResourceError(f"exited {code} (expected {accepted})" + self._output(tail))
        return [Change(what, None, self._shown())]

    def _output(self, tail: str) -> str:
        if self.sensitive or not tail:
            return ""
        return ":\n" + tail

    def check_apply(self, ctx: Context, apply: bool) -> list[Change]:
        if self.attrs.get("refreshonly") or not self._should_run(ctx):
            return []
        if not apply:
            return [Change("executed", None, self._shown())]
        return self._execute(ctx, "executed")

    def refresh(self, ctx: Context, apply: bool) -> list[Change]:
        if not self._should_run(ctx):
            return []
        if not apply:
            return [Change("refreshed", None, self._shown())]
        return self._execute(ctx, "refreshed")
