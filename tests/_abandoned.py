"""Waiting on the server's count of abandoned sessions (``_sessions.abandoned_sessions``).

A backend whose client vanished reports that to the statistics when it ends,
a moment after the client is gone: every read here has a deadline.
"""

from __future__ import annotations

import time

from forksafe._sessions import abandoned_sessions


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
