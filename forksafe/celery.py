"""Celery workers that reuse connections safely between tasks and close them when they exit.

One call, next to the app (``celery.py`` of a Django project)::

    app = Celery("proj")
    app.config_from_object("django.conf:settings", namespace="CELERY")
    forksafe.celery.install(app)

In the worker (prefork pool processes, ``--pool threads`` threads, ``solo``):

* between tasks, the rules of ``forksafe.ThreadPoolExecutor``: Django's
  request-boundary rules, so ``CONN_MAX_AGE=None`` (or seconds) keeps one
  session per pool process or thread across tasks, and Django's default
  ``0`` closes after each task; a native pool (``OPTIONS={"pool": ...}``)
  gets each connection back after a task and is kept. Celery's Django fixup
  closes every connection, and with prefork the native pool, before and after
  every task (celery issue 10554); for ``app``'s workers that per-task closing
  is switched off and these rules replace it;
* what Celery reverted per-task reuse for (celery PR 9824, Django ticket
  30646): a connection whose query was interrupted by an exception that is
  not a database error (``SoftTimeLimitExceeded`` in the middle of
  ``cursor.execute``) is closed before the next task, and so are a task's
  connections when it fails with a database error;
* a pool process that exits normally (``--max-tasks-per-child``,
  ``--max-memory-per-child``, warm shutdown) closes its connections and its
  native pool before billiard's ``os._exit``; the main process does the same
  at worker shutdown, after the thread pool's threads closed theirs.

Eagerly applied tasks (``task_always_eager``, ``.apply()``) run inside the
caller's code and are left alone. Requires ``forksafe.install()``'s fork
hooks, which ``install(app)`` calls, so that pool processes detach what they
inherit.
"""

from __future__ import annotations

import logging
from typing import Any

try:
    from celery import Celery, signals
    from celery.fixups.django import DjangoFixup
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        "forksafe.celery needs Celery: pip install 'forksafe[celery]'", name=exc.name
    ) from exc

from forksafe import _exit, _tasks
from forksafe._install import install as _install_hooks

logger = logging.getLogger("forksafe")

__all__ = ["install"]

_apps: list[Any] = []  # the apps whose Django fixup stops closing per task


def install(app: Celery) -> None:
    """Make ``app``'s workers reuse connections between tasks and close them at exit.

    Call it once, where the app is created (see the module docstring for
    what the workers then do). Idempotent.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"forksafe.celery.install() takes a Celery app, not {app!r}")
    _install_hooks()
    if not any(known is app for known in _apps):
        _apps.append(app)
    uid = "forksafe.celery"
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid=uid)
    signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid=uid)
    signals.task_prerun.connect(_on_task_prerun, weak=False, dispatch_uid=uid)
    signals.task_postrun.connect(_on_task_postrun, weak=False, dispatch_uid=uid)
    signals.worker_process_shutdown.connect(_on_exit, weak=False, dispatch_uid=uid)
    signals.worker_shutdown.connect(_on_exit, weak=False, dispatch_uid=uid)


def _stop_fixup_closing(app: Any) -> None:
    """Disconnect the per-task closing of ``app``'s Django fixup (its other duties stay)."""
    for fixup in getattr(app, "_fixups", None) or ():
        if isinstance(fixup, DjangoFixup):
            worker_fixup = fixup.worker_fixup
            signals.task_prerun.disconnect(worker_fixup.on_task_prerun)
            signals.task_postrun.disconnect(worker_fixup.on_task_postrun)


def _on_worker_init(sender: Any = None, **kwargs: Any) -> None:
    # The fixup connected its per-task receivers in its own worker_init
    # receiver, which Celery() registered before install(app) could run.
    for app in _apps:
        _stop_fixup_closing(app)
    _tasks.start_tracking()


def _on_process_init(**kwargs: Any) -> None:
    _tasks.start_tracking()


def _is_eager(task: Any) -> bool:
    return bool(getattr(getattr(task, "request", None), "is_eager", False))


def _on_task_prerun(sender: Any = None, **kwargs: Any) -> None:
    if not _is_eager(sender):
        _tasks.between_tasks()


def _on_task_postrun(sender: Any = None, retval: Any = None, **kwargs: Any) -> None:
    if _is_eager(sender):
        return
    error = retval if isinstance(retval, BaseException) else None
    # Task.retry() raises Retry; the failure that made the task retry is its ``exc``.
    cause = getattr(error, "exc", None)
    _tasks.between_tasks(cause if isinstance(cause, BaseException) else error)


def _on_exit(**kwargs: Any) -> None:
    _exit.close_own_connections()
