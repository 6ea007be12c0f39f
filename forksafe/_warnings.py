"""``ForkSafeWarning``, in a module of its own below every module that warns."""

from __future__ import annotations

__all__ = ["ForkSafeWarning"]


class ForkSafeWarning(RuntimeWarning):
    """Something forksafe left as it is on purpose; the message says what to do."""
