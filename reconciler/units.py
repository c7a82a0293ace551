"""Durations (``30s``, ``5m``) and sizes (``64MiB``) as people write them in configuration and on
the command line. A base module: it imports nothing from reconciler."""

from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


_SIZE = re.compile(r"^(\d+)\s*(B|KiB|MiB|GiB)?$")
_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, None: 1}


def parse_size(value: Any) -> int:
    """``64MiB`` -> 67108864; a plain number is bytes. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a size like 64MiB, 512KiB or 1GiB")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def parse_duration(value: Any) -> float:
    """``30s`` -> 30.0; raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a duration like 30s, 5m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]
