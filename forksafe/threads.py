"""Threads that close their own Django connections when they end.

Django keeps one connection per thread and alias and nothing closes it when
the thread ends (``forksafe._thread_guard`` says why, and how an ending thread
is seen); closing must run in the owning thread. Here, for code that starts
threads itself:

* :class:`Thread` -- a drop-in :class:`threading.Thread` whose thread closes
  its connections when ``run`` returns or raises.
* :class:`ThreadPoolExecutor` -- a drop-in
  :class:`concurrent.futures.ThreadPoolExecutor`: each worker keeps its
  connections across tasks, applies Django's own request rules between tasks
  (:func:`django.db.close_old_connections`) and closes its connections when it
  exits.
* :func:`closing_connections` -- a decorator and context manager that closes
  the calling thread's connections on exit, for threads made by other code.
* ``forksafe.install(threads=True)`` -- the connections of *every* thread
  are closed when that thread ends (``forksafe._thread_guard``, which also
  explains how a thread's end is seen).

No connection is ever closed from a thread that does not own it, and nothing
here touches Django at import time: before Django is configured there is
simply nothing to close.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from concurrent import futures
from contextlib import ContextDecorator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from forksafe import _tasks, _thread_guard

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "Thread",
    "ThreadPoolExecutor",
    "closing_connections",
]

P = ParamSpec("P")
R = TypeVar("R")


# --- Thread ----------------------------------------------------------------------------------


class Thread(threading.Thread):
    """A :class:`threading.Thread` that closes its Django connections when it ends.

    Same constructor and behaviour as :class:`threading.Thread`; subclass it
    and override ``run`` as usual. When ``run`` returns or raises, the new
    thread closes every connection it opened (all aliases of Django's
    ``connections``, plus wrappers it connected while tracked), before
    ``join()`` returns and before an exception reaches
    :func:`threading.excepthook`. The closing happens in the thread that
    owns the connections; connections that another thread shared with it
    (``inc_thread_sharing``) are left to their owner, and one the thread
    shares with others is left open for them (they close it). A connection left
    inside ``atomic`` is closed (the server rolls back). A failure to close
    is logged on the ``forksafe`` logger, never raised.

    Calling ``run()`` directly, without ``start()``, behaves exactly like
    :class:`threading.Thread`: nothing is closed in the calling thread.
    """

    def start(self) -> None:
        """Start the thread, as :meth:`threading.Thread.start`.

        The thread runs ``self.run`` as looked up now, followed by the clean-up.
        """
        if not getattr(self, "_initialized", False) or self.ident is not None:
            super().start()  # raises as the stdlib does: no __init__, or started twice
            return
        run = self.run

        def run_then_close() -> None:
            try:
                run()
            finally:
                vars(self).pop("run", None)
                if threading.get_ident() == self.ident:
                    _thread_guard.close_thread_connections(in_atomic="close")

        vars(self)["run"] = run_then_close
        try:
            super().start()
        except BaseException:
            vars(self).pop("run", None)
            raise


# --- ThreadPoolExecutor ----------------------------------------------------------------------


def _start_worker(initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    """The workers' initializer: guard the worker thread, then run the user's one."""
    _thread_guard.guard_this_thread()
    if initializer is not None:
        initializer(*initargs)


class ThreadPoolExecutor(futures.ThreadPoolExecutor):
    """A :class:`concurrent.futures.ThreadPoolExecutor` whose workers manage their connections.

    Same signature and behaviour as the standard class (``submit`` returns the
    :class:`~concurrent.futures.Future`, ``map``, ``shutdown(wait=...,
    cancel_futures=...)``, ``initializer``, ``thread_name_prefix``). On top:

    * each worker thread keeps its connections across tasks, and after every
      task (and before one that follows an idle second or more) applies
      Django's request-boundary rules in that
      worker: :func:`django.db.close_old_connections` (``CONN_MAX_AGE``:
      ``0``, Django's default, closes after every task as after every
      request; ``None`` keeps the connection; a number keeps it that many
      seconds; ``CONN_HEALTH_CHECKS``; a connection left in autocommit-off or
      unusable state is dropped). A task that left an ``atomic`` block open
      has its connection closed, so the next task starts clean;
    * each worker closes its connections when it exits -- after
      ``shutdown()`` with or without ``wait``, with ``cancel_futures``, when
      the executor is garbage-collected, at interpreter exit -- in the worker
      thread itself (see the module docstring for how the exit is seen).

    Nothing ever runs in the thread that submits or completes a future:
    callbacks added with ``add_done_callback`` are untouched.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if initializer is not None and not callable(initializer):
            # Let the standard class raise its own error, in its own order.
            super().__init__(max_workers, thread_name_prefix, initializer, initargs)
            raise TypeError("initializer must be a callable")
        super().__init__(max_workers, thread_name_prefix, _start_worker, (initializer, initargs))

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[R]:
        """Schedule ``fn(*args, **kwargs)``; return its Future (see the standard class)."""
        return super().submit(_tasks.run_task, fn, *args, **kwargs)


# --- closing_connections ---------------------------------------------------------------------


class _ClosingConnections(ContextDecorator):
    """Context manager / decorator form of :func:`closing_connections`."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _thread_guard.close_thread_connections(in_atomic="warn")


@overload
def closing_connections(func: None = None) -> _ClosingConnections: ...
@overload
def closing_connections(func: Callable[P, R]) -> Callable[P, R]: ...
def closing_connections(
    func: Callable[P, R] | None = None,
) -> Callable[P, R] | _ClosingConnections:
    """Close the calling thread's Django connections on exit.

    As a context manager (``with closing_connections(): ...``) or a decorator
    (``@closing_connections`` or ``@closing_connections()``), for thread
    targets and callables that other libraries run in threads of their own.
    On exit -- normal or by an exception, which propagates -- every
    connection of the *calling* thread is closed, in that thread. One inside
    an enclosing ``transaction.atomic()`` is left open with a
    :class:`~forksafe.ForkSafeWarning`: closing it would break that block.
    Failures to close are logged, never raised.

    Coroutine functions are refused with :class:`TypeError`: async code uses
    connections in the threads of ``sync_to_async``, not its own; decorate
    the sync function instead.
    """
    if func is None:
        return _ClosingConnections()
    if not callable(func):
        raise TypeError(
            "closing_connections() takes a function to decorate, or nothing when used"
            f" as closing_connections(); not {func!r}"
        )
    if inspect.iscoroutinefunction(func):
        raise TypeError(
            f"closing_connections cannot decorate the coroutine function {func!r}: async"
            " code uses connections in sync_to_async's threads; decorate the sync function"
        )
    return _ClosingConnections()(func)
