"""Close a wrapper in the thread that owns it: the one rule the fork, thread and pool code share.

Every place where forksafe closes a connection on a thread's or process's
behalf -- before a fork (``_fork.prepare_fork``), when a thread or an
executor task ends (``threads``), when a pool worker exits (``pools``) --
runs in the thread that owns the wrapper, because Django forbids closing it
from any other (``validate_thread_sharing``). They differ only in what to do
with a connection inside a transaction and with one the owner shares with
other threads; :func:`close_owned` takes both as arguments.

:func:`handler_wrappers` and :func:`close_all` are the calling thread's side of
it: what Django's ``connections`` holds in this thread, and closing a list of
wrappers with the thread-end rule (what ``forksafe.Thread``, the thread guard
and the exit of a process use).

This module sits beside ``_registry``: it uses Django's wrapper API and
nothing of forksafe but its warning class.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from forksafe._warnings import ForkSafeWarning

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.utils import ConnectionHandler

__all__ = [
    "Outcome",
    "close_all",
    "close_beside_running_loop",
    "close_owned",
    "forget_connection",
    "handler_wrappers",
    "is_in_memory_sqlite",
]

Outcome = Literal["closed", "in-transaction", "skipped"]


def is_in_memory_sqlite(wrapper: BaseDatabaseWrapper) -> bool:
    """Whether ``wrapper`` is an in-memory SQLite database (its data lives in the handle)."""
    is_in_memory = getattr(wrapper, "is_in_memory_db", None)
    return wrapper.vendor == "sqlite" and callable(is_in_memory) and bool(is_in_memory())


def forget_connection(wrapper: BaseDatabaseWrapper, *, clean: bool) -> None:
    """Make ``wrapper`` forget its (closed or detached) connection, without I/O.

    ``clean``: reset the transaction state too (the wrapper starts afresh);
    otherwise a wrapper inside ``atomic`` is left the way Django leaves a
    connection closed inside a transaction.
    """
    if wrapper.connection is not None:  # a write less when Django closed it already
        wrapper.connection = None
    if not wrapper.in_atomic_block:
        # Outside atomic there is no on_commit callback, savepoint or pending
        # rollback, and connect() resets the rest before the wrapper is used
        # again: nothing more to write (a forked child copies each page it writes).
        if wrapper.run_on_commit:
            wrapper.run_on_commit = []
        return
    # The on_commit callbacks belong to the transaction that is gone.
    wrapper.run_on_commit = []
    if not clean:
        # What BaseDatabaseWrapper.close() does inside atomic: ensure_connection()
        # then refuses to reconnect, Atomic.__exit__ cleans up.
        wrapper.closed_in_transaction = True
        wrapper.needs_rollback = True
        return
    # What BaseDatabaseWrapper.connect() resets, for wrappers that start afresh.
    wrapper.in_atomic_block = False
    wrapper.savepoint_ids = []
    wrapper.atomic_blocks = []
    wrapper.needs_rollback = False
    wrapper.closed_in_transaction = False
    wrapper.commit_on_exit = True
    wrapper.savepoint_state = 0


def close_owned(
    wrapper: BaseDatabaseWrapper,
    *,
    in_atomic: Literal["keep", "warn", "close"],
    shared: Literal["skip", "close"],
) -> Outcome:
    """Close ``wrapper``'s connection if the calling thread owns it; say what happened.

    Runs in the calling thread and only ever closes a wrapper that thread
    owns (created): another thread's wrapper, even one shared with the caller
    through ``inc_thread_sharing()``, is ``"skipped"`` -- it is its owner's to
    close. Also skipped: a wrapper without a connection and an in-memory SQLite
    database (Django never closes one either: the data lives in the handle).

    ``shared``: what to do with a wrapper the caller owns but shares with
    other threads (``allow_thread_sharing``): ``"skip"`` it (they may be using
    it right now), or ``"close"`` it (the owner is ending).

    ``in_atomic``: a connection inside a transaction is

    * ``"keep"``: left open (inside ``atomic`` *or* with autocommit off) and
      reported as ``"in-transaction"``; the caller says so once for all;
    * ``"warn"``: left open (inside ``atomic``) with a ``ForkSafeWarning``
      pointing ``stacklevel=5`` frames up, and reported as ``"in-transaction"``;
    * ``"close"``: closed -- the server rolls the transaction back -- and the
      wrapper's transaction state reset, so its next use starts clean.

    Errors of ``close()`` propagate.
    """
    if getattr(wrapper, "_thread_ident", None) != threading.get_ident():
        return "skipped"
    if shared == "skip" and wrapper.allow_thread_sharing:
        return "skipped"
    if wrapper.connection is None or is_in_memory_sqlite(wrapper):
        return "skipped"
    if in_atomic == "keep":
        if wrapper.in_atomic_block or not wrapper.autocommit:
            return "in-transaction"
    elif wrapper.in_atomic_block:
        if in_atomic == "warn":
            warnings.warn(
                f"forksafe: connection {wrapper.alias!r} is inside transaction.atomic();"
                " it is left open. Close connections outside atomic blocks.",
                ForkSafeWarning,
                stacklevel=5,
            )
            return "in-transaction"
        try:
            wrapper.close()
        finally:
            forget_connection(wrapper, clean=True)
        return "closed"
    wrapper.close()
    return "closed"


def _connection_handler() -> ConnectionHandler | None:
    """Django's ``connections`` if any wrapper can exist yet, else ``None``.

    Never imports Django and never reads settings: until something asked the
    handler for its settings (which creating any wrapper does), no thread can
    hold a connection.
    """
    db = sys.modules.get("django.db")
    handler: ConnectionHandler | None = getattr(db, "connections", None)
    if handler is None or "settings" not in vars(handler):
        return None
    return handler


def handler_wrappers() -> list[BaseDatabaseWrapper]:
    """The wrappers that Django's ``connections`` created in the calling thread."""
    handler = _connection_handler()
    return [] if handler is None else list(handler.all(initialized_only=True))


