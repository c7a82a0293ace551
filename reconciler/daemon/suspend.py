"""Suspending enforcement, as the daemon and ``reconciler suspend`` use it: the suspension file
itself is the engine's (reconciler.engine.suspension), since every run honours it."""

from __future__ import annotations

from reconciler.engine.suspension import (
    FILE,
    Suspension,
    current,
    expires_in,
    parse_until,
    resume,
    suspend,
)

__all__ = ["FILE", "Suspension", "current", "expires_in", "parse_until", "resume", "suspend"]
