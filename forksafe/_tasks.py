"""Connection rules between two units of work: executor tasks, task-queue tasks, RQ jobs.

Django applies its request-boundary rules (:func:`django.db.close_old_connections`:
``CONN_MAX_AGE``, ``CONN_HEALTH_CHECKS``, unusable connections) at the start and
end of each request. :func:`run_task` applies them around each task of a
``forksafe.ThreadPoolExecutor`` worker (so ``CONN_MAX_AGE=None`` or a number of
seconds reuses the connection, ``0`` closes after every task).

A task-queue worker that runs task after task in one process or thread
(Celery, RQ's SimpleWorker) calls :func:`between_tasks`: the same rules, plus
two that Django cannot apply by itself
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
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from forksafe import _closing, _registry
from forksafe._thread_guard import Guard, current_guard, current_guard_fast

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("forksafe")

__all__ = [
    "RULES_IDLE_SECONDS",
    "apply_rules",
    "between_tasks",
    "in_transaction",
    "is_database_error",
    "run_task",
    "take_interrupted",
    "watch",
    "watch_interruptions",
]

P = ParamSpec("P")
R = TypeVar("R")

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


def watch(wrapper: BaseDatabaseWrapper) -> None:
    """Flag ``wrapper`` (``_forksafe_interrupted``) when a non-database error interrupts a query."""
    if _watch_execute not in wrapper.execute_wrappers:
        wrapper.execute_wrappers.insert(0, _watch_execute)


def take_interrupted(wrapper: BaseDatabaseWrapper) -> bool:
    """Whether a query of ``wrapper``'s connection was interrupted; clears the flag."""
    if getattr(wrapper, _FLAG, False):
        setattr(wrapper, _FLAG, False)
        return True
    return False


