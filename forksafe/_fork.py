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

from forksafe import _closing, _drivers, _registry, signals
from forksafe._closing import forget_connection, is_in_memory_sqlite
from forksafe._forkmarks import GENERATION, IN_PYTHON_FORK, SOCKETS_DETACHED_PID, marks
from forksafe._warnings import ForkSafeWarning

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.dispatch import Signal

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
    "set_exit_hook",
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

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        _mark_changed()  # the ``before`` hook reads no option but through _prepare_child_reset()


def _mark_changed() -> None:
    """Something the fork hooks depend on changed: the next fork computes their state again."""
    global _changed, _fork_readers
    _fork_readers = None  # first: a child forked from now on resets at once
    _changed = True


# What the ``before`` hook computes for the child (below) is kept from fork to fork and
# computed again only after something it depends on changed: every object the parent
# touches between two forks, even only to read it (a reference count is a write on 3.11),
# is a page it copies at the next fork (copy-on-write applies to the parent too). A fork
# with nothing changed reads module globals that hold True or False, nothing else.
# True: compute at the next fork (set by _mark_changed(): the registry, the options, the
# receivers of forksafe's signals; and when the last transaction.atomic() block closes).
_changed = True
# Whether every fork needs the ``before`` hook's full work: the cleanup at every fork,
# a receiver of ``fork_prepared``, ``freeze_gc``.
_slow_before = False
# Set from _options by _prepare_child_reset(), for the child's hook (one global read).
_freeze_gc = False
_options = _Options()
_hooks_registered = False
# Wrappers the last child reset left in Django's "closed inside a transaction"
# state (forked inside transaction.atomic()); see reset_child(worker=True).
_left_in_atomic: list[weakref.ref[BaseDatabaseWrapper]] = []
# The pid whose connections are all its own: set at import and after each reset.
# ``after_fork_in_child()`` in this pid is a no-op.
_reset_pid = os.getpid()
# What the hooks write at every fork is in ``marks`` (forksafe._forkmarks): whether a
# fork is under way (IN_PYTHON_FORK, see _bypass_path()), the pid whose hook left the
# reset for later (SOCKETS_DETACHED_PID, see _at_fork_in_child()), the generation.
# Set in the parent, only read in a child (computing them there would write to pages it
# shares with the parent): the signals whose held locks a child replaces (set by
# register_hooks()) and whether forksafe._exit's atexit callback is registered.
_signal_locks: tuple[Signal, ...] = signals.ALL
# The child's hook opens it (as _drivers.open_devnull()).
_DEVNULL = os.fsencode(os.devnull)
_DEVNULL_FLAGS = os.O_RDWR | os.O_CLOEXEC
_closing_at_exit = False
_exit_hook: Callable[[], None] | None = None  # set by forksafe._exit: see set_exit_hook()
# Set by the ``before`` hook, in the parent, for the children of the coming forks: what
# reads the socket descriptor of each registered connection (_registry.socket_readers();
# None, dropped with the change that made it stale: a reader references its connection),
# and whether the child resets at once.
_fork_readers: tuple[Callable[[], int], ...] | None = None
_fork_resets_at_once = False
# thread ident -> transaction.atomic() blocks it entered and has not left (_patch_atomic()),
# and bool() of it for the ``before`` hook, which must not touch the dict itself.
_atomic_depth: dict[int, int] = {}
_atomic_open = False
# True until a fork found no registered connection inside an atomic block: one entered
# before _patch_atomic() is not counted in _atomic_depth.
_atomic_unsure = True
# pid -> the lock that lets one thread of that process finish its reset while the others
# wait (a lock inherited from a parent may have been held by a thread that is gone).
_reset_locks: dict[int, threading.Lock] = {}


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
    global _hooks_registered, _signal_locks
    if not _hooks_registered:
        from django.db.backends.signals import connection_created

        _signal_locks = (connection_created, *signals.ALL)
        _patch_atomic()
        _watch_level()
        _registry.set_change_hook(_mark_changed)
        signals.set_change_hook(_mark_changed)
        _mark_changed()
    _hooks_registered = True
    _close_at_exit()  # here, in the parent: every fork inherits the callback (not the child)


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
    closed: list[str] = []
    kept: list[str] = []
    in_transaction: list[str] = []
    if "django.db" not in sys.modules:
        # Nothing can hold a connection yet; importing django.db here would create
        # Django's connection handler before a gevent worker patches threading.local
        # (gunicorn's arbiter without preload_app): every greenlet would share one.
        signals.send(signals.fork_prepared, closed=closed, kept=kept)
        return closed, in_transaction
    _registry.start_tracking()  # also finds connections opened before install()
    me = threading.get_ident()
    for entry in _registry.entries_of_thread(os.getpid(), me):
        wrapper = entry.wrapper
        if wrapper is None or not _owned_by(entry, me):
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

    Runs in the child. Every connection opened by the
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

    Where the parent forks without Python's at-fork hooks (uWSGI), call it
    first thing in the child. After ``os.fork()`` with ``install()``'s hooks it
    is not needed: the hook has detached the sockets already, and the rest
    runs before the child's first use of a connection; calling it does that
    rest now. In a process that did not fork since the last reset, it does
    nothing, so calling it from several hooks is harmless. It never raises:
    what cannot be detached is kept unused until the child exits, and logged.
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
    _reset_once(clean_transactions=worker, bypass=None)
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
    if marks[IN_PYTHON_FORK]:
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

    Called by ``forksafe._guard`` before the wrapper is used. If this process's
    fork hook left the rest of its reset for now (:func:`_at_fork_in_child`),
    it is finished. Otherwise no fork hook reset this process: reset it now
    (every inherited connection, no I/O), with one WARNING naming the path that
    bypassed the hooks. Whatever the wrapper still holds afterwards is this
    process's own (the guard stamps it so).
    """
    raw = wrapper.connection
    pid = os.getpid()
    if pid == marks[SOCKETS_DETACHED_PID]:
        finish_reset()  # the fork hook ran: not a bypass
    elif pid != _reset_pid and raw is not None:
        bypass = _Bypass(_bypass_path(), wrapper.alias, _drivers.driver_of(raw), type(wrapper))
        try:
            _reset_once(clean_transactions=False, bypass=bypass)
        except Exception:
            logger.warning("forksafe: detaching the inherited connections failed", exc_info=True)


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
        _reset_once(clean_transactions=False, bypass=_Bypass(path))


def finish_reset() -> None:
    """Finish the reset that this process's fork hook left for later; no I/O.

    The hook detached the inherited sockets; this forgets the inherited
    connections (wrappers, registry, native pools, signal locks). Called before
    the first use of a connection in the child (``forksafe._guard``), at its
    exit, by :func:`after_fork_in_child` and by :func:`stats`. Elsewhere, and
    when done already, it does nothing.
    """
    if marks[SOCKETS_DETACHED_PID] == os.getpid() != _reset_pid:
        _reset_once(clean_transactions=False, bypass=None)


def _reset_once(*, clean_transactions: bool, bypass: _Bypass | None) -> None:
    """:func:`_detach_inherited`, by one thread at a time; the others wait for it."""
    pid = os.getpid()
    # The forking thread, not the caller, owns what the child inherited from it: the main
    # thread of a forked child (threading's own at-fork hook made it so, keeping its ident).
    thread = threading.main_thread().ident if pid == marks[SOCKETS_DETACHED_PID] else None
    if thread is None:
        thread = threading.get_ident()
    with _reset_locks.setdefault(pid, threading.Lock()):
        _detach_inherited(clean_transactions=clean_transactions, bypass=bypass, thread=thread)


def stats() -> dict[str, dict[str, int]]:
    """This process's connections per alias: opened, open, closed, detached, bypasses."""
    finish_reset()
    return _registry.stats()


