"""Huey consumers that reuse connections safely between tasks and close them when they stop.

One call, next to the Huey instance (or, with django-huey / ``huey.contrib.djhuey``,
in an ``AppConfig.ready()``: ``forksafe.huey.install(djhuey.HUEY)``)::

    huey = RedisHuey("proj")
    forksafe.huey.install(huey)

Huey closes connections only around ``@db_task`` / ``@db_periodic_task`` functions of
djhuey (``close_old_connections()``); a plain ``@task`` or ``@periodic_task`` keeps
whatever its thread holds, dead or alive (huey issues 44 and 764), and a worker ends
without closing its session. ``install()`` hooks ``huey``'s own ``pre_execute`` /
``post_execute`` (so every task kind of that instance is covered), ``on_startup`` and
``on_shutdown``:

* around each task, in the worker thread or process that runs it, the rules of
  ``forksafe.celery`` (``forksafe._tasks.between_tasks``): Django's request-boundary
  rules (``CONN_MAX_AGE=None`` or seconds keeps one session per worker, Django's
  default ``0`` closes after each task, ``CONN_HEALTH_CHECKS``), plus what Django
  cannot see: a connection whose query was interrupted by an exception that is not a
  database error -- Huey's ``TaskTimeout`` (``SIGALRM`` in ``-k process`` workers),
  the ``KeyboardInterrupt`` a ``SIGTERM`` raises in a busy process worker -- is closed
  before the next task, and so are a task's connections when it fails with a database
  error;
* when a worker stops, it closes its connections in its own thread (and, in a
  ``-k process`` worker, the native pools it built) before the process ends: process
  workers end with ``os._exit`` (multiprocessing), which says no goodbye;
* ``-k thread`` workers are daemon threads: on ``SIGTERM`` the consumer's main thread
  returns at once and the interpreter would freeze them where they are. At interpreter
  exit the consumer waits, up to ``exit_timeout`` seconds, for every worker thread to
  finish its task and close its connections, then closes its own and the native pools.

Tasks run by an ``immediate`` Huey run inside the caller's code and are left alone.
``install()`` also calls ``forksafe.install()``: ``-k process`` workers, forked from
the consumer, detach what they inherit.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
import threading
import time
from typing import TYPE_CHECKING, Any

try:
    from huey.api import Huey
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "forksafe.huey needs Huey: pip install 'forksafe[huey]'", name=exc.name
    ) from exc

from forksafe import _exit, _tasks, _thread_guard
from forksafe._install import install as _install_hooks

if TYPE_CHECKING:
    from huey.api import Task

logger = logging.getLogger("forksafe")

__all__ = ["install"]

_HOOK = "forksafe"  # the name of forksafe's hooks on a Huey instance (re-registering replaces)

# The worker threads of this process that started and have not closed their connections
# yet; the interpreter's exit waits on it (process workers are forked with it empty).
_busy = threading.Condition()
_workers: set[int] = set()
_exit_timeout = 0.0
_waiter_registered = False
_consumer_pid = 0  # the process whose worker threads ran: the only one _at_exit acts in


def install(huey: Huey, exit_timeout: float = 10.0) -> None:
    """Make ``huey``'s consumers apply the between-task rules and close connections at stop.

    Call it where ``huey`` is created (see the module docstring for what the workers
    then do). Idempotent: a second call for the same instance replaces the hooks of
    the first; the exit wait is the longest ``exit_timeout`` asked for.
    """
    global _exit_timeout, _waiter_registered
    if not isinstance(huey, Huey):
        raise TypeError(f"forksafe.huey.install() takes a huey.Huey instance, not {huey!r}")
    if (
        isinstance(exit_timeout, bool)
        or not isinstance(exit_timeout, int | float)
        or not math.isfinite(exit_timeout)
        or exit_timeout < 0
    ):
        raise ValueError(
            f"forksafe.huey.install(): exit_timeout must be a finite number of seconds >= 0,"
            f" not {exit_timeout!r}"
        )
    _install_hooks()
    _tasks.start_tracking()

    def before(task: Task) -> None:
        if _applies(huey):
            _tasks.between_tasks()

    def after(task: Task, value: Any, exception: BaseException | None) -> None:
        if _applies(huey):
            _tasks.between_tasks(exception)

    huey.pre_execute(_HOOK)(before)
    huey.post_execute(_HOOK)(after)
    huey.on_startup(_HOOK)(_worker_started)
    huey.on_shutdown(_HOOK)(_worker_stopping)
    with _busy:
        _exit_timeout = max(_exit_timeout, float(exit_timeout))
        if not _waiter_registered:
            atexit.register(_at_exit)
            _waiter_registered = True


def _applies(huey: Huey) -> bool:
    """Whether the rules apply to the task about to run or just run in the calling thread.

    Not for an ``immediate`` Huey (the task ran in the caller), nor for ``huey.execute()``
    called from code inside ``transaction.atomic()`` (a test): the caller's connection is
    not ours to judge. A consumer's workers never are inside a block (checked only outside
    them: the check costs about 15 µs).
    """
    if huey.immediate:
        return False
    if threading.get_ident() in _workers or _is_process_worker():
        return True
    return not _tasks.in_transaction()


def _is_process_worker() -> bool:
    """Whether the calling thread is a ``-k process`` worker (the main thread of a child)."""
    return (
        threading.current_thread() is threading.main_thread()
        and multiprocessing.parent_process() is not None
    )


def _worker_started() -> None:
    """``on_startup``, in each worker: watch queries; a worker thread is waited for at exit."""
    global _consumer_pid
    _tasks.start_tracking()
    if threading.current_thread() is not threading.main_thread():
        with _busy:
            _workers.add(threading.get_ident())
            _consumer_pid = os.getpid()


def _worker_stopping() -> None:
    """``on_shutdown``, in each worker: close its connections (a process's: and its pools)."""
    try:
        if _is_process_worker():
            _exit.close_own_connections()
        else:
            _thread_guard.close_thread_connections(in_atomic="close")
    finally:
        with _busy:
            _workers.discard(threading.get_ident())
            _busy.notify_all()


def _at_exit() -> None:
    """Wait (up to the exit timeout) for worker threads to close theirs; close the rest.

    Only in a ``-k thread`` consumer: a process that merely imported the Huey instance
    (the web server, ``manage.py``) is left as Django leaves it.
    """
    if _consumer_pid != os.getpid():
        return
    deadline = time.monotonic() + _exit_timeout
    with _busy:
        # Forked children inherit the set: only live threads of this process count.
        alive = {thread.ident for thread in threading.enumerate()}
        _workers.intersection_update(alive)
        while _workers and (left := deadline - time.monotonic()) > 0:
            _busy.wait(min(left, 0.5))
            _workers.intersection_update({thread.ident for thread in threading.enumerate()})
    if _workers:
        logger.warning(
            "forksafe: %d Huey worker thread(s) still running after %.1fs at exit;"
            " their connections are abandoned",
            len(_workers),
            _exit_timeout,
        )
    _exit.close_own_connections()
