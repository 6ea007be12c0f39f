"""The fork hooks: what runs in the parent before a fork and in the child after it.

``install()`` registers :func:`prepare_fork` and :func:`after_fork_in_child`
with :func:`os.register_at_fork`, so they run around every ``os.fork()``:
``multiprocessing``'s ``fork`` start method, the forkserver's own forks,
gunicorn's arbiter, Celery's billiard, RQ's work horse. They do *not* run for
``subprocess`` (nothing is inherited there) nor for servers that fork in C,
such as uWSGI: those call the two public functions from their own hooks
(``forksafe.uwsgi``, ``forksafe.gunicorn``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forksafe import _conn, _drivers, _registry
from forksafe._conn import ForkSafeWarning, forget_connection, is_in_memory_sqlite

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("forksafe")

__all__ = ["ForkSafeWarning", "after_fork_in_child", "install", "prepare_fork"]


@dataclass
class _Options:
    close_before_fork: bool = True


_options = _Options()
_hooks_registered = False
# Wrappers the last child reset left in Django's "closed inside a transaction"
# state (forked inside transaction.atomic()); see reset_worker().
_left_in_atomic: list[weakref.ref[BaseDatabaseWrapper]] = []
# The pid whose connections are all its own: set at import and after each reset.
# ``after_fork_in_child()`` in this pid is a no-op.
_reset_pid = os.getpid()


def install(*, close_before_fork: bool | None = None, threads: bool | None = None) -> None:
    """Make every ``os.fork()`` of this process safe for Django connections.

    Registers hooks with :func:`os.register_at_fork` (once per process; later
    calls only change the options they name) and starts tracking every
    connection that Django opens, in every thread. Safe to call before
    ``django.setup()`` -- the top of ``manage.py``, ``wsgi.py`` or the settings
    module is the best place, before anything connects. An option left out
    (``None``) keeps its current value: ``close_before_fork=True`` and
    ``threads=False`` until something sets them.

    ``close_before_fork``: before a fork, close the forking thread's idle
    connections (never one inside ``transaction.atomic()``, never an in-memory
    SQLite database). The child has less to detach and the parent reconnects
    on its next query. Turn it off to keep the parent's connections open; the
    child is safe either way.

    ``threads``: close the connections of *every* thread when that thread
    ends -- threads started by other libraries, ``_thread.start_new_thread``,
    asgiref's executors -- instead of when the cyclic GC gets to them. The
    first connection a thread opens puts a small guard object into a
    ``threading.local`` of that thread; CPython frees it while clearing the
    ending thread's state, in that thread and before ``join()`` returns, and
    the guard then closes that thread's connections, which the registry
    records with their owning thread. Cost: one
    ``threading.local`` lookup per new connection and one object per thread
    that connected; nothing per query. Not covered: threads killed by
    interpreter exit (daemon threads), and connections opened before this
    call in other threads. See ``forksafe.threads``.
    """
    global _hooks_registered
    for name, value in (("close_before_fork", close_before_fork), ("threads", threads)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"install({name}=...) takes True or False, not {value!r}")
    if close_before_fork is not None:
        _options.close_before_fork = close_before_fork
    _registry.start_tracking()
    if threads is not None:
        from forksafe import threads as _threads

        _threads._close_at_thread_exit(threads)
    if not _hooks_registered:
        os.register_at_fork(before=_before_fork_hook, after_in_child=_after_fork_hook)
        _hooks_registered = True
    # uWSGI forks in C: its post-fork hook chain runs the reset (no-op elsewhere).
    from forksafe import uwsgi as _uwsgi

    _uwsgi._install_if_under_uwsgi()


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
            if _conn.close_owned(wrapper, in_atomic="keep", shared="skip") == "in-transaction":
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
    """The child-side reset: drop every inherited connection without network I/O.

    Runs in the child, in its only thread. For every connection opened by the
    parent -- in any thread, for any alias -- the socket is pointed at
    ``/dev/null`` so that nothing can ever say goodbye to the parent's server
    session, and the wrapper forgets it: the next ORM call in the child
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
    _reset_child(clean_transactions=False)


def _reset_child(*, clean_transactions: bool) -> None:
    """``after_fork_in_child``; ``clean_transactions`` for pool workers.

    A worker of a process pool runs tasks outside the parent's atomic block,
    so it starts with no transaction state at all.
    """
    global _reset_pid
    pid = os.getpid()
    if pid == _reset_pid:
        return
    _reset_pid = pid
    _left_in_atomic.clear()
    _registry.start_counting_afresh()
    _reinit_signal_lock()  # before start_tracking(), which may connect the receiver
    _registry.start_tracking(existing_pid=_registry.UNKNOWN_PID)
    in_atomic: list[str] = []
    for entry in list(_registry.inherited()):
        wrapper = entry.wrapper
        owned = _owned_here(entry)
        try:
            if wrapper is not None and owned and is_in_memory_sqlite(wrapper):
                # The database lives only inside this handle, and fork gave the
                # child a private copy: keep it, as plain Django does.
                _registry.register(wrapper)
                continue
            if _drivers.neutralise(entry.raw, owned=owned, alias=entry.alias) != "closed-already":
                _registry.note_detached(entry.alias)
            if wrapper is not None:
                if wrapper.connection is not None and wrapper.connection is not entry.raw:
                    _drivers.neutralise(wrapper.connection, owned=owned, alias=entry.alias)
                if owned and wrapper.in_atomic_block and not clean_transactions:
                    in_atomic.append(wrapper.alias)
                    _left_in_atomic.append(weakref.ref(wrapper))
                forget_connection(wrapper, clean=clean_transactions)
        except Exception:
            logger.warning(
                "forksafe: resetting inherited connection %r (%s) failed; the wrapper"
                " is discarded and its connection kept unused in this process",
                entry.alias,
                entry.driver,
                exc_info=True,
            )
            _drivers.park(entry.raw)
            if wrapper is not None:
                wrapper.connection = None
        finally:
            _registry.forget(entry)
    try:
        _drivers.neutralise_native_pools()
    except Exception:
        logger.warning("forksafe: detaching Django's native pools failed", exc_info=True)
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
    if signal is not None:
        signal.lock = threading.Lock()


def hooks_installed() -> bool:
    """Whether ``install()`` registered the at-fork hooks in this process."""
    return _hooks_registered


def reset_worker() -> None:
    """The child reset for a pool or process *worker*: no inherited transaction state.

    A worker runs its tasks outside whatever ``transaction.atomic()`` block the
    parent was in when it forked (a view under ``ATOMIC_REQUESTS`` that creates
    a pool), so unlike a raw ``os.fork()`` child it starts clean. When the
    at-fork hook already ran the raw-fork reset in this process, the wrappers
    it left "closed inside a transaction" are cleaned here. No I/O.
    """
    _reset_child(clean_transactions=True)
    while _left_in_atomic:
        wrapper = _left_in_atomic.pop()()
        if wrapper is not None and wrapper.connection is None:
            forget_connection(wrapper, clean=True)


def _before_fork_hook() -> None:
    try:
        prepare_fork()
    except Exception:
        logger.warning("forksafe: the pre-fork cleanup failed", exc_info=True)


def _after_fork_hook() -> None:
    try:
        _reset_child(clean_transactions=False)
    except Exception:
        logger.warning("forksafe: the after-fork reset failed", exc_info=True)
