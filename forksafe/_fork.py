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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forksafe import _closing, _drivers, _guard, _registry, signals
from forksafe._closing import forget_connection, is_in_memory_sqlite
from forksafe._warnings import ForkSafeWarning

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("forksafe")

__all__ = [
    "add_bypass_explainer",
    "after_fork_in_child",
    "cleanup",
    "detach_on_first_use",
    "wrappers_clean_up",
    "hooks_installed",
    "prepare_fork",
    "register_hooks",
    "reset_after_late_install",
    "reset_child",
    "set_close_before_fork",
    "set_freeze_gc",
]


@dataclass
class _Options:
    # Where the pre-fork cleanup runs implicitly (README: "What is closed before a
    # fork"). None, the default: in the pool and process wrappers, not at every
    # os.fork() -- the child detaches what it inherits with no I/O, so closing in
    # the parent buys it nothing and costs the parent its session state and a
    # reconnect per fork. True: at every os.fork() too. False: nowhere implicit.
    close_before_fork: bool | None = None
    freeze_gc: bool = False


_options = _Options()
_hooks_registered = False
# Wrappers the last child reset left in Django's "closed inside a transaction"
# state (forked inside transaction.atomic()); see reset_child(worker=True).
_left_in_atomic: list[weakref.ref[BaseDatabaseWrapper]] = []
# The pid whose connections are all its own: set at import and after each reset.
# ``after_fork_in_child()`` in this pid is a no-op.
_reset_pid = os.getpid()
# True from our ``before`` hook until our ``after_in_child`` / ``after_in_parent``
# hook: a child that uses a connection while it is still True is running an
# at-fork hook registered before ours (see _bypass_path()).
_in_python_fork = False


def set_close_before_fork(enabled: bool) -> None:
    """Set whether the at-fork hook runs the pre-fork cleanup before every ``os.fork()``."""
    _options.close_before_fork = enabled


def wrappers_clean_up() -> bool:
    """Whether a pool or process wrapper runs the pre-fork cleanup before it forks.

    Yes unless ``close_before_fork=False``, or ``True`` with the at-fork hook
    installed (which then runs it).
    """
    option = _options.close_before_fork
    return option is None or (option is True and not _hooks_registered)


def set_freeze_gc(enabled: bool) -> None:
    """Set whether forks freeze the cyclic GC's objects (``install(freeze_gc=...)``)."""
    _options.freeze_gc = enabled


def register_hooks() -> None:
    """Switch the at-fork hooks on (they are registered when this module is imported).

    Registering at import puts forksafe's ``after_in_child`` hook before those
    of every module imported later: :func:`os.register_at_fork` runs them in
    registration order, and a hook of the application that uses a connection
    must find it detached.
    """
    global _hooks_registered
    _hooks_registered = True


def prepare_fork() -> None:
    """Close the calling thread's connections that nothing is using, before a fork.

    Runs in the parent, in the thread that is about to fork; the child is safe
    without it (it detaches what it inherits, with no I/O). Closed: the calling
    thread's idle connections. Kept open: a connection with an open cursor (a
    result being read, an ``.iterator()``), one inside ``transaction.atomic()``
    or with autocommit off (a :class:`ForkSafeWarning` says so), one shared with
    other threads, an in-memory SQLite database, and every connection of other
    threads (the child detaches them). What lives in a closed connection's
    session ends with it: advisory locks, temporary tables, ``SET`` values. The
    pool and process wrappers call it before they fork (not with
    ``install(close_before_fork=False)``); ``os.fork()`` does only with
    ``install(close_before_fork=True)``. Calling it repeatedly is harmless.
    """
    closed, in_transaction = cleanup()
    if in_transaction:
        # After the cleanup: with warnings turned into errors, every idle
        # connection has been closed before this raises.
        warnings.warn(_in_transaction_message(in_transaction), ForkSafeWarning, stacklevel=2)


