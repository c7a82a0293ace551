"""Matching node names: a shell-style glob, or a regular expression written between slashes.

``"/^web-[0-9]+$/"`` is a regular expression that must match the whole name (``^`` and ``$``
may be written or not). Patterns are bounded: at most MAX_PATTERN characters, and no repeated
group that itself repeats or alternates (``(a+)+``, ``(a|ab)*``), the shapes whose
backtracking can take exponential time.
"""

from __future__ import annotations

import functools
import re
from fnmatch import fnmatchcase

MAX_PATTERN = 256


def is_regex(pattern: str) -> bool:
    return len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/")


def pattern_problem(pattern: str) -> str | None:
    """Why a ``match:`` pattern cannot be used, or None."""
    if len(pattern) > MAX_PATTERN:
        return f"a pattern may have at most {MAX_PATTERN} characters"
    if not is_regex(pattern):
        return None
    body = pattern[1:-1]
    try:
        re.compile(body)
    except re.error as exc:
        return f"not a regular expression: {exc}"
    if _nested_repeat(body):
        return (
            "a repeated group that itself repeats or alternates, like (a+)+, can take "
            "exponential time: write it without the nesting"
        )
    return None


def name_matches(name: str, pattern: str) -> bool:
    """Whether a node name matches a glob or a /regular expression/ (valid, see above)."""
    if is_regex(pattern):
        return _compiled(pattern[1:-1]).fullmatch(name) is not None
    return fnmatchcase(name, pattern)


@functools.lru_cache(maxsize=256)
def _compiled(body: str) -> re.Pattern[str]:
    return re.compile(body)


def _nested_repeat(body: str) -> bool:
    """Whether a group holding a repetition or an alternation is itself repeated."""
    inner = [False]  # per open group: holds a repetition or an alternation
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":  # a character class: one atom, whatever it holds
            i += 1
            if i < n and body[i] == "^":
                i += 1
            if i < n and body[i] == "]":
                i += 1
            while i < n and body[i] != "]":
                i += 2 if body[i] == "\\" else 1
            i += 1
            continue
        if c == "(":
            inner.append(False)
        elif c == ")" and len(inner) > 1:
            held = inner.pop()
            after = body[i + 1] if i + 1 < n else ""
            if after in ("*", "+", "{"):
                if held:
                    return True
                inner[-1] = True
            else:
                inner[-1] = inner[-1] or held
        elif c in "*+?{|":
            inner[-1] = True
        i += 1
    return False
