"""Django signals for what forksafe does around forks. Connect to them like any Django signal.

``fork_prepared``
    In the parent, in the forking thread, after the pre-fork cleanup (``os.fork()`` with
    ``install()``'s hooks, :func:`forksafe.prepare_fork`, the pool and process wrappers).
    Arguments: ``closed`` (aliases whose idle connection was closed: none unless the
    cleanup is on, see the docs) and ``kept`` (aliases left open because a cursor or a
    transaction uses them). Sender: ``None``.
``connection_detached``
    In a forked child, once per inherited connection: ``alias``, ``driver`` (``psycopg``,
    ``psycopg2``, ``MySQLdb``, ``pymysql``, ``sqlite3``...), ``how`` (``"detached"``:
    its socket now points at ``/dev/null``; ``"parked"``: kept unused for the child's
    life) and ``connection`` (the wrapper, or ``None`` if it was collected). Not sent for
    a connection that was closed already. Sender: the wrapper's class, or ``None``.
``bypass_detected``
    In a process that was forked without forksafe's reset running first (uWSGI without
    ``master``, ``fork()`` from C, ``install()`` called after the fork, an at-fork hook
    that ran before forksafe's): sent once per such fork, when a connection is first used
    there. Arguments: ``alias`` and ``driver`` of that connection, ``path`` (what bypassed
    the hooks and how to hook properly). Sender: the wrapper's class, or ``None``.

Receivers run inside fork hooks and the child's reset: keep them short, and do not
query the database from them. An exception in a receiver is logged, never raised
into the forking code. A signal without receivers costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.dispatch import Signal

__all__ = ["bypass_detected", "connection_detached", "fork_prepared"]

logger = logging.getLogger("forksafe")

# Called after each connect() or disconnect() of one of these signals (forksafe._fork: whether
# they have receivers is computed again at the next fork, not read at every fork).
_change_hook: Callable[[], None] | None = None


class _Signal(Signal):
    """A Django ``Signal`` that tells forksafe's fork hooks when its receivers change."""

    def connect(self, *args: Any, **kwargs: Any) -> None:
        """Connect a receiver (``Signal.connect()``)."""
        try:
            super().connect(*args, **kwargs)
        finally:
            _changed()

    def disconnect(self, *args: Any, **kwargs: Any) -> bool:
        """Disconnect a receiver (``Signal.disconnect()``)."""
        try:
            return super().disconnect(*args, **kwargs)
        finally:
            _changed()


def set_change_hook(hook: Callable[[], None] | None) -> None:
    """Call ``hook()`` after each ``connect()`` or ``disconnect()`` of these signals."""
    global _change_hook
    _change_hook = hook


def _changed() -> None:
    hook = _change_hook
    if hook is not None:
        hook()


fork_prepared = _Signal()
connection_detached = _Signal()
bypass_detected = _Signal()

ALL = (fork_prepared, connection_detached, bypass_detected)
"""The three, for code that must handle each (a forked child re-creates their held locks)."""


def send(signal: Signal, sender: Any = None, **kwargs: Any) -> None:
    """Send ``signal`` if it has receivers; log (never raise) what a receiver raised."""
    if not signal.receivers:  # the common case: no lock, no call
        return
    for receiver, result in signal.send_robust(sender, **kwargs):
        if isinstance(result, Exception):
            logger.warning(
                "forksafe: a receiver of a forksafe signal raised: %r",
                receiver,
                exc_info=result,
            )
