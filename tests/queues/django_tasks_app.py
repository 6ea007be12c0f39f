"""Tasks of the ``django.tasks`` worker tests (``db_worker`` of django-tasks-db).

Defined with ``django.tasks.task`` against the ``default`` backend of
``tests.queues.tasks_settings`` (imported by the test process under those settings).
"""

from __future__ import annotations

import os
import threading

from django.tasks import task

from tests.queues import jobs


@task()
def query(alias: str = "default") -> list[int]:
    """Which process, thread and server session ran this task."""
    pid, backend = jobs.query(alias)
    return [pid, threading.get_ident(), backend]


@task()
def slow_query(seconds: int) -> list[int]:
    """A query that runs for ``seconds``; then which session ran it."""
    jobs.slow_query(seconds)
    return query.func()


@task()
def interrupted_query(seconds: int) -> None:
    """A query interrupted after 1 s by ``SIGALRM`` (the worker runs tasks in its main thread)."""
    jobs.interrupted_query(seconds)


@task()
def database_error() -> None:
    """A query the server refuses."""
    jobs.database_error()


@task()
def pid() -> int:
    """The worker's pid (no query)."""
    return os.getpid()
