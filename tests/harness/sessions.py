"""Waiting on the server's count of abandoned sessions (``_sessions.abandoned_sessions``).

A backend whose client vanished reports that to the statistics when it ends,
a moment after the client is gone: every read here has a deadline.
"""

from __future__ import annotations

import time

from forksafe._sessions import abandoned_sessions, list_sessions


def settled_abandoned(alias: str = "default", timeout: float = 10) -> int:
    """The count once it has not moved for 0.4 s (sessions of earlier work may still end)."""
    last = _count(alias)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.4)
        now = _count(alias)
        if now == last:
            break
        last = now
    return last


def abandoned_after(before: int, alias: str = "default", timeout: float = 10) -> int:
    """The count once it is above ``before``, or as it is when ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while (now := _count(alias)) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


def _count(alias: str) -> int:
    n = abandoned_sessions(alias)
    assert n is not None, "SQLite has no abandoned sessions to count"
    return n


def abandoned_before(vendor: str, alias: str = "default") -> int | None:
    """The settled count before a test's work; None for SQLite (nothing to count)."""
    return None if vendor == "sqlite" else settled_abandoned(alias)


def assert_none_abandoned(before: int | None, alias: str = "default") -> None:
    """Every session that ended since ``before`` said goodbye (nothing to check for SQLite)."""
    if before is not None:
        after = settled_abandoned(alias)
        assert after == before, f"{after - before} session(s) ended without a goodbye"


def wait_sessions_gone(backends: set[int], alias: str = "default", timeout: float = 10) -> None:
    """Wait until no session in ``backends`` is listed by the server (SQLite: nothing to wait for).

    By id, not by count: sessions of earlier work that end meanwhile cannot hide one left.
    """
    deadline = time.monotonic() + timeout
    while (sessions := list_sessions(alias)) is not None:
        left = backends & {s.id for s in sessions}
        if not left:
            return
        assert time.monotonic() < deadline, f"sessions still open after {timeout} s: {left}"
        time.sleep(0.05)
