"""Tasks of the django-tasks-rq test: the ``django-tasks`` backport's ``task``, run by RQ.

RQ imports this module in the worker; a plain ``rq worker`` does not set Django up, so it
does so first (as ``tests.queues.jobs`` does).
"""

from __future__ import annotations

import os
import threading

from tests.queues import jobs

jobs._django()

from django_tasks import task  # noqa: E402


@task()
def query(alias: str = "default") -> list[int]:
    """Which process, thread and server session ran this task."""
    pid, backend = jobs.query(alias)
    return [pid, threading.get_ident(), backend]


@task()
def interrupted_query(seconds: int) -> None:
    """A query interrupted after 1 s by ``SIGALRM`` (SimpleWorker: the main thread)."""
    jobs.interrupted_query(seconds)


@task()
def database_error() -> None:
    """A query the server refuses."""
    jobs.database_error()


@task()
def pid() -> int:
    """The worker's pid (no query)."""
    return os.getpid()
