"""The fork hooks: what runs in the parent before a fork and in the child after it.

``forksafe.install()`` (``_install``) registers :func:`prepare_fork` and the
child reset with :func:`os.register_at_fork`, so they run around every ``os.fork()``:
``multiprocessing``'s ``fork`` start method, the forkserver's own forks,
gunicorn's arbiter, Celery's billiard, RQ's work horse. They do *not* run for
``subprocess`` (nothing is inherited there) nor for servers that fork in C,
such as uWSGI: those call the two public functions from their own hooks
(``forksafe.uwsgi``, ``forksafe.gunicorn``).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forksafe import _closing, _drivers, _registry
from forksafe._closing import forget_connection, is_in_memory_sqlite
from forksafe._warnings import ForkSafeWarning

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("forksafe")

__all__ = [
    "after_fork_in_child",
    "hooks_installed",
    "prepare_fork",
    "register_hooks",
    "reset_child",
    "set_close_before_fork",
    "set_freeze_gc",
]


@dataclass
class _Options:
    close_before_fork: bool = True
    freeze_gc: bool = False


_options = _Options()
_hooks_registered = False
# Wrappers the last child reset left in Django's "closed inside a transaction"
# state (forked inside transaction.atomic()); see reset_child(worker=True).
_left_in_atomic: list[weakref.ref[BaseDatabaseWrapper]] = []
# The pid whose connections are all its own: set at import and after each reset.
# ``after_fork_in_child()`` in this pid is a no-op.
_reset_pid = os.getpid()


def set_close_before_fork(enabled: bool) -> None:
    """Set whether :func:`prepare_fork` closes the forking thread's idle connections."""
    _options.close_before_fork = enabled


def set_freeze_gc(enabled: bool) -> None:
    """Set whether forks freeze the cyclic GC's objects (``install(freeze_gc=...)``)."""
    _options.freeze_gc = enabled


def register_hooks() -> None:
    """Register the at-fork hooks with :func:`os.register_at_fork`, once per process."""
    global _hooks_registered
    if not _hooks_registered:
        os.register_at_fork(before=_at_fork_before, after_in_child=_at_fork_in_child)
        _hooks_registered = True


def prepare_fork() -> None:
    """The pre-fork cleanup: close the calling thread's idle connections.

    Runs in the parent, in the thread that is about to fork. Other threads'
    connections are left alone (closing them from here is what Django forbids,
    and they may be in use); the child detaches them. A connection inside
    ``transaction.atomic()`` (or with autocommit off) stays open and a
    :class:`ForkSafeWarning` says so: the parent's transaction goes on, and
    the child will not touch it. Does nothing when ``install()`` was called
    with ``close_before_fork=False``. Calling it repeatedly is harmless.
    """
    _registry.start_tracking()  # also finds connections opened before install()
    if not _options.close_before_fork:
        return
    pid = os.getpid()
    in_transaction: list[str] = []
    for entry in _registry.entries():
        wrapper = entry.wrapper
        if wrapper is None or entry.pid != pid or not _owned_here(entry):
            continue
        try:
            if _closing.close_owned(wrapper, in_atomic="keep", shared="skip") == "in-transaction":
                in_transaction.append(wrapper.alias)
        except Exception:
            logger.warning(
                "forksafe: closing connection %r before fork failed", wrapper.alias, exc_info=True
            )
    if in_transaction:
        # After the loop: with warnings turned into errors, every idle
        # connection has been closed before this raises.
        warnings.warn(
            f"forksafe: connection(s) {', '.join(map(repr, in_transaction))} inside a"
            " transaction at fork time stay open in the parent; the child will not use"
            " them. Fork outside transaction.atomic() to get rid of this warning.",
            ForkSafeWarning,
            stacklevel=2,
        )


def after_fork_in_child() -> None:
    """Detach every inherited connection, in a forked child, without network I/O.

    Runs in the child, in its only thread. Every connection opened by the
    parent -- in any thread, for any alias -- is detached (``_drivers.detach``:
    nothing can ever say goodbye to the parent's server session), and the
    wrapper forgets it: the next ORM call in the child
    connects afresh and gets a session of its own. Django's native pools
    (``OPTIONS={"pool": ...}``) are dropped the same way; the child builds its
    own on first use.

    A wrapper that was inside ``transaction.atomic()`` at fork time is left the
    way Django leaves a connection closed inside a transaction: queries in the
    rest of the block raise ``ProgrammingError("Cannot open a new connection in
    an atomic block.")``, leaving the block is clean, and the parent's
    ``on_commit`` callbacks never run in the child.

    In a process that did not fork since the last reset, it does nothing, so
    calling it from several hooks is harmless. It never raises: what cannot be
    detached is kept unused until the child exits, and logged.
    """
    reset_child()


def reset_child(*, worker: bool = False) -> None:
    """Detach every connection this process inherited (see :func:`after_fork_in_child`).

    ``worker``: the process is a pool or process *worker*. It runs its tasks
    outside whatever ``transaction.atomic()`` block the parent was in when it
    forked (a view under ``ATOMIC_REQUESTS`` that creates a pool), so unlike a
    raw ``os.fork()`` child it starts with no transaction state at all; the
    wrappers an earlier raw-fork reset of this process left "closed inside a
    transaction" are cleaned too. No I/O.
    """
    _detach_inherited(clean_transactions=worker)
    while worker and _left_in_atomic:
        wrapper = _left_in_atomic.pop()()
        if wrapper is not None and wrapper.connection is None:
            forget_connection(wrapper, clean=True)