def _report_detached(
    entry: _registry.Entry,
    wrapper: BaseDatabaseWrapper | None,
    how: str,
    *,
    bypassed: bool,
    debug: bool,
) -> None:
    if debug:
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


def _detach_inherited(*, clean_transactions: bool, bypass: _Bypass | None, thread: int) -> None:
    """Once per process: detach what it inherited; ``clean_transactions`` for workers.

    ``bypass``: no fork hook ran this reset (the pid check did, or a late
    ``install()``); counted, logged and signalled as such. ``thread``: the
    thread that forked (in the child, the one that owns what that thread
    owned in the parent). Call it through :func:`_reset_once`.

    What it writes, the child copies (copy-on-write: a page fault per page):
    one ``/dev/null`` open for all connections, no registry walk beyond the
    inherited entries, nothing freed.
    """
    global _reset_pid
    pid = os.getpid()
    if pid == _reset_pid:
        return
    _reset_pid = pid
    if not _closing_at_exit:  # install() registered it in the parent, normally
        _close_at_exit()
    debug = logger.isEnabledFor(logging.DEBUG)
    if _left_in_atomic:
        _left_in_atomic.clear()
    if _options.freeze_gc and pid != marks[SOCKETS_DETACHED_PID]:
        gc.freeze()  # O(1) here; where the parent forked in C (uWSGI) the only freeze
    _reinit_signal_lock()  # before start_tracking(), which may connect the receiver
    if "django.db" in sys.modules:  # else nothing was inherited (see cleanup())
        _registry.start_tracking(existing_pid=_registry.UNKNOWN_PID)
    in_atomic: list[str] | None = None  # allocated only when needed
    devnull: int | None = None
    detached = 0
    for entry in _registry.take_inherited():
        wrapper = entry.wrapper_ref()
        # Another thread's connection is never *entered*; what needs more
        # than this (in-memory SQLite, atomic) asks _owned_by().
        mine = entry.thread_id == thread
        try:
            if (
                wrapper is not None
                and entry.vendor == "sqlite"
                and _owned_by(entry, thread)
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
                _report_detached(entry, wrapper, how, bypassed=bypass is not None, debug=debug)
            if wrapper is not None:
                if wrapper.connection is not None and wrapper.connection is not entry.raw:
                    _drivers.detach(wrapper.connection, owned=mine, alias=entry.alias)
                if (
                    wrapper.in_atomic_block
                    and not clean_transactions
                    and mine
                    and _owned_by(entry, thread)
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


def _owned_by(entry: _registry.Entry, thread: int) -> bool:
    """Whether thread ``thread`` alone may enter ``entry``'s connection.

    True for a wrapper that thread owns and shares with no other thread. In a
    forked child the forking thread keeps its ident and all others are gone; a
    connection they used may be mid-query, holding a driver lock that nobody
    will ever release, so it must not be entered.
    """
    if entry.thread_id != thread:
        return False
    wrapper = entry.wrapper
    return wrapper is None or not wrapper.allow_thread_sharing


def _reinit_signal_lock() -> None:
    """Give Django's ``connection_created`` signal and forksafe's a fresh lock in a forked child.

    Every ``send()`` of ``connection_created`` takes ``Signal.lock`` (it does not
    cache receivers), and forksafe's signals are sent during the reset; a parent
    thread inside one at the moment of the fork would leave the lock held for
    ever, and the child's first connect would hang -- as ``logging`` re-creates
    its handler locks after a fork. Only a held lock is replaced: a new one is
    an allocation (and the old one a deallocation) in the child for nothing.
    """
    for signal in _signal_locks:
        if signal.lock.locked():
            signal.lock = threading.Lock()


def hooks_installed() -> bool:
    """Whether ``install()`` registered the at-fork hooks in this process."""
    return _hooks_registered


def _at_fork_before() -> None:
    """The ``before`` hook of :func:`os.register_at_fork`: the pre-fork cleanup, never raising."""
    marks[IN_PYTHON_FORK] = True
    # The common fork: nothing changed since the last one, no cleanup, no receiver, no atomic
    # block open. It reads four globals that hold True or False and writes one list item.
    if _hooks_registered and (_changed or _slow_before or _atomic_open or _atomic_unsure):
        _before_fork()


def _before_fork() -> None:
    """The ``before`` hook's work when it has some: the cleanup, the child's reset prepared."""
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
    try:
        _prepare_child_reset()
    except Exception:
        logger.warning("forksafe: preparing the child's reset failed", exc_info=True)
    if _freeze_gc:
        gc.freeze()  # install(freeze_gc=True); last, right before the fork


def _prepare_child_reset() -> None:
    """In the parent, just before a fork: what the child's hook needs, computed here.

    The child resets at once (rather than at the first use of a connection)
    when something must see the reset happen at the fork: a Django native pool
    (its inherited idle connections are handed out without a pid check), a
    receiver of ``connection_detached``, the ``forksafe`` logger at DEBUG, or a
    connection of the forking thread inside ``transaction.atomic()`` (leaving
    the block in the child must find it closed, as Django leaves it). The
    logger's level is read by the child (it changes without telling anyone).
    """
    global _changed, _slow_before, _freeze_gc, _fork_readers, _fork_resets_at_once
    global _atomic_unsure
    _changed = False  # first: a change made meanwhile is seen at the next fork
    me = threading.get_ident()
    options = _options
    _freeze_gc = options.freeze_gc
    _slow_before = bool(
        options.close_before_fork is True
        or options.freeze_gc
        or signals.fork_prepared.receivers
        or not _level_watched
    )
    at_once = bool(
        signals.connection_detached.receivers
        or logger.isEnabledFor(logging.DEBUG)
        or _drivers.native_pools()
    )
    if not at_once and (_atomic_open or _atomic_unsure):
        in_atomic = [
            entry.thread_id
            for entry in _registry.entries()
            if (wrapper := entry.wrapper) is not None and wrapper.in_atomic_block
        ]
        at_once = me in in_atomic
        if not in_atomic:
            _atomic_unsure = False  # every atomic block open from now on is counted
    _fork_resets_at_once = at_once
    readers = _registry.socket_readers()
    # Dropped by a change made meanwhile: that fork's child resets at once.
    _fork_readers = None if _changed else readers


def _at_fork_in_parent() -> None:
    """The ``after_in_parent`` hook."""
    marks[IN_PYTHON_FORK] = False


def _at_fork_in_child() -> None:
    """The ``after_in_child`` hook of :func:`os.register_at_fork`: the child reset, its urgent half.

    Runs in every forked child before any of its own code, so it does only what
    cannot wait: it points the socket of every inherited connection at
    ``/dev/null`` (``_drivers.detach_sockets``), after which nothing the child
    does can reach the parent's sessions. The rest -- the wrappers forgetting
    those connections, the registry, the signal locks -- waits for
    :func:`finish_reset`, before the child's first use of a connection (or its
    exit), and costs a child that never uses one nothing. Every page the child
    writes is a copy-on-write fault (docs: "What a fork costs, in page faults"):
    what it writes goes to ``marks``, one list. It also bumps the fork
    generation of ``forksafe._thread_guard`` (which has no hook of its own: one
    Python call per fork, not two). Some forks need the whole reset at once (see
    :func:`_prepare_child_reset`).
    """
    fork_marks = marks
    fork_marks[IN_PYTHON_FORK] = False
    fork_marks[GENERATION] += 1
    if not _hooks_registered:
        return
    try:
        readers = _fork_readers
        if readers is None or _fork_resets_at_once:
            _reset_once(clean_transactions=False, bypass=None)
            return
        fork_marks[SOCKETS_DETACHED_PID] = os.getpid()
        if _freeze_gc:
            gc.freeze()
        # _drivers.detach_sockets(readers), inlined: a call to another module touches its
        # module, function and code objects (three pages); a while loop allocates nothing.
        devnull = -1
        i = len(readers)
        try:
            while i:
                i -= 1
                try:
                    fd = readers[i]()
                except Exception:
                    continue  # closed: detach() handles it, if it ever needs to
                if fd >= 0:
                    if devnull < 0:
                        devnull = os.open(_DEVNULL, _DEVNULL_FLAGS)
                    os.dup2(devnull, fd, False)
        finally:
            if devnull >= 0:
                os.close(devnull)
    except Exception:
        logger.warning(
            "forksafe: detaching the inherited connections after a fork failed", exc_info=True
        )


class _LevelCache(dict[int, bool]):
    """The ``forksafe`` logger's ``isEnabledFor()`` cache, which tells when it is cleared.

    ``logging`` clears every logger's cache whenever a level changes anywhere
    (``setLevel()``, ``logging.disable()``, ``basicConfig()``, ``dictConfig()``): the
    ``before`` hook then reads the logger's level again (see _prepare_child_reset()).
    """

    def clear(self) -> None:
        """Empty the cache; the next fork reads the level again."""
        super().clear()
        _mark_changed()


_level_watched = False  # False: the ``before`` hook reads the level at every fork


def _watch_level() -> None:
    """Replace the ``forksafe`` logger's level cache with a :class:`_LevelCache`."""
    global _level_watched
    cache = getattr(logger, "_cache", None)
    if type(cache) is dict:  # CPython 3.7+; otherwise the level is read at every fork
        logger._cache = _LevelCache(cache)  # type: ignore[attr-defined]
    _level_watched = isinstance(getattr(logger, "_cache", None), _LevelCache)


def _patch_atomic() -> None:
    """Count, per thread, the ``transaction.atomic()`` blocks open (``_atomic_depth``).

    The ``before`` hook needs to know whether the forking thread holds a connection
    inside one (see :func:`_prepare_child_reset`); reading every wrapper's
    ``in_atomic_block`` at every fork would touch each wrapper's page. Counted
    before entering (a fork in ``__enter__`` finds it counted) and after leaving:
    a count that is too high only costs the next forks that read.
    """
    from django.db.transaction import Atomic

    enter, exit_ = Atomic.__enter__, Atomic.__exit__
    if getattr(enter, "__forksafe_original__", None) is not None:
        return

    def __enter__(self: Atomic) -> None:
        global _atomic_open
        me = threading.get_ident()
        _atomic_depth[me] = _atomic_depth.get(me, 0) + 1
        _atomic_open = True
        try:
            enter(self)
        except BaseException:
            _atomic_left(me)
            raise

    def __exit__(self: Atomic, *exc_info: object) -> None:
        try:
            exit_(self, *exc_info)  # type: ignore[arg-type]
        finally:
            _atomic_left(threading.get_ident())

    __enter__.__forksafe_original__ = enter  # type: ignore[attr-defined]
    __exit__.__forksafe_original__ = exit_  # type: ignore[attr-defined]
    Atomic.__enter__ = __enter__  # type: ignore[method-assign]
    Atomic.__exit__ = __exit__  # type: ignore[method-assign]


def _atomic_left(me: int) -> None:
    global _atomic_open
    depth = _atomic_depth.get(me, 0) - 1
    if depth > 0:
        _atomic_depth[me] = depth
        return
    _atomic_depth.pop(me, None)
    if not _atomic_depth:
        _atomic_open = False
        _mark_changed()  # the child of the next fork may no longer need to reset at once
        if _atomic_depth:  # another thread entered one meanwhile
            _atomic_open = True


def set_exit_hook(hook: Callable[[], None]) -> None:
    """Register what makes every fork of this process close its connections at exit.

    ``forksafe._exit`` (which builds on this module) sets it when imported;
    :func:`register_hooks` calls it in the parent, and a child reset in a
    process whose parent did not.
    """
    global _exit_hook
    _exit_hook = hook


def _close_at_exit() -> None:
    """Every fork of this process closes what it opened when it exits normally.

    Registered once, in the parent (by ``install()``), so that the child's fork
    hook has nothing to register.
    """
    global _closing_at_exit
    hook = _exit_hook
    if hook is not None:
        hook()
        _closing_at_exit = True


# At import, so that forksafe's child reset runs before the at-fork hooks of every
# module imported later; they do nothing until install() (register_hooks()).
os.register_at_fork(
    before=_at_fork_before, after_in_parent=_at_fork_in_parent, after_in_child=_at_fork_in_child
)