def cleanup() -> tuple[list[str], list[str]]:
    """The pre-fork cleanup, silently; return the aliases closed and those kept in a transaction.

    What :func:`prepare_fork` does, without its warning: the pool and process
    wrappers call it (a pool created inside ``atomic()`` keeps the parent's
    transaction open, which is what it should do).
    """
    _registry.start_tracking()  # also finds connections opened before install()
    closed: list[str] = []
    kept: list[str] = []
    in_transaction: list[str] = []
    for entry in _registry.entries_of_thread(os.getpid(), threading.get_ident()):
        wrapper = entry.wrapper
        if wrapper is None or not _owned_here(entry):
            continue
        if wrapper.connection is entry.raw and _registry.in_use(entry):
            kept.append(wrapper.alias)
            continue
        try:
            outcome = _closing.close_owned(wrapper, in_atomic="keep", shared="skip")
        except Exception:
            logger.warning(
                "forksafe: closing connection %r before fork failed", wrapper.alias, exc_info=True
            )
            continue
        if outcome == "in-transaction":
            in_transaction.append(wrapper.alias)
        elif outcome == "closed":
            closed.append(wrapper.alias)
    signals.send(signals.fork_prepared, closed=closed, kept=kept + in_transaction)
    return closed, in_transaction


def _in_transaction_message(aliases: list[str]) -> str:
    return (
        f"forksafe: connection(s) {', '.join(map(repr, aliases))} inside a"
        " transaction at fork time stay open in the parent; the child will not use"
        " them. Fork outside transaction.atomic() to get rid of this warning."
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
    _detach_inherited(clean_transactions=worker, bypass=None)
    while worker and _left_in_atomic:
        wrapper = _left_in_atomic.pop()()
        if wrapper is not None and wrapper.connection is None:
            forget_connection(wrapper, clean=True)


@dataclass
class _Bypass:
    """A reset that no fork hook ran: what triggered it, and the path that bypassed the hooks."""

    path: str
    alias: str | None = None
    driver: str | None = None
    sender: type | None = None


# Functions that explain a bypass in their integration's terms (forksafe.uwsgi adds one).
_explainers: list[Callable[[], str | None]] = []


def add_bypass_explainer(explain: Callable[[], str | None]) -> None:
    """Let ``explain()`` say which fork path bypassed the hooks (``None``: not mine)."""
    if explain not in _explainers:
        _explainers.append(explain)


def _bypass_path() -> str:
    """Why this process was not reset when it was forked, and how to hook it properly."""
    if _in_python_fork:
        return (
            "an os.register_at_fork(after_in_child=...) hook registered before forksafe"
            " was imported used a connection before forksafe's reset ran. Hooks run in"
            " the order they were registered: import forksafe (or call"
            " forksafe.install()) before registering yours"
        )
    for explain in _explainers:
        text = explain()
        if text:
            return text
    return (
        "it was forked without running Python's at-fork hooks (fork() called from C: an"
        " extension module or an embedding server such as mod_wsgi). Call"
        " forksafe.after_fork_in_child() first thing in the child"
    )


def detach_on_first_use(wrapper: BaseDatabaseWrapper) -> None:
    """The pid check found ``wrapper`` holding a connection another process opened.

    Called by ``forksafe._guard`` before the wrapper is used. No fork hook
    reset this process: reset it now (every inherited connection, no I/O),
    with one WARNING naming the path that bypassed the hooks. Whatever the
    wrapper still holds afterwards is this process's own.
    """
    raw = wrapper.connection
    if os.getpid() != _reset_pid and raw is not None:
        bypass = _Bypass(_bypass_path(), wrapper.alias, _drivers.driver_of(raw), type(wrapper))
        try:
            _detach_inherited(clean_transactions=False, bypass=bypass)
        except Exception:
            logger.warning("forksafe: detaching the inherited connections failed", exc_info=True)
    if wrapper.connection is not None:
        wrapper.__dict__[_guard.PID_ATTRIBUTE] = _guard.current_pid()


def reset_after_late_install() -> None:
    """``install()`` in a process forked after forksafe was imported but not installed.

    The parent had no hooks, so nothing was reset here: do it now.
    """
    if not _hooks_registered and os.getpid() != _reset_pid:
        path = (
            "forksafe.install() was called after this process was forked (forksafe was"
            f" imported in pid {_reset_pid}, which had not installed it). Call"
            " forksafe.install() before anything forks: at the top of manage.py or"
            " wsgi.py, or add 'forksafe' to INSTALLED_APPS"
        )
        _detach_inherited(clean_transactions=False, bypass=_Bypass(path))


def _report_detached(
    entry: _registry.Entry, wrapper: BaseDatabaseWrapper | None, how: str, bypassed: bool
) -> None:
    logger.debug(
        "forksafe: detached inherited connection %r (%s): %s", entry.alias, entry.driver, how
    )
    if bypassed:
        _registry.note_bypassed(entry.alias)
    if not signals.connection_detached.receivers:  # the common case: build nothing
        return
    signals.send(
        signals.connection_detached,
        type(wrapper) if wrapper is not None else None,
        alias=entry.alias,
        driver=entry.driver,
        how=how,
        connection=wrapper,
    )


def _detach_inherited(*, clean_transactions: bool, bypass: _Bypass | None) -> None:
    """Once per process: detach what it inherited; ``clean_transactions`` for workers.

    ``bypass``: no fork hook ran this reset (the pid check did, or a late
    ``install()``); counted, logged and signalled as such.

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
    _close_at_exit()
    if _left_in_atomic:
        _left_in_atomic.clear()
    if _options.freeze_gc:
        gc.freeze()  # O(1) here; where the parent forked in C (uWSGI) the only freeze
    _reinit_signal_lock()  # before start_tracking(), which may connect the receiver
    _registry.start_tracking(existing_pid=_registry.UNKNOWN_PID)
    in_atomic: list[str] | None = None  # allocated only when needed
    devnull: int | None = None
    detached = 0
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
            how = _drivers.detach(entry.raw, owned=mine, alias=entry.alias, devnull=devnull)
            if how != "closed-already":
                _registry.note_detached(entry.alias)
                detached += 1
                _report_detached(entry, wrapper, how, bypass is not None)
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
    if bypass is not None and (detached or bypass.alias is not None):
        logger.warning(
            "forksafe: this process (pid %d) was forked without forksafe's reset running"
            " first: %s. Its %d inherited connection(s) were detached (no network I/O)"
            " when forksafe noticed%s; new ones are opened as needed.",
            pid,
            bypass.path,
            detached,
            "" if bypass.alias is None else f", before {bypass.alias!r} was used",
        )
        signals.send(
            signals.bypass_detected,
            bypass.sender,
            alias=bypass.alias,
            driver=bypass.driver,
            path=bypass.path,
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
    module = sys.modules.get("django.db.backends.signals")
    signal = getattr(module, "connection_created", None)
    # Only a held lock needs replacing: a new one is an allocation (and the old
    # one a deallocation) in the child for nothing.
    if signal is not None and signal.lock.locked():
        signal.lock = threading.Lock()
    signals.reinit_locks()  # forksafe's own, sent during the reset


def hooks_installed() -> bool:
    """Whether ``install()`` registered the at-fork hooks in this process."""
    return _hooks_registered


def _at_fork_before() -> None:
    """The ``before`` hook of :func:`os.register_at_fork`: the pre-fork cleanup, never raising."""
    global _in_python_fork
    _in_python_fork = True
    if not _hooks_registered:
        return
    try:
        if _options.close_before_fork is not True:
            signals.send(signals.fork_prepared, closed=[], kept=[])
        else:
            _closed, in_transaction = cleanup()
            if in_transaction:
                # stacklevel=2: the line that called os.fork() (the hook is called from C).
                warnings.warn(
                    _in_transaction_message(in_transaction), ForkSafeWarning, stacklevel=2
                )
    except ForkSafeWarning as warning:
        # Warnings turned into errors (pytest's filterwarnings = error): the cleanup
        # went well, and an exception cannot leave a fork hook anyway.
        logger.info("%s", warning)
    except Exception:
        logger.warning("forksafe: the pre-fork cleanup failed", exc_info=True)
    if _options.freeze_gc:
        gc.freeze()  # install(freeze_gc=True); last, right before the fork


def _at_fork_in_parent() -> None:
    """The ``after_in_parent`` hook."""
    global _in_python_fork
    _in_python_fork = False


def _at_fork_in_child() -> None:
    """The ``after_in_child`` hook of :func:`os.register_at_fork`: the child reset."""
    global _in_python_fork
    _in_python_fork = False
    if not _hooks_registered:
        return
    try:
        # reset_child() without the worker part: one call less in every child.
        _detach_inherited(clean_transactions=False, bypass=None)
    except Exception:
        logger.warning(
            "forksafe: detaching the inherited connections after a fork failed", exc_info=True
        )


def _close_at_exit() -> None:
    """A child that exits normally closes what it opened itself (``forksafe._exit``)."""
    from forksafe import _exit  # it builds on this module

    _exit.close_at_exit()


# At import, so that forksafe's child reset runs before the at-fork hooks of every
# module imported later; they do nothing until install() (register_hooks()).
os.register_at_fork(
    before=_at_fork_before, after_in_parent=_at_fork_in_parent, after_in_child=_at_fork_in_child
)
