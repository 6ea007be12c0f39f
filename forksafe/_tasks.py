"""Connection rules between two tasks of a task-queue worker (Celery, RQ's SimpleWorker).

A worker that runs task after task in one process or thread applies the rule
of ``forksafe.ThreadPoolExecutor`` (:func:`forksafe.threads.apply_rules`:
Django's request-boundary rules, so ``CONN_MAX_AGE=None`` or a number of
seconds reuses the connection) plus two that Django cannot apply by itself
(Django ticket 30646, wontfix; the reason Celery reverted per-task reuse in
https://github.com/celery/celery/pull/9824):

* a connection that was inside ``cursor.execute`` when an exception that is
  not a database error left it -- Celery's ``SoftTimeLimitExceeded`` or RQ's
  ``JobTimeoutException``, raised by a signal handler in the middle of a
  query -- may be mid-protocol (psycopg: "another command is already in
  progress"; MySQL: "Commands out of sync"). Django sees a healthy
  connection; it is closed here before the next task;
* when a task ends with a database error (anywhere in its exception's cause
  or context chain), the task's connections are closed.

Interruptions are seen by an execute wrapper (Django's
``connection.execute_wrappers``) placed first in the list of every wrapper
that connects in a watched process, so that a user's
``connection.execute_wrapper()`` blocks stack inside it and pop their own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from forksafe import _closing, _registry

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("forksafe")

__all__ = ["between_tasks", "in_transaction", "is_database_error", "watch_interruptions"]

_FLAG = "_forksafe_interrupted"


def _watch_execute(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """Django execute wrapper: flag the connection when a non-database error interrupts a query."""
    from django.db import Error

    try:
        return execute(sql, params, many, context)
    except Error:
        raise  # the driver read the server's error: the protocol is in step
    except BaseException:
        setattr(context["connection"], _FLAG, True)
        raise


def _watch(wrapper: BaseDatabaseWrapper) -> None:
    if _watch_execute not in wrapper.execute_wrappers:
        wrapper.execute_wrappers.insert(0, _watch_execute)


def _on_connection_created(sender: object, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    _watch(connection)


def watch_interruptions() -> None:
    """From now on, flag every connection of this process whose query gets interrupted.

    Covers wrappers that connect from now on, in every thread, and the
    calling thread's connected wrappers. Idempotent.
    """
    from django.db.backends.signals import connection_created

    from forksafe import threads

    connection_created.connect(
        _on_connection_created, weak=False, dispatch_uid="forksafe.tasks.watch"
    )
    for wrapper in threads._handler_wrappers():
        if wrapper.connection is not None:
            _watch(wrapper)


def in_transaction() -> bool:
    """Whether a connection of the calling thread is inside ``transaction.atomic()``."""
    from forksafe import threads

    return any(wrapper.in_atomic_block for wrapper in threads._handler_wrappers())


def is_database_error(error: BaseException | None) -> bool:
    """Whether ``error`` is, was caused by, or happened while handling a database error."""
    from django.db import Error

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, Error):
            return True
        error = error.__cause__ or error.__context__
    return False


def between_tasks(error: BaseException | None = None) -> None:
    """Apply the between-task rules to the calling thread's connections.

    Call it before each task and after it, with the exception the task
    raised (``None`` if it succeeded). Never raises; failures are logged.
    """
    from forksafe import threads

    close_all = is_database_error(error)
    guard = threads._current_guard(create=True)
    assert guard is not None
    me = threading.get_ident()
    for wrapper in guard.wrappers():
        interrupted = bool(getattr(wrapper, _FLAG, False))
        if interrupted:
            setattr(wrapper, _FLAG, False)
        if wrapper.connection is None or getattr(wrapper, "_thread_ident", None) != me:
            continue
        if not (interrupted or close_all):
            continue
        try:
            _closing.close_owned(wrapper, in_atomic="close", shared="close")
        except Exception:
            logger.warning(
                "forksafe: closing connection %r after %s failed",
                wrapper.alias,
                "an interrupted query" if interrupted else "a database error",
                exc_info=True,
            )
    threads.apply_rules()


def start_tracking() -> None:
    """Track connections (the per-thread index the rules read) and watch interruptions."""
    _registry.start_tracking()
    watch_interruptions()