def _detach_inherited(*, clean_transactions: bool) -> None:
    """Once per process: detach what it inherited; ``clean_transactions`` for workers.

    Runs in every forked child before any of its own code, so it is kept to
    the floor: what the child writes to, it copies (copy-on-write), and each
    page costs a fault. One ``/dev/null`` open for all connections, no
    registry walk beyond the inherited entries, nothing freed.
    """
    global _reset_pid
    pid = os.getpid()
    if pid == _reset_pid:
        return
    _reset_pid = pid
    if _left_in_atomic:
        _left_in_atomic.clear()
    if _options.freeze_gc:
        gc.freeze()  # O(1) here; where the parent forked in C (uWSGI) the only freeze
    _reinit_signal_lock()  # before start_tracking(), which may connect the receiver
    _registry.start_tracking(existing_pid=_registry.UNKNOWN_PID)
    in_atomic: list[str] | None = None  # allocated only when needed
    devnull: int | None = None
    me = threading.get_ident()
    for entry in _registry.take_inherited():
        wrapper = entry.wrapper_ref()
        # Another thread's connection is never *entered*; what needs more
        # than this (in-memory SQLite, atomic) asks _owned_here().
        mine = entry.thread_id == me
        try:
            if (
                wrapper is not None
                and entry.vendor == "sqlite"
                and _owned_here(entry)
                and is_in_memory_sqlite(wrapper)
            ):
                # The database lives only inside this handle, and fork gave the
                # child a private copy: keep it, as plain Django does.
                _registry.register(wrapper)
                continue
            if devnull is None and entry.driver != "sqlite3":
                devnull = _drivers.open_devnull()
            detached = _drivers.detach(entry.raw, owned=mine, alias=entry.alias, devnull=devnull)
            if detached != "closed-already":
                _registry.note_detached(entry.alias)
            if wrapper is not None:
                if wrapper.connection is not None and wrapper.connection is not entry.raw:
                    _drivers.detach(wrapper.connection, owned=mine, alias=entry.alias)
                if (
                    wrapper.in_atomic_block
                    and not clean_transactions
                    and mine
                    and _owned_here(entry)
                ):
                    if in_atomic is None:
                        in_atomic = []
                    in_atomic.append(wrapper.alias)
                    _left_in_atomic.append(weakref.ref(wrapper))
                forget_connection(wrapper, clean=clean_transactions)
        except Exception:
            logger.warning(
                "forksafe: detaching inherited connection %r (%s) failed; the wrapper"
                " is discarded and its connection kept unused in this process",
                entry.alias,
                entry.driver,
                exc_info=True,
            )
            _drivers.park(entry.raw)
            if wrapper is not None:
                wrapper.connection = None
    try:
        _drivers.detach_native_pools(devnull)
    except Exception:
        logger.warning("forksafe: detaching Django's native pools failed", exc_info=True)
    if devnull is not None:  # nothing above raises but BaseException
        os.close(devnull)
    if in_atomic:
        logger.info(
            "forksafe: this process forked inside transaction.atomic() (%s); queries"
            " in the rest of that block raise, leaving it is clean",
            ", ".join(repr(a) for a in in_atomic),
        )


def _owned_here(entry: _registry.Entry) -> bool:
    """Whether the calling thread alone may enter ``entry``'s connection.

    True for a wrapper the calling thread owns and shares with no other
    thread. In a forked child the forking thread keeps its ident and all
    others are gone; a connection they used may be mid-query, holding a driver
    lock that nobody will ever release, so it must not be entered.
    """
    if entry.thread_id != threading.get_ident():
        return False
    wrapper = entry.wrapper
    return wrapper is None or not wrapper.allow_thread_sharing


def _reinit_signal_lock() -> None:
    """Give Django's ``connection_created`` signal a fresh lock in a forked child.

    Every ``send()`` of that signal takes ``Signal.lock`` (it does not cache
    receivers); a parent thread connecting at the moment of the fork would
    leave it held for ever, and the child's first connect would hang -- as
    ``logging`` re-creates its handler locks after a fork.
    """
    signals = sys.modules.get("django.db.backends.signals")
    signal = getattr(signals, "connection_created", None)
    # Only a held lock needs replacing: a new one is an allocation (and the old
    # one a deallocation) in the child for nothing.
    if signal is not None and signal.lock.locked():
        signal.lock = threading.Lock()


def hooks_installed() -> bool:
    """Whether ``install()`` registered the at-fork hooks in this process."""
    return _hooks_registered


def _at_fork_before() -> None:
    """The ``before`` hook of :func:`os.register_at_fork`: :func:`prepare_fork`, never raising."""
    try:
        prepare_fork()
    except Exception:
        logger.warning("forksafe: the pre-fork cleanup failed", exc_info=True)
    if _options.freeze_gc:
        gc.freeze()  # install(freeze_gc=True); last, right before the fork


def _at_fork_in_child() -> None:
    """The ``after_in_child`` hook of :func:`os.register_at_fork`: the child reset."""
    try:
        # reset_child() without the worker part: one call less in every child.
        _detach_inherited(clean_transactions=False)
    except Exception:
        logger.warning(
            "forksafe: detaching the inherited connections after a fork failed", exc_info=True
        )