def _on_connection_created(sender: object, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    watch(connection)


def watch_interruptions() -> None:
    """From now on, flag every connection of this process whose query gets interrupted.

    Covers wrappers that connect from now on, in every thread, and the
    calling thread's connected wrappers. Idempotent.
    """
    from django.db.backends.signals import connection_created

    connection_created.connect(
        _on_connection_created, weak=False, dispatch_uid="forksafe.tasks.watch"
    )
    for wrapper in _closing.handler_wrappers():
        if wrapper.connection is not None:
            watch(wrapper)


def in_transaction() -> bool:
    """Whether a connection of the calling thread is inside ``transaction.atomic()``."""
    return any(wrapper.in_atomic_block for wrapper in _closing.handler_wrappers())


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


def between_tasks(error: BaseException | None = None, *, rules: bool = True) -> None:
    """Apply the between-task rules to the calling thread's connections.

    Call it before each task and after it, with the exception the task
    raised (``None`` if it succeeded). With ``rules=False`` only the
    connections an interrupted query or ``error`` broke are closed, and
    Django's rules are left for a later call: what a worker needs the moment a
    task raised, before it records the failure on the same connections.
    Never raises; failures are logged.
    """
    close_all = is_database_error(error)
    guard = current_guard(create=True)
    assert guard is not None
    me = threading.get_ident()
    for wrapper in guard.wrappers():
        interrupted = bool(getattr(wrapper, _FLAG, False))
        if wrapper.connection is None or getattr(wrapper, "_thread_ident", None) != me:
            take_interrupted(wrapper)
            continue
        if not (interrupted or close_all):
            continue
        try:
            # The flag is still set: a pooled backend's close() discards the connection.
            _closing.close_owned(wrapper, in_atomic="close", shared="close")
        except Exception:
            logger.warning(
                "forksafe: closing connection %r after %s failed",
                wrapper.alias,
                "an interrupted query" if interrupted else "a database error",
                exc_info=True,
            )
        finally:
            take_interrupted(wrapper)
    if rules:
        apply_rules()


#: A worker idle for longer than this re-applies the rules before its next task.
RULES_IDLE_SECONDS = 1.0


# Backend class -> whether it uses Django's own close_if_unusable_or_obsolete().
_stock_rules: dict[type, bool] = {}


def _stock_rule(cls: type) -> bool:
    """Whether backend ``cls`` keeps Django's rule (a third-party backend may override it)."""
    stock = _stock_rules.get(cls)
    if stock is None:
        from django.db.backends.base.base import BaseDatabaseWrapper

        base_rule = BaseDatabaseWrapper.close_if_unusable_or_obsolete
        stock = _stock_rules[cls] = getattr(cls, "close_if_unusable_or_obsolete", None) is base_rule
    return stock


def _apply_rules(guard: Guard, now: float) -> None:
    """Django's request-boundary rules for the connections of the calling worker thread.

    For each connection this worker opened (the registry records every one
    with its owning thread; its guard lists them): one still inside
    ``atomic`` (a task entered a block and never left it) is closed as
    :func:`forksafe._closing.close_owned` does with ``in_atomic="close"``; every other one gets
    Django's own ``close_if_unusable_or_obsolete()``, the per-connection rule
    of :func:`django.db.close_old_connections` (``CONN_MAX_AGE``,
    ``CONN_HEALTH_CHECKS``, autocommit left off, errors that made the
    connection unusable) -- called only when it could close something: when
    autocommit was not restored, errors occurred since the last commit, or
    ``CONN_MAX_AGE`` is reached (the conditions of that method, Django
    4.2-6.x). Otherwise all it does is clear ``health_check_done``, done
    here directly: calling it costs about 3 µs per task, the check 0.3 µs
    (issue 11, P1). A backend that overrides the method always gets it called.
    Failures are logged, never raised into the task's future.
    """
    me = guard.thread_id
    for ref in guard.wrapper_refs():
        # Any: django-stubs do not declare _thread_ident nor health_check_done.
        wrapper: Any = ref()
        if wrapper is None or wrapper.connection is None or wrapper._thread_ident != me:
            continue
        try:
            if wrapper.in_atomic_block:
                logger.warning(
                    "forksafe: a task left connection %r inside transaction.atomic();"
                    " it is closed (the server rolls back) before the next task",
                    wrapper.alias,
                )
                _closing.close_owned(wrapper, in_atomic="close", shared="close")
            elif (
                not _stock_rule(type(wrapper))
                or wrapper.errors_occurred
                or wrapper.autocommit != wrapper.settings_dict["AUTOCOMMIT"]
                or (wrapper.close_at is not None and now >= wrapper.close_at)
            ):
                wrapper.close_if_unusable_or_obsolete()
            else:
                # What the rule does to a healthy connection: the next query after
                # this boundary runs CONN_HEALTH_CHECKS again.
                wrapper.health_check_done = False
        except Exception:
            logger.warning(
                "forksafe: cleaning up connection %r between tasks failed",
                wrapper.alias,
                exc_info=True,
            )
    guard.rules_at = now


def apply_rules() -> None:
    """Apply Django's request-boundary rules to the calling thread's connections now.

    What an executor worker does between two tasks (:func:`_apply_rules`).
    """
    guard = current_guard(create=True)
    assert guard is not None
    _apply_rules(guard, time.monotonic())


def run_task(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run one task in a worker thread; Django's rules after it, and before it after idling.

    Back-to-back tasks are separated by one application of the rules (after
    each task), not two: the next task starts on connections checked a moment
    ago. A worker idle for :data:`RULES_IDLE_SECONDS` or more applies them
    again before its next task, as Django does at a request's start
    (``CONN_MAX_AGE`` may have passed meanwhile).
    """
    guard = current_guard_fast()
    if guard is None:
        guard = current_guard(create=True)
        assert guard is not None
    now = time.monotonic()
    if now - guard.rules_at >= RULES_IDLE_SECONDS:
        _apply_rules(guard, now)
    try:
        return fn(*args, **kwargs)
    finally:
        # The clock after the task: CONN_MAX_AGE=0 means close_at is the connect time.
        _apply_rules(guard, time.monotonic())


def start_tracking() -> None:
    """Track connections (the per-thread index the rules read) and watch interruptions."""
    _registry.start_tracking()
    watch_interruptions()
