"""Django's tasks framework (``django.tasks``): forksafe's between-task rules around every task.

Django 6.0's ``django.tasks`` (and the ``django-tasks`` backport, whose signals
``django-tasks-rq`` sends) leaves running tasks to worker backends:
``django-tasks-db``'s ``db_worker``, ``django-tasks-rq``'s RQ workers, thread-pool
backends in the web process. Each sends ``task_started`` and ``task_finished``
in the thread that runs the task. :func:`connect` hooks those signals so that
every worker applies the rules of ``forksafe.ThreadPoolExecutor`` tasks and the
Celery integration (``forksafe._tasks``):

* before each task and after it, Django's request-boundary rules
  (``CONN_MAX_AGE``: ``None`` reuses the connection task after task, ``0``
  closes it after each; ``CONN_HEALTH_CHECKS``; a connection left unusable or
  inside ``atomic`` is dropped);
* a connection whose query was interrupted by an exception that is not a
  database error (a signal handler's timeout, ``SystemExit`` from a worker's
  second ``SIGTERM``) or used by a task that failed with a database error is
  closed *the moment the task raises*, in ``Task.call`` -- before the
  worker records the failure: ``db_worker`` writes it with the same thread's
  connection, which an interrupted query leaves mid-protocol.

The immediate backend runs tasks inside the caller (a request, a test's
transaction): it is left alone, as is a task started inside ``atomic``.

The ``forksafe`` Django app calls :func:`connect` in ``ready()`` when a tasks
framework is importable; nothing else is needed. Without one, importing this
module raises ``ImportError``.
"""

from __future__ import annotations

import functools
import importlib
import sys
import threading
from collections.abc import Callable
from typing import Any

from forksafe import _tasks

__all__ = ["FRAMEWORKS", "available", "connect", "connected"]

#: The packages whose task signals are connected, when importable.
FRAMEWORKS = ("django.tasks", "django_tasks")


def _importable(name: str) -> bool:
    try:
        importlib.import_module(f"{name}.signals")
    except ImportError:
        return False
    return True


def available() -> list[str]:
    """Which of :data:`FRAMEWORKS` this process can import."""
    return [name for name in FRAMEWORKS if _importable(name)]


if not available():  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "forksafe.tasks needs Django's tasks framework: Django 6.0 or later (django.tasks),"
        " or the backport on earlier versions: pip install 'forksafe[tasks]'",
        name="django.tasks",
    )


class _State(threading.local):
    running = False  # a task started by a worker runs in this thread
    handled = False  # its exception's broken connections were closed in Task.call


_state = _State()
_immediate: list[type] = []
_connected: list[str] = []
_lock = threading.Lock()
_tracking = False


def _skipped(sender: object) -> bool:
    """Whether ``sender`` (a backend class; ``db_worker`` sends an instance) runs in the caller."""
    cls = sender if isinstance(sender, type) else type(sender)
    return any(issubclass(cls, immediate) for immediate in _immediate)


def _on_task_started(sender: object, **kwargs: Any) -> None:
    """``task_started``: Django's rules before the task, in the thread that runs it."""
    global _tracking
    _state.running = _state.handled = False
    if _skipped(sender) or _tasks.in_transaction():
        return
    if not _tracking:
        _tasks.start_tracking()  # idempotent; also picks up connections opened before
        _tracking = True
    _state.running = True
    _tasks.between_tasks()


def _on_task_finished(sender: object, **kwargs: Any) -> None:
    """``task_finished``: the rules after the task, with the exception that ended it."""
    if not _state.running:
        return
    handled = _state.handled
    _state.running = _state.handled = False
    # Sent inside the worker's ``except`` block when the task failed (db_worker, Django's
    # backends); RQ's failure callback is not, and its exception was seen in Task.call.
    error = None if handled else sys.exc_info()[1]
    _tasks.between_tasks(error)


def _wrap_call(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _state.running:
            return original(self, *args, **kwargs)
        try:
            return original(self, *args, **kwargs)
        except BaseException as exc:
            # Before the worker writes the failure with this thread's connections.
            _tasks.between_tasks(exc, rules=False)
            _state.handled = True
            raise

    call.__forksafe_original__ = original  # type: ignore[attr-defined]
    return call


def _connect_framework(name: str) -> None:
    signals = importlib.import_module(f"{name}.signals")
    base = importlib.import_module(f"{name}.base")
    try:
        immediate = importlib.import_module(f"{name}.backends.immediate")
    except ImportError:  # pragma: no cover - every release so far has it
        pass
    else:
        _immediate.append(immediate.ImmediateBackend)
    uid = f"forksafe.tasks.{name}"
    signals.task_started.connect(_on_task_started, weak=False, dispatch_uid=f"{uid}.started")
    signals.task_finished.connect(_on_task_finished, weak=False, dispatch_uid=f"{uid}.finished")
    task_class = base.Task
    if not hasattr(task_class.call, "__forksafe_original__"):
        task_class.call = _wrap_call(task_class.call)


def connect() -> list[str]:
    """Apply forksafe's rules to the tasks of every worker backend of this process. Idempotent.

    Connects ``task_started``/``task_finished`` of ``django.tasks`` and of the
    ``django-tasks`` backport, whichever are importable; returns their names.
    """
    with _lock:
        for name in available():
            if name not in _connected:
                _connect_framework(name)
                _connected.append(name)
        return list(_connected)


def connected() -> list[str]:
    """The frameworks :func:`connect` has connected in this process."""
    return list(_connected)
