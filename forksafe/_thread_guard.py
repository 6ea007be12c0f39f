"""The thread-exit guard: a thread's connections are closed in that thread when it ends.

Django keeps one connection per thread and alias, in a ``threading.local``.
When a thread ends, nothing closes its connections: the wrappers sit in
reference cycles, so the server session stays open until the cyclic garbage
collector happens to run. And Django forbids closing a connection from any
thread but its own (``validate_thread_sharing``), so the closing has to run
*in* the ending thread. ``install(threads=True)`` (:func:`close_at_thread_exit`)
gives every thread that connects a guard; ``forksafe.ThreadPoolExecutor``
gives one to each of its workers; the rules between two tasks (``_tasks``)
read the worker's connections through its guard.

How a thread's end is seen without wrapping its code: a small *guard* object
is stored in a :class:`threading.local` of that thread. When a thread ends,
CPython clears its thread state (``PyThreadState_Clear``) in that same thread,
with the GIL held, before ``Thread.join()`` returns (3.11: before the
``_tstate_lock`` is released; 3.13: before ``thread_is_exiting`` is
signalled). Clearing the state frees the thread's ``threading.local`` data, so
the guard's ``__del__`` runs in the ending thread itself, which may therefore
close the thread's wrappers: it looks them up in forksafe's registry of
connected wrappers (``_registry.entries_of_thread``), which records each
wrapper's owning thread. The guard only closes anything if it runs in
the thread and the process that created it: in a forked child (CPython drops
the other threads' states from the surviving thread) and at interpreter
shutdown (daemon threads' states are cleared by the main thread) it does
nothing, and forksafe's fork reset takes care of the child.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Literal

from forksafe import _closing, _registry
from forksafe._forkmarks import GENERATION, marks

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = [
    "Guard",
    "close_at_thread_exit",
    "close_thread_connections",
    "current_guard",
    "current_guard_fast",
    "enabled",
    "guard_this_thread",
]

logger = logging.getLogger("forksafe")


def close_thread_connections(*, in_atomic: Literal["close", "warn"]) -> None:
    """Close every connection of the calling thread; log (never raise) failures."""
    guard = current_guard(create=False)
    wrappers = _closing.handler_wrappers() + (guard.wrappers() if guard is not None else [])
    for exc in _closing.close_all(wrappers, in_atomic=in_atomic):
        logger.warning(
            "forksafe: closing a connection at the end of a thread failed",
            exc_info=(type(exc), exc, exc.__traceback__),
        )


class Guard:
    """Lives in one thread's ``threading.local``; its ``__del__`` runs when that thread ends.

    Its wrappers are the registry's entries of its (pid, thread): those
    Django's ``connections`` held when it was created and every wrapper of the
    thread connected since; ``__del__`` closes those still connected. Entries
    of an earlier thread that had the same ident (idents are reused) are
    recorded as ``stale`` at creation and left alone. ``__del__`` runs during
    ``PyThreadState_Clear``: it must not call ``threading.current_thread()``
    (nor log, which does), because the ``Thread`` is already unregistered and
    that would create a stray ``_DummyThread``. A failure is raised from
    ``__del__``, which Python reports as "Exception ignored in".
    """

    __slots__ = ("_cached", "_cached_at", "generation", "pid", "rules_at", "stale", "thread_id")

    def __init__(self, connecting: BaseDatabaseWrapper | None = None) -> None:
        self.pid = os.getpid()
        self.generation = marks[GENERATION]
        self.thread_id = threading.get_ident()
        # When an executor worker last applied Django's rules (time.monotonic()).
        self.rules_at = float("-inf")
        # This thread's wrappers (weakly), valid while _registry.changes() is _cached_at.
        self._cached: list[weakref.ref[BaseDatabaseWrapper]] = []
        self._cached_at = -1
        current = {id(w) for w in _closing.handler_wrappers()}
        if connecting is not None:
            current.add(id(connecting))
        self.stale = frozenset(
            entry.seq
            for entry in _registry.entries_of_thread(self.pid, self.thread_id)
            if id(entry.wrapper) not in current
        )

    def wrappers(self) -> list[BaseDatabaseWrapper]:
        """This thread's connected wrappers (see :meth:`wrapper_refs`)."""
        return [wrapper for ref in self.wrapper_refs() if (wrapper := ref()) is not None]

    def wrapper_refs(self) -> list[weakref.ref[BaseDatabaseWrapper]]:
        """Weak references to :meth:`wrappers`, kept until the registry changes."""
        changes = _registry.changes()
        if changes != self._cached_at:
            stale = self.stale
            self._cached = [
                entry.wrapper_ref
                for entry in _registry.entries_of_thread(self.pid, self.thread_id)
                if entry.seq not in stale
            ]
            self._cached_at = changes
        return self._cached

    def __del__(self) -> None:
        try:
            owner = self.pid == os.getpid() and self.thread_id == threading.get_ident()
            if not owner or sys.is_finalizing():
                return  # a fork child, or interpreter shutdown: not ours to close
        except Exception:  # module globals already torn down
            return
        errors = _closing.close_all(self.wrappers(), in_atomic="close")
        if errors:
            raise errors[0]


_local = threading.local()
_enabled = False  # install(threads=True)
# marks[GENERATION] is bumped in the child of every os.fork() by forksafe._fork's hook
# (the package imports _fork before anything else; this module may not import it): a
# guard of an older generation came from the parent. Cheaper than os.getpid() (a system
# call) on the per-task path; C-level forks (uWSGI) do not bump it, but no executor
# worker thread survives those.


def current_guard(*, create: bool, connecting: BaseDatabaseWrapper | None = None) -> Guard | None:
    """The calling thread's guard (made now with ``create``); ``None`` in a forked child."""
    guard: Guard | None = getattr(_local, "guard", None)
    if guard is not None and guard.pid != os.getpid():
        guard = None  # inherited by a forked child: the parent's business
    if guard is None and create:
        guard = Guard(connecting)
        _local.guard = guard
    return guard


def current_guard_fast() -> Guard | None:
    """The calling thread's guard if it has one of this process; no system call.

    The per-task path of an executor worker: a generation check instead of
    :func:`current_guard`'s ``os.getpid()``.
    """
    guard: Guard | None = getattr(_local, "guard", None)
    if guard is None or guard.generation != marks[GENERATION]:
        return None
    return guard


def _on_connect(wrapper: BaseDatabaseWrapper) -> None:
    """The registry's connect hook under ``install(threads=True)``, in the connecting thread."""
    current_guard(create=True, connecting=wrapper)


def guard_this_thread() -> None:
    """Close the calling thread's connections when it ends (it is not the main thread)."""
    _registry.start_tracking()
    current_guard(create=True)


def enabled() -> bool:
    """Whether every thread that connects gets a guard (``install(threads=True)``)."""
    return _enabled


def close_at_thread_exit(enabled: bool) -> None:
    """Switch the thread guard for every thread on or off: ``install(threads=...)``.

    Enabled: from now on, the first connection that any thread opens gives
    that thread a guard, and the guard closes the thread's connections when
    the thread ends -- threads of any library, ``_thread.start_new_thread``,
    asgiref's executors. Connections opened before (in threads other than
    the caller) are not covered. Disabled: no new guards; existing ones
    still close their threads' connections.
    """
    global _enabled
    _enabled = enabled
    if enabled:
        _registry.start_tracking()
        _registry.set_connect_hook(_on_connect)
        if threading.current_thread() is not threading.main_thread():
            current_guard(create=True)
    else:
        _registry.set_connect_hook(None)
