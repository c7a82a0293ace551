"""One error tree for reconciler.

Every error a user can cause carries where it comes from (file, line, key) so that the message
names it, and a reason code that reports and metrics use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal


@dataclass(frozen=True)
class Location:
    """Where something was written: a repo-relative file, a 1-based line, a dotted key."""

    file: str | None = None
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        if self.key:
            parts.append(f"key {self.key!r}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, with where it is."""

    message: str
    where: Location = Location()
    stage: Stage | None = None  # parse, validate or compile: where it was found

    def __str__(self) -> str:
        where = str(self.where)
        return f"{where}: {self.message}" if where else self.message


# The reason codes of errors and of runs that did not converge, as reports, logs and metrics
# name them.
Reason = Literal[
    "",  # a run that ran
    "Error",
    "ModelError",
    "FetchFailed",
    "SignatureRejected",
    "RevisionRegression",
    "ConfigError",
    "LockHeld",
    "StateDirUnsafe",
    "PathEscape",
    "ResourceFailed",
    "StoreError",
    "Unexpected",
]
Stage = Literal["parse", "validate", "compile"]


class ReconcilerError(Exception):
    """Base of every error reconciler raises on purpose."""

    reason: ClassVar[Reason] = "Error"


STAGES: tuple[Stage, ...] = ("parse", "validate", "compile")


class ModelError(ReconcilerError):
    """The control repo is wrong: one or more problems, all reported together.

    ``stage`` (the metric's reason label) is the earliest stage any problem was found at, so
    that a revision with broken YAML counts as a parse rejection however deep it was found.
    """

    reason: ClassVar[Reason] = "ModelError"

    def __init__(self, problems: Iterable[Problem], reason: Stage | None = None) -> None:
        self.problems = [
            p if p.stage or reason is None else Problem(p.message, p.where, reason)
            for p in problems
        ]
        stages = [p.stage or "compile" for p in self.problems] or ["compile"]
        self.stage = min(stages, key=STAGES.index)
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def one(
        cls, message: str, where: Location = Location(), reason: Stage = "compile"
    ) -> ModelError:
        return cls([Problem(message, where)], reason)


class SourceError(ReconcilerError):
    """The control repo could not be read: missing, unreachable, bad ref."""

    reason: ClassVar[Reason] = "FetchFailed"


class SignatureError(SourceError):
    """A commit (or the tag that pins it) is not signed by a key the node trusts
    (source.verify): never applied.

    ``why`` is one of unsigned, wrong_format, unknown_key, bad_signature, unverifiable.
    """

    reason: ClassVar[Reason] = "SignatureRejected"

    def __init__(
        self, commit: str, message: str, why: str = "bad_signature", subject: str | None = None
    ) -> None:
        self.commit = commit
        self.why = why
        # what was verified, when not the commit itself: a signed tag of it
        super().__init__(f"{subject or f'commit {commit}'}: {message}")


class ConfigError(ReconcilerError):
    """The daemon's configuration file is wrong."""

    reason: ClassVar[Reason] = "ConfigError"


class LockHeld(ReconcilerError):
    """Another run holds the state directory's lock."""

    reason: ClassVar[Reason] = "LockHeld"


class StateDirUnsafe(ReconcilerError):
    """The state directory could have been written by someone else."""

    reason: ClassVar[Reason] = "StateDirUnsafe"


class PathEscape(ReconcilerError):
    """A path would leave the root it must stay in."""

    reason: ClassVar[Reason] = "PathEscape"


class ResourceError(ReconcilerError):
    """A resource could not be checked or applied. The message is shown in the report."""

    reason: ClassVar[Reason] = "ResourceFailed"