def close_all(
    wrappers: Iterable[BaseDatabaseWrapper], *, in_atomic: Literal["close", "warn"]
) -> list[BaseException]:
    """Close each of ``wrappers`` owned by the calling thread; return the errors.

    The rule is :func:`close_owned`'s, with ``shared="skip"``: a connection this
    thread shares (``inc_thread_sharing()``) was handed to other threads on
    purpose -- Django's own ``test_default_connection_thread_local`` shares one
    so that the main thread can use and close it after this one ended. It stays
    open for them: whoever it was shared with closes it, or the cyclic GC does
    once the wrapper is unreachable. ``in_atomic="close"`` when the code that
    opened the block is gone, ``"warn"`` while it still runs.
    """
    errors: list[BaseException] = []
    seen: set[int] = set()
    for wrapper in wrappers:
        if id(wrapper) in seen:
            continue
        seen.add(id(wrapper))
        try:
            close_owned(wrapper, in_atomic=in_atomic, shared="skip")
        except Exception as exc:
            errors.append(exc)
    return errors


def close_beside_running_loop(wrappers: Iterable[BaseDatabaseWrapper]) -> list[BaseException]:
    """Close the calling thread's ``wrappers`` while it runs an event loop; return the errors.

    Django's ``close()`` refuses to run in a thread with a running loop
    (``async_unsafe``). For the end of a server's life, when nothing else runs in
    the loop's thread: the driver's connection is closed directly (a goodbye to the
    server) and the wrapper forgets it. Left alone: another thread's wrapper, one
    shared with other threads, and one inside ``atomic`` (the code that opened the
    block still runs: asyncio.run() called inside a transaction).
    """
    errors: list[BaseException] = []
    seen: set[int] = set()
    for wrapper in wrappers:
        raw = wrapper.connection
        if (
            id(wrapper) in seen
            or raw is None
            or getattr(wrapper, "_thread_ident", None) != threading.get_ident()
            or wrapper.allow_thread_sharing
            or wrapper.in_atomic_block
            or is_in_memory_sqlite(wrapper)
        ):
            continue
        seen.add(id(wrapper))
        try:
            raw.close()
        except Exception as exc:
            errors.append(exc)
        finally:
            forget_connection(wrapper, clean=True)
    return errors
